//! ADD results kept for CHECK and DEL, like libcni's `/var/lib/cni/results`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

/// Where cached ADD results live.
#[derive(Debug)]
pub enum Cache {
    /// In this process only (tests that ADD and DEL through one `Chain`).
    Memory(Mutex<HashMap<String, Value>>),
    /// One file per attachment under `<dir>/results/`, so a CLI run can DEL
    /// what an earlier run added.
    Dir(PathBuf),
}

/// The identity of one attachment in the cache.
pub struct Key<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

impl Key<'_> {
    fn file_name(&self) -> String {
        // Container IDs and ifnames cannot hold '/', but a runtime bug must not
        // let us write outside the cache dir.
        format!("{}-{}-{}", self.network, self.container_id, self.ifname).replace('/', "_")
    }
}

impl Cache {
    pub fn memory() -> Cache {
        Cache::Memory(Mutex::new(HashMap::new()))
    }

    /// Store `entry` (the full cache record, see [`record`]).
    pub fn put(&self, key: &Key<'_>, entry: Value) -> std::io::Result<()> {
        match self {
            Cache::Memory(m) => {
                if let Ok(mut m) = m.lock() {
                    m.insert(key.file_name(), entry);
                }
                Ok(())
            }
            Cache::Dir(dir) => {
                let dir = dir.join("results");
                std::fs::create_dir_all(&dir)?;
                let tmp = dir.join(format!(".{}.tmp", key.file_name()));
                std::fs::write(&tmp, serde_json::to_vec_pretty(&entry)?)?;
                std::fs::rename(&tmp, dir.join(key.file_name()))
            }
        }
    }

    /// The cached ADD result of this attachment, if any.
    pub fn result(&self, key: &Key<'_>) -> Option<Value> {
        self.entry(key).and_then(|e| e.get("result").cloned())
    }

    pub fn entry(&self, key: &Key<'_>) -> Option<Value> {
        match self {
            Cache::Memory(m) => m.lock().ok()?.get(&key.file_name()).cloned(),
            Cache::Dir(dir) => {
                let text = std::fs::read(dir.join("results").join(key.file_name())).ok()?;
                serde_json::from_slice(&text).ok()
            }
        }
    }

    pub fn remove(&self, key: &Key<'_>) -> std::io::Result<()> {
        match self {
            Cache::Memory(m) => {
                if let Ok(mut m) = m.lock() {
                    m.remove(&key.file_name());
                }
                Ok(())
            }
            Cache::Dir(dir) => {
                match std::fs::remove_file(dir.join("results").join(key.file_name())) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
        }
    }

    /// `(containerID, ifname)` of every cached attachment of `network`: the
    /// valid attachments a GC must keep.
    pub fn attachments(&self, network: &str) -> Vec<(String, String)> {
        let entries: Vec<Value> = match self {
            Cache::Memory(m) => m
                .lock()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            Cache::Dir(dir) => read_dir_entries(&dir.join("results")),
        };
        entries
            .iter()
            .filter(|e| e["networkName"] == network)
            .filter_map(|e| {
                Some((
                    e["containerId"].as_str()?.to_string(),
                    e["ifName"].as_str()?.to_string(),
                ))
            })
            .collect()
    }
}

fn read_dir_entries(dir: &Path) -> Vec<Value> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect()
}

/// The cache record of one attachment (libcni's `cniCacheV1` shape, with the
/// config kept as JSON rather than base64).
pub fn record(
    key: &Key<'_>,
    config: &Value,
    args: &[(String, String)],
    capability_args: &serde_json::Map<String, Value>,
    result: &Value,
) -> Value {
    json!({
        "kind": "cniCacheV1",
        "containerId": key.container_id,
        "ifName": key.ifname,
        "networkName": key.network,
        "config": config,
        "cniArgs": args.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "capabilityArgs": capability_args,
        "result": result,
    })
}
