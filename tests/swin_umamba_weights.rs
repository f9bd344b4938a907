//! Upstream Swin-UMamba's own PyTorch network against ours: weights written by PyTorch
//! (`tests/fixtures/swin-umamba/make_fixtures.py`, which imports upstream's `SwinUMamba.py` and
//! MONAI) load into our network and give the same logits; VMamba ImageNet checkpoints load into
//! the encoder as upstream's loader does; export writes upstream's keys back; bad checkpoints are
//! refused with a message, never a panic.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::*;
use segmenter::model::weights::{
    infer_config, load_state_dict, read_state_dict, to_state_dict, write_safetensors, LoadScope,
    PretrainedEncoder, StateDict,
};
use segmenter::model::SwinUMamba;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/swin-umamba")
        .join(name)
}

/// The network of a checkpoint, built from its shapes and loaded strictly.
fn import(path: &Path) -> SwinUMamba<Flex> {
    let dict = read_state_dict(path).unwrap();
    let (config, cin, classes) = infer_config(&dict, path).unwrap();
    let model = config.init::<Flex>(cin, classes, &Default::default());
    let (model, report) = load_state_dict(model, &dict, LoadScope::Whole, path).unwrap();
    assert_eq!(report.loaded, dict.len());
    model
}

fn tensor(dict: &StateDict, key: &str) -> Tensor<Flex, 4> {
    let t = &dict[key];
    let shape: [usize; 4] = t.shape.clone().try_into().unwrap();
    Tensor::from_data(
        TensorData::new(t.values.clone(), shape),
        &Default::default(),
    )
}

fn max_abs_diff(ours: Tensor<Flex, 4>, theirs: Tensor<Flex, 4>) -> f32 {
    assert_eq!(ours.dims(), theirs.dims());
    (ours - theirs).abs().max().into_scalar()
}

#[test]
fn an_nnunet_checkpoint_of_upstreams_network_gives_its_logits() {
    let expected = read_state_dict(&fixture("expected.safetensors")).unwrap();
    for file in ["checkpoint_final.pth", "swin_umamba_small.safetensors"] {
        let model = import(&fixture(file));
        let outputs = model.forward(tensor(&expected, "input"));
        assert_eq!(outputs.len(), 4);
        for (i, out) in outputs.into_iter().enumerate() {
            let diff = max_abs_diff(out, tensor(&expected, &format!("out{i}")));
            eprintln!("{file}: deep-supervision output {i}: max |ours - PyTorch| = {diff:.2e}");
            assert!(diff <= 1e-4, "{file}: output {i} differs by {diff}");
        }
    }
}

#[test]
fn the_inferred_architecture_is_the_fixtures() {
    let path = fixture("checkpoint_final.pth");
    let (config, cin, classes) = infer_config(&read_state_dict(&path).unwrap(), &path).unwrap();
    assert_eq!((cin, classes), (2, 3));
    assert_eq!(
        (
            config.stem_channels,
            config.dims,
            config.depths,
            config.d_state,
            config.expand
        ),
        (8, [8, 16, 32, 64], [2, 1, 2, 1], 8, 2)
    );
}

#[test]
fn vmamba_imagenet_weights_load_into_the_encoder_as_upstreams_loader_does() {
    let expected = read_state_dict(&fixture("expected.safetensors")).unwrap();
    for file in ["vmamba_small_v0.pth", "vmamba_small_v2.safetensors"] {
        let model = import(&fixture("checkpoint_final.pth"));
        let encoder = PretrainedEncoder::read(&fixture(file)).unwrap();
        let (model, report) = encoder.load_into(model).unwrap();
        // 6 blocks × 13 tensors + 3 patch mergings × 3 = 87. Upstream's loader copies 88: also
        // the patch embedding's norm bias, which its skip list misses; all of `patch_embed.*`
        // is skipped here.
        assert_eq!(report.loaded, 87, "{file}");
        let mut skipped = report.skipped.clone();
        skipped.sort();
        assert!(
            skipped.iter().all(|k| k.starts_with("head.")
                || k.starts_with("norm.")
                || k.starts_with("patch_embed.")),
            "{file}: {skipped:?}"
        );
        let out = model.logits(tensor(&expected, "input"));
        let diff = max_abs_diff(out, tensor(&expected, "pretrained_skip_patch_embed_out0"));
        eprintln!("{file}: pretrained logits: max |ours - PyTorch| = {diff:.2e}");
        assert!(diff <= 1e-4, "{file}: {diff}");
    }
}

#[test]
fn export_writes_upstreams_keys_and_values_back() {
    let source = fixture("swin_umamba_small.safetensors");
    let original = read_state_dict(&source).unwrap();
    let exported = to_state_dict(&import(&source)).unwrap();
    assert_eq!(
        original.keys().collect::<Vec<_>>(),
        exported.keys().collect::<Vec<_>>()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exported.safetensors");
    write_safetensors(&exported, &path).unwrap();
    let again = read_state_dict(&path).unwrap();
    for (key, t) in &original {
        assert_eq!(t.shape, again[key].shape, "{key}");
        assert_eq!(
            t.values, again[key].values,
            "{key}: values changed on the way"
        );
    }
}

/// Copies the `torch.save` zip `from` to `to` with `old` replaced by `new` in its pickle.
fn rewrite_pickle(from: &Path, to: &Path, old: &[u8], new: &[u8]) {
    use std::io::{Read, Write};
    let mut archive = zip::ZipArchive::new(std::fs::File::open(from).unwrap()).unwrap();
    let mut out = zip::ZipWriter::new(std::fs::File::create(to).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut replaced = false;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name.ends_with("data.pkl") {
            let at = bytes.windows(old.len()).position(|w| w == old).unwrap();
            bytes.splice(at..at + old.len(), new.iter().copied());
            replaced = true;
        }
        out.start_file(name, options).unwrap();
        out.write_all(&bytes).unwrap();
    }
    out.finish().unwrap();
    assert!(replaced);
}

fn refusal(dict_path: &Path) -> String {
    let dict = match read_state_dict(dict_path) {
        Ok(d) => d,
        Err(e) => return format!("{e:#}"),
    };
    match infer_config(&dict, dict_path) {
        Ok((config, cin, classes)) => {
            let model = config.init::<Flex>(cin, classes, &Default::default());
            match load_state_dict(model, &dict, LoadScope::Whole, dict_path) {
                Ok(_) => String::new(),
                Err(e) => format!("{e:#}"),
            }
        }
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_checkpoints_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("checkpoint_final.pth")).unwrap();
    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let message = refusal(&truncated);
    assert!(message.contains("truncated.pth"), "{message}");

    let garbage = dir.path().join("garbage.pth");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    let message = refusal(&garbage);
    assert!(message.contains("garbage.pth"), "{message}");

    // A pickle that would run code: the trainer's torch.device call made `os.system('cuda')`.
    let hostile = dir.path().join("hostile.pth");
    rewrite_pickle(
        &fixture("checkpoint_final.pth"),
        &hostile,
        b"ctorch\ndevice\n",
        b"cos\nsystem\n",
    );
    let message = refusal(&hostile);
    assert!(
        message.contains("hostile.pth") && message.contains("'os.system'"),
        "{message}"
    );

    // Another architecture: a VMamba classifier is not a Swin-UMamba network.
    let message = refusal(&fixture("vmamba_small_v0.pth"));
    assert!(message.contains("Swin-UMamba"), "{message}");

    // A missing tensor.
    let mut dict = read_state_dict(&fixture("swin_umamba_small.safetensors")).unwrap();
    dict.remove("decoder4.conv_block.conv2.conv.weight");
    let missing = dir.path().join("missing.safetensors");
    write_safetensors(&dict, &missing).unwrap();
    let message = refusal(&missing);
    assert!(
        message.contains("lacks 'decoder4.conv_block.conv2.conv.weight'"),
        "{message}"
    );

    // The wrong number of input channels for the data: named with both shapes.
    let path = fixture("swin_umamba_small.safetensors");
    let dict = read_state_dict(&path).unwrap();
    let (config, _, classes) = infer_config(&dict, &path).unwrap();
    let model = config.init::<Flex>(1, classes, &Default::default());
    let message = format!(
        "{:#}",
        load_state_dict(model, &dict, LoadScope::Whole, &path)
            .err()
            .unwrap()
    );
    assert!(
        message.contains("stem.0.weight") && message.contains("input channel"),
        "{message}"
    );

    // A VMamba file of other widths: the first mismatching key and both shapes.
    let model = config.init::<Flex>(2, classes, &Default::default());
    let wide = segmenter::model::ModelConfig {
        dims: [16, 32, 64, 128],
        ..config
    }
    .init::<Flex>(2, classes, &Default::default());
    let wide_dict = to_state_dict(&wide).unwrap();
    let renamed: StateDict = wide_dict
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("vssm_encoder.")
                .map(|rest| (rest.replace("downsamples.0", "layers.0.downsample"), v))
        })
        .collect();
    let wide_path = dir.path().join("wide.safetensors");
    write_safetensors(&renamed, &wide_path).unwrap();
    let message = format!(
        "{:#}",
        PretrainedEncoder::read(&wide_path)
            .unwrap()
            .load_into(model)
            .err()
            .unwrap()
    );
    assert!(
        message.contains("has shape") && message.contains("needs"),
        "{message}"
    );
}

/// Full-size parity (about 60 M parameters), run by `benchmarks/swin-umamba-full-parity.sh`,
/// which makes the weights and upstream's logits with PyTorch into `SEGMENTER_PARITY_DIR`.
#[test]
#[ignore = "needs files made with PyTorch: benchmarks/swin-umamba-full-parity.sh"]
fn full_size_parity() {
    let dir = PathBuf::from(std::env::var("SEGMENTER_PARITY_DIR").expect("SEGMENTER_PARITY_DIR"));
    let expected = read_state_dict(&dir.join("expected.safetensors")).unwrap();
    for file in ["full.pth", "full.safetensors"] {
        let path = dir.join(file);
        let started = std::time::Instant::now();
        let dict = read_state_dict(&path).unwrap();
        let (config, cin, classes) = infer_config(&dict, &path).unwrap();
        assert_eq!(
            segmenter::config::ExperimentConfig::preset("swin-umamba")
                .unwrap()
                .model,
            config,
            "the swin-umamba preset is upstream's network"
        );
        let model = config.init::<Flex>(cin, classes, &Default::default());
        let (model, report) = load_state_dict(model, &dict, LoadScope::Whole, &path).unwrap();
        let parameters: usize = dict.values().map(|t| t.values.len()).sum();
        eprintln!(
            "{file}: {} tensors, {parameters} parameters loaded in {:.1} s",
            report.loaded,
            started.elapsed().as_secs_f64()
        );
        for (i, out) in model
            .forward(tensor(&expected, "input"))
            .into_iter()
            .enumerate()
        {
            let reference = tensor(&expected, &format!("out{i}"));
            let scale: f32 = reference.clone().abs().max().into_scalar();
            let diff = max_abs_diff(out, reference);
            eprintln!(
                "{file}: output {i}: max |ours - PyTorch| = {diff:.2e} (max |logit| {scale:.3})"
            );
            assert!(diff <= 1e-4, "{file}: output {i}: {diff}");
        }
        let exported = to_state_dict(&model).unwrap();
        for (key, t) in &dict {
            assert_eq!(t.values, exported[key].values, "{key}: export changed it");
        }
        eprintln!(
            "{file}: export gives back all {} tensors bit for bit",
            dict.len()
        );
    }
}
