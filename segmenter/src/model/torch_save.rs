//! Writes a state dict as PyTorch's `torch.save` file (a zip of a pickle and raw storages), so
//! that `torch.load(path, weights_only=True)` returns a `dict` of float32 tensors.
//!
//! The pickle uses only what `weights_only` loading allows: `torch._utils._rebuild_tensor_v2`,
//! `torch.FloatStorage` (as a persistent id) and `collections.OrderedDict` (the empty backward
//! hooks). Storages are stored uncompressed and 64-byte aligned, as torch writes them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::weights::StateDict;

/// The archive's top folder name; torch accepts any and uses the file stem by convention.
const ARCHIVE: &str = "archive";

/// Writes `dict` as a `torch.save` zip file at `path`, atomically.
pub fn write_pth(dict: &StateDict, path: &Path) -> Result<()> {
    let mut zip = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let aligned = stored.with_alignment(64);
    let mut put = |name: String, bytes: &[u8], options: SimpleFileOptions| -> Result<()> {
        zip.start_file(name.clone(), options)
            .with_context(|| format!("cannot add {name}"))?;
        zip.write_all(bytes)
            .with_context(|| format!("cannot write {name}"))
    };
    put(format!("{ARCHIVE}/data.pkl"), &pickle(dict), stored)?;
    put(format!("{ARCHIVE}/byteorder"), b"little", stored)?;
    for (i, tensor) in dict.values().enumerate() {
        let bytes: Vec<u8> = tensor.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        put(format!("{ARCHIVE}/data/{i}"), &bytes, aligned)?;
    }
    put(format!("{ARCHIVE}/version"), b"3\n", stored)?;
    let bytes = zip.finish().context("cannot finish the zip")?.into_inner();
    segmenter_io::write_bytes_atomic(path, &bytes)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Pickle (protocol 2) of `{key: _rebuild_tensor_v2(storage i, 0, shape, strides, False,
/// OrderedDict())}` in key order.
fn pickle(dict: &StateDict) -> Vec<u8> {
    let mut p = Pickle(vec![0x80, 2]); // PROTO 2
    p.op(b'}'); // EMPTY_DICT
    p.op(b'('); // MARK
    for (i, (key, tensor)) in dict.iter().enumerate() {
        p.string(key);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'('); // MARK: the arguments
        p.op(b'('); // MARK: the persistent id
        p.string("storage");
        p.global("torch", "FloatStorage");
        p.string(&i.to_string());
        p.string("cpu");
        p.int(tensor.values.len());
        p.op(b't'); // TUPLE
        p.op(b'Q'); // BINPERSID
        p.int(0); // storage offset
        p.tuple(&tensor.shape);
        let mut strides = vec![1; tensor.shape.len()];
        for d in (0..tensor.shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * tensor.shape[d + 1];
        }
        p.tuple(&strides);
        p.op(0x89); // NEWFALSE: requires_grad
        p.global("collections", "OrderedDict");
        p.op(b')'); // EMPTY_TUPLE
        p.op(b'R'); // REDUCE: OrderedDict()
        p.op(b't'); // TUPLE
        p.op(b'R'); // REDUCE: the tensor
    }
    p.op(b'u'); // SETITEMS
    p.op(b'.'); // STOP
    p.0
}

/// A pickle byte stream under construction.
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, code: u8) {
        self.0.push(code);
    }

    fn string(&mut self, s: &str) {
        self.op(b'X'); // BINUNICODE
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
    }

    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c'); // GLOBAL
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
    }

    fn int(&mut self, v: usize) {
        match u32::try_from(v) {
            Ok(small) if small <= i32::MAX as u32 => {
                self.op(b'J'); // BININT
                self.0.extend((small as i32).to_le_bytes());
            }
            _ => {
                self.op(0x8a); // LONG1
                self.0.push(8);
                self.0.extend((v as u64).to_le_bytes());
            }
        }
    }

    fn tuple(&mut self, values: &[usize]) {
        self.op(b'(');
        for &v in values {
            self.int(v);
        }
        self.op(b't');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::{read_state_dict, NamedTensor};

    #[test]
    fn a_written_pth_reads_back_with_the_same_keys_shapes_and_values() {
        let mut dict = StateDict::new();
        dict.insert(
            "a.weight".into(),
            NamedTensor {
                shape: vec![2, 3],
                values: vec![1.0, -2.0, 3.5, 0.0, 1e-8, -7.25],
            },
        );
        dict.insert(
            "b.A_logs".into(),
            NamedTensor {
                shape: vec![4],
                values: vec![0.5, 0.25, 0.125, 2.0],
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pth");
        write_pth(&dict, &path).unwrap();
        let back = read_state_dict(&path).unwrap();
        assert_eq!(back.len(), 2);
        for (k, t) in &dict {
            assert_eq!(back[k].shape, t.shape, "{k}");
            assert_eq!(back[k].values, t.values, "{k}");
        }
    }
}
