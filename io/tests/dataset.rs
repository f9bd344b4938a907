//! Datasets in Decathlon and nnU-Net v2 layouts, case loading, and case discovery for prediction.

mod common;

use std::fs;

use common::*;
use segmenter_io::{case_id, find_cases, load_case, load_dataset};

#[test]
fn sample_decathlon_dataset_loads_every_case() {
    let root = sample_hippocampus();
    let ds = load_dataset(&root).unwrap();
    assert_eq!(ds.name, "Hippocampus");
    assert_eq!(ds.channel_names, vec!["MRI".to_string()]);
    assert_eq!(ds.file_ending, ".nii.gz");
    assert_eq!(
        ds.labels
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "background"), (1, "Anterior"), (2, "Posterior")]
    );
    assert_eq!(ds.cases.len(), 16);
    assert_eq!(ds.cases[0].id, "hippocampus_001");
    assert_eq!(ds.cases[15].id, "hippocampus_035");
    assert!(ds.cases.windows(2).all(|w| w[0].id < w[1].id));
    for case in &ds.cases {
        let loaded = load_case(case, &ds.labels).unwrap();
        assert_eq!(loaded.channels.len(), 1);
        let label = loaded.label.expect("training case has a label");
        let n = loaded.shape.iter().product::<usize>();
        assert_eq!(label.len(), n);
        // Both hippocampus parts are present in every training label.
        assert!(label.contains(&1) && label.contains(&2), "{}", case.id);
        assert_eq!(loaded.header.spacing(), [1.0, 1.0, 1.0]);
    }
}

#[test]
fn shared_decathlon_dataset_lists_all_cases() {
    let Some(root) = shared_hippocampus() else {
        return;
    };
    let ds = load_dataset(&root).unwrap();
    let on_disk = fs::read_dir(root.join("imagesTr"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".nii.gz"))
        .count();
    assert_eq!(on_disk, 200);
    assert_eq!(ds.cases.len(), on_disk);
    assert!(ds
        .cases
        .iter()
        .all(|c| c.images.len() == 1 && c.label.is_some()));
    // Every real case loads: uint8 and float32 images, and the few float32 label maps.
    for case in &ds.cases {
        let loaded = load_case(case, &ds.labels).unwrap();
        assert!(loaded.label.is_some_and(|l| l.contains(&1)), "{}", case.id);
    }
}

#[test]
fn nnunet_v2_layout_with_two_channels() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (img, lab) = (root.join("imagesTr"), root.join("labelsTr"));
    fs::create_dir_all(&img).unwrap();
    fs::create_dir_all(&lab).unwrap();
    let shape = [3, 4, 2];
    for (k, id) in ["liver_7", "liver_10"].iter().enumerate() {
        write_f32(
            &img,
            &format!("{id}_0000.nii.gz"),
            shape,
            Some(vec![k as f32; 24]),
        );
        write_f32(
            &img,
            &format!("{id}_0001.nii.gz"),
            shape,
            Some(vec![10.0 + k as f32; 24]),
        );
        write_u8(&lab, &format!("{id}.nii.gz"), shape, vec![k as u8; 24]);
    }
    fs::write(img.join(".DS_Store"), "junk").unwrap();
    let json = r#"{"channel_names": {"1": "PET", "0": "CT"}, "labels": {"background": 0, "liver": 1},
        "numTraining": 2, "file_ending": ".nii.gz", "name": "Liver"}"#;
    fs::write(root.join("dataset.json"), json).unwrap();

    let ds = load_dataset(root).unwrap();
    assert_eq!(ds.name, "Liver");
    assert_eq!(ds.channel_names, vec!["CT".to_string(), "PET".to_string()]);
    assert_eq!(ds.labels.get(&1).map(String::as_str), Some("liver"));
    let ids: Vec<_> = ds.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["liver_10", "liver_7"]);
    let c = &ds.cases[1];
    assert_eq!(
        c.images,
        vec![
            img.join("liver_7_0000.nii.gz"),
            img.join("liver_7_0001.nii.gz")
        ]
    );
    assert_eq!(c.label, Some(lab.join("liver_7.nii.gz")));

    let loaded = load_case(c, &ds.labels).unwrap();
    assert_eq!(loaded.channels[0].data[0], 0.0);
    assert_eq!(loaded.channels[1].data[0], 10.0);
    assert_eq!(loaded.label, Some(vec![0; 24]));

    // A missing second channel is named.
    fs::remove_file(img.join("liver_10_0001.nii.gz")).unwrap();
    let msg = err_naming(load_dataset(root), &img.join("liver_10_0001.nii.gz"));
    assert!(msg.contains("channel 1 of case liver_10"), "{msg}");
}

#[test]
fn find_cases_groups_channels_and_plain_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in [
        "b_0000.nii.gz",
        "b_0001.nii.gz",
        "a_0001.nii.gz",
        "a_0000.nii.gz",
    ] {
        write_f32(d, name, [2, 2, 2], None);
    }
    fs::write(d.join("notes.txt"), "not a scan").unwrap();
    let cases = find_cases(d, None).unwrap();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0].id, "a");
    assert_eq!(
        cases[0].images,
        vec![d.join("a_0000.nii.gz"), d.join("a_0001.nii.gz")]
    );
    assert!(cases.iter().all(|c| c.label.is_none()));

    // Plain names, .nii and .nii.gz mixed; a single file.
    let p = tempfile::tempdir().unwrap();
    write_f32(p.path(), "scan_2019.nii", [2, 2, 2], None);
    write_f32(p.path(), "patient.nii.gz", [2, 2, 2], None);
    let cases = find_cases(p.path(), None).unwrap();
    let ids: Vec<_> = cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["patient", "scan_2019"]);
    let one = find_cases(&p.path().join("patient.nii.gz"), None).unwrap();
    assert_eq!(one[0].id, "patient");
    assert_eq!(find_cases(p.path(), Some(".nii")).unwrap().len(), 1);

    // Mixed channel counts cannot feed one model.
    write_f32(d, "c_0000.nii.gz", [2, 2, 2], None);
    let msg = err_naming(find_cases(d, None), d);
    assert!(msg.contains("different numbers of channels"), "{msg}");

    let empty = tempfile::tempdir().unwrap();
    err_naming(find_cases(empty.path(), None), empty.path());
}

#[test]
fn find_cases_names_plain_cases_by_the_case_id_rule() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["Upper.NII.GZ", "mixed.Nii", "x.v2.nii.gz"] {
        write_f32(d, name, [2, 2, 2], None);
    }
    let cases = find_cases(d, None).unwrap();
    assert_eq!(cases.len(), 3);
    for case in &cases {
        assert_eq!(case.id, case_id(&case.images[0]));
    }
    let image = d.join("slice.TIFF");
    segmenter_io::write_labels_image2d(&image, [3, 2, 1], &[0; 6]).unwrap();
    assert_eq!(find_cases(&image, None).unwrap()[0].id, case_id(&image));
}

#[test]
fn a_label_map_off_its_image_grid_is_refused_naming_both_grids() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [4, 5, 6];
    let n = shape.iter().product::<usize>();
    let image = write_f32(dir.path(), "c_0000.nii.gz", shape, None);
    let labels = std::collections::BTreeMap::from([(0u8, "bg".to_string()), (1, "fg".into())]);
    let case = |label: &std::path::Path| segmenter_io::Case {
        id: "c".into(),
        images: vec![image.clone()],
        label: Some(label.to_path_buf()),
        dicom: None,
    };
    let with_header = |name: &str, edit: &dyn Fn(&mut segmenter_io::NiftiHeader)| {
        let mut header = rotated_header(shape);
        edit(&mut header);
        let path = dir.path().join(name);
        let values = segmenter_io::NiftiData::U8((0..n).map(|i| (i % 2) as u8).collect());
        segmenter_io::write_nifti(&path, &header, &values).unwrap();
        path
    };
    // The same grid, and one whose float32 header rounds differently: accepted.
    assert!(load_case(&case(&with_header("same.nii.gz", &|_| {})), &labels).is_ok());
    let rounded = with_header("rounded.nii.gz", &|h| h.srow[1][3] += 1e-4);
    assert!(load_case(&case(&rounded), &labels).is_ok());
    // Shifted by 40 mm (a user's report): refused, naming the file, the image and both origins.
    let shifted = with_header("shifted.nii.gz", &|h| h.srow[0][3] += 40.0);
    let msg = err_naming(load_case(&case(&shifted), &labels), &shifted);
    assert!(
        msg.contains("c_0000.nii.gz") && msg.contains("origin (27.50, 40.25, 7.00) vs (-12.50"),
        "{msg}"
    );
    // Another spacing, and axes that point elsewhere.
    let spacing = with_header("spacing.nii.gz", &|h| h.srow[2][2] *= 2.0);
    let msg = err_naming(load_case(&case(&spacing), &labels), &spacing);
    assert!(msg.contains("spacing"), "{msg}");
    let flipped = with_header("flipped.nii.gz", &|h| {
        h.srow[0][0] = -h.srow[0][0];
        h.srow[1][0] = -h.srow[1][0];
    });
    let msg = err_naming(load_case(&case(&flipped), &labels), &flipped);
    assert!(msg.contains("axis directions differ"), "{msg}");
}
