//! `segmenter export`: a run's weights under upstream Swin-UMamba's PyTorch key names.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::backend::Flex;
use clap::Args;
use segmenter::model::weights::{to_state_dict, write_safetensors};
use segmenter::run::RunDir;

// The flags of `segmenter export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run folder written by `segmenter train` (its final weights, model.mpk).
    #[arg(long)]
    pub model: PathBuf,
    /// File to write: FILE.safetensors (load it with `safetensors.torch.load_file`, then
    /// `SwinUMamba.load_state_dict(..., strict=True)`). An existing file is never overwritten.
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes the run's weights as upstream's `state_dict`.
pub fn run(args: ExportArgs) -> Result<()> {
    let is_safetensors = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !is_safetensors {
        bail!(
            "{}: export writes .safetensors files (PyTorch reads them with the `safetensors` package)",
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
    write_safetensors(&dict, &args.out)?;
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
