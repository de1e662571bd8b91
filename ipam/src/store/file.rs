//! The file store: `<dataDir>/<network>/{lock,state.bin,journal}`.
//!
//! `state.bin` is an indexed snapshot of the whole state (see
//! [`super::snapshot`]; a `state.json` written by earlier versions is read
//! while no `state.bin` exists and replaced by the first change); `journal`
//! holds the changes made since, one checksummed line per call
//! (`<fnv1a32 hex> [changes]\n`). A change takes an exclusive `flock` on
//! `lock`, maps the snapshot, replays the journal over it, lets the allocator
//! decide through [`Ledger`] lookups (binary searches in the snapshot's
//! tables), and appends only this call's changes to the journal (write,
//! fdatasync). So an ADD or DEL reads a few records and writes and syncs a
//! few hundred bytes whatever the number of records, where rewriting the
//! whole JSON state cost O(records) and two syncs per call.
//!
//! Crash safety: a call is committed once its journal fsync returned; only
//! the last append can be cut short by a crash, so an invalid *last* line is
//! a torn write and ignored (and cut off by the next writer), while an invalid
//! line followed by others is corruption. When the journal outgrows
//! max(16 KiB, snapshot/32), the writer compacts: it replaces the snapshot
//! atomically (`cni::fsutil::write_atomic`) and then empties the journal. A
//! crash in between leaves the new snapshot with the old journal, which
//! replays to the same state because every journal entry is an absolute
//! assignment (put record, delete address, set cursor), not a relative edit.
//! Readers (`load`) take no lock: they read the journal before the snapshot
//! and so see the old or the new state.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cni::error::code;
use cni::{fsutil, Error, Result};
use serde::{Deserialize, Serialize};

use super::mapped::Mapped;
use super::{snapshot, Store};
use crate::allocator::{Attachment, Ledger, Record, State, StickyId, STATE_VERSION};

pub const STATE_FILE: &str = "state.bin";
/// The JSON snapshot of earlier versions.
pub const LEGACY_STATE_FILE: &str = "state.json";
pub const JOURNAL_FILE: &str = "journal";
pub const LOCK_FILE: &str = "lock";

/// The journal is folded into the snapshot once it is larger than
/// `MIN_COMPACT_BYTES` or this fraction of the snapshot, whichever is more.
/// Every call replays the journal (~3,000 instructions a line), so a small
/// bound keeps calls flat; the snapshot rewrite it triggers (~8 ms at 4,000
/// records, every ~150 calls) stays a small share of the calls in between.
const COMPACT_DIVISOR: u64 = 32;
const MIN_COMPACT_BYTES: u64 = 16 * 1024;

/// One journal entry. Absolute assignments only, so replaying entries that
/// are already in the snapshot changes nothing (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Change {
    Put(Record),
    Del(IpAddr),
    Cursor { pool: String, ip: Option<IpAddr> },
}

#[derive(Debug, Clone)]
pub struct FileStore {
    data_dir: PathBuf,
}

/// What a read found, beyond the state: how much there is to compact and
/// where the valid part of the journal ends.
struct Loaded {
    state: State,
    snapshot_len: u64,
    journal_len: u64,
    journal_exists: bool,
    /// Bytes of a torn append follow `journal_len`.
    torn: bool,
}

impl FileStore {
    pub fn new(data_dir: PathBuf) -> FileStore {
        FileStore { data_dir }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn network_dir(&self, network: &str) -> PathBuf {
        self.data_dir.join(network)
    }

    pub fn state_path(&self, network: &str) -> PathBuf {
        self.network_dir(network).join(STATE_FILE)
    }

    pub fn legacy_state_path(&self, network: &str) -> PathBuf {
        self.network_dir(network).join(LEGACY_STATE_FILE)
    }

    pub fn journal_path(&self, network: &str) -> PathBuf {
        self.network_dir(network).join(JOURNAL_FILE)
    }

    fn read(&self, network: &str) -> Result<Loaded> {
        // The journal is read before the snapshot: a lock-free reader racing
        // a compaction then sees the old snapshot with its journal, or the
        // new snapshot with the old journal, which replays onto it harmlessly.
        let jpath = self.journal_path(network);
        let journal = fsutil::read_optional(&jpath)?;
        let path = self.state_path(network);
        let (mut state, snapshot_len) = match fsutil::read_optional(&path)? {
            Some(bytes) => (decode(&path, &bytes)?, bytes.len() as u64),
            None => {
                let legacy = self.legacy_state_path(network);
                match fsutil::read_optional(&legacy)? {
                    // u64::MAX: the first change compacts, replacing the slow JSON.
                    Some(bytes) => (decode_json(&legacy, &bytes)?, u64::MAX),
                    None => (State::default(), 0),
                }
            }
        };
        let (journal_len, journal_exists, torn) = match journal {
            None => (0, false, false),
            Some(bytes) => {
                let valid = replay(&jpath, &bytes, &mut |c| apply(&mut state, c))?;
                (valid, true, valid != bytes.len() as u64)
            }
        };
        Ok(Loaded {
            state,
            snapshot_len,
            journal_len,
            journal_exists,
            torn,
        })
    }
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::plugin(
        code::STORE_CORRUPT,
        format!(
            "IPAM state file {} is corrupt ({why}); repair it or move it aside after checking which addresses are in use",
            path.display()
        ),
    )
}

/// A state file that does not parse is reported, never replaced by an empty
/// state: that would hand out every address again.
fn decode(path: &Path, bytes: &[u8]) -> Result<State> {
    checked(path, snapshot::decode(bytes).map_err(|e| corrupt(path, e))?)
}

fn decode_json(path: &Path, bytes: &[u8]) -> Result<State> {
    checked(
        path,
        serde_json::from_slice(bytes).map_err(|e| corrupt(path, e))?,
    )
}

fn checked(path: &Path, mut state: State) -> Result<State> {
    if state.version > STATE_VERSION {
        return Err(corrupt(
            path,
            format!(
                "format version {} is newer than this plugin's {STATE_VERSION}",
                state.version
            ),
        ));
    }
    state.normalize().map_err(|e| corrupt(path, e))?;
    Ok(state)
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
fn encode_line(changes: &[Change], out: &mut Vec<u8>) -> Result<()> {
    let json = serde_json::to_vec(changes)?;
    out.extend_from_slice(format!("{:08x} ", checksum(&json)).as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
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

fn apply(state: &mut State, c: Change) {
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
fn replay(path: &Path, bytes: &[u8], apply: &mut dyn FnMut(Change)) -> Result<u64> {
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

/// The file store's [`Ledger`]: the indexed snapshot, with the journal and
/// this call's changes laid over it as an overlay. Lookups by address are a
/// binary search; lookups by attachment or sticky identity compare bytes in
/// place. No record is decoded unless it is returned.
struct View {
    path: PathBuf,
    snap: snapshot::Indexed<Mapped>,
    /// Address -> its record, or `None` when deleted since the snapshot.
    overlay: BTreeMap<IpAddr, Option<Record>>,
    cursors: BTreeMap<String, IpAddr>,
    /// What this call changed, in order: the journal entries to append.
    changes: Vec<Change>,
}

impl View {
    fn apply(&mut self, c: Change) {
        match c {
            Change::Put(r) => {
                self.overlay.insert(r.ip, Some(r));
            }
            Change::Del(ip) => {
                self.overlay.insert(ip, None);
            }
            Change::Cursor { pool, ip: Some(ip) } => {
                self.cursors.insert(pool, ip);
            }
            Change::Cursor { pool, ip: None } => {
                self.cursors.remove(&pool);
            }
        }
    }

    fn decode(&self, i: usize) -> Result<Record> {
        self.snap.record(i).map_err(|e| corrupt(&self.path, e))
    }

    /// Snapshot records `found` by an index and not replaced since, plus
    /// overlay records matching `keep`, by address.
    fn select(
        &self,
        found: std::result::Result<Vec<usize>, String>,
        keep: impl Fn(&Record) -> bool,
    ) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for i in found.map_err(|e| corrupt(&self.path, e))? {
            let r = self.decode(i)?;
            if !self.overlay.contains_key(&r.ip) {
                out.push(r);
            }
        }
        out.extend(self.overlay.values().flatten().filter(|r| keep(r)).cloned());
        out.sort_by_key(|r| r.ip);
        Ok(out)
    }

    fn find(&self, ip: &IpAddr) -> Result<Option<usize>> {
        self.snap.find(ip).map_err(|e| corrupt(&self.path, e))
    }

    /// The whole state, for a compaction.
    fn materialize(&self) -> Result<State> {
        let mut state = State {
            version: STATE_VERSION,
            records: Vec::with_capacity(self.snap.len() + self.overlay.len()),
            cursors: self.cursors.clone(),
        };
        for i in 0..self.snap.len() {
            let r = self.decode(i)?;
            if !self.overlay.contains_key(&r.ip) {
                state.records.push(r);
            }
        }
        state
            .records
            .extend(self.overlay.values().flatten().cloned());
        state.normalize()?;
        Ok(state)
    }
}

impl Ledger for View {
    fn record(&self, ip: &IpAddr) -> Result<Option<Record>> {
        match self.overlay.get(ip) {
            Some(r) => Ok(r.clone()),
            None => self.find(ip)?.map(|i| self.decode(i)).transpose(),
        }
    }

    fn taken(&self, ip: &IpAddr) -> Result<bool> {
        match self.overlay.get(ip) {
            Some(r) => Ok(r.is_some()),
            None => Ok(self.find(ip)?.is_some()),
        }
    }

    fn held_by(&self, a: &Attachment) -> Result<Vec<Record>> {
        self.select(self.snap.held_by(a), |r| r.owner.as_ref() == Some(a))
    }

    fn sticky_records(&self, s: &StickyId) -> Result<Vec<Record>> {
        self.select(self.snap.sticky_of(s), |r| r.sticky.as_ref() == Some(s))
    }

    fn cursor(&self, pool: &str) -> Result<Option<IpAddr>> {
        Ok(self.cursors.get(pool).copied())
    }

    fn set_cursor(&mut self, pool: &str, ip: IpAddr) -> Result<()> {
        if self.cursors.get(pool) != Some(&ip) {
            let c = Change::Cursor {
                pool: pool.to_string(),
                ip: Some(ip),
            };
            self.changes.push(c.clone());
            self.apply(c);
        }
        Ok(())
    }

    fn put_record(&mut self, r: Record) -> Result<()> {
        if self.record(&r.ip)?.as_ref() != Some(&r) {
            self.changes.push(Change::Put(r.clone()));
            self.apply(Change::Put(r));
        }
        Ok(())
    }

    fn remove_record(&mut self, ip: &IpAddr) -> Result<()> {
        if self.taken(ip)? {
            self.changes.push(Change::Del(*ip));
            self.apply(Change::Del(*ip));
        }
        Ok(())
    }
}

/// The entries that turn `before` into `after` (both sorted by address).
fn diff(before: &State, after: &State) -> Vec<Change> {
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

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fsutil::io_error("cannot sync directory", dir, &e))
}

/// Append `data` at `at` (the end of the valid journal; `torn` when bytes
/// of a torn line follow, which are cut off) and make it durable.
fn append(dir: &Path, path: &Path, at: u64, existed: bool, torn: bool, data: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| fsutil::io_error("cannot open", path, &e))?;
    let res = (if torn { file.set_len(at) } else { Ok(()) })
        .and_then(|()| file.seek(SeekFrom::Start(at)))
        .and_then(|_| file.write_all(data))
        .and_then(|()| file.sync_data());
    if let Err(e) = res {
        // A partial append would read as a torn line anyway, but ENOSPC
        // should not leave garbage behind.
        let _ = file.set_len(at);
        return Err(fsutil::io_error("cannot write", path, &e));
    }
    if !existed {
        // A new file exists durably only once its directory entry does.
        sync_dir(dir)?;
    }
    Ok(())
}

/// Fold everything into a new snapshot, then empty the journal.
fn compact(dir: &Path, state: &State, journal_exists: bool) -> Result<()> {
    let bytes = snapshot::encode(state)
        .map_err(|e| Error::plugin(code::INTERNAL, format!("cannot encode the IPAM state: {e}")))?;
    fsutil::write_atomic(&dir.join(STATE_FILE), &bytes)?;
    if journal_exists {
        let path = dir.join(JOURNAL_FILE);
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .and_then(|f| f.set_len(0).and_then(|()| f.sync_data()))
            .map_err(|e| fsutil::io_error("cannot truncate", &path, &e))?;
    }
    // state.bin now wins over a legacy state.json; removing it is tidiness.
    let legacy = dir.join(LEGACY_STATE_FILE);
    if legacy.exists() {
        std::fs::remove_file(&legacy)
            .map_err(|e| fsutil::io_error("cannot remove", &legacy, &e))?;
    }
    Ok(())
}

impl Store for FileStore {
    fn load(&self, network: &str) -> Result<State> {
        Ok(self.read(network)?.state)
    }

    fn update(&self, network: &str, f: &mut dyn FnMut(&mut State) -> Result<()>) -> Result<()> {
        let dir = self.network_dir(network);
        if !dir.exists() {
            // Nothing stored yet: a change that changes nothing (a DEL of an
            // attachment never added) must not create files.
            let mut state = State::default();
            if f(&mut state).is_ok() && state == State::default() {
                return Ok(());
            }
        }
        fsutil::ensure_dir(&dir)?;
        let _lock = match fsutil::lock_exclusive(&dir.join(LOCK_FILE)) {
            Ok(l) => l,
            Err(e) => {
                // A read-only store can still answer a change that changes
                // nothing (a DEL of what is not there).
                let mut state = self.read(network)?.state;
                let before = state.clone();
                if f(&mut state).is_ok() && state == before {
                    return Ok(());
                }
                return Err(e);
            }
        };
        let loaded = self.read(network)?;
        let mut state = loaded.state.clone();
        f(&mut state)?;
        state.normalize()?;
        let changes = diff(&loaded.state, &state);
        if changes.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        encode_line(&changes, &mut lines)?;
        let journal = loaded.journal_len + lines.len() as u64;
        let legacy = loaded.snapshot_len == u64::MAX;
        if legacy || journal > MIN_COMPACT_BYTES.max(loaded.snapshot_len / COMPACT_DIVISOR) {
            state.version = STATE_VERSION;
            return compact(&dir, &state, loaded.journal_exists);
        }
        append(
            &dir,
            &dir.join(JOURNAL_FILE),
            loaded.journal_len,
            loaded.journal_exists,
            loaded.torn,
            &lines,
        )
    }

    /// ADD and DEL: the lookups are answered from the indexed snapshot plus
    /// the journal, and only this call's changes are appended.
    fn transact(
        &self,
        network: &str,
        f: &mut dyn FnMut(&mut dyn Ledger) -> Result<()>,
    ) -> Result<()> {
        let dir = self.network_dir(network);
        let path = self.state_path(network);
        // Nothing stored yet, or a legacy JSON state to migrate: the
        // whole-state path handles both (the latter once).
        if !dir.exists() || (!path.exists() && self.legacy_state_path(network).exists()) {
            return self.update(network, &mut |s| f(s));
        }
        let lock = match fsutil::lock_exclusive(&dir.join(LOCK_FILE)) {
            Ok(l) => l,
            // Read-only store: the whole-state path answers a no-op.
            Err(_) => return self.update(network, &mut |s| f(s)),
        };
        let mapped = Mapped::open(&path)?;
        let snapshot_len = mapped.as_ref().map_or(0, |m| m.as_ref().len() as u64);
        let snap = match mapped {
            Some(m) => snapshot::Indexed::new(m).map_err(|e| corrupt(&path, e))?,
            None => snapshot::Indexed::new_empty(),
        };
        if snap.version() > STATE_VERSION {
            return Err(corrupt(
                &path,
                format!(
                    "format version {} is newer than this plugin's {STATE_VERSION}",
                    snap.version()
                ),
            ));
        }
        let mut view = View {
            path,
            cursors: snap.cursors().clone(),
            snap,
            overlay: BTreeMap::new(),
            changes: Vec::new(),
        };
        let jpath = self.journal_path(network);
        let (journal_len, journal_exists, torn) = match fsutil::read_optional(&jpath)? {
            None => (0, false, false),
            Some(bytes) => {
                let valid = replay(&jpath, &bytes, &mut |c| view.apply(c))?;
                (valid, true, valid != bytes.len() as u64)
            }
        };
        f(&mut view)?;
        if view.changes.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        encode_line(&view.changes, &mut lines)?;
        let journal = journal_len + lines.len() as u64;
        if journal > MIN_COMPACT_BYTES.max(snapshot_len / COMPACT_DIVISOR) {
            let state = view.materialize()?;
            return compact(&dir, &state, journal_exists);
        }
        append(&dir, &jpath, journal_len, journal_exists, torn, &lines)?;
        drop(lock);
        Ok(())
    }

    fn networks(&self) -> Result<Vec<String>> {
        let rd = match std::fs::read_dir(&self.data_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(fsutil::io_error("cannot list", &self.data_dir, &e)),
        };
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| {
                let p = e.path();
                [STATE_FILE, LEGACY_STATE_FILE, JOURNAL_FILE]
                    .iter()
                    .any(|f| p.join(f).is_file())
            })
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{Attachment, Record};
    use crate::store::update;

    fn rec(ip: &str, c: &str) -> Record {
        Record {
            ip: ip.parse().unwrap(),
            pool: "p".into(),
            node: "n".into(),
            owner: Some(Attachment {
                container_id: c.into(),
                ifname: "eth0".into(),
            }),
            sticky: None,
        }
    }

    #[test]
    fn update_persists_and_failed_update_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().to_path_buf());
        assert_eq!(st.load("net").unwrap(), State::default());
        assert!(st.networks().unwrap().is_empty());
        update(&st, "net", |s| {
            s.records.push(rec("10.0.0.2", "a"));
            Ok(())
        })
        .unwrap();
        let e = update(&st, "net", |s| {
            s.records.clear();
            Err::<(), _>(Error::plugin(110, "full"))
        })
        .unwrap_err();
        assert_eq!(e.code(), 110);
        assert_eq!(st.load("net").unwrap().records, vec![rec("10.0.0.2", "a")]);
        assert_eq!(st.networks().unwrap(), vec!["net".to_string()]);
    }

    #[test]
    fn corrupt_state_is_an_error_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().to_path_buf());
        std::fs::create_dir_all(st.network_dir("net")).unwrap();
        let newer = State {
            version: 99,
            ..State::default()
        };
        let newer = snapshot::encode(&newer).unwrap();
        let good = snapshot::encode(&State::default()).unwrap();
        for bad in [
            &b"CIPAMSN1\x01\0\0\0\x05"[..],
            b"",
            &newer,
            &good[..good.len() - 1],
        ] {
            std::fs::write(st.state_path("net"), bad).unwrap();
            let e = st.load("net").unwrap_err();
            assert_eq!(e.code(), code::STORE_CORRUPT, "{e}");
            assert!(e.to_string().contains("state.bin"), "{e}");
            let e = update(&st, "net", |_| Ok(())).unwrap_err();
            assert_eq!(e.code(), code::STORE_CORRUPT);
            assert_eq!(std::fs::read(st.state_path("net")).unwrap(), bad);
        }
        let dup = State {
            records: vec![rec("10.0.0.2", "a"), rec("10.0.0.2", "b")],
            ..State::default()
        };
        std::fs::write(st.state_path("net"), snapshot::encode(&dup).unwrap()).unwrap();
        assert_eq!(st.load("net").unwrap_err().code(), code::STORE_CORRUPT);
        // A corrupt legacy JSON snapshot too.
        std::fs::remove_file(st.state_path("net")).unwrap();
        std::fs::write(
            st.legacy_state_path("net"),
            b"{\"version\":1,\"records\":[{",
        )
        .unwrap();
        let e = st.load("net").unwrap_err();
        assert!(e.to_string().contains("state.json"), "{e}");
    }

    #[test]
    fn file_where_the_data_dir_should_be_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("data");
        std::fs::write(&blocker, b"").unwrap();
        let st = FileStore::new(blocker);
        // A change that changes nothing needs no store and succeeds.
        update(&st, "net", |_| Ok(())).unwrap();
        let e = update(&st, "net", |s| {
            s.records.push(rec("10.0.0.2", "a"));
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.code(), code::IO);
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn threads_do_not_lose_updates() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().to_path_buf());
        std::thread::scope(|sc| {
            for t in 0..8u8 {
                let st = &st;
                sc.spawn(move || {
                    for i in 0..10u8 {
                        update(st, "net", |s| {
                            let ip = format!("10.0.{t}.{i}");
                            s.records.push(rec(&ip, &ip));
                            s.normalize()
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(st.load("net").unwrap().records.len(), 80);
    }

    fn journal_lines(st: &FileStore) -> usize {
        std::fs::read(st.journal_path("net"))
            .map(|b| b.iter().filter(|c| **c == b'\n').count())
            .unwrap_or(0)
    }

    #[test]
    fn a_change_appends_only_its_difference() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().to_path_buf());
        for i in 0..3 {
            update(&st, "net", |s| {
                s.put(rec(&format!("10.0.0.{i}"), "a"));
                Ok(())
            })
            .unwrap();
        }
        update(&st, "net", |s| {
            s.remove(&"10.0.0.1".parse().unwrap());
            s.cursors.insert("p".into(), "10.0.0.2".parse().unwrap());
            Ok(())
        })
        .unwrap();
        // One line per change; no snapshot written yet.
        assert_eq!(journal_lines(&st), 4);
        assert!(!st.state_path("net").exists());
        let s = st.load("net").unwrap();
        let ips: Vec<String> = s.records.iter().map(|r| r.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.0", "10.0.0.2"]);
        assert_eq!(s.cursors["p"].to_string(), "10.0.0.2");
    }

    #[test]
    fn torn_last_entry_is_ignored_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().to_path_buf());
        update(&st, "net", |s| {
            s.put(rec("10.0.0.2", "a"));
            Ok(())
        })
        .unwrap();
        let good = std::fs::read(st.journal_path("net")).unwrap();
        // A crash mid-append: half a line, or a zero-filled block.
        let half = [&good[..], &good[..good.len() / 2]].concat();
        let zeros = [&good[..], &[0u8; 64][..]].concat();
        for torn in [half, zeros] {
            std::fs::write(st.journal_path("net"), &torn).unwrap();
            assert_eq!(st.load("net").unwrap().records, vec![rec("10.0.0.2", "a")]);
            update(&st, "net", |s| {
                s.put(rec("10.0.0.3", "b"));
                Ok(())
            })
            .unwrap();
            let after = std::fs::read(st.journal_path("net")).unwrap();
            assert!(after.starts_with(&good) && after.ends_with(b"\n"));
            assert_eq!(journal_lines(&st), 2, "the torn bytes were not cut off");
            assert_eq!(st.load("net").unwrap().records.len(), 2);
            update(&st, "net", |s| {
                s.remove(&"10.0.0.3".parse().unwrap());
                Ok(())
            })
            .unwrap();
        }
    }

    #[test]
    fn bad_entry_before_others_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().to_path_buf());
        for i in 2..4 {
            update(&st, "net", |s| {
                s.put(rec(&format!("10.0.0.{i}"), "a"));
                Ok(())
            })
            .unwrap();
        }
        let mut bytes = std::fs::read(st.journal_path("net")).unwrap();
        // Flip one byte of the first entry: its checksum no longer matches.
        let at = bytes.iter().position(|b| *b == b'2').unwrap();
        bytes[at] = b'9';
        std::fs::write(st.journal_path("net"), &bytes).unwrap();
        let e = st.load("net").unwrap_err();
        assert_eq!(e.code(), code::STORE_CORRUPT, "{e}");
        assert!(e.to_string().contains("journal"), "{e}");
        assert_eq!(
            update(&st, "net", |_| Ok(())).unwrap_err().code(),
            code::STORE_CORRUPT
        );
        assert_eq!(std::fs::read(st.journal_path("net")).unwrap(), bytes);
    }

    #[test]
    fn compaction_folds_the_journal_and_a_crash_midway_replays_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().to_path_buf());
        let mut want = State::default();
        let mut compacted = None;
        for i in 0..400u32 {
            let ip = format!("10.0.{}.{}", i / 250, i % 250);
            let before_journal = std::fs::read(st.journal_path("net")).ok();
            update(&st, "net", |s| {
                s.put(rec(&ip, &ip));
                Ok(())
            })
            .unwrap();
            want.put(rec(&ip, &ip));
            if compacted.is_none() && journal_lines(&st) == 0 {
                compacted = before_journal;
            }
        }
        assert_eq!(st.load("net").unwrap().records, want.records);
        let snap = snapshot::decode(&std::fs::read(st.state_path("net")).unwrap()).unwrap();
        assert!(!snap.records.is_empty(), "the journal was never compacted");
        // A crash after the snapshot was replaced but before the journal was
        // emptied: the old journal replays onto the new snapshot harmlessly.
        let old_journal = compacted.expect("a compaction happened");
        assert!(!old_journal.is_empty());
        let now = std::fs::read(st.journal_path("net")).unwrap();
        std::fs::write(
            st.journal_path("net"),
            [&old_journal[..], &now[..]].concat(),
        )
        .unwrap();
        assert_eq!(st.load("net").unwrap().records, want.records);
    }

    #[test]
    fn legacy_snapshot_without_journal_loads_and_takes_changes() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().to_path_buf());
        std::fs::create_dir_all(st.network_dir("net")).unwrap();
        let mut s = State::default();
        s.put(rec("10.0.0.2", "a"));
        std::fs::write(st.legacy_state_path("net"), serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(st.networks().unwrap(), vec!["net".to_string()]);
        update(&st, "net", |s| {
            s.put(rec("10.0.0.3", "b"));
            Ok(())
        })
        .unwrap();
        // The first change moved it to state.bin.
        assert_eq!(st.load("net").unwrap().records.len(), 2);
        assert!(!st.legacy_state_path("net").exists());
        assert!(st.state_path("net").exists());
        assert_eq!(journal_lines(&st), 0);
    }

    #[test]
    fn transact_through_the_index_matches_the_in_memory_allocator() {
        use crate::allocator::{self, AddRequest, PodRef};
        use crate::store::transact;
        let cfg = crate::config::Config::parse(
            &serde_json::json!({"pools": [
                {"name": "v4", "subnet": "10.0.0.0/26", "gateway": "10.0.0.1"},
                {"name": "v6", "subnet": "fd00::/120"}],
                "sticky": [{"namespace": "db"}]}),
            || Some("n1".into()),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().to_path_buf());
        let mut mem = State::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..600 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let who = seed % 40;
            let req = AddRequest {
                attachment: Attachment {
                    container_id: format!("c{who}"),
                    ifname: "eth0".into(),
                },
                pod: Some(PodRef {
                    namespace: if who.is_multiple_of(3) { "db" } else { "web" }.into(),
                    name: format!("p{}", who % 20),
                }),
                requested: vec![],
                requested_field: "x".into(),
            };
            if !(seed >> 8).is_multiple_of(3) {
                let want = allocator::add(&mut mem, &cfg, &req, &[]);
                let got = transact(&st, "net", |l| allocator::add(l, &cfg, &req, &[]));
                assert_eq!(got.is_ok(), want.is_ok(), "step {step}: {got:?} {want:?}");
                if let (Ok(g), Ok(w)) = (got, want) {
                    assert_eq!(g, w, "step {step}");
                }
            } else {
                let want = allocator::del(&mut mem, &req.attachment).unwrap();
                let got = transact(&st, "net", |l| allocator::del(l, &req.attachment)).unwrap();
                assert_eq!(got, want, "step {step}");
            }
            assert_eq!(st.load("net").unwrap(), mem, "step {step}");
        }
        assert!(st.state_path("net").exists(), "never compacted");
    }

    #[test]
    fn a_torn_append_loses_the_whole_call() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().to_path_buf());
        update(&st, "net", |s| {
            s.put(rec("10.0.0.2", "a"));
            Ok(())
        })
        .unwrap();
        let before = std::fs::read(st.journal_path("net")).unwrap();
        // A dual-stack ADD: two records and a cursor in one call.
        update(&st, "net", |s| {
            s.put(rec("10.0.0.3", "b"));
            s.put(rec("fd00::3", "b"));
            s.cursors.insert("p".into(), "10.0.0.3".parse().unwrap());
            Ok(())
        })
        .unwrap();
        let after = std::fs::read(st.journal_path("net")).unwrap();
        assert_eq!(journal_lines(&st), 2);
        // Cut anywhere inside the second call's line: none of it counts.
        for cut in before.len()..after.len() {
            std::fs::write(st.journal_path("net"), &after[..cut]).unwrap();
            assert_eq!(
                st.load("net").unwrap().records,
                vec![rec("10.0.0.2", "a")],
                "cut at {cut}"
            );
        }
    }
}
