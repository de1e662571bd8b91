//! The file store's journal: the changes made since the snapshot, one
//! checksummed line per call (`<fnv1a32 hex> [changes]\n`).
//!
//! Only the last append can be cut short by a crash, so an invalid *last*
//! line is a torn write and ignored (and cut off by the next writer), while
//! an invalid line followed by others is corruption. Every entry is an
//! absolute assignment (put record, delete address, set cursor), not a
//! relative edit, so replaying entries a snapshot already holds changes
//! nothing.

use std::io::{Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::Path;

use cni::fsutil::{self, Dir};
use cni::Result;
use serde::{Deserialize, Serialize};

use super::file::corrupt;
use crate::allocator::{Record, State};

pub const JOURNAL_FILE: &str = "journal";

/// One journal entry. Absolute assignments only, so replaying entries that
/// are already in the snapshot changes nothing (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum Change {
    Put(Record),
    Del(IpAddr),
    Cursor { pool: String, ip: Option<IpAddr> },
}

/// FNV-1a, 32 bits: enough to tell a torn or zero-filled line from a written
/// one, and no dependency.
fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// One call's changes as one line: a torn append loses the whole call, never
/// part of it (one family of a dual-stack ADD, say).
pub(super) fn encode_line(changes: &[Change], out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&line(&serde_json::to_vec(changes)?));
    Ok(())
}

fn decode_line(line: &[u8]) -> Option<Vec<Change>> {
    let (sum, json) = (line.get(..8)?, line.get(9..)?);
    let sum = u32::from_str_radix(std::str::from_utf8(sum).ok()?, 16).ok()?;
    if line.get(8) != Some(&b' ') || checksum(json) != sum {
        return None;
    }
    serde_json::from_slice(json).ok()
}

pub(super) fn apply(state: &mut State, c: Change) {
    match c {
        Change::Put(r) => state.put(r),
        Change::Del(ip) => {
            state.remove(&ip);
        }
        Change::Cursor { pool, ip: Some(ip) } => {
            state.cursors.insert(pool, ip);
        }
        Change::Cursor { pool, ip: None } => {
            state.cursors.remove(&pool);
        }
    }
}

/// Feed the journal's entries to `apply`; returns the length of its valid
/// part (a torn last line is left out).
pub(super) fn replay(path: &Path, bytes: &[u8], apply: &mut dyn FnMut(Change)) -> Result<u64> {
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let (line, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(n) => (&rest[..n], pos + n + 1),
            None => (rest, bytes.len()),
        };
        let complete = next <= bytes.len() && bytes.get(next - 1) == Some(&b'\n');
        match decode_line(line).filter(|_| complete) {
            Some(changes) => changes.into_iter().for_each(&mut *apply),
            // Only the last append can be torn by a crash.
            None if bytes[next..].iter().all(|b| *b == 0 || *b == b'\n') => break,
            None => {
                return Err(corrupt(
                    path,
                    format!("invalid entry at byte {pos} followed by others"),
                ))
            }
        }
        pos = next;
    }
    Ok(pos as u64)
}

/// The entries that turn `before` into `after` (both sorted by address).
pub(super) fn diff(before: &State, after: &State) -> Vec<Change> {
    let mut out = Vec::new();
    let (a, b) = (&before.records, &after.records);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.ip == y.ip => {
                if x != y {
                    out.push(Change::Put(y.clone()));
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.ip < y.ip => {
                out.push(Change::Del(x.ip));
                i += 1;
            }
            (Some(x), None) => {
                out.push(Change::Del(x.ip));
                i += 1;
            }
            (_, Some(y)) => {
                out.push(Change::Put(y.clone()));
                j += 1;
            }
            (None, None) => break,
        }
    }
    for (pool, ip) in &after.cursors {
        if before.cursors.get(pool) != Some(ip) {
            out.push(Change::Cursor {
                pool: pool.clone(),
                ip: Some(*ip),
            });
        }
    }
    for pool in before.cursors.keys() {
        if !after.cursors.contains_key(pool) {
            out.push(Change::Cursor {
                pool: pool.clone(),
                ip: None,
            });
        }
    }
    out
}

/// Append `data` at `at` (the end of the valid journal; `torn` when bytes
/// of a torn line follow, which are cut off) and make it durable.
pub(super) fn append(dir: &Dir, at: u64, torn: bool, data: &[u8]) -> Result<()> {
    let path = dir.join(JOURNAL_FILE);
    let (mut file, existed) = dir.open_write(JOURNAL_FILE)?;
    let res = (if torn { file.set_len(at) } else { Ok(()) })
        .and_then(|()| file.seek(SeekFrom::Start(at)))
        .and_then(|_| file.write_all(data))
        .and_then(|()| file.sync_data());
    if let Err(e) = res {
        // A partial append would read as a torn line anyway, but ENOSPC
        // should not leave garbage behind.
        let _ = file.set_len(at);
        return Err(fsutil::io_error("cannot write", &path, &e));
    }
    if !existed {
        // A new file exists durably only once its directory entry does.
        dir.sync()?;
    }
    Ok(())
}

/// Empty the journal (after a compaction folded it into the snapshot).
pub(super) fn truncate(dir: &Dir) -> Result<()> {
    let path = dir.join(JOURNAL_FILE);
    let (file, _) = dir.open_write(JOURNAL_FILE)?;
    file.set_len(0)
        .and_then(|()| file.sync_data())
        .map_err(|e| fsutil::io_error("cannot truncate", &path, &e))
}

/// A whole journal decoded as a store reads it, onto an empty state: the
/// state and the length of the valid part. For tools and fuzzers.
pub fn decode(bytes: &[u8]) -> Result<(State, u64)> {
    let mut state = State::default();
    let valid = replay(Path::new(JOURNAL_FILE), bytes, &mut |c| {
        apply(&mut state, c)
    })?;
    Ok((state, valid))
}

/// A journal line holding `json` under a valid checksum, whatever `json`
/// is: fuzzers build lines around mutated entries with it.
pub fn line(json: &[u8]) -> Vec<u8> {
    let mut out = format!("{:08x} ", checksum(json)).into_bytes();
    out.extend_from_slice(json);
    out.push(b'\n');
    out
}

/// Replay the journal `dir` holds (if any) through `apply`: (valid length,
/// exists, torn bytes follow).
pub(super) fn load(dir: &Dir, apply: &mut dyn FnMut(Change)) -> Result<(u64, bool, bool)> {
    match dir.read(JOURNAL_FILE, fsutil::MAX_FILE)? {
        None => Ok((0, false, false)),
        Some(bytes) => {
            let valid = replay(&dir.join(JOURNAL_FILE), &bytes, apply)?;
            Ok((valid, true, valid != bytes.len() as u64))
        }
    }
}
