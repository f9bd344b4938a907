//! `segmenter export`: a run's weights under upstream Swin-UMamba's PyTorch key names.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use clap::Args;
use segmenter::model::torch_save::write_pth;
use segmenter::model::weights::{to_state_dict, write_safetensors, NamedTensor, StateDict};
use segmenter::run::RunDir;

// The flags of `segmenter export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run folder written by `segmenter train` (its final weights, model.mpk).
    #[arg(long)]
    pub model: PathBuf,
    /// File to write: FILE.pth (`torch.load(FILE, weights_only=True)`) or FILE.safetensors
    /// (`safetensors.torch.load_file`); either then goes into upstream's
    /// `SwinUMamba.load_state_dict(..., strict=True)`. An existing file is never overwritten.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write FILE.sample.safetensors: a random input of one patch (`input`) and this
    /// network's full-resolution logits for it (`out0`), to check the weights in PyTorch
    /// (tests/fixtures/swin-umamba/check_export.py does).
    #[arg(long)]
    pub sample: bool,
}

/// Writes the run's weights as upstream's `state_dict`.
pub fn run(args: ExportArgs) -> Result<()> {
    let extension = args
        .out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(extension.as_str(), "safetensors" | "pth" | "pt") {
        bail!(
            "{}: export writes FILE.pth (torch.save) or FILE.safetensors",
            args.out.display()
        );
    }
    if args.out.exists() {
        bail!(
            "{}: already exists; choose another --out (nothing was overwritten)",
            args.out.display()
        );
    }
    let (model, plan) = RunDir::open(&args.model)?.load_model::<Flex>(&Default::default())?;
    let dict = to_state_dict(&model)?;
    if extension == "safetensors" {
        write_safetensors(&dict, &args.out)?;
    } else {
        write_pth(&dict, &args.out)?;
    }
    if args.sample {
        let sample = args.out.with_extension("sample.safetensors");
        if sample.exists() {
            bail!(
                "{}: already exists (nothing was overwritten)",
                sample.display()
            );
        }
        let [rows, cols] = plan.patch_size;
        let shape = [1, plan.input_channels(), rows, cols];
        let input =
            Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default());
        let logits = model.logits(input.clone());
        let named = |t: Tensor<Flex, 4>| -> Result<NamedTensor> {
            let shape = t.dims().to_vec();
            let values = t
                .into_data()
                .into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(NamedTensor { shape, values })
        };
        let mut tensors = StateDict::new();
        tensors.insert("input".into(), named(input)?);
        tensors.insert("out0".into(), named(logits)?);
        write_safetensors(&tensors, &sample)?;
        println!(
            "Wrote a sample input and its logits to {}",
            sample.display()
        );
    }
    let parameters: usize = dict.values().map(|t| t.values.len()).sum();
    println!(
        "Wrote {} tensors ({:.2} M parameters; {} input channel(s), {} classes) to {}",
        dict.len(),
        parameters as f64 / 1e6,
        plan.input_channels(),
        plan.num_classes(),
        args.out.display()
    );
    Ok(())
}
