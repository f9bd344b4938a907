//! segmenter: Swin-UMamba-style segmentation of medical scans — network, training, inference,
//! evaluation — on burn, CPU by default and CUDA with `--features cuda`.

pub mod augment;
pub mod bench;
pub mod bench_infer;
pub mod bench_kernel;
pub mod bench_sampler;
pub mod bench_step;
pub mod config;
pub mod conv;
pub mod curve;
pub mod data;
pub mod evaluate;
pub mod fsutil;
pub mod infer;
pub mod model;
pub mod norm;
pub mod parallel;
pub mod plan;
pub mod postprocess;
pub mod predict;
pub mod run;
pub mod train;
