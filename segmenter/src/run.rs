//! The run folder, what `train` hands to `predict`: weights, config, plan (with the label names),
//! split, log, and the checkpoint and run settings that `train --resume` needs.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use segmenter_io::write_bytes_atomic;
use serde::{Deserialize, Serialize};

use crate::config::ExperimentConfig;
use crate::model::{Network, SwinUMamba};
use crate::plan::Plan;

/// What a run needs to be resumed, beyond config and plan: written to `run.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    /// Dataset folder (absolute).
    pub data: PathBuf,
    /// Seed of split, initialisation and sampling.
    pub seed: u64,
    /// Fraction held out for validation.
    pub val_fraction: f64,
    /// Wall-time budget in seconds, if any.
    pub time_budget_s: Option<f64>,
    /// Cross-validation fold held out (`--fold`), if the split is one of the five folds.
    #[serde(default)]
    pub fold: Option<usize>,
    /// The VMamba ImageNet checkpoint the encoder started from (`--pretrained`), if any.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
}

/// Training progress saved with each checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimiser steps taken (the sampler's position: batch `step` depends only on seed and step).
    pub step: usize,
    /// Training wall time so far, in seconds.
    pub elapsed_s: f64,
    /// Best validation mean foreground Dice so far.
    pub best_dice: Option<f64>,
}

/// A run folder on disk.
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates a new run folder; refuses to reuse one that already holds a run.
    pub fn create(path: &Path) -> Result<Self> {
        if path.join("plan.json").exists() || path.join("model.mpk").exists() {
            bail!(
                "{}: already holds a run; choose another --out (nothing was overwritten)",
                path.display()
            );
        }
        std::fs::create_dir_all(path)
            .with_context(|| format!("{}: cannot create run folder", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing run folder for prediction.
    pub fn open(path: &Path) -> Result<Self> {
        for needed in ["plan.json", "config.toml", "model.mpk"] {
            if !path.join(needed).exists() {
                bail!("{}: not a run folder ({} is missing); pass the --out folder of `segmenter train`", path.display(), needed);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Opens a run folder that holds a checkpoint, to continue training.
    pub fn open_for_resume(path: &Path) -> Result<Self> {
        for needed in ["run.json", "splits.json", "config.toml", "plan.json"] {
            if !path.join(needed).exists() {
                bail!("{}: cannot resume, {} is missing (was this folder written by `segmenter train`?)", path.display(), needed);
            }
        }
        let run = Self {
            path: path.to_path_buf(),
        };
        if run.checkpoint_dir().is_none() {
            bail!("{}: cannot resume, no checkpoint yet (training was stopped before its first epoch ended)", path.display());
        }
        Ok(run)
    }

    /// Reads a JSON file of the run.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = self.path.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))
    }

    // A checkpoint is a folder (state.json, model.mpk, optimizer.mpk) built under a temporary name
    // and renamed into place, so `checkpoint/` is always complete. Between the two renames a crash
    // leaves only `checkpoint.old/`, which is then used.
    fn checkpoint_dir(&self) -> Option<PathBuf> {
        ["checkpoint", "checkpoint.old"]
            .iter()
            .map(|n| self.path.join(n))
            .find(|d| d.join("state.json").exists())
    }

    /// Writes a complete training checkpoint atomically.
    pub fn save_checkpoint(
        &self,
        state: &TrainState,
        model: &[u8],
        optimizer: &[u8],
    ) -> Result<()> {
        let tmp = self
            .path
            .join(format!(".checkpoint.tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        write_bytes_atomic(&tmp.join("model.mpk"), model)?;
        write_bytes_atomic(&tmp.join("optimizer.mpk"), optimizer)?;
        write_bytes_atomic(
            &tmp.join("state.json"),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )?;
        let (current, old) = (
            self.path.join("checkpoint"),
            self.path.join("checkpoint.old"),
        );
        let _ = std::fs::remove_dir_all(&old);
        if current.exists() {
            std::fs::rename(&current, &old)
                .with_context(|| format!("{}: cannot rotate", current.display()))?;
        }
        std::fs::rename(&tmp, &current)
            .with_context(|| format!("{}: cannot write", current.display()))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Reads the latest checkpoint: training state, model bytes, optimiser bytes.
    pub fn load_checkpoint(&self) -> Result<(TrainState, Vec<u8>, Vec<u8>)> {
        let dir = self
            .checkpoint_dir()
            .with_context(|| format!("{}: no checkpoint", self.path.display()))?;
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).with_context(|| format!("{}: cannot read", p.display()))
        };
        let state: TrainState = serde_json::from_slice(&read("state.json")?)
            .with_context(|| format!("{}: invalid", dir.join("state.json").display()))?;
        Ok((state, read("model.mpk")?, read("optimizer.mpk")?))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a JSON file into the run (atomically).
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let json = serde_json::to_string_pretty(value)?;
        Ok(write_bytes_atomic(&self.path.join(name), json.as_bytes())?)
    }

    /// Writes `plan.json`.
    pub fn write_plan(&self, plan: &Plan) -> Result<()> {
        plan.write(&self.path.join("plan.json"))
    }

    /// Writes `config.toml`.
    pub fn write_config(&self, config: &ExperimentConfig) -> Result<()> {
        let toml = config.to_toml()?;
        Ok(write_bytes_atomic(
            &self.path.join("config.toml"),
            toml.as_bytes(),
        )?)
    }

    /// Reads `plan.json`.
    pub fn plan(&self) -> Result<Plan> {
        Plan::read(&self.path.join("plan.json"))
    }

    /// Reads `config.toml`.
    pub fn config(&self) -> Result<ExperimentConfig> {
        ExperimentConfig::read(&self.path.join("config.toml"))
    }

    /// Appends one JSON line to `log.jsonl`.
    pub fn append_log<T: Serialize>(&self, entry: &T) -> Result<()> {
        let path = self.path.join("log.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        writeln!(file, "{}", serde_json::to_string(entry)?)
            .with_context(|| format!("{}: cannot write", path.display()))
    }

    /// Saves weights as `<name>.mpk` (atomically).
    pub fn save_model<B: Backend, M: Module<B>>(&self, name: &str, model: &M) -> Result<()> {
        let bytes = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
            .record(model.clone().into_record(), ())
            .context("cannot serialise the model")?;
        Ok(write_bytes_atomic(
            &self.path.join(format!("{name}.mpk")),
            &bytes,
        )?)
    }

    /// Builds the 2D network of this run and loads its weights from `model.mpk`; a 3D run is
    /// refused.
    pub fn load_model<B: Backend>(&self, device: &B::Device) -> Result<(SwinUMamba<B>, Plan)> {
        match self.load_network(device)? {
            (Network::Planar(model), plan) => Ok((model, plan)),
            (Network::Volumetric(_), _) => bail!(
                "{}: a 3D run; export and the 2D benchmarks take 2D runs only",
                self.path.display()
            ),
        }
    }

    /// Builds the network of this run (2D or 3D, as its plan says) and loads its weights from
    /// `model.mpk`.
    pub fn load_network<B: Backend>(&self, device: &B::Device) -> Result<(Network<B>, Plan)> {
        let plan = self.plan()?;
        let config = self.config()?;
        let path = self.path.join("model.mpk");
        let bytes =
            std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        // Runs trained before the network became upstream Swin-UMamba's (which has no
        // `stem_norm` module) cannot be mapped onto it; say so rather than a decoder error.
        let legacy = bytes.windows(9).any(|w| w == b"stem_norm");
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
        let context = || {
            if legacy {
                format!(
                    "{}: trained with the network of segmenter before 0.2 (LayerNorm stem, \
                     two deep-supervision heads), which this version no longer builds; \
                     retrain it, or predict with the version that trained it",
                    path.display()
                )
            } else {
                format!("{}: not a model of this run's architecture", path.display())
            }
        };
        let (channels, classes) = (plan.input_channels(), plan.num_classes());
        let network = if plan.is_3d() {
            let strides = plan.volumetric()?.strides;
            let model = config
                .model
                .init_3d::<B>(channels, classes, strides, device);
            let record = recorder.load(bytes, device).with_context(context)?;
            Network::Volumetric(model.load_record(record))
        } else {
            let model = config.model.init::<B>(channels, classes, device);
            let record = recorder.load(bytes, device).with_context(context)?;
            Network::Planar(model.load_record(record))
        };
        Ok((network, plan))
    }
}
