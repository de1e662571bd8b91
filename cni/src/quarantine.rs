//! The node's quarantine file: addresses found in use outside the cluster.
//!
//! The coordinator records an address here when its conflict probe finds
//! another host answering for it; the IPAM plugin skips active entries when it
//! hands out addresses. Entries expire so a conflict that was fixed (the other
//! host went away) does not take the address out of service for good.
//!
//! Format: `{"entries":[{"ip":"10.6.0.7","until":1763770000,"reason":"..."}]}`,
//! `until` in Unix seconds.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{code, Error, Result};
use crate::fsutil::{Dir, MAX_FILE};

/// Where the coordinator and the IPAM plugin meet unless configured otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/cni/coordinator/quarantine.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub ip: IpAddr,
    /// Unix seconds after which the entry no longer counts.
    pub until: u64,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    #[serde(default)]
    entries: Vec<Entry>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The quarantine file's directory and its name in it (the lock file sits
/// next to it as `<name>.lock`).
fn split(path: &Path) -> Result<(&Path, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Io(format!("not a file path: {}", path.display())))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((dir, name.to_string()))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<File> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::plugin(
            code::STORE_CORRUPT,
            format!(
                "quarantine file {} is corrupt ({e}); fix or remove it",
                path.display()
            ),
        )
    })
}

/// Quarantine `ip` for `ttl` from now. A second record of the same address
/// extends (never shortens) its entry. Expired entries are dropped.
pub fn record(path: &Path, ip: IpAddr, ttl: Duration, reason: &str) -> Result<()> {
    let (dir, name) = split(path)?;
    let dir = Dir::create(dir)?;
    let _lock = dir.lock(&format!("{name}.lock"))?;
    let mut file = match dir.read(&name, MAX_FILE)? {
        Some(bytes) => parse(path, &bytes)?,
        None => File::default(),
    };
    let now = now_secs();
    let until = now.saturating_add(ttl.as_secs().max(1));
    file.entries.retain(|e| e.until > now);
    match file.entries.iter_mut().find(|e| e.ip == ip) {
        Some(e) => {
            e.until = e.until.max(until);
            e.reason = reason.to_string();
        }
        None => file.entries.push(Entry {
            ip,
            until,
            reason: reason.to_string(),
        }),
    }
    let bytes = serde_json::to_vec_pretty(&file)?;
    dir.write_atomic(&name, &bytes)
}

/// All unexpired entries (a missing file has none).
pub fn load_entries(path: &Path) -> Result<Vec<Entry>> {
    // No lock: writers replace the file by rename, so a reader sees a whole
    // old or a whole new document.
    let (dir, name) = split(path)?;
    let Some(dir) = Dir::open(dir)? else {
        return Ok(Vec::new());
    };
    let Some(bytes) = dir.read(&name, MAX_FILE)? else {
        return Ok(Vec::new());
    };
    let now = now_secs();
    let mut entries = parse(path, &bytes)?.entries;
    entries.retain(|e| e.until > now);
    Ok(entries)
}

/// The addresses currently quarantined (a missing file means none).
pub fn load_active(path: &Path) -> Result<Vec<IpAddr>> {
    Ok(load_entries(path)?.into_iter().map(|e| e.ip).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_load_expire() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/quarantine.json");
        assert!(load_active(&p).unwrap().is_empty());
        let a: IpAddr = "10.6.0.7".parse().unwrap();
        let b: IpAddr = "fd00:6::7".parse().unwrap();
        record(&p, a, Duration::from_secs(600), "arp reply from aa:bb").unwrap();
        record(&p, b, Duration::from_secs(600), "dad").unwrap();
        record(&p, a, Duration::from_secs(60), "again").unwrap();
        let got = load_entries(&p).unwrap();
        assert_eq!(got.len(), 2);
        let ea = got.iter().find(|e| e.ip == a).unwrap();
        // Extended, never shortened.
        assert!(ea.until >= now_secs() + 590);
        assert_eq!(ea.reason, "again");

        // An expired entry is ignored by readers and dropped by the next writer.
        let stale = r#"{"entries":[{"ip":"10.0.0.1","until":1,"reason":"old"}]}"#;
        std::fs::write(&p, stale).unwrap();
        assert!(load_active(&p).unwrap().is_empty());
        record(&p, a, Duration::from_secs(600), "x").unwrap();
        let raw = std::fs::read_to_string(&p).unwrap();
        assert!(!raw.contains("10.0.0.1"), "{raw}");
        assert_eq!(load_active(&p).unwrap(), vec![a]);
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("quarantine.json");
        std::fs::write(&p, b"{not json").unwrap();
        let e = load_active(&p).unwrap_err();
        assert_eq!(e.code(), code::STORE_CORRUPT);
        let e = record(&p, "10.0.0.1".parse().unwrap(), Duration::from_secs(1), "x").unwrap_err();
        assert_eq!(e.code(), code::STORE_CORRUPT);
        assert_eq!(std::fs::read(&p).unwrap(), b"{not json");
    }

    #[test]
    fn a_fifo_or_device_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("quarantine.json");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Both used to block forever in open(2).
        assert_eq!(load_active(&p).unwrap_err().code(), 5);
        let ip = "10.0.0.1".parse().unwrap();
        assert_eq!(
            record(&p, ip, Duration::from_secs(1), "x")
                .unwrap_err()
                .code(),
            5
        );
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        assert_eq!(load_active(&p).unwrap_err().code(), 5);
    }

    #[test]
    fn concurrent_records_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("quarantine.json");
        std::thread::scope(|s| {
            for i in 0..16u8 {
                let p = &p;
                s.spawn(move || {
                    let ip = IpAddr::from([10, 9, 0, i]);
                    record(p, ip, Duration::from_secs(600), "t").unwrap();
                });
            }
        });
        assert_eq!(load_active(&p).unwrap().len(), 16);
    }
}
