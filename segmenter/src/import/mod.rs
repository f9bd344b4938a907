//! Importing a network trained elsewhere as a run folder that `predict` and `evaluate` use
//! unchanged: `segmenter import swin-umamba` turns an nnU-Net v2 Swin-UMamba result
//! (`checkpoint_final.pth`, `nnUNetPlans.json`, `dataset.json`) into weights, config and a plan
//! that feeds the network as nnU-Net's own predictor does.

mod checkpoint;
mod nnunet_plans;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::backend::Flex;
use serde::{Deserialize, Serialize};

pub use checkpoint::{checkpoint_info, CheckpointInfo};
pub use nnunet_plans::{plan_from_nnunet, read_dataset_json, NnUnetDataset};

use crate::config::ExperimentConfig;
use crate::model::weights::{infer_config, load_state_dict, read_state_dict, LoadScope};
use crate::model::ModelConfig;
use crate::plan::Plan;
use crate::run::RunDir;

/// nnU-Net trainers whose network is upstream Swin-UMamba's `SwinUMamba` (with or without the
/// ImageNet-pretrained start), the one network this tool builds.
pub const SUPPORTED_TRAINERS: [&str; 2] =
    ["nnUNetTrainerSwinUMamba", "nnUNetTrainerSwinUMambaScratch"];

/// The one nnU-Net configuration a 2D network is trained in.
pub const SUPPORTED_CONFIGURATION: &str = "2d";

/// Name of the file in an imported run that says where it came from.
pub const IMPORT_NOTE: &str = "import.json";

/// What `segmenter import swin-umamba` reads and where it writes.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// nnU-Net's `checkpoint_final.pth` (or `checkpoint_best.pth`, or a plain state dict).
    pub checkpoint: PathBuf,
    /// The plans the model was trained with (`nnUNetPlans.json`).
    pub plans: PathBuf,
    /// The dataset's `dataset.json`.
    pub dataset_json: PathBuf,
    /// The nnU-Net configuration (`2d`).
    pub configuration: String,
    /// The run folder to create.
    pub out: PathBuf,
}

/// Where an imported run came from, written to `RUN/import.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportNote {
    /// What made the run.
    pub imported_by: String,
    /// The checkpoint (absolute path) and its size in bytes.
    pub checkpoint: PathBuf,
    /// Size of the checkpoint in bytes.
    pub checkpoint_bytes: u64,
    /// The plans file (absolute path).
    pub plans: PathBuf,
    /// The dataset.json (absolute path).
    pub dataset_json: PathBuf,
    /// The nnU-Net configuration.
    pub configuration: String,
    /// The trainer the checkpoint names, if it names one.
    pub trainer_name: Option<String>,
    /// Tensors loaded into the network (all of the checkpoint's).
    pub tensors: usize,
    /// Parameters loaded.
    pub parameters: usize,
    /// How `predict` feeds the network, in plain words.
    pub preprocessing: String,
}

/// What an import did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    /// The plan written to `plan.json`.
    pub plan: Plan,
    /// The network's architecture, inferred from the checkpoint's shapes.
    pub model: ModelConfig,
    /// What was written to `import.json`.
    pub note: ImportNote,
}

/// Checks that the checkpoint is one this tool can run: a Swin-UMamba trainer's, for the
/// configuration asked for.
fn check_checkpoint(info: &CheckpointInfo, options: &ImportOptions) -> Result<()> {
    let name = options.checkpoint.display();
    if let Some(trainer) = &info.trainer_name {
        if !SUPPORTED_TRAINERS.contains(&trainer.as_str()) {
            bail!(
                "{name}: trained by {trainer}; segmenter imports upstream Swin-UMamba's 2D network \
                 only, trained by {} (other networks, e.g. nnU-Net's PlainConvUNet (nnUNetTrainer), \
                 ResEnc U-Nets, U-Mamba or Swin-UMamba-D, are not supported)",
                SUPPORTED_TRAINERS.join(" or ")
            );
        }
    }
    if let Some(trained) = &info.configuration {
        if *trained != options.configuration {
            bail!(
                "{name}: trained in configuration '{trained}', not '{}'",
                options.configuration
            );
        }
    }
    Ok(())
}

/// Refuses an output folder that exists and holds anything.
fn check_out(out: &Path) -> Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(out) {
        if entries.next().is_some() {
            bail!(
                "{}: already exists and is not empty; choose another --out (nothing was \
                 overwritten)",
                out.display()
            );
        }
    } else if out.exists() {
        bail!("{}: exists and is not a folder", out.display());
    }
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Imports an nnU-Net v2 Swin-UMamba result as a run folder (see [`ImportOptions`]); everything
/// is checked and the weights are loaded before anything is written.
pub fn import_swin_umamba(options: &ImportOptions) -> Result<ImportReport> {
    if options.configuration != SUPPORTED_CONFIGURATION {
        bail!(
            "configuration '{}': only the '{SUPPORTED_CONFIGURATION}' configuration can be \
             imported (Swin-UMamba is a 2D network)",
            options.configuration
        );
    }
    check_out(&options.out)?;
    let info = checkpoint_info(&options.checkpoint);
    check_checkpoint(&info, options)?;
    let dataset = read_dataset_json(&options.dataset_json)?;
    let plan = plan_from_nnunet(&options.plans, &dataset, &options.configuration)?;

    let dict = read_state_dict(&options.checkpoint)?;
    let (model_config, in_channels, classes) = infer_config(&dict, &options.checkpoint)?;
    let name = options.checkpoint.display();
    if in_channels != plan.input_channels() {
        bail!(
            "{name}: the network takes {in_channels} input channel(s), but {} names {} ({})",
            options.dataset_json.display(),
            plan.input_channels(),
            plan.channel_names.join(", ")
        );
    }
    if classes != plan.num_classes() {
        bail!(
            "{name}: the network predicts {classes} classes, but {} has {} labels ({})",
            options.dataset_json.display(),
            plan.num_classes(),
            plan.labels.values().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let device = Default::default();
    let model = model_config.init::<Flex>(in_channels, classes, &device);
    let (model, report) = load_state_dict(model, &dict, LoadScope::Whole, &options.checkpoint)?;

    let mut config = ExperimentConfig::preset("swin-umamba")?;
    config.model = model_config.clone();
    config.validate()?;
    let note = ImportNote {
        imported_by: format!("segmenter {} import swin-umamba", env!("CARGO_PKG_VERSION")),
        checkpoint: absolute(&options.checkpoint),
        checkpoint_bytes: std::fs::metadata(&options.checkpoint)
            .map(|m| m.len())
            .unwrap_or(0),
        plans: absolute(&options.plans),
        dataset_json: absolute(&options.dataset_json),
        configuration: options.configuration.clone(),
        trainer_name: info.trainer_name.clone(),
        tensors: report.loaded,
        parameters: dict.values().map(|t| t.values.len()).sum(),
        preprocessing: plan.describe(),
    };

    let created = !options.out.exists();
    let write = || -> Result<()> {
        let run = RunDir::create(&options.out)?;
        run.write_plan(&plan)?;
        run.write_config(&config)?;
        run.write_json(IMPORT_NOTE, &note)?;
        // The weights last: a folder without model.mpk is not a run, so a failure cannot leave
        // a half-written run that predict would take.
        run.save_model("model", &model)
    };
    if let Err(e) = write() {
        if created {
            let _ = std::fs::remove_dir_all(&options.out);
        }
        return Err(e).with_context(|| format!("{}: cannot write the run", options.out.display()));
    }
    Ok(ImportReport {
        plan,
        model: model_config,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(configuration: &str) -> ImportOptions {
        ImportOptions {
            checkpoint: "results/fold_0/checkpoint_final.pth".into(),
            plans: "nnUNetPlans.json".into(),
            dataset_json: "dataset.json".into(),
            configuration: configuration.into(),
            out: "run".into(),
        }
    }

    #[test]
    fn other_trainers_are_refused_saying_what_is_supported() {
        let info = |trainer: &str| CheckpointInfo {
            trainer_name: Some(trainer.into()),
            configuration: Some("2d".into()),
        };
        for trainer in SUPPORTED_TRAINERS {
            check_checkpoint(&info(trainer), &options("2d")).unwrap();
        }
        for trainer in [
            "nnUNetTrainer",
            "nnUNetTrainerUMambaBot",
            "nnUNetTrainerSwinUMambaD",
        ] {
            let err = check_checkpoint(&info(trainer), &options("2d"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("checkpoint_final.pth")
                    && err.contains(trainer)
                    && err.contains("nnUNetTrainerSwinUMamba or nnUNetTrainerSwinUMambaScratch")
                    && err.contains("PlainConvUNet"),
                "{err}"
            );
        }
        // A checkpoint that names no trainer (a plain state dict) is left to the weights' checks.
        check_checkpoint(&CheckpointInfo::default(), &options("2d")).unwrap();
        let err = check_checkpoint(
            &CheckpointInfo {
                trainer_name: None,
                configuration: Some("2d".into()),
            },
            &options("2d_custom"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("'2d', not '2d_custom'"), "{err}");
    }
}
