//! Which cases train and which validate: a seeded hold-out, or one of five cross-validation folds.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Number of cross-validation folds of `--fold`.
pub const FOLDS: usize = 5;

/// The five folds of a dataset: the dataset's own `splits_final.json` (nnU-Net's file) when it has
/// one, else a shuffle of the case ids (fixed seed, so every run of a dataset agrees) dealt into 5.
pub fn five_folds(dataset_dir: &Path, ids: &[String]) -> Result<Vec<Split>> {
    let own = dataset_dir.join("splits_final.json");
    if own.exists() {
        let text = std::fs::read_to_string(&own)
            .with_context(|| format!("{}: cannot read", own.display()))?;
        let folds: Vec<Split> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected a list of {{\"train\": [...], \"val\": [...]}}",
                own.display()
            )
        })?;
        for fold in &folds {
            if let Some(unknown) = fold
                .train
                .iter()
                .chain(&fold.val)
                .find(|id| !ids.contains(id))
            {
                bail!("{}: case '{unknown}' is not in the dataset", own.display());
            }
        }
        return Ok(folds);
    }
    let mut shuffled = ids.to_vec();
    shuffled.sort();
    shuffled.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(12345));
    Ok((0..FOLDS)
        .map(|k| {
            let mut val: Vec<String> = shuffled
                .iter()
                .enumerate()
                .filter(|(i, _)| i % FOLDS == k)
                .map(|(_, id)| id.clone())
                .collect();
            let mut train: Vec<String> = shuffled
                .iter()
                .enumerate()
                .filter(|(i, _)| i % FOLDS != k)
                .map(|(_, id)| id.clone())
                .collect();
            val.sort();
            train.sort();
            Split { train, val }
        })
        .collect())
}

/// Train/validation split written to `splits.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Split {
    /// Case ids used for training.
    pub train: Vec<String>,
    /// Case ids held out for validation.
    pub val: Vec<String>,
}

/// Splits case ids into train and validation, reproducibly from the seed.
pub fn split_cases(ids: &[String], val_fraction: f64, seed: u64) -> Result<Split> {
    if !(0.0..1.0).contains(&val_fraction) {
        bail!("--val-fraction must be within [0, 1), got {val_fraction}");
    }
    let mut shuffled = ids.to_vec();
    shuffled.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(seed));
    let n_val =
        ((ids.len() as f64 * val_fraction).round() as usize).min(ids.len().saturating_sub(1));
    let (val, train) = shuffled.split_at(n_val);
    let (mut train, mut val) = (train.to_vec(), val.to_vec());
    train.sort();
    val.sort();
    Ok(Split { train, val })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_reproducible_disjoint_and_complete() {
        let ids: Vec<String> = (0..20).map(|i| format!("case{i:02}")).collect();
        let a = split_cases(&ids, 0.2, 1).unwrap();
        assert_eq!((a.train.len(), a.val.len()), (16, 4));
        assert!(a.val.iter().all(|v| !a.train.contains(v)));
        let b = split_cases(&ids, 0.2, 1).unwrap();
        assert_eq!(a.val, b.val);
        assert_ne!(split_cases(&ids, 0.2, 2).unwrap().val, a.val);
        assert!(split_cases(&ids, 1.0, 1).is_err());
    }

    #[test]
    fn five_folds_partition_the_cases() {
        let ids: Vec<String> = (0..23).map(|i| format!("case{i:02}")).collect();
        let dir = tempfile::tempdir().unwrap();
        let folds = five_folds(dir.path(), &ids).unwrap();
        assert_eq!(folds.len(), 5);
        let mut all_val: Vec<String> = folds.iter().flat_map(|f| f.val.clone()).collect();
        all_val.sort();
        assert_eq!(all_val, ids, "every case is validated exactly once");
        for f in &folds {
            assert_eq!(f.train.len() + f.val.len(), 23);
            assert!(f.val.iter().all(|v| !f.train.contains(v)));
        }
        // The dataset's own file wins.
        let own = serde_json::json!([{"train": ["case00"], "val": ["case01"]}]);
        std::fs::write(dir.path().join("splits_final.json"), own.to_string()).unwrap();
        assert_eq!(
            five_folds(dir.path(), &ids).unwrap()[0].val,
            vec!["case01".to_string()]
        );
    }
}
