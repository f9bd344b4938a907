//! `segmenter bench infer`: inference throughput (voxels per second) and peak memory of whole
//! volumes through the sliding window, per preset, with and without mirroring TTA.
//!
//! The networks are freshly initialised (speed does not depend on the weights), planned for the
//! scans as `segmenter train` would plan them (a 3D preset with the plan's 3D patch and strides); the time covers normalisation, every window
//! through the network and the argmax back into the volume, not file reading or writing. With
//! `--spacing` (or `--keep-probabilities`) it is `predict`'s whole path between reading and
//! writing: reorientation, resampling for the network and back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use burn::backend::Flex;
use segmenter_io::{find_cases, load_case, Case, LoadedCase};
use serde_json::json;

use super::alloc::with_peak;
use super::ThreadsAndFormat;
use segmenter::config::ExperimentConfig;
use segmenter::model::Network;
use segmenter::plan::{
    in_plane_axes, network_shape, patch_size_for, plan_volumetric, slicing, Configuration,
    Normalization, Plan, Slicing, VOXELS_PER_STEP,
};
use segmenter::predict::window::{
    windows_per_batch, VolumeJob, WindowSettings, BATCH_PROBABILITY_BYTES,
};
use segmenter::predict::{predict_case, predict_network_volume};
use segmenter::preprocess::NetworkCase;

/// Options of `segmenter bench infer`.
#[derive(Clone, Debug, clap::Args)]
pub struct InferBenchOptions {
    /// Scans or folders of scans, each timed as one group [default:
    /// sample-data/hippocampus/imagesTs and ../shared/data/totalseg-example/example_ct_sm.nii.gz].
    #[arg(long = "input")]
    pub inputs: Vec<PathBuf>,
    /// Output classes (background included) for each --input, in order; 3 when not given.
    #[arg(long = "classes")]
    pub classes: Vec<usize>,
    /// Presets to time.
    #[arg(long, value_delimiter = ',', default_values_t = ["tiny".to_string(), "swin-umamba".to_string()])]
    pub presets: Vec<String>,
    /// Worker threads and output format.
    #[command(flatten)]
    pub output: ThreadsAndFormat,
    /// Time only without --tta (with it, a 2D row takes four times as long, a 3D row eight).
    #[arg(long)]
    pub no_tta: bool,
    /// Plan this in-plane spacing (mm): slices of another spacing are resampled for the
    /// network and the prediction back, as predict does [default: every scan as it is].
    #[arg(long)]
    pub spacing: Option<f64>,
    /// Also keep the class probabilities of every voxel, as predict --save-probabilities.
    #[arg(long)]
    pub keep_probabilities: bool,
}

/// The default inputs: the sample hippocampus MRIs and the TotalSegmentator example CT (when the
/// shared data folder is there), with their class counts.
pub fn default_inputs() -> Vec<(PathBuf, usize)> {
    let mut v = vec![(PathBuf::from("sample-data/hippocampus/imagesTs"), 3)];
    let ct = PathBuf::from("../shared/data/totalseg-example/example_ct_sm.nii.gz");
    if ct.exists() {
        // TotalSegmentator's CT task: 117 structures and background.
        v.push((ct, 118));
    }
    v
}

/// One group of scans, loaded and brought into the network's frame.
struct Group {
    name: String,
    /// The scans as loaded, and in the canonical frame.
    loaded: Vec<LoadedCase>,
    cases: Vec<NetworkCase>,
    classes: usize,
}

fn load_group(input: &Path, classes: usize) -> Result<Group> {
    let cases: Vec<Case> = find_cases(input, None)?;
    ensure!(!cases.is_empty(), "{}: no scans", input.display());
    let labels = BTreeMap::new();
    let loaded = cases
        .iter()
        .map(|c| {
            load_case(
                &Case {
                    label: None,
                    ..c.clone()
                },
                &labels,
            )
        })
        .collect::<segmenter_io::Result<Vec<_>>>()?;
    let canonical = loaded.iter().map(|l| NetworkCase::new(l, true)).collect();
    Ok(Group {
        name: input.file_name().map_or_else(
            || input.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        loaded,
        cases: canonical,
        classes,
    })
}

/// A plan for timing: the real slicing and patch size (and, for `volumetric`, the 3D patch,
/// strides and batch of the plan's rule), z-score normalisation for every channel.
fn plan_for(group: &Group, max_patch_side: usize, spacing: Option<f64>, volumetric: bool) -> Plan {
    let frames: Vec<([usize; 3], [f64; 3])> =
        group.cases.iter().map(|c| (c.shape, c.spacing)).collect();
    let Slicing {
        slice_axis,
        mut patch_size,
        ..
    } = slicing(&frames, max_patch_side);
    let target_spacing = spacing.map(|mm| [mm, mm]);
    if target_spacing.is_some() {
        let shapes: Vec<[usize; 3]> = frames
            .iter()
            .map(|&(shape, sp)| network_shape(shape, sp, slice_axis, target_spacing))
            .collect();
        patch_size = patch_size_for(&shapes, slice_axis, max_patch_side);
    }
    let channels = group.cases[0].channels.len();
    let volumetric = volumetric.then(|| {
        // The network frame's [depth, rows, cols] of each scan, as the plan would see them.
        let [r, c] = in_plane_axes(slice_axis);
        let (shapes, spacings): (Vec<[usize; 3]>, Vec<[f64; 3]>) = frames
            .iter()
            .map(|&(shape, sp)| {
                let n = network_shape(shape, sp, slice_axis, target_spacing);
                let inplane = target_spacing.unwrap_or([sp[r], sp[c]]);
                (
                    [n[slice_axis], n[r], n[c]],
                    [sp[slice_axis], inplane[0], inplane[1]],
                )
            })
            .unzip();
        plan_volumetric(&shapes, &spacings, VOXELS_PER_STEP)
    });
    Plan {
        dataset_name: group.name.clone(),
        channel_names: vec!["bench".into(); channels],
        labels: (0..group.classes)
            .map(|k| (k as u8, format!("class {k}")))
            .collect(),
        file_ending: ".nii.gz".into(),
        slice_axis,
        patch_size,
        normalization: vec![Normalization::ZScore; channels],
        fingerprint: None,
        reorient: true,
        // Without --spacing, the scans as they are: the network's work on their own voxels.
        target_spacing,
        context_slices: 0,
        nnunet: None,
        configuration: if volumetric.is_some() {
            Configuration::Volumetric
        } else {
            Configuration::Planar
        },
        volumetric,
    }
}

/// One measurement.
struct Row {
    group: String,
    preset: String,
    tta: bool,
    cases: usize,
    voxels: usize,
    seconds: f64,
    peak_bytes: usize,
    /// The window: rows x cols, or depth x rows x cols.
    patch: String,
    /// Windows per network call.
    batch: usize,
}

/// Runs the benchmark and prints a table (or JSON lines).
pub fn run_infer_bench(options: &InferBenchOptions) -> Result<()> {
    let inputs: Vec<(PathBuf, usize)> = if options.inputs.is_empty() {
        default_inputs()
    } else {
        options
            .inputs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), options.classes.get(i).copied().unwrap_or(3)))
            .collect()
    };
    let groups = inputs
        .iter()
        .map(|(p, k)| load_group(p, *k).with_context(|| format!("{}: cannot load", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let device = Default::default();
    let mut rows = Vec::new();
    for preset in &options.presets {
        let config = ExperimentConfig::preset(preset)?;
        for group in &groups {
            let is_3d = config.model.is_3d();
            let plan = plan_for(group, config.train.max_patch_side, options.spacing, is_3d);
            let (channels, classes) = (plan.input_channels(), plan.num_classes());
            let (network, patch, window_voxels) = match &plan.volumetric {
                Some(v) => {
                    let [d, r, c] = v.patch_size;
                    let model = config
                        .model
                        .init_3d::<Flex>(channels, classes, v.strides, &device);
                    (
                        Network::Volumetric(model),
                        format!("{d}x{r}x{c}"),
                        [d * r, c],
                    )
                }
                None => {
                    let [r, c] = plan.patch_size;
                    let model = config.model.init::<Flex>(channels, classes, &device);
                    (Network::Planar(model), format!("{r}x{c}"), plan.patch_size)
                }
            };
            for tta in [false, true] {
                if tta && options.no_tta {
                    continue;
                }
                let settings = WindowSettings {
                    mirror: tta,
                    ..Default::default()
                };
                let resampling = options.spacing.is_some() || options.keep_probabilities;
                let run_all = || {
                    let mut voxels = 0;
                    if resampling {
                        // What predict does between reading and writing files.
                        for case in &group.loaded {
                            let (labels, _) = predict_case(
                                &network,
                                &plan,
                                case,
                                &settings,
                                options.keep_probabilities,
                                &device,
                            );
                            voxels += labels.len();
                        }
                        return voxels;
                    }
                    for case in &group.cases {
                        let mut channels = case.channels.clone();
                        plan.normalize(&mut channels);
                        let job = VolumeJob::labels(&channels, case.shape);
                        let labels =
                            predict_network_volume(&network, &plan, &job, &settings, &device)
                                .labels;
                        voxels += labels.len();
                    }
                    voxels
                };
                // Warm-up on the first case: kernels' first-call costs and allocator growth.
                {
                    let mut channels = group.cases[0].channels.clone();
                    plan.normalize(&mut channels);
                    let job = VolumeJob::labels(&channels, group.cases[0].shape);
                    predict_network_volume(&network, &plan, &job, &settings, &device);
                }
                let start = Instant::now();
                let (voxels, peak_bytes) = with_peak(run_all);
                let row = Row {
                    group: group.name.clone(),
                    preset: preset.clone(),
                    tta,
                    cases: group.cases.len(),
                    voxels,
                    seconds: start.elapsed().as_secs_f64(),
                    peak_bytes,
                    patch: patch.clone(),
                    batch: windows_per_batch(settings.batch_windows, classes, window_voxels),
                };
                if options.output.json {
                    println!("{}", row_json(&row, options));
                }
                rows.push(row);
            }
        }
    }
    if !options.output.json {
        print_table(&rows, &groups, options);
    }
    Ok(())
}

fn row_json(r: &Row, options: &InferBenchOptions) -> serde_json::Value {
    json!({
        "bench": "infer",
        "data": r.group,
        "preset": r.preset,
        "tta": r.tta,
        "cases": r.cases,
        "voxels": r.voxels,
        "seconds": r.seconds,
        "voxels_per_s": r.voxels as f64 / r.seconds,
        "peak_bytes": r.peak_bytes,
        "patch": r.patch,
        "batch_windows": r.batch,
        "threads": rayon::current_num_threads(),
        "spacing_mm": options.spacing,
        "keep_probabilities": options.keep_probabilities,
    })
}

fn print_table(rows: &[Row], groups: &[Group], options: &InferBenchOptions) {
    println!(
        "Inference on {} ({} worker threads); whole volumes, sliding window step 0.5",
        super::cpu_model(),
        rayon::current_num_threads()
    );
    if let Some(mm) = options.spacing {
        println!(
            "  slices resampled to {mm} mm in-plane for the network and the prediction back, as predict does"
        );
    }
    if options.keep_probabilities {
        println!("  class probabilities of every voxel kept, as predict --save-probabilities");
    }
    for g in groups {
        let shapes: Vec<String> = g
            .cases
            .iter()
            .take(4)
            .map(|c| format!("{:?}", c.shape))
            .collect();
        println!(
            "  {}: {} case(s), shapes {}{} (canonical frame), {} classes",
            g.name,
            g.cases.len(),
            shapes.join(" "),
            if g.cases.len() > 4 { " ..." } else { "" },
            g.classes
        );
    }
    println!(
        "  batch: windows per network call, 16 or fewer where their class probabilities would pass {} MiB",
        BATCH_PROBABILITY_BYTES >> 20
    );
    println!(
        "\n{:<16} {:<12} {:>4} {:>11} {:>5} {:>10} {:>9} {:>12} {:>9}",
        "data", "preset", "tta", "patch", "batch", "voxels", "seconds", "voxels/s", "peak MiB"
    );
    for r in rows {
        println!(
            "{:<16} {:<12} {:>4} {:>11} {:>5} {:>10} {:>9.2} {:>12.0} {:>9.1}",
            r.group,
            r.preset,
            if r.tta { "yes" } else { "no" },
            r.patch,
            r.batch,
            r.voxels,
            r.seconds,
            r.voxels as f64 / r.seconds,
            r.peak_bytes as f64 / (1024.0 * 1024.0)
        );
    }
}
