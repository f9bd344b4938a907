//! The case id of a DICOM series: `PatientID_StudyDate_sSeriesNumber_Description`, built only from
//! attributes that are safe to print in logs (never PatientName or PatientBirthDate), the same
//! whatever order the files are found in, so that `predict`'s skip-if-done and `--shard` work.

use std::collections::BTreeMap;

/// Longest description kept in an id, so that file names stay well below file-system limits.
const MAX_DESCRIPTION: usize = 48;

/// What names a series, taken from its first file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesName {
    /// PatientID (0010,0020).
    pub patient_id: Option<String>,
    /// StudyDate (0008,0020), YYYYMMDD.
    pub study_date: Option<String>,
    /// SeriesNumber (0020,0011).
    pub series_number: Option<i64>,
    /// SeriesDescription (0008,103E).
    pub description: Option<String>,
}

/// `text` reduced to letters, digits, `-` and `.`, other runs replaced by one `_`, at most `max`
/// characters; what a file name on any system and a shell can hold without quoting.
pub fn sanitise(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let trimmed: String = out
        .trim_matches(|c| c == '_' || c == '.')
        .chars()
        .take(max)
        .collect();
    trimmed.trim_end_matches(['_', '.']).to_string()
}

impl SeriesName {
    /// The id before uniqueness is enforced: missing parts are spelled out (`nopid`, `nodate`).
    pub fn base_id(&self) -> String {
        let part = |v: &Option<String>, missing: &str| {
            let s = v.as_deref().map(|s| sanitise(s, 64)).unwrap_or_default();
            if s.is_empty() {
                missing.to_string()
            } else {
                s
            }
        };
        let mut id = format!(
            "{}_{}_s{}",
            part(&self.patient_id, "nopid"),
            part(&self.study_date, "nodate"),
            self.series_number
                .map_or_else(|| "x".to_string(), |n| format!("{n:03}"))
        );
        let description = self
            .description
            .as_deref()
            .map(|d| sanitise(d, MAX_DESCRIPTION))
            .unwrap_or_default();
        if !description.is_empty() {
            id.push('_');
            id.push_str(&description);
        }
        id
    }
}

/// FNV-1a of `text`, 8 hex digits: a short, stable tag for telling apart series whose attributes
/// give the same id (the same number in two studies of one day, say).
pub fn short_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", hash >> 32)
}

/// Makes ids unique: every id shared by several keys (series UIDs, with a part number for a split
/// series) gets `_` and the key's [`short_hash`]; `ids` pairs each key with its base id.
pub fn unique_ids(ids: &[(String, String)]) -> Vec<String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, id) in ids {
        *count.entry(id.as_str()).or_default() += 1;
    }
    ids.iter()
        .map(|(key, id)| {
            if count[id.as_str()] > 1 {
                format!("{id}_{}", short_hash(key))
            } else {
                id.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sanitised_and_spell_out_missing_parts() {
        let name = SeriesName {
            patient_id: Some("PAT 0042/ß".into()),
            study_date: Some("20240131".into()),
            series_number: Some(3),
            description: Some("  T1 AX  (post-contrast)  ".into()),
        };
        assert_eq!(name.base_id(), "PAT_0042_20240131_s003_T1_AX_post-contrast");
        let empty = SeriesName {
            patient_id: None,
            study_date: Some("   ".into()),
            series_number: None,
            description: Some("***".into()),
        };
        assert_eq!(empty.base_id(), "nopid_nodate_sx");
        assert_eq!(sanitise("../../etc/passwd", 64), "etc_passwd");
    }

    #[test]
    fn clashing_ids_get_a_stable_suffix() {
        let ids = vec![
            ("1.2.3".to_string(), "a".to_string()),
            ("1.2.4".to_string(), "a".to_string()),
            ("1.2.5".to_string(), "b".to_string()),
        ];
        let unique = unique_ids(&ids);
        assert_eq!(unique[2], "b");
        assert_ne!(unique[0], unique[1]);
        assert_eq!(unique[0], format!("a_{}", short_hash("1.2.3")));
        assert_eq!(unique_ids(&ids), unique);
    }
}
