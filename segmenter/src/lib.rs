//! segmenter: Swin-UMamba-style segmentation of medical scans on burn, CPU by default and CUDA
//! with `--features cuda`. One module per stage, data flowing down through them:
//!
//! - [`plan`]: fingerprint a dataset and decide how volumes become network inputs (`plan.json`);
//! - [`preprocess`]: load cases and bring them into the network's frame and back;
//! - [`model`]: the network and the CPU ops it runs on;
//! - [`train`]: split, sampler, loss, schedule and loop, writing a run folder ([`run`]);
//! - [`predict`]: the sliding window and batch prediction from a run folder;
//! - [`evaluate`]: metrics against reference label maps, `summary.json` and the HTML report;
//! - [`import`]: networks trained elsewhere (nnU-Net's Swin-UMamba) as run folders.
//!
//! The command line and the benchmarks live in the binary (`src/main.rs`, `src/cli/`,
//! `src/bench/`); `docs/ARCHITECTURE.md` maps the whole repository.

pub mod config;
pub mod evaluate;
pub mod import;
pub mod model;
pub mod plan;
pub mod predict;
pub mod preprocess;
pub mod run;
pub mod train;
