//! From files to what the network sees and back: loading cases, the network's frame
//! (reorientation, in-plane resampling, normalisation), and slicing volumes into 2D planes.

mod frame;
mod nnunet;
mod slices;

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use rayon::prelude::*;
use segmenter_io::{load_case, Case, Dataset, LoadedCase};

pub use frame::{Crop, NetworkCase};
pub use slices::SliceGeometry;

use crate::plan::Plan;

/// Loads and checks every case of a dataset in parallel, naming the case that fails; what the
/// loader decided on its own (e.g. DICOM SEG segments taken by number) is printed as `note:` lines.
pub fn load_cases(cases: &[Case], labels: &BTreeMap<u8, String>) -> Result<Vec<LoadedCase>> {
    let loaded: Vec<LoadedCase> = cases
        .par_iter()
        .map(|case| load_case(case, labels).with_context(|| format!("case '{}'", case.id)))
        .collect::<Result<_>>()?;
    for case in &loaded {
        for note in &case.notes {
            eprintln!("note: case '{}': {note}", case.id);
        }
    }
    Ok(loaded)
}

/// The labelled cases of a dataset; an error naming its folder when it has none, since planning
/// and sampling (`purpose`, e.g. "plan from") need labels.
pub fn labelled_cases(dataset: &Dataset, purpose: &str) -> Result<Vec<Case>> {
    let labelled: Vec<Case> = dataset
        .cases
        .iter()
        .filter(|c| c.label.is_some())
        .cloned()
        .collect();
    ensure!(
        !labelled.is_empty(),
        "{}: no labelled cases to {purpose}",
        dataset.root.display()
    );
    Ok(labelled)
}

/// A case in the network's frame with its channels normalised as the plan says (for a run
/// imported from nnU-Net, as nnU-Net's predictor prepares it).
pub fn network_case(plan: &Plan, case: &LoadedCase) -> NetworkCase {
    if let Some(nnunet) = &plan.nnunet {
        return nnunet::nnunet_case(plan, nnunet, case);
    }
    let mut frame = NetworkCase::for_plan(case, plan);
    plan.normalize(&mut frame.channels);
    frame
}
