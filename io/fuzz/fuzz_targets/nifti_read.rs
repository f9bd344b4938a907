//! Feeds arbitrary bytes to the NIfTI reader as a file's contents (plain, or gzip when they start with
//! the gzip magic) and exercises everything a caller does with a header that was accepted.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
});

fn check(data: &[u8]) {
    if let Ok((header, voxels)) = segmenter_io::read_nifti_bytes(data, Path::new("fuzz.nii")) {
        // What read_nifti and the dataset loader do next with an accepted file.
        let _ = header.shape();
        let _ = header.spacing();
        let affine = header.affine();
        // Preprocessing reorients every accepted scan by its affine, whatever numbers the header holds.
        let orientation = segmenter_io::Orientation::from_affine(&affine);
        let shape = header.shape();
        let _ = orientation.canonical_affine(&affine, shape);
        let _ = orientation.canonical_spacing(header.spacing());
        let values = voxels.to_f32(header.scl_slope, header.scl_inter);
        assert_eq!(values.len(), shape.iter().product::<usize>());
        // Compared as bits: NaN voxels are legal in a file and must come back unchanged too.
        let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        let canonical = orientation.to_canonical(&bits, shape);
        assert_eq!(orientation.from_canonical(&canonical, shape), bits);
        let _ = header.to_bytes();
    }
}
