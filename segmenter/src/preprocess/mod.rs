//! From files to what the network sees and back: loading cases, the network's frame
//! (reorientation, in-plane resampling, normalisation), and slicing volumes into 2D planes.

mod frame;
mod slices;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use rayon::prelude::*;
use segmenter_io::{load_case, Case, LoadedCase};

pub use frame::NetworkCase;
pub use slices::SliceGeometry;

use crate::plan::Plan;

/// Loads and checks every case of a dataset in parallel, naming the case that fails.
pub fn load_cases(cases: &[Case], labels: &BTreeMap<u8, String>) -> Result<Vec<LoadedCase>> {
    cases
        .par_iter()
        .map(|case| load_case(case, labels).with_context(|| format!("case '{}'", case.id)))
        .collect()
}

/// A case in the network's frame with its channels normalised as the plan says.
pub fn network_case(plan: &Plan, case: &LoadedCase) -> NetworkCase {
    let mut frame = NetworkCase::for_plan(case, plan);
    plan.normalize(&mut frame.channels);
    frame
}
