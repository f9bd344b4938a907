//! Feeds arbitrary bytes to the DICOM series reader as a file in a folder: discovery (content
//! sniffing, the element-length guard, header parsing, classification) and, for a file taken as
//! an image, the whole series reader (pixel decoding, geometry). Any error is fine; a panic, a
//! hang or a huge allocation is a bug.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use segmenter_io::{find_dicom_series, read_dicom_series, DicomSeries};

fuzz_target!(|data: &[u8]| {
    check(data);
});

/// A folder of this process's own, reused between inputs.
fn folder() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dicom-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check(data: &[u8]) {
    let dir = folder();
    let path = dir.join("input");
    std::fs::write(&path, data).unwrap();
    if let Ok(found) = find_dicom_series(&dir) {
        for series in &found.series {
            let _ = read_dicom_series(series);
        }
    }
    // Also read the file as a one-file series whatever discovery made of it, so that mutations
    // discovery skips still reach the pixel decoder and the multi-frame geometry.
    let single = DicomSeries {
        id: "fuzz".into(),
        uid: "1.2.3".into(),
        files: vec![path],
    };
    if let Ok(volume) = read_dicom_series(&single) {
        assert_eq!(volume.data.len(), volume.shape.iter().product::<usize>());
    }
}
