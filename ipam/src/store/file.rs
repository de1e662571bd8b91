//! The file store: `<dataDir>/<network>/{lock,state.json}`.
//!
//! Every change takes an exclusive `flock` on `lock`, reads `state.json`,
//! applies the change and replaces the file atomically and durably
//! (`cni::fsutil`). A killed process releases its lock with its file
//! descriptors and leaves the old or the new state, never a mix. Readers
//! (`load`) need no lock for the same reason.

use std::path::{Path, PathBuf};

use cni::error::code;
use cni::{fsutil, Error, Result};

use super::Store;
use crate::allocator::{State, STATE_VERSION};

pub const STATE_FILE: &str = "state.json";
pub const LOCK_FILE: &str = "lock";

#[derive(Debug, Clone)]
pub struct FileStore {
    data_dir: PathBuf,
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

    fn read(&self, network: &str) -> Result<State> {
        let path = self.state_path(network);
        match fsutil::read_optional(&path)? {
            None => Ok(State::default()),
            Some(bytes) => decode(&path, &bytes),
        }
    }
}

/// A state file that does not parse is reported, never replaced by an empty
/// state: that would hand out every address again.
fn decode(path: &Path, bytes: &[u8]) -> Result<State> {
    let corrupt = |why: String| {
        Error::plugin(
            code::STORE_CORRUPT,
            format!(
                "IPAM state file {} is corrupt ({why}); repair it or move it aside after checking which addresses are in use",
                path.display()
            ),
        )
    };
    let mut state: State = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if state.version > STATE_VERSION {
        return Err(corrupt(format!(
            "format version {} is newer than this plugin's {STATE_VERSION}",
            state.version
        )));
    }
    state.normalize().map_err(|e| corrupt(e.to_string()))?;
    Ok(state)
}

impl Store for FileStore {
    fn load(&self, network: &str) -> Result<State> {
        self.read(network)
    }

    fn update(&self, network: &str, f: &mut dyn FnMut(&mut State) -> Result<()>) -> Result<()> {
        let dir = self.network_dir(network);
        fsutil::ensure_dir(&dir)?;
        let _lock = fsutil::lock_exclusive(&dir.join(LOCK_FILE))?;
        let before = self.read(network)?;
        let mut state = before.clone();
        f(&mut state)?;
        if state == before {
            return Ok(());
        }
        state.version = STATE_VERSION;
        let bytes = serde_json::to_vec(&state)?;
        fsutil::write_atomic(&dir.join(STATE_FILE), &bytes)
    }

    fn networks(&self) -> Result<Vec<String>> {
        let rd = match std::fs::read_dir(&self.data_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(fsutil::io_error("cannot list", &self.data_dir, &e)),
        };
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).is_file())
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
        for bad in [
            &b"{\"version\":1,\"records\":[{"[..],
            b"",
            b"{\"version\":99}",
        ] {
            std::fs::write(st.state_path("net"), bad).unwrap();
            let e = st.load("net").unwrap_err();
            assert_eq!(e.code(), code::STORE_CORRUPT, "{e}");
            assert!(e.to_string().contains("state.json"), "{e}");
            let e = update(&st, "net", |_| Ok(())).unwrap_err();
            assert_eq!(e.code(), code::STORE_CORRUPT);
            assert_eq!(std::fs::read(st.state_path("net")).unwrap(), bad);
        }
        let dup = serde_json::json!({"version": 1, "records": [
            {"ip": "10.0.0.2", "pool": "p", "node": "n"}, {"ip": "10.0.0.2", "pool": "p", "node": "m"}]});
        std::fs::write(st.state_path("net"), dup.to_string()).unwrap();
        assert_eq!(st.load("net").unwrap_err().code(), code::STORE_CORRUPT);
    }

    #[test]
    fn file_where_the_data_dir_should_be_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("data");
        std::fs::write(&blocker, b"").unwrap();
        let st = FileStore::new(blocker);
        let e = update(&st, "net", |_| Ok(())).unwrap_err();
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
}
