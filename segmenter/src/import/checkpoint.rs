//! What an nnU-Net checkpoint says about itself beside its weights: the trainer class and the
//! configuration it was trained with, read from the pickle's bytes without running it.

use std::io::Read;
use std::path::Path;

/// The trainer and configuration an nnU-Net `checkpoint_final.pth` records (`trainer_name`,
/// `init_args['configuration']`); None for what it does not record (a plain state dict, a
/// `.safetensors` file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// `trainer_name`, e.g. `nnUNetTrainerSwinUMamba`.
    pub trainer_name: Option<String>,
    /// `init_args['configuration']`, e.g. `2d`.
    pub configuration: Option<String>,
}

/// Reads the trainer and configuration from a `torch.save` zip; a file that is not one (or has
/// neither) gives an empty [`CheckpointInfo`], and the weights' own checks decide.
pub fn checkpoint_info(path: &Path) -> CheckpointInfo {
    let Some(pickle) = read_pickle_bytes(path) else {
        return CheckpointInfo::default();
    };
    CheckpointInfo {
        trainer_name: string_after_key(&pickle, "trainer_name"),
        configuration: string_after_key(&pickle, "configuration"),
    }
}

fn read_pickle_bytes(path: &Path) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).ok()?;
    let index = (0..archive.len()).find(|&i| {
        archive
            .by_index_raw(i)
            .is_ok_and(|e| e.name().ends_with("data.pkl"))
    })?;
    let mut entry = archive.by_index(index).ok()?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// The string value that follows the string key `key` in a pickle (torch.save's protocol 2: a
/// dict's key and value are pushed one after the other, each maybe memoised with `BINPUT`). A
/// value that already appeared earlier (say `2d`, a key of the plans' configurations) is a memo
/// reference (`BINGET`), resolved from the strings memoised so far.
fn string_after_key(pickle: &[u8], key: &str) -> Option<String> {
    let mut memo = std::collections::HashMap::new();
    let mut at = 0;
    while at < pickle.len() {
        let Some((end, text)) = read_string(pickle, at) else {
            at += 1;
            continue;
        };
        let after = skip_memo(pickle, end);
        if let Some(index) = memo_operand(pickle, end, [b'q', b'r']) {
            memo.insert(index, text.clone());
        }
        if text == key {
            if let Some((_, value)) = read_string(pickle, after) {
                return Some(value);
            }
            if let Some(value) =
                memo_operand(pickle, after, [b'h', b'j']).and_then(|i| memo.get(&i))
            {
                return Some(value.clone());
            }
        }
        // Strings are skipped whole, so their text is never read as opcodes.
        at = end;
    }
    None
}

/// The memo index of the opcode at `at` if it is `short` (1-byte index) or `long` (4-byte index):
/// `BINPUT`/`LONG_BINPUT` (q, r) store there, `BINGET`/`LONG_BINGET` (h, j) read from there.
fn memo_operand(pickle: &[u8], at: usize, [short, long]: [u8; 2]) -> Option<u32> {
    match *pickle.get(at)? {
        op if op == short => pickle.get(at + 1).map(|&i| u32::from(i)),
        op if op == long => Some(u32::from_le_bytes(
            pickle.get(at + 1..at + 5)?.try_into().ok()?,
        )),
        _ => None,
    }
}

/// A `BINUNICODE` (`X`, 4-byte length) or `SHORT_BINUNICODE` (0x8c, 1-byte length) string at
/// `at`: where it ends and its text.
fn read_string(pickle: &[u8], at: usize) -> Option<(usize, String)> {
    let (start, len) = match *pickle.get(at)? {
        b'X' => {
            let len = u32::from_le_bytes(pickle.get(at + 1..at + 5)?.try_into().ok()?) as usize;
            (at + 5, len)
        }
        0x8c => (at + 2, *pickle.get(at + 1)? as usize),
        _ => return None,
    };
    let bytes = pickle.get(start..start.checked_add(len)?)?;
    let text = std::str::from_utf8(bytes).ok()?;
    Some((start + len, text.to_string()))
}

/// Skips the memo opcodes that may follow a pushed value: `BINPUT` (q), `LONG_BINPUT` (r),
/// `MEMOIZE` (0x94).
fn skip_memo(pickle: &[u8], at: usize) -> usize {
    match pickle.get(at) {
        Some(b'q') => at + 2,
        Some(b'r') => at + 5,
        Some(0x94) => at + 1,
        _ => at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_found_in_protocol_2_and_4_pickles() {
        // Protocol 2: X <len> key, BINPUT, X <len> value.
        let mut p2 = vec![b'}', b'q', 0];
        for (i, s) in ["trainer_name", "nnUNetTrainerSwinUMamba"]
            .iter()
            .enumerate()
        {
            p2.push(b'X');
            p2.extend_from_slice(&(s.len() as u32).to_le_bytes());
            p2.extend_from_slice(s.as_bytes());
            p2.extend_from_slice(&[b'q', 1 + i as u8]);
        }
        assert_eq!(
            string_after_key(&p2, "trainer_name").as_deref(),
            Some("nnUNetTrainerSwinUMamba")
        );
        // Protocol 4: SHORT_BINUNICODE key, MEMOIZE, SHORT_BINUNICODE value.
        let mut p4 = vec![0x8c, 13];
        p4.extend_from_slice(b"configuration");
        p4.extend_from_slice(&[0x94, 0x8c, 2]);
        p4.extend_from_slice(b"2d");
        assert_eq!(
            string_after_key(&p4, "configuration").as_deref(),
            Some("2d")
        );
        assert_eq!(string_after_key(&p4, "trainer_name"), None);
        // A value pushed before as something else comes back as a memo reference.
        let mut p = Vec::new();
        for (s, put) in [("2d", 7u8), ("configuration", 8)] {
            p.push(b'X');
            p.extend_from_slice(&(s.len() as u32).to_le_bytes());
            p.extend_from_slice(s.as_bytes());
            p.extend_from_slice(&[b'q', put]);
        }
        p.extend_from_slice(&[b'h', 7]);
        assert_eq!(string_after_key(&p, "configuration").as_deref(), Some("2d"));
    }
}
