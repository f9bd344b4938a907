//! A check of every element length in a DICOM file against the bytes the file holds, run before
//! dicom-rs parses it: the parser reserves and zero-fills a value's claimed length before reading
//! it, so a 200-byte file claiming a 4 GB element would make it allocate and touch 4 GB.
//!
//! The walk reads only element headers and seeks past values. It descends into sequences and
//! items, skips the fragments of encapsulated pixel data, and stops (accepting the rest) where it
//! cannot follow the encoding: deflated data sets, big-endian ones, and UN values of undefined
//! length.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

/// Undefined length (sequences, items, encapsulated pixel data).
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Explicit VRs whose length field is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
const LONG_VRS: [&[u8; 2]; 13] = [
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
];

/// Transfer syntaxes whose data set is implicit VR little endian.
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// A reader that knows how far it is into the file and how long the file is.
struct Walker {
    reader: BufReader<File>,
    at: u64,
    len: u64,
}

impl Walker {
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        self.reader.read_exact(&mut buf).ok()?;
        self.at += N as u64;
        Some(buf)
    }

    /// Skips `n` bytes after checking that the file holds them.
    fn skip(&mut self, n: u32, what: &str) -> Result<(), String> {
        self.claim(n, what)?;
        self.reader
            .seek_relative(i64::from(n))
            .map_err(|e| e.to_string())?;
        self.at += u64::from(n);
        Ok(())
    }

    /// Refuses a length that runs past the end of the file.
    fn claim(&self, n: u32, what: &str) -> Result<(), String> {
        if n != UNDEFINED && self.at + u64::from(n) > self.len {
            return Err(format!(
                "{what} at byte {} claims {n} bytes, but only {} remain in the file",
                self.at,
                self.len - self.at
            ));
        }
        Ok(())
    }
}

/// Checks the lengths of `path`'s file meta group and data set (see the module documentation).
pub fn check_lengths(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut w = Walker {
        reader: BufReader::with_capacity(16 * 1024, file),
        at: 0,
        len,
    };
    let Some(head) = w.bytes::<132>() else {
        return Ok(());
    };
    if &head[128..132] != b"DICM" {
        w.reader.rewind().map_err(|e| e.to_string())?;
        w.at = 0;
    }
    let transfer_syntax = walk_meta(&mut w)?;
    let implicit = match transfer_syntax.as_str() {
        IMPLICIT_LE => true,
        // Deflated (1.2.840.10008.1.2.1.99) and big-endian (1.2.840.10008.1.2.2) data sets are not
        // walked; every other syntax encodes the data set as explicit VR little endian.
        ts if ts.starts_with("1.2.840.10008.1.2.1.99") || ts == "1.2.840.10008.1.2.2" => {
            return Ok(())
        }
        _ => false,
    };
    walk_data_set(&mut w, implicit)
}

/// Walks the file meta group (explicit VR little endian, group 0002) and returns the transfer
/// syntax UID, leaving the walker at the first data set element.
fn walk_meta(w: &mut Walker) -> Result<String, String> {
    let mut transfer_syntax = String::new();
    loop {
        let start = w.at;
        let Some(tag) = w.bytes::<4>() else {
            return Ok(transfer_syntax);
        };
        if u16::from_le_bytes([tag[0], tag[1]]) != 0x0002 {
            w.reader.seek_relative(-4).map_err(|e| e.to_string())?;
            w.at = start;
            return Ok(transfer_syntax);
        }
        let vr = w.bytes::<2>().ok_or("meta element cut short")?;
        let n = if LONG_VRS.contains(&&vr) {
            w.bytes::<2>().ok_or("meta element cut short")?;
            u32::from_le_bytes(w.bytes::<4>().ok_or("meta element cut short")?)
        } else {
            u32::from(u16::from_le_bytes(
                w.bytes::<2>().ok_or("meta element cut short")?,
            ))
        };
        if tag == [0x02, 0x00, 0x10, 0x00] && n < 256 {
            w.claim(n, "TransferSyntaxUID")?;
            let mut uid = vec![0u8; n as usize];
            w.reader.read_exact(&mut uid).map_err(|e| e.to_string())?;
            w.at += u64::from(n);
            transfer_syntax = String::from_utf8_lossy(&uid)
                .trim_end_matches(['\0', ' '])
                .to_string();
        } else {
            w.skip(n, "file meta element")?;
        }
    }
}

/// Walks the data set's elements to the end of the file.
fn walk_data_set(w: &mut Walker, implicit: bool) -> Result<(), String> {
    // Inside encapsulated pixel data, items are fragments of compressed bytes, not data sets.
    let mut in_fragments = false;
    while w.at < w.len {
        let Some(tag) = w.bytes::<4>() else {
            return Ok(());
        };
        let group = u16::from_le_bytes([tag[0], tag[1]]);
        let element = u16::from_le_bytes([tag[2], tag[3]]);
        let name = format!("element ({group:04X},{element:04X})");
        if group == 0xFFFE {
            // Items and delimiters: a 4-byte length, no VR, in every encoding.
            let n = u32::from_le_bytes(w.bytes::<4>().ok_or("item cut short")?);
            match element {
                0xE0DD => in_fragments = false,
                0xE000 if in_fragments => w.skip(n, "pixel data fragment")?,
                // An item of a sequence holds elements: walk into it.
                _ => w.claim(n, "item")?,
            }
            continue;
        }
        let (vr, n) = if implicit {
            (
                None,
                u32::from_le_bytes(w.bytes::<4>().ok_or("element cut short")?),
            )
        } else {
            let vr = w.bytes::<2>().ok_or("element cut short")?;
            let n = if LONG_VRS.contains(&&vr) {
                w.bytes::<2>().ok_or("element cut short")?;
                u32::from_le_bytes(w.bytes::<4>().ok_or("element cut short")?)
            } else {
                u32::from(u16::from_le_bytes(
                    w.bytes::<2>().ok_or("element cut short")?,
                ))
            };
            (Some(vr), n)
        };
        if n == UNDEFINED {
            if vr == Some(*b"UN") {
                // Implicit VR inside an explicit data set: beyond what this walk follows.
                return Ok(());
            }
            in_fragments = (group, element) == (0x7FE0, 0x0010);
            continue;
        }
        if vr == Some(*b"SQ") {
            // A sequence of defined length: its items follow and are walked.
            w.claim(n, &name)?;
            continue;
        }
        w.skip(n, &name)?;
    }
    Ok(())
}
