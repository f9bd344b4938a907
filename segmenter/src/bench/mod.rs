//! `segmenter bench …`: benchmarks that print what they compare, the ratio and the machine, in
//! one run. They live in the binary, beside the command line, not in the library.

pub mod alloc;
pub mod infer;
pub mod kernel;
pub mod sampler;
pub mod scan;
pub mod step;

use std::time::Instant;

use anyhow::{ensure, Context, Result};

use alloc::with_peak;

/// The flags every benchmark that runs on a worker pool shares.
#[derive(Clone, Debug, clap::Args)]
pub struct ThreadsAndFormat {
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Median and minimum wall time (ms) of `runs` runs after one warm-up, and the largest peak of
/// allocated bytes over the runs.
pub struct Timing {
    /// Median wall time.
    pub ms_median: f64,
    /// Fastest run.
    pub ms_min: f64,
    /// Largest peak of allocated bytes.
    pub peak_bytes: usize,
}

pub fn time_runs<T>(runs: usize, mut f: impl FnMut() -> T) -> Timing {
    drop(f());
    let mut ms = Vec::with_capacity(runs);
    let mut peak_bytes = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let (out, peak) = with_peak(&mut f);
        drop(out);
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        peak_bytes = peak_bytes.max(peak);
    }
    let ms_min = ms.iter().copied().fold(f64::INFINITY, f64::min);
    Timing {
        ms_median: median(ms),
        ms_min,
        peak_bytes,
    }
}

/// Median milliseconds of `runs` calls of `f` (at least one), after one warm-up call.
pub fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..runs.max(1))
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// The median (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        0.5 * (values[mid - 1] + values[mid])
    }
}

/// The CPU model from /proc/cpuinfo, with its family and model numbers ("unknown" elsewhere).
///
/// Virtual machines often report a bare "AMD EPYC"; the numbers tell the generations apart
/// (family 23 model 1 is Zen 1, which runs 256-bit vectors at half rate), and benchmark figures
/// from different sessions are only comparable on the same one.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| describe_cpu(&s))
        .unwrap_or_else(|| "unknown".to_string())
}

/// "model name (family F, model M)" from the first processor of a /proc/cpuinfo text.
fn describe_cpu(cpuinfo: &str) -> Option<String> {
    let first = cpuinfo.split("\n\n").next()?;
    let field = |key: &str| {
        first.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let name = field("model name")?;
    Some(match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) => format!("{name} (family {family}, model {model})"),
        _ => name,
    })
}

/// Runs `f` on a rayon pool of `threads` workers, or on the global pool (all cores, or
/// `RAYON_NUM_THREADS`) when `None`; Flex's tensor ops run on whichever pool `f` is in.
pub fn with_threads<T>(threads: Option<usize>, f: impl FnOnce() -> Result<T> + Send) -> Result<T>
where
    T: Send,
{
    match threads {
        Some(t) => {
            ensure!(t >= 1, "--threads must be at least 1");
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .context("could not start the worker threads")?
                .install(f)
        }
        None => f(),
    }
}

/// `v` rounded to `digits` decimals, for JSON output.
pub fn round(v: f64, digits: i32) -> f64 {
    let s = 10f64.powi(digits);
    (v * s).round() / s
}

#[cfg(test)]
mod tests {
    use super::describe_cpu;

    #[test]
    fn cpu_description_has_family_and_model_of_the_first_processor() {
        // "model name" first: a key matched by prefix would take it for "model".
        let info = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 23\nmodel\t\t: 1\n\
                    \nprocessor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: Other\n";
        assert_eq!(
            describe_cpu(info).as_deref(),
            Some("AMD EPYC (family 23, model 1)")
        );
        // Without the numbers (other architectures), the name alone.
        assert_eq!(
            describe_cpu("model name : Neoverse\n").as_deref(),
            Some("Neoverse")
        );
        assert_eq!(describe_cpu("processor : 0\n"), None);
    }
}
