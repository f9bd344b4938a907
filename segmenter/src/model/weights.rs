//! Weights in upstream Swin-UMamba's PyTorch names: reading `.pth` and `.safetensors` state
//! dicts, loading them into the network (whole, or VMamba's ImageNet encoder), and writing the
//! network's weights back under those names (`segmenter export`).
//!
//! The network's modules carry upstream's names (see [`super::network`]), so the mapping is a
//! handful of renames: burn's LayerNorm `gamma`/`beta` are PyTorch's `weight`/`bias`, a MONAI
//! convolution sits one level deeper (`conv1.conv.weight`), `stem.0`/`stem.1` are a
//! `Sequential`'s children, and burn stores a linear layer's weight transposed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use burn::module::ParamId;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn_store::pytorch::PytorchReader;
use burn_store::{ModuleSnapshot, ModuleStore, SafetensorsStore, TensorSnapshot};

use super::config::ModelConfig;
use super::network::SwinUMamba;

/// One tensor of a checkpoint: its shape and its values as `f32`.
#[derive(Clone, Debug)]
pub struct NamedTensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// A checkpoint's tensors by key.
pub type StateDict = BTreeMap<String, NamedTensor>;

/// Reads the tensors of a PyTorch `.pth`/`.pt` file or a `.safetensors` file. For `.pth` files
/// the state dict is looked for under `network_weights` (nnU-Net), `model` (VMamba),
/// `state_dict`, or at the top level.
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let name = path.display();
    if !path.is_file() {
        bail!("{name}: no such file");
    }
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let dict = if is_safetensors {
        let mut store = SafetensorsStore::from_file(path);
        let snapshots = store
            .get_all_snapshots()
            .map_err(|e| anyhow!("{name}: not a readable safetensors file: {e}"))?;
        materialise(path, snapshots.iter())?
    } else {
        read_pth(path)?
    };
    if dict.is_empty() {
        bail!("{name}: holds no tensors");
    }
    Ok(dict)
}

/// Reads the values of lazily loaded tensors (while their file is still there).
fn materialise<'a>(
    path: &Path,
    snapshots: impl Iterator<Item = (&'a String, &'a TensorSnapshot)>,
) -> Result<StateDict> {
    let name = path.display();
    let mut dict = StateDict::new();
    for (key, snapshot) in snapshots {
        let data = snapshot
            .to_data()
            .map_err(|e| anyhow!("{name}: tensor '{key}' cannot be read: {e}"))?;
        let shape = data.shape.to_vec();
        let values = data
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow!("{name}: tensor '{key}' is not a float tensor: {e:?}"))?;
        dict.insert(key.clone(), NamedTensor { shape, values });
    }
    Ok(dict)
}

fn read_pth(path: &Path) -> Result<StateDict> {
    match read_pth_plain(path) {
        Ok(tensors) => materialise(path, tensors.iter()),
        // nnU-Net's checkpoint_final.pth keeps numpy scalars (its log) and a torch.device (its
        // trainer's arguments) beside the weights, which burn-store's reader refuses; read a
        // copy in which those few classes are inert.
        Err(e) if e.contains("Unsupported Python type") => {
            let copy = inert_copy(path)?;
            let tensors = read_pth_plain(copy.path()).map_err(|e| refused(path, &e))?;
            materialise(path, tensors.iter())
        }
        Err(e) => Err(refused(path, &e)),
    }
}

fn refused(path: &Path, error: &str) -> anyhow::Error {
    let name = path.display();
    match error.split("Unsupported Python type '").nth(1) {
        Some(rest) => anyhow!(
            "{name}: refers to the Python class '{}', which a checkpoint of weights does not hold (only tensors, numpy scalars and torch.device are read, and no pickle code is run)",
            rest.split('\'').next().unwrap_or(rest)
        ),
        None => anyhow!("{name}: not a readable PyTorch checkpoint: {error}"),
    }
}

/// Reads the state dict under `network_weights` (nnU-Net), `model` (VMamba), `state_dict`, or
/// the top level.
fn read_pth_plain(path: &Path) -> std::result::Result<HashMap<String, TensorSnapshot>, String> {
    let mut first_error = None;
    for key in ["network_weights", "model", "state_dict"] {
        match PytorchReader::with_top_level_key(path, key) {
            Ok(reader) if !reader.is_empty() => return Ok(reader.into_tensors()),
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    match PytorchReader::new(path) {
        Ok(reader) if !reader.is_empty() => Ok(reader.into_tensors()),
        Ok(_) => Err(first_error.unwrap_or_else(|| "holds no tensors".into())),
        Err(e) => Err(first_error.unwrap_or_else(|| e.to_string())),
    }
}

/// Python callables that nnU-Net checkpoints hold outside the weights, as protocol-2 `GLOBAL`
/// opcodes (`c` module `\n` name `\n`): numpy scalars (whose bytes protocol 2 writes as a
/// `_codecs.encode` call), their dtypes, and the trainer's device.
const INERT_GLOBALS: [&[u8]; 5] = [
    b"c_codecs\nencode\n",
    b"cnumpy.core.multiarray\nscalar\n",
    b"cnumpy._core.multiarray\nscalar\n",
    b"cnumpy\ndtype\n",
    b"ctorch\ndevice\n",
];

/// A temporary copy of the `torch.save` zip at `path` whose pickle calls `OrderedDict` where it
/// called one of [`INERT_GLOBALS`]: burn-store turns such a call into an empty dict, so the
/// numpy scalars and devices become empty dicts and the tensors are untouched. A byte
/// substitution suffices because protocol 2 has no offsets, and the pickle holds no tensor data
/// (that is in the zip's other entries), only names, so these byte strings can only be opcodes.
fn inert_copy(path: &Path) -> Result<tempfile::NamedTempFile> {
    let name = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("{name}: cannot open"))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| anyhow!("{name}: not a readable PyTorch checkpoint: {e}"))?;
    let copy = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
    let mut out = zip::ZipWriter::new(std::io::BufWriter::new(copy.reopen()?));
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| anyhow!("{name}: entry {i}: {e}"))?;
        if !entry.name().ends_with("data.pkl") {
            out.raw_copy_file(entry)
                .map_err(|e| anyhow!("{name}: cannot copy entry {i}: {e}"))?;
            continue;
        }
        drop(entry);
        let mut entry = archive.by_index(i)?;
        let entry_name = entry.name().to_string();
        let mut pickle = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut pickle)
            .with_context(|| format!("{name}: cannot read {entry_name}"))?;
        for global in INERT_GLOBALS {
            pickle = replace_all(&pickle, global, b"ccollections\nOrderedDict\n");
        }
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        out.start_file(entry_name, options)?;
        std::io::Write::write_all(&mut out, &pickle)?;
    }
    out.finish()?;
    Ok(copy)
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// The upstream (PyTorch) key of the network's parameter at burn path `path` (enum variants
/// left out), or `None` for a parameter upstream does not have (the `--encoder conv` ablation).
pub fn upstream_key(path: &str) -> Option<String> {
    let (module, param) = path.rsplit_once('.')?;
    let param = match param {
        "gamma" => "weight",
        "beta" => "bias",
        "a_logs" => "A_logs",
        "ds" => "Ds",
        other => other,
    };
    let segments: Vec<&str> = module.split('.').collect();
    let module = match segments.as_slice() {
        ["stem", "conv"] => "stem.0".to_string(),
        ["stem", "norm"] => "stem.1".to_string(),
        [block, conv] if is_basic_block(block) && conv.starts_with("conv") => {
            format!("{block}.layer.{conv}.conv")
        }
        [block, "transp_conv"] => format!("{block}.transp_conv.conv"),
        [block, "conv_block", conv] => format!("{block}.conv_block.{conv}.conv"),
        ["out_layers", i] => format!("out_layers.{i}.conv.conv"),
        ["vssm_encoder", "layers", _, "blocks", _, part, ..]
            if *part != "ln_1" && *part != "self_attention" =>
        {
            return None
        }
        _ => module.to_string(),
    };
    Some(format!("{module}.{param}"))
}

fn is_basic_block(name: &str) -> bool {
    name == "decoder1" || (name.starts_with("encoder") && name.len() == 8)
}

/// Whether burn stores the parameter at `path` transposed relative to PyTorch (linear weights).
fn is_linear_weight(path: &str) -> bool {
    ["in_proj.weight", "out_proj.weight", "reduction.weight"]
        .iter()
        .any(|suffix| path.ends_with(suffix))
}

fn transpose(tensor: &NamedTensor) -> NamedTensor {
    let [rows, cols] = [tensor.shape[0], tensor.shape[1]];
    let mut values = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            values[c * rows + r] = tensor.values[r * cols + c];
        }
    }
    NamedTensor {
        shape: vec![cols, rows],
        values,
    }
}

/// What a load did: how many tensors went in, and the checkpoint keys left out.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Tensors copied into the network.
    pub loaded: usize,
    /// Checkpoint keys not used (skipped by rule, or with no place in the network).
    pub skipped: Vec<String>,
}

/// Which part of the network a checkpoint fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadScope {
    /// Every parameter, and every checkpoint tensor must find its place (strict).
    Whole,
    /// The VMamba encoder's blocks and patch merging only (`--pretrained`).
    Encoder,
}

/// Loads `dict` (upstream key names) into `model`. With [`LoadScope::Whole`] a parameter the
/// checkpoint lacks, or a tensor the network has no place for, is an error; a shape mismatch is
/// always one, naming the key and both shapes.
pub fn load_state_dict<B: Backend>(
    mut model: SwinUMamba<B>,
    dict: &StateDict,
    scope: LoadScope,
    source: &Path,
) -> Result<(SwinUMamba<B>, LoadReport)> {
    let name = source.display();
    let mut snapshots = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for ours in model.collect(None, None, true) {
        let path = ours.full_path();
        let Some(key) = upstream_key(&path) else {
            if scope == LoadScope::Whole {
                bail!("{name}: this network (`--encoder conv`) has no upstream counterpart");
            }
            continue;
        };
        if scope == LoadScope::Encoder && !is_pretrained_part(&key) {
            continue;
        }
        let Some(tensor) = dict.get(&key) else {
            if scope == LoadScope::Whole {
                bail!(
                    "{name}: lacks '{key}' (shape {:?}); is it a Swin-UMamba checkpoint of this size?",
                    ours.shape.to_vec()
                );
            }
            continue;
        };
        let tensor = if is_linear_weight(&path) && tensor.shape.len() == 2 {
            transpose(tensor)
        } else {
            tensor.clone()
        };
        let expected = ours.shape.to_vec();
        if tensor.shape != expected {
            let (theirs, wanted) = if is_linear_weight(&path) && expected.len() == 2 {
                (
                    vec![tensor.shape[1], tensor.shape[0]],
                    vec![expected[1], expected[0]],
                )
            } else {
                (tensor.shape.clone(), expected)
            };
            bail!(
                "{name}: '{key}' has shape {theirs:?}, the network needs {wanted:?}{}",
                channel_hint(&key, &theirs, &wanted)
            );
        }
        used.insert(key);
        snapshots.push(TensorSnapshot::from_data(
            TensorData::new(tensor.values, tensor.shape),
            ours.path_stack.clone().unwrap_or_default(),
            ours.container_stack.clone().unwrap_or_default(),
            ParamId::new(),
        ));
    }
    let skipped: Vec<String> = dict
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    if scope == LoadScope::Whole {
        if let Some(extra) = skipped.first() {
            bail!(
                "{name}: '{extra}' ({:?}) has no place in this network; is it another architecture?",
                dict[extra].shape
            );
        }
    }
    let loaded = snapshots.len();
    let result = model.apply(snapshots, None, None, true);
    if let Some(error) = result.errors.first() {
        bail!("{name}: cannot load the weights: {error:?}");
    }
    Ok((model, LoadReport { loaded, skipped }))
}

fn channel_hint(key: &str, theirs: &[usize], wanted: &[usize]) -> String {
    match key {
        "stem.0.weight" | "encoder1.layer.conv1.conv.weight" if theirs.len() == 4 => format!(
            " (the checkpoint takes {} input channel(s), this data has {})",
            theirs[1], wanted[1]
        ),
        k if k.starts_with("out_layers.") && !theirs.is_empty() => format!(
            " (the checkpoint predicts {} classes, this data has {})",
            theirs[0], wanted[0]
        ),
        _ => String::new(),
    }
}

/// Whether upstream key `key` is part of what a VMamba ImageNet checkpoint initialises: the
/// encoder's stages and patch merging, not its patch embedding (which embeds the 48-channel stem
/// here, RGB there).
fn is_pretrained_part(key: &str) -> bool {
    key.starts_with("vssm_encoder.layers.") || key.starts_with("vssm_encoder.downsamples.")
}

/// Renames a VMamba ImageNet checkpoint's keys (v0 layout: `layers.i.blocks.j.ln_1`,
/// `self_attention`, `layers.i.downsample`; v2 names: `norm`, `op`, `patch_embed.0`) to
/// upstream Swin-UMamba's. The classifier `head.*`, the final `norm.*` and `patch_embed.*` are
/// dropped (returned as skipped), as upstream's loader does.
pub fn vmamba_to_upstream(dict: StateDict) -> (StateDict, Vec<String>) {
    let mut renamed = StateDict::new();
    let mut skipped = Vec::new();
    for (key, tensor) in dict {
        if key.starts_with("head.") || key.starts_with("norm.") || key.starts_with("patch_embed.") {
            skipped.push(key);
            continue;
        }
        let segments: Vec<&str> = key.split('.').collect();
        let new = match segments.as_slice() {
            ["layers", i, "downsample", rest @ ..] => {
                format!("vssm_encoder.downsamples.{i}.{}", rest.join("."))
            }
            ["layers", i, "blocks", j, part, rest @ ..] => {
                let part = match *part {
                    "norm" => "ln_1",
                    "op" => "self_attention",
                    other => other,
                };
                format!(
                    "vssm_encoder.layers.{i}.blocks.{j}.{part}.{}",
                    rest.join(".")
                )
            }
            _ => format!("vssm_encoder.{key}"),
        };
        renamed.insert(new, tensor);
    }
    (renamed, skipped)
}

/// A VMamba ImageNet checkpoint, read and renamed to upstream's keys, ready to load.
pub struct PretrainedEncoder {
    dict: StateDict,
    skipped: Vec<String>,
    path: std::path::PathBuf,
}

impl PretrainedEncoder {
    /// Reads a VMamba ImageNet checkpoint (`.pth` or `.safetensors`).
    pub fn read(path: &Path) -> Result<Self> {
        let (dict, skipped) = vmamba_to_upstream(read_state_dict(path)?);
        Ok(Self {
            dict,
            skipped,
            path: path.to_path_buf(),
        })
    }

    /// Loads the encoder's VSS stages and patch merging into `model`; a shape mismatch is an
    /// error naming the key and both shapes.
    pub fn load_into<B: Backend>(
        &self,
        model: SwinUMamba<B>,
    ) -> Result<(SwinUMamba<B>, LoadReport)> {
        let (model, mut report) =
            load_state_dict(model, &self.dict, LoadScope::Encoder, &self.path)?;
        if report.loaded == 0 {
            bail!(
                "{}: no encoder tensor matched (keys like 'layers.0.blocks.0.ln_1.weight' expected); is it a VMamba checkpoint?",
                self.path.display()
            );
        }
        let mut skipped = self.skipped.clone();
        skipped.append(&mut report.skipped);
        skipped.sort();
        report.skipped = skipped;
        Ok((model, report))
    }
}

/// The network's weights under upstream's key names, PyTorch layout (linear weights `[out, in]`).
pub fn to_state_dict<B: Backend>(model: &SwinUMamba<B>) -> Result<StateDict> {
    let mut dict = StateDict::new();
    for ours in model.collect(None, None, true) {
        let path = ours.full_path();
        let key = upstream_key(&path).ok_or_else(|| {
            anyhow!("the `--encoder conv` ablation has no upstream Swin-UMamba counterpart")
        })?;
        let data = ours
            .to_data()
            .map_err(|e| anyhow!("cannot read '{path}': {e}"))?;
        let tensor = NamedTensor {
            shape: data.shape.to_vec(),
            values: data
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| anyhow!("'{path}': {e:?}"))?,
        };
        let tensor = if is_linear_weight(&path) {
            transpose(&tensor)
        } else {
            tensor
        };
        dict.insert(key, tensor);
    }
    Ok(dict)
}

/// Writes `dict` as a `.safetensors` file (float32, little-endian), atomically.
pub fn write_safetensors(dict: &StateDict, path: &Path) -> Result<()> {
    let buffers: Vec<Vec<u8>> = dict
        .values()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = dict
        .iter()
        .zip(&buffers)
        .map(|((k, t), bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| anyhow!("'{k}': {e}"))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| anyhow!("cannot serialise the weights: {e}"))?;
    segmenter_io::write_bytes_atomic(path, &bytes)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// The network configuration a Swin-UMamba state dict was trained with: widths from its shapes,
/// depths from its block count, and its input channels and classes.
pub fn infer_config(dict: &StateDict, source: &Path) -> Result<(ModelConfig, usize, usize)> {
    let name = source.display();
    let shape = |key: &str| -> Result<&Vec<usize>> {
        dict.get(key).map(|t| &t.shape).ok_or_else(|| {
            anyhow!("{name}: lacks '{key}': not a Swin-UMamba (nnUNetTrainerSwinUMamba) network; this tool imports Swin-UMamba only")
        })
    };
    let stem = shape("stem.0.weight")?;
    let head = shape("out_layers.0.conv.conv.weight")?;
    let (stem_channels, in_channels, classes) = (stem[0], stem[1], head[0]);
    let mut dims = [0; 4];
    let mut depths = [0; 4];
    for (i, (dim, depth)) in dims.iter_mut().zip(&mut depths).enumerate() {
        *dim = shape(&format!("vssm_encoder.layers.{i}.blocks.0.ln_1.weight"))?[0];
        *depth = (0..)
            .take_while(|j| {
                dict.contains_key(&format!("vssm_encoder.layers.{i}.blocks.{j}.ln_1.weight"))
            })
            .count();
    }
    let a_logs = shape("vssm_encoder.layers.0.blocks.0.self_attention.A_logs")?;
    let in_proj = shape("vssm_encoder.layers.0.blocks.0.self_attention.in_proj.weight")?;
    let config = ModelConfig {
        expand: in_proj[0] / (2 * dims[0]),
        ..ModelConfig::vss(stem_channels, dims, depths, a_logs[1])
    };
    config.validate().map_err(|e| anyhow!("{name}: {e}"))?;
    Ok((config, in_channels, classes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn small() -> ModelConfig {
        ModelConfig::vss(8, [16, 32, 64, 128], [2, 1, 2, 1], 8)
    }

    #[test]
    fn every_parameter_has_an_upstream_key_and_they_are_distinct() {
        let device = Default::default();
        let model = small().init::<Flex>(2, 3, &device);
        let dict = to_state_dict(&model).unwrap();
        let count = model.collect(None, None, true).len();
        assert_eq!(dict.len(), count, "two parameters mapped to one key");
        for key in [
            "stem.0.weight",
            "stem.1.bias",
            "vssm_encoder.patch_embed.proj.weight",
            "vssm_encoder.layers.2.blocks.1.self_attention.A_logs",
            "vssm_encoder.downsamples.2.reduction.weight",
            "encoder1.layer.conv3.conv.weight",
            "decoder6.transp_conv.conv.weight",
            "decoder2.conv_block.conv3.conv.weight",
            "decoder1.layer.conv2.conv.weight",
            "out_layers.3.conv.conv.bias",
        ] {
            assert!(dict.contains_key(key), "missing {key}");
        }
        assert_eq!(
            dict["vssm_encoder.downsamples.0.reduction.weight"].shape,
            vec![32, 64],
            "linear weights are exported [out, in]"
        );
        let (config, cin, classes) = infer_config(&dict, Path::new("x")).unwrap();
        assert_eq!((config, cin, classes), (small(), 2, 3));
    }

    #[test]
    fn a_state_dict_round_trips_through_the_network() {
        let device = Default::default();
        let a = small().init::<Flex>(2, 3, &device);
        let dict = to_state_dict(&a).unwrap();
        let b = small().init::<Flex>(2, 3, &device);
        let (b, report) = load_state_dict(b, &dict, LoadScope::Whole, Path::new("x")).unwrap();
        assert_eq!(report.loaded, dict.len());
        assert!(report.skipped.is_empty());
        let again = to_state_dict(&b).unwrap();
        for (k, t) in &dict {
            assert_eq!(t.values, again[k].values, "{k}");
        }
    }

    #[test]
    fn a_wrong_shape_is_refused_naming_the_key_and_both_shapes() {
        let device = Default::default();
        let mut dict = to_state_dict(&small().init::<Flex>(2, 3, &device)).unwrap();
        let model = small().init::<Flex>(1, 3, &device);
        let err = load_state_dict(model, &dict, LoadScope::Whole, Path::new("ckpt.pth"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("ckpt.pth") && err.contains("[8, 2, 7, 7]"),
            "{err}"
        );
        assert!(
            err.contains("[8, 1, 7, 7]") && err.contains("input channel"),
            "{err}"
        );
        dict.remove("decoder3.conv_block.conv1.conv.weight");
        let model = small().init::<Flex>(2, 3, &device);
        let err = load_state_dict(model, &dict, LoadScope::Whole, Path::new("ckpt.pth"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("lacks 'decoder3.conv_block.conv1.conv.weight'"),
            "{err}"
        );
    }

    #[test]
    fn vmamba_names_map_to_the_encoder_and_the_rest_is_skipped() {
        let t = NamedTensor {
            shape: vec![1],
            values: vec![0.0],
        };
        let dict: StateDict = [
            "layers.0.blocks.1.ln_1.weight",
            "layers.0.blocks.1.norm.bias",
            "layers.1.blocks.0.op.A_logs",
            "layers.2.downsample.reduction.weight",
            "patch_embed.0.weight",
            "patch_embed.proj.weight",
            "head.weight",
            "norm.bias",
        ]
        .into_iter()
        .map(|k| (k.to_string(), t.clone()))
        .collect();
        let (renamed, skipped) = vmamba_to_upstream(dict);
        let keys: Vec<&str> = renamed.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "vssm_encoder.downsamples.2.reduction.weight",
                "vssm_encoder.layers.0.blocks.1.ln_1.bias",
                "vssm_encoder.layers.0.blocks.1.ln_1.weight",
                "vssm_encoder.layers.1.blocks.0.self_attention.A_logs",
            ]
        );
        assert_eq!(skipped.len(), 4);
    }
}
