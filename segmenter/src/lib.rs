//! segmenter: Swin-UMamba-style segmentation of medical scans — network, training, inference,
//! evaluation — on burn, CPU by default and CUDA with `--features cuda`.

pub mod bench;
pub mod bench_kernel;
pub mod config;
pub mod data;
pub mod distance;
pub mod evaluate;
pub mod fsutil;
pub mod infer;
pub mod model;
pub mod norm;
pub mod plan;
pub mod predict;
pub mod run;
pub mod train;
