//! The file store: `<dataDir>/<network>/{lock,state.bin,journal}`.
//!
//! `state.bin` is an indexed snapshot of the whole state (see
//! [`super::snapshot`]; a `state.json` written by earlier versions is read
//! while no `state.bin` exists and replaced by the first change); `journal`
//! holds the changes made since, one checksummed line per call (see
//! [`super::journal`]). A change takes an exclusive `flock` on `lock`, maps
//! the snapshot, replays the journal over it, lets the allocator decide
//! through [`Ledger`] lookups (binary searches in the snapshot's tables, see
//! [`super::view`]), and appends only this call's changes to the journal
//! (write, fdatasync). So an ADD or DEL reads a few records and writes and
//! syncs a few hundred bytes whatever the number of records, where rewriting
//! the whole JSON state cost O(records) and two syncs per call.
//!
//! Crash safety: a call is committed once its journal fsync returned. When
//! the journal outgrows max(16 KiB, snapshot/32), the writer compacts: it
//! replaces the snapshot atomically ([`Dir::write_atomic`]) and then empties
//! the journal. A crash in between leaves the new snapshot with the old
//! journal, which replays to the same state (its entries are absolute
//! assignments). Readers (`load`) take no lock: they read the journal before
//! the snapshot and so see the old or the new state.
//!
//! Files: the network directory is opened once and every file in it relative
//! to it, never through a symbolic link, and only when it is a regular file
//! (a FIFO or device in its place fails at once); directories are 0700 and
//! files 0600 whatever the umask (see [`cni::fsutil`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cni::error::code;
use cni::fsutil::{self, Dir};
use cni::{Error, Result};

use super::journal::{self, JOURNAL_FILE};
use super::mapped::Mapped;
use super::view::View;
use super::{snapshot, Store};
use crate::allocator::{Ledger, State, STATE_VERSION};

pub const STATE_FILE: &str = "state.bin";
/// The JSON snapshot of earlier versions.
pub const LEGACY_STATE_FILE: &str = "state.json";
pub const LOCK_FILE: &str = "lock";

/// The journal is folded into the snapshot once it is larger than
/// `MIN_COMPACT_BYTES` or this fraction of the snapshot, whichever is more.
/// Every call replays the journal (~3,000 instructions a line), so a small
/// bound keeps calls flat; the snapshot rewrite it triggers (~8 ms at 4,000
/// records, every ~150 calls) stays a small share of the calls in between.
const COMPACT_DIVISOR: u64 = 32;
const MIN_COMPACT_BYTES: u64 = 16 * 1024;
/// A legacy JSON state is read whole, once, to migrate it: ~200 bytes a
/// record, so this holds over a million.
const LEGACY_MAX: u64 = 256 << 20;

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

    fn read(&self, dir: &Dir) -> Result<Loaded> {
        // The journal is read before the snapshot: a lock-free reader racing
        // a compaction then sees the old snapshot with its journal, or the
        // new snapshot with the old journal, which replays onto it harmlessly.
        let mut changes = Vec::new();
        let (journal_len, journal_exists, torn) = journal::load(dir, &mut |c| changes.push(c))?;
        let (mut state, snapshot_len) = match Mapped::open(dir, STATE_FILE)? {
            Some(m) => {
                let bytes = m.as_ref();
                (decode(&dir.join(STATE_FILE), bytes)?, bytes.len() as u64)
            }
            None => match dir.read(LEGACY_STATE_FILE, LEGACY_MAX)? {
                // u64::MAX: the first change compacts, replacing the slow JSON.
                Some(bytes) => (decode_json(&dir.join(LEGACY_STATE_FILE), &bytes)?, u64::MAX),
                None => (State::default(), 0),
            },
        };
        for c in changes {
            journal::apply(&mut state, c);
        }
        Ok(Loaded {
            state,
            snapshot_len,
            journal_len,
            journal_exists,
            torn,
        })
    }
}

pub(super) fn corrupt(path: &Path, why: impl std::fmt::Display) -> Error {
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

fn newer(path: &Path, version: u32) -> Error {
    corrupt(
        path,
        format!("format version {version} is newer than this plugin's {STATE_VERSION}"),
    )
}

fn checked(path: &Path, mut state: State) -> Result<State> {
    if state.version > STATE_VERSION {
        return Err(newer(path, state.version));
    }
    state.normalize().map_err(|e| corrupt(path, e))?;
    Ok(state)
}

fn encode_error(e: String) -> Error {
    Error::plugin(code::INTERNAL, format!("cannot encode the IPAM state: {e}"))
}

/// Fold everything into a new snapshot (`bytes`), then empty the journal.
fn compact(dir: &Dir, bytes: Vec<u8>, journal_exists: bool) -> Result<()> {
    dir.write_atomic(STATE_FILE, &bytes)?;
    if journal_exists {
        journal::truncate(dir)?;
    }
    // state.bin now wins over a legacy state.json; removing it is tidiness.
    dir.remove(LEGACY_STATE_FILE)
}

impl Store for FileStore {
    fn load(&self, network: &str) -> Result<State> {
        match Dir::open(&self.network_dir(network))? {
            Some(dir) => Ok(self.read(&dir)?.state),
            None => Ok(State::default()),
        }
    }

    fn update(&self, network: &str, f: &mut dyn FnMut(&mut State) -> Result<()>) -> Result<()> {
        let path = self.network_dir(network);
        let dir = match Dir::open(&path) {
            Ok(Some(d)) => d,
            // Nothing stored yet (or no usable store): a change that changes
            // nothing (a DEL of an attachment never added) must not create
            // files, nor fail.
            r => {
                let mut state = State::default();
                if f(&mut state).is_ok() && state == State::default() {
                    return Ok(());
                }
                r?;
                Dir::create(&path)?
            }
        };
        let _lock = match dir.lock(LOCK_FILE) {
            Ok(l) => l,
            Err(e) => {
                // A read-only store can still answer a change that changes
                // nothing (a DEL of what is not there).
                let mut state = self.read(&dir)?.state;
                let before = state.clone();
                if f(&mut state).is_ok() && state == before {
                    return Ok(());
                }
                return Err(e);
            }
        };
        let loaded = self.read(&dir)?;
        let mut state = loaded.state.clone();
        f(&mut state)?;
        state.normalize()?;
        let changes = journal::diff(&loaded.state, &state);
        if changes.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        journal::encode_line(&changes, &mut lines)?;
        let journal = loaded.journal_len + lines.len() as u64;
        let legacy = loaded.snapshot_len == u64::MAX;
        if legacy || journal > MIN_COMPACT_BYTES.max(loaded.snapshot_len / COMPACT_DIVISOR) {
            state.version = STATE_VERSION;
            let bytes = snapshot::encode(&state).map_err(encode_error)?;
            return compact(&dir, bytes, loaded.journal_exists);
        }
        journal::append(&dir, loaded.journal_len, loaded.torn, &lines)
    }

    /// ADD and DEL: the lookups are answered from the indexed snapshot plus
    /// the journal, and only this call's changes are appended.
    fn transact(
        &self,
        network: &str,
        f: &mut dyn FnMut(&mut dyn Ledger) -> Result<()>,
    ) -> Result<()> {
        // Nothing stored yet, or a legacy JSON state to migrate: the
        // whole-state path handles both (the latter once).
        let dir = match Dir::open(&self.network_dir(network)) {
            Ok(Some(d)) => d,
            _ => return self.update(network, &mut |s| f(s)),
        };
        if !dir.exists(STATE_FILE)? && dir.exists(LEGACY_STATE_FILE)? {
            return self.update(network, &mut |s| f(s));
        }
        let lock = match dir.lock(LOCK_FILE) {
            Ok(l) => l,
            // Read-only store: the whole-state path answers a no-op.
            Err(_) => return self.update(network, &mut |s| f(s)),
        };
        let path = dir.join(STATE_FILE);
        let mapped = Mapped::open(&dir, STATE_FILE)?;
        let snapshot_len = mapped.as_ref().map_or(0, |m| m.as_ref().len() as u64);
        let snap = match mapped {
            Some(m) => snapshot::Indexed::new(m).map_err(|e| corrupt(&path, e))?,
            None => snapshot::Indexed::new_empty(),
        };
        if snap.version() > STATE_VERSION {
            return Err(newer(&path, snap.version()));
        }
        let mut view = View {
            path,
            cursors: snap.cursors().clone(),
            snap,
            overlay: BTreeMap::new(),
            changes: Vec::new(),
        };
        let (journal_len, journal_exists, torn) = journal::load(&dir, &mut |c| view.apply(c))?;
        f(&mut view)?;
        if view.changes.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        journal::encode_line(&view.changes, &mut lines)?;
        let journal = journal_len + lines.len() as u64;
        if journal > MIN_COMPACT_BYTES.max(snapshot_len / COMPACT_DIVISOR) {
            let bytes = snapshot::encode_iter(STATE_VERSION, view.merged(), &view.cursors)
                .map_err(|e| corrupt(&view.path, e))?;
            drop(view);
            return compact(&dir, bytes, journal_exists);
        }
        journal::append(&dir, journal_len, torn, &lines)?;
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
    fn planted_links_fifos_and_devices_are_refused_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().join("data"));
        update(&st, "net", |s| {
            s.put(rec("10.0.0.2", "a"));
            Ok(())
        })
        .unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let put = |ip: &str| {
            update(&st, "net", |s| {
                s.put(rec(ip, ip));
                Ok(())
            })
        };
        // A journal link used to be appended through: the file outside the
        // store was overwritten.
        std::fs::remove_file(st.journal_path("net")).unwrap();
        std::os::unix::fs::symlink(&outside, st.journal_path("net")).unwrap();
        assert_eq!(put("10.0.0.3").unwrap_err().code(), code::IO);
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        std::fs::remove_file(st.journal_path("net")).unwrap();
        // A temporary link used to replace state.bin by the link.
        let tmp = st.network_dir("net").join(".state.bin.tmp");
        std::os::unix::fs::symlink(&outside, &tmp).unwrap();
        for i in 0..400 {
            put(&format!("10.1.{}.{}", i / 200, i % 200)).unwrap();
        }
        let meta = std::fs::symlink_metadata(st.state_path("net")).unwrap();
        assert!(
            meta.is_file(),
            "state.bin is a regular file after compactions"
        );
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        // state.bin a FIFO or /dev/zero: both used to hang the call.
        std::fs::remove_file(st.state_path("net")).unwrap();
        nix::unistd::mkfifo(
            &st.state_path("net"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert_eq!(st.load("net").unwrap_err().code(), code::IO);
        assert_eq!(put("10.0.0.4").unwrap_err().code(), code::IO);
        std::fs::remove_file(st.state_path("net")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", st.state_path("net")).unwrap();
        assert_eq!(st.load("net").unwrap_err().code(), code::IO);
        assert_eq!(put("10.0.0.4").unwrap_err().code(), code::IO);
        // The network directory itself as a link is refused too.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, st.network_dir("other")).unwrap();
        assert_eq!(
            update(&st, "other", |s| {
                s.put(rec("10.0.0.9", "x"));
                Ok(())
            })
            .unwrap_err()
            .code(),
            code::IO
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn store_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let st = FileStore::new(dir.path().join("data"));
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let r = update(&st, "net", |s| {
            s.put(rec("10.0.0.2", "a"));
            Ok(())
        });
        nix::sys::stat::umask(old);
        r.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(st.data_dir()), 0o700);
        assert_eq!(mode(&st.network_dir("net")), 0o700);
        assert_eq!(mode(&st.journal_path("net")), 0o600);
        assert_eq!(mode(&st.network_dir("net").join(LOCK_FILE)), 0o600);
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
