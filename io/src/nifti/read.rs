//! Reading NIfTI-1 single files (.nii, or .nii.gz told apart by its magic bytes), from disk or memory.

use std::fs::File;
use std::io::{self, BufReader, Cursor, ErrorKind, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::data::{element_size, unsupported_datatype, NiftiData};
use crate::error::{io_error, IoError, Result};
use crate::header::{NiftiHeader, HEADER_SIZE, MAX_VOXELS};
use crate::volume::Volume;

/// Maps a read error: decoder complaints become CorruptGzip, the rest stay OS errors.
fn read_error(path: &Path, e: io::Error, gz: bool) -> IoError {
    if gz && matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::InvalidData) {
        let msg = e.to_string();
        // flate2's messages already start with "corrupt gzip stream", which our Display also says.
        let detail = msg
            .strip_prefix("corrupt gzip stream ")
            .unwrap_or(&msg)
            .to_string();
        IoError::CorruptGzip {
            path: path.to_path_buf(),
            detail,
        }
    } else {
        io_error(path, e)
    }
}

/// Reads until `buf` is full or the stream ends; returns how much was read. An early end of a gzip
/// stream is reported by flate2 as UnexpectedEof, which here just means "short", so callers can say
/// "truncated" with a byte count.
fn read_fill<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads and discards up to `n` bytes without allocating them; returns how many there were.
fn skip<R: Read + ?Sized>(r: &mut R, n: u64) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut done = 0u64;
    while done < n {
        let want = (n - done).min(buf.len() as u64) as usize;
        let k = read_fill(r, &mut buf[..want])?;
        if k == 0 {
            break;
        }
        done += k as u64;
    }
    Ok(done)
}

/// Reads a NIfTI-1 file (.nii or .nii.gz, told apart by the gzip magic bytes) with voxels in their stored type.
pub fn read_nifti_raw(path: &Path) -> Result<(NiftiHeader, NiftiData)> {
    read_raw(path, false)
}

/// Like [`read_nifti_raw`], but any number of dimensions (e.g. 4D probability maps), values in
/// file order with the first axis fastest.
pub fn read_nifti_nd(path: &Path) -> Result<(NiftiHeader, NiftiData)> {
    read_raw(path, true)
}

fn read_raw(path: &Path, any_dims: bool) -> Result<(NiftiHeader, NiftiData)> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
    let reader = BufReader::with_capacity(256 * 1024, file);
    read_nifti_from(reader, Some(file_len), path, any_dims)
}

/// Reads a NIfTI-1 image held in memory (plain or gzip); `name` is only used in error messages.
/// This is the entry point of the fuzz target (io/fuzz), and useful for files that arrive over a network.
pub fn read_nifti_bytes(bytes: &[u8], name: &Path) -> Result<(NiftiHeader, NiftiData)> {
    read_nifti_from(bytes, Some(bytes.len() as u64), name, false)
}

/// The stream with its gzip layer removed if it has one (told by the magic bytes, not the name), and
/// whether it had one.
fn ungzipped<'a, R: Read + 'a>(mut reader: R, path: &Path) -> Result<(Box<dyn Read + 'a>, bool)> {
    let mut magic = [0u8; 2];
    let got = read_fill(&mut reader, &mut magic).map_err(|e| io_error(path, e))?;
    let gz = got == 2 && magic == [0x1f, 0x8b];
    let plain = Cursor::new(magic[..got].to_vec()).chain(reader);
    let src: Box<dyn Read + 'a> = if gz {
        // Multi-member streams (bgzip, concatenated gzip) are valid gzip and are read whole.
        Box::new(MultiGzDecoder::new(plain))
    } else {
        Box::new(plain)
    };
    Ok((src, gz))
}

/// Decodes a gzip stream to its end after the voxel data, so that flate2 verifies the CRC (a flipped
/// bit can still inflate to valid-looking data); trailing padding is tolerated, but never more than
/// the volume itself (`nbytes`), which stops zip bombs.
fn check_gzip_end(src: &mut dyn Read, nbytes: u64, expected: u64, path: &Path) -> Result<()> {
    let extra = skip(src, nbytes + 1).map_err(|e| read_error(path, e, true))?;
    if extra > nbytes {
        return Err(IoError::CorruptGzip {
            path: path.to_path_buf(),
            detail: format!(
                "decompresses to more than {} bytes, twice what the header describes; refused",
                expected + nbytes
            ),
        });
    }
    Ok(())
}

/// The reader behind [`read_nifti_raw`] and [`read_nifti_bytes`]: `len` is the stored (possibly
/// compressed) size when known, which lets a plain file that is too short be refused before allocating;
/// `any_dims` accepts more than three non-singleton dimensions.
fn read_nifti_from<R: Read>(
    reader: R,
    len: Option<u64>,
    path: &Path,
    any_dims: bool,
) -> Result<(NiftiHeader, NiftiData)> {
    let (mut src, gz) = ungzipped(reader, path)?;
    let mut raw = [0u8; HEADER_SIZE];
    let got = read_fill(&mut src, &mut raw).map_err(|e| read_error(path, e, gz))?;
    if got < HEADER_SIZE {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            expected: HEADER_SIZE as u64,
            found: got as u64,
        });
    }
    let header = NiftiHeader::parse(raw, path)?;
    let voxels = if any_dims {
        header.element_count(path)?
    } else {
        header.voxel_count(path)?
    };
    let elem = element_size(header.datatype).ok_or_else(|| IoError::Unsupported {
        path: path.to_path_buf(),
        reason: unsupported_datatype(header.datatype),
    })?;
    let offset = header.data_offset(path)?;
    // voxels <= 2^31 and elem <= 8, so this cannot overflow u64.
    let nbytes = voxels as u64 * elem as u64;
    let expected = offset + nbytes;
    // For plain files the size is known up front: refuse before allocating the voxel buffer.
    if let Some(file_len) = len.filter(|&l| !gz && l < expected) {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: file_len,
        });
    }
    let skipped =
        skip(&mut src, offset - HEADER_SIZE as u64).map_err(|e| read_error(path, e, gz))?;
    if skipped < offset - HEADER_SIZE as u64 {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: HEADER_SIZE as u64 + skipped,
        });
    }
    let nbytes_usize = usize::try_from(nbytes).map_err(|_| IoError::TooLarge {
        path: path.to_path_buf(),
        dims: voxels.to_string(),
        limit: MAX_VOXELS,
    })?;
    // A gzip stream's (or unsized reader's) real length is unknown until decoded: grow the buffer as data arrives, capped at
    // the size the header implies, so a small file claiming a huge volume cannot make us allocate it.
    let mut bytes = Vec::with_capacity(if gz || len.is_none() {
        nbytes_usize.min(1 << 24)
    } else {
        nbytes_usize
    });
    match (&mut src).take(nbytes).read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(read_error(path, e, gz)),
    }
    if bytes.len() < nbytes_usize {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: offset + bytes.len() as u64,
        });
    }
    if gz {
        check_gzip_end(&mut src, nbytes, expected, path)?;
    }
    let data = NiftiData::decode(bytes, header.datatype, header.big_endian).ok_or_else(|| {
        IoError::Unsupported {
            path: path.to_path_buf(),
            reason: unsupported_datatype(header.datatype),
        }
    })?;
    Ok((header, data))
}

/// Reads a NIfTI-1 file as f32 intensities with scl_slope/scl_inter applied.
pub fn read_nifti(path: &Path) -> Result<Volume> {
    let (header, data) = read_nifti_raw(path)?;
    let values = data.to_f32(header.scl_slope, header.scl_inter);
    Ok(Volume {
        shape: header.shape(),
        data: values,
        header,
    })
}
