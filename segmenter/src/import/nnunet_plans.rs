//! nnU-Net v2's `nnUNetPlans.json` and `dataset.json` mapped onto our [`Plan`], refusing what the
//! plan cannot reproduce.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};

use crate::model::DOWNSAMPLING;
use crate::plan::{NnUnetFrame, Normalization, Plan};

/// What `dataset.json` says: channels, labels, file ending.
#[derive(Clone, Debug, PartialEq)]
pub struct NnUnetDataset {
    /// Dataset name (`name`, if any).
    pub name: Option<String>,
    /// Channel names in channel order (`channel_names`, or v1's `modality`).
    pub channel_names: Vec<String>,
    /// Label value -> name, background included.
    pub labels: BTreeMap<u8, String>,
    /// `file_ending`, e.g. `.nii.gz`.
    pub file_ending: String,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// An object's entries keyed by a channel index (`"0"`, `"1"`, ...), in index order.
fn by_index(map: &Map<String, Value>, path: &Path, what: &str) -> Result<Vec<(usize, Value)>> {
    let mut entries = map
        .iter()
        .map(|(k, v)| {
            k.parse::<usize>().map(|i| (i, v.clone())).map_err(|_| {
                anyhow!(
                    "{}: {what} key '{k}' is not a channel index",
                    path.display()
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    entries.sort_by_key(|(i, _)| *i);
    for (expected, (i, _)) in entries.iter().enumerate() {
        if *i != expected {
            bail!("{}: {what} has no channel {expected}", path.display());
        }
    }
    Ok(entries)
}

/// Reads an nnU-Net v2 `dataset.json`, refusing region-based and ignore labels.
pub fn read_dataset_json(path: &Path) -> Result<NnUnetDataset> {
    let name = path.display();
    let json = read_json(path)?;
    let channels = json
        .get("channel_names")
        .or_else(|| json.get("modality"))
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("{name}: no 'channel_names' object"))?;
    let channel_names = by_index(channels, path, "channel_names")?
        .into_iter()
        .map(|(_, v)| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        })
        .collect();
    let label_map = json
        .get("labels")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("{name}: no 'labels' object"))?;
    let mut labels = BTreeMap::new();
    for (label_name, value) in label_map {
        if value.is_array() {
            bail!(
                "{name}: label '{label_name}' is a region ({value}); region-based nnU-Net models \
                 (sigmoid outputs over overlapping regions) cannot be imported, only plain label maps"
            );
        }
        if label_name == "ignore" {
            bail!(
                "{name}: has an 'ignore' label; models trained with nnU-Net's ignore label cannot \
                 be imported"
            );
        }
        let id = value
            .as_u64()
            .and_then(|v| u8::try_from(v).ok())
            .ok_or_else(|| {
                anyhow!("{name}: label '{label_name}' has value {value}, not a number 0..255")
            })?;
        if labels.insert(id, label_name.clone()).is_some() {
            bail!("{name}: label value {id} is used twice");
        }
    }
    if labels.keys().copied().ne(0..labels.len() as u8) {
        bail!(
            "{name}: label values must be 0, 1, 2, ... without gaps (nnU-Net's rule), got {:?}",
            labels.keys().collect::<Vec<_>>()
        );
    }
    if json.get("regions_class_order").is_some() {
        bail!("{name}: has 'regions_class_order': region-based models cannot be imported");
    }
    let file_ending = json
        .get("file_ending")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{name}: no 'file_ending'"))?
        .to_string();
    Ok(NnUnetDataset {
        name: json.get("name").and_then(Value::as_str).map(str::to_string),
        channel_names,
        labels,
        file_ending,
    })
}

/// The configuration `name` of the plans, with what it inherits (`inherits_from`) filled in.
fn configuration(plans: &Value, name: &str, path: &Path) -> Result<Map<String, Value>> {
    let configs = plans
        .get("configurations")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("{}: no 'configurations'", path.display()))?;
    let mut chain = vec![name.to_string()];
    let mut merged = Map::new();
    let mut current = name.to_string();
    loop {
        let config = configs
            .get(&current)
            .and_then(Value::as_object)
            .ok_or_else(|| {
                anyhow!(
                    "{}: no configuration '{current}' (it has: {})",
                    path.display(),
                    configs.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
        for (k, v) in config {
            merged.entry(k.clone()).or_insert_with(|| v.clone());
        }
        match config.get("inherits_from").and_then(Value::as_str) {
            Some(parent) if !chain.iter().any(|c| c == parent) => {
                chain.push(parent.to_string());
                current = parent.to_string();
            }
            Some(parent) => bail!(
                "{}: configuration '{parent}' inherits from itself",
                path.display()
            ),
            None => break,
        }
    }
    Ok(merged)
}

fn numbers(config: &Map<String, Value>, key: &str, path: &Path) -> Result<Vec<f64>> {
    config
        .get(key)
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
        .ok_or_else(|| {
            anyhow!(
                "{}: configuration lacks a numeric list '{key}'",
                path.display()
            )
        })
}

fn permutation(plans: &Value, key: &str, path: &Path) -> Result<[usize; 3]> {
    let Some(value) = plans.get(key) else {
        return Ok([0, 1, 2]);
    };
    let list: Option<Vec<usize>> = value
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect());
    match list.as_deref() {
        Some(&[a, b, c]) if [a, b, c].iter().all(|&v| v < 3) && a != b && b != c && a != c => {
            Ok([a, b, c])
        }
        _ => bail!(
            "{}: '{key}' is {value}, not a permutation of 0, 1, 2",
            path.display()
        ),
    }
}

/// Our plan for an nnU-Net v2 `2d` configuration of these plans and dataset.
pub fn plan_from_nnunet(
    plans_path: &Path,
    dataset: &NnUnetDataset,
    configuration_name: &str,
) -> Result<Plan> {
    let name = plans_path.display();
    let plans = read_json(plans_path)?;
    let config = configuration(&plans, configuration_name, plans_path)?;
    if let Some(previous) = config.get("previous_stage").filter(|v| !v.is_null()) {
        bail!(
            "{name}: configuration '{configuration_name}' is a cascade stage (previous_stage \
             {previous}); cascades cannot be imported"
        );
    }
    let spacing = numbers(&config, "spacing", plans_path)?;
    let patch = numbers(&config, "patch_size", plans_path)?;
    let ([sr, sc], [pr, pc]) = match (spacing.as_slice(), patch.as_slice()) {
        (&[a, b], &[c, d]) => ([a, b], [c as usize, d as usize]),
        _ => bail!(
            "{name}: configuration '{configuration_name}' has spacing {spacing:?} and patch size \
             {patch:?}; a 2D configuration has two of each"
        ),
    };
    if pr % DOWNSAMPLING != 0 || pc % DOWNSAMPLING != 0 {
        bail!(
            "{name}: patch size {pr} x {pc} is not a multiple of {DOWNSAMPLING}, which \
             Swin-UMamba's five downsamplings need"
        );
    }
    let transpose_forward = permutation(&plans, "transpose_forward", plans_path)?;
    let transpose_backward = permutation(&plans, "transpose_backward", plans_path)?;
    if (0..3).any(|i| transpose_backward[transpose_forward[i]] != i) {
        bail!(
            "{name}: transpose_backward {transpose_backward:?} does not undo transpose_forward \
             {transpose_forward:?}"
        );
    }
    let schemes: Vec<String> = config
        .get("normalization_schemes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("?").to_string())
                .collect()
        })
        .ok_or_else(|| anyhow!("{name}: configuration lacks 'normalization_schemes'"))?;
    let channels = dataset.channel_names.len();
    if schemes.len() != channels {
        bail!(
            "{name}: {} normalisation scheme(s) for {channels} channel(s) of dataset.json",
            schemes.len()
        );
    }
    let use_mask_for_norm: Vec<bool> = match config.get("use_mask_for_norm") {
        Some(Value::Array(a)) => a.iter().map(|v| v.as_bool().unwrap_or(false)).collect(),
        _ => vec![false; channels],
    };
    let force_separate_z = resampling(&config, plans_path)?;
    let intensities = plans.get("foreground_intensity_properties_per_channel");
    let normalization = schemes
        .iter()
        .enumerate()
        .map(|(ch, scheme)| normalization(scheme, ch, intensities, plans_path))
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan {
        dataset_name: plans
            .get("dataset_name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| dataset.name.clone())
            .unwrap_or_default(),
        channel_names: dataset.channel_names.clone(),
        labels: dataset.labels.clone(),
        file_ending: dataset.file_ending.clone(),
        // The network frame of an imported run has its slices along axis 2 (NnUnetFrame).
        slice_axis: 2,
        patch_size: [pr, pc],
        normalization,
        fingerprint: None,
        reorient: false,
        target_spacing: Some([sr, sc]),
        context_slices: 0,
        nnunet: Some(NnUnetFrame {
            transpose_forward,
            crop_to_nonzero: true,
            use_mask_for_norm,
            force_separate_z,
        }),
        configuration: crate::plan::Configuration::Planar,
        volumetric: None,
    })
}

/// The plans' resampling, which predict reproduces only for nnU-Net's default: images with
/// cubic splines and logits linearly (`resample_data_or_seg_to_shape`, order 3 and 1, order_z 0,
/// anisotropy threshold 3). Returns the shared `force_separate_z`.
fn resampling(config: &Map<String, Value>, path: &Path) -> Result<Option<bool>> {
    let name = path.display();
    let mut separate = Vec::new();
    for (what, order) in [("data", 3), ("probabilities", 1)] {
        let function = format!("resampling_fn_{what}");
        match config.get(&function).and_then(Value::as_str) {
            None | Some("resample_data_or_seg_to_shape") => {}
            Some(other) => bail!(
                "{name}: {function} is '{other}'; only nnU-Net's default \
                 'resample_data_or_seg_to_shape' can be imported"
            ),
        }
        let kwargs = config.get(&format!("{function}_kwargs"));
        let get = |key: &str| kwargs.and_then(|k| k.get(key)).filter(|v| !v.is_null());
        let int = |key: &str, default: u64| get(key).map_or(Some(default), Value::as_u64);
        if int("order", order) != Some(order) || int("order_z", 0) != Some(0) {
            bail!(
                "{name}: {function}_kwargs {}: only order {order} with order_z 0 (nnU-Net's \
                 default) can be imported",
                kwargs.map_or("{}".to_string(), Value::to_string)
            );
        }
        if get("separate_z_anisotropy_threshold").is_some_and(|v| v.as_f64() != Some(3.0)) {
            bail!(
                "{name}: {function}_kwargs sets separate_z_anisotropy_threshold; only nnU-Net's \
                 default 3 can be imported"
            );
        }
        separate.push(get("force_separate_z").map(|v| v.as_bool()));
    }
    match separate[..] {
        [Some(None), _] | [_, Some(None)] => {
            bail!("{name}: force_separate_z is not true, false or null")
        }
        [a, b] if a == b => Ok(a.flatten()),
        _ => bail!(
            "{name}: force_separate_z differs between images and probabilities; this cannot be \
             imported"
        ),
    }
}

/// Our normalisation for nnU-Net's scheme `scheme` of channel `ch`.
fn normalization(
    scheme: &str,
    ch: usize,
    intensities: Option<&Value>,
    path: &Path,
) -> Result<Normalization> {
    match scheme {
        "ZScoreNormalization" => Ok(Normalization::ZScore),
        "CTNormalization" => {
            let props = intensities
                .and_then(|p| p.get(ch.to_string()))
                .ok_or_else(|| {
                    anyhow!(
                        "{}: CTNormalization of channel {ch} needs \
                         foreground_intensity_properties_per_channel['{ch}']",
                        path.display()
                    )
                })?;
            let get = |key: &str| {
                props.get(key).and_then(Value::as_f64).ok_or_else(|| {
                    anyhow!(
                        "{}: foreground_intensity_properties_per_channel['{ch}'] lacks '{key}'",
                        path.display()
                    )
                })
            };
            Ok(Normalization::Ct {
                lower: get("percentile_00_5")? as f32,
                upper: get("percentile_99_5")? as f32,
                mean: get("mean")? as f32,
                std: get("std")? as f32,
            })
        }
        other => bail!(
            "{}: channel {ch} uses {other}; only ZScoreNormalization and CTNormalization can be \
             imported",
            path.display()
        ),
    }
}
