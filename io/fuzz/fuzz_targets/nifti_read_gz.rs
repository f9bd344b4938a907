//! Compresses the fuzzer's bytes with gzip first, so that mutations reach the header and voxel checks
//! behind the decompressor (random bytes almost never form a valid deflate stream), then reads them.
#![no_main]

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).expect("writing to a Vec cannot fail");
    let gz = enc.finish().expect("writing to a Vec cannot fail");
    if let Ok((header, voxels)) = segmenter_io::read_nifti_bytes(&gz, Path::new("fuzz.nii.gz")) {
        let _ = header.affine();
        let values = voxels.to_f32(header.scl_slope, header.scl_inter);
        assert_eq!(values.len(), header.shape().iter().product::<usize>());
    }
});
