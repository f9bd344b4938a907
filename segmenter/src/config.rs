//! Experiment configuration: model architecture and training recipe, read from TOML presets.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::ModelConfig;

/// Names of the built-in presets, for `--preset`.
pub const PRESETS: [&str; 4] = ["tiny", "swin-umamba", "tiny3d", "swin-umamba-3d"];

/// The epochs of a run whose length the time budget decides: `train --time-budget-min` with no
/// epoch count from a flag or a config file. Far more than any budget reaches.
pub const BUDGET_EPOCHS: usize = 1_000_000;

/// The training recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of epochs (an upper bound when a time budget is set).
    pub epochs: usize,
    /// Optimiser steps per epoch.
    pub steps_per_epoch: usize,
    /// Patches per step: 2D slices, or 3D patches (0 in 3D: the plan's batch).
    pub batch_size: usize,
    /// Peak learning rate of AdamW.
    pub learning_rate: f64,
    /// Decoupled weight decay of AdamW.
    pub weight_decay: f64,
    /// Linear warm-up steps before the polynomial decay.
    pub warmup_steps: usize,
    /// Each parameter's gradient is clipped to this L2 norm (burn's per-parameter clipping).
    pub grad_clip_norm: f64,
    /// Validate on held-out volumes every this many epochs (and after the last).
    pub val_every: usize,
    /// Fraction of samples centred on a labelled voxel.
    pub foreground_fraction: f64,
    /// Patches are at most this many pixels on a side; larger slices are tiled.
    pub max_patch_side: usize,
    /// AdamW (default) or SGD with Nesterov momentum (nnU-Net's choice).
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Momentum of SGD (ignored by AdamW).
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Learning-rate decay after warm-up.
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Elastic deformation of training patches (nnU-Net v1, probability 0.2); off by default, as in
    /// nnU-Net v2, because it is slow and rarely helps.
    #[serde(default)]
    pub elastic_deformation: bool,
    /// Data-parallel model replicas, the batch split between them: one per GPU (devices 0..n),
    /// or sharing the CPU's cores. 1 (the default) trains one model on all cores.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The learning rate the decay ends at (upstream Swin-UMamba's cosine: 1e-6); 0 by default.
    #[serde(default)]
    pub min_learning_rate: f64,
    /// Epochs at the start during which the VMamba encoder's stages stay frozen (upstream's
    /// recipe with pretrained weights: 10). Unset: 10 with `--pretrained`, 0 without.
    #[serde(default)]
    pub freeze_encoder_epochs: Option<usize>,
}

fn default_replicas() -> usize {
    1
}

fn default_momentum() -> f64 {
    0.99
}

/// The optimiser of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW with decoupled weight decay.
    #[default]
    AdamW,
    /// SGD with Nesterov momentum and L2 weight decay.
    Sgd,
}

/// The learning-rate decay after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// `(1 - progress)^0.9`, nnU-Net's.
    #[default]
    Poly,
    /// Half a cosine from the peak to zero.
    Cosine,
}

/// Model and training configuration of one run; written to `<RUN_DIR>/config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Network architecture.
    pub model: ModelConfig,
    /// Training recipe.
    pub train: TrainConfig,
}

impl ExperimentConfig {
    /// The built-in preset `name` (the same text as `configs/<name>.toml`).
    pub fn preset(name: &str) -> Result<Self> {
        let text = match name {
            "tiny" => include_str!("../../configs/tiny.toml"),
            "swin-umamba" => include_str!("../../configs/swin-umamba.toml"),
            "tiny3d" => include_str!("../../configs/tiny3d.toml"),
            "swin-umamba-3d" => include_str!("../../configs/swin-umamba-3d.toml"),
            other => bail!(
                "unknown preset '{other}'; choose one of: {}",
                PRESETS.join(", ")
            ),
        };
        Self::parse(text).with_context(|| format!("built-in preset '{name}'"))
    }

    /// Reads a TOML config; fields it leaves out keep the values of `base`.
    pub fn load_over(base: &Self, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config", path.display()))?;
        let overlay: toml::Table = text
            .parse()
            .with_context(|| format!("{}: invalid TOML", path.display()))?;
        let mut merged = toml::Table::try_from(base)?;
        merge_tables(&mut merged, overlay);
        let config: Self = merged
            .try_into()
            .with_context(|| format!("{}: invalid config", path.display()))?;
        config
            .validate()
            .with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(config)
    }

    fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that would otherwise fail deep inside training.
    pub fn validate(&self) -> Result<()> {
        self.model.validate().map_err(anyhow::Error::msg)?;
        let t = &self.train;
        if t.steps_per_epoch == 0 || t.val_every == 0 || t.replicas == 0 {
            bail!("train.steps_per_epoch, train.val_every and train.replicas must be positive");
        }
        if t.batch_size == 0 && !self.model.is_3d() {
            bail!("train.batch_size must be positive (0, the plan's batch, is for 3D networks)");
        }
        if t.batch_size > 0 && t.replicas > t.batch_size {
            bail!(
                "train.replicas ({}) must not exceed train.batch_size ({}): each replica needs a slice of the batch",
                t.replicas,
                t.batch_size
            );
        }
        if !(0.0..=1.0).contains(&t.foreground_fraction) {
            bail!(
                "train.foreground_fraction must be within 0..1, got {}",
                t.foreground_fraction
            );
        }
        if t.max_patch_side < crate::model::DOWNSAMPLING {
            bail!(
                "train.max_patch_side must be at least {}",
                crate::model::DOWNSAMPLING
            );
        }
        if t.learning_rate.is_nan() || t.learning_rate <= 0.0 {
            bail!("train.learning_rate must be positive");
        }
        Ok(())
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Reads a run's `config.toml`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}: invalid config", path.display()))
    }
}

fn merge_tables(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_recipe_config_is_upstreams_optimiser_and_schedule() {
        let base = ExperimentConfig::preset("swin-umamba").unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/swin-umamba-paper.toml");
        let c = ExperimentConfig::load_over(&base, &path).unwrap();
        let t = &c.train;
        assert_eq!(t.optimizer, OptimizerKind::AdamW);
        assert_eq!(t.schedule, ScheduleKind::Cosine);
        assert_eq!((t.learning_rate, t.weight_decay), (1e-4, 0.05));
        assert_eq!((t.min_learning_rate, t.warmup_steps), (1e-6, 0));
        assert_eq!(c.model, base.model);
        c.validate().unwrap();
    }

    #[test]
    fn presets_parse_and_match_the_paper() {
        let tiny = ExperimentConfig::preset("tiny").unwrap();
        assert_eq!(tiny.model.dims, [32, 64, 128, 256]);
        let paper = ExperimentConfig::preset("swin-umamba").unwrap();
        let m = &paper.model;
        assert_eq!(
            (m.stem_channels, m.dims, m.depths, m.d_state, m.expand),
            (48, [96, 192, 384, 768], [2, 2, 9, 2], 16, 2),
            "the Swin-UMamba paper's encoder"
        );
        assert!(ExperimentConfig::preset("huge").is_err());
        let tiny3d = ExperimentConfig::preset("tiny3d").unwrap();
        assert!(tiny3d.model.is_3d() && !tiny.model.is_3d());
        assert_eq!(tiny3d.model.dims, tiny.model.dims);
        let big3d = ExperimentConfig::preset("swin-umamba-3d").unwrap();
        assert!(big3d.model.is_3d());
        assert_eq!(big3d.model.dims, paper.model.dims);
    }

    #[test]
    fn a_config_file_overrides_only_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[train]\nbatch_size = 3\n").unwrap();
        let base = ExperimentConfig::preset("tiny").unwrap();
        let merged = ExperimentConfig::load_over(&base, &path).unwrap();
        assert_eq!(merged.train.batch_size, 3);
        assert_eq!(merged.train.epochs, base.train.epochs);
        std::fs::write(
            &path,
            "[train]\noptimizer = \"sgd\"\nschedule = \"cosine\"\n",
        )
        .unwrap();
        let sgd = ExperimentConfig::load_over(&base, &path).unwrap();
        assert_eq!(
            (sgd.train.optimizer, sgd.train.schedule),
            (OptimizerKind::Sgd, ScheduleKind::Cosine)
        );
        assert_eq!(base.train.optimizer, OptimizerKind::AdamW);
        std::fs::write(&path, "[train]\nbatch_sise = 3\n").unwrap();
        let err = ExperimentConfig::load_over(&base, &path).unwrap_err();
        assert!(format!("{err:#}").contains("batch_sise"), "{err:#}");
    }
}
