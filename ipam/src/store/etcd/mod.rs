//! The cluster-wide store on etcd v3: one key per claimed address, index
//! keys per attachment, sticky identity and node (see [`keys`]), and one
//! conditional transaction per call (see [`ledger`]). No lock and no
//! per-pool object: two calls conflict only when they touch the same
//! address or the same attachment or identity, and the loser re-decides.

mod client;
pub mod config;
/// Public for the fuzz harness (`tests/tests/fuzz.rs`), like the file
/// store's decoders.
pub mod http;
pub mod keys;
mod ledger;
pub mod resolve;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use cni::{Error, Result};

use self::client::{prefix_end, Client};
pub use self::config::EtcdConfig;
use self::keys::Keys;
use self::ledger::{decode_record, Tx};
use super::Store;
use crate::allocator::{Ledger, Record, State};

/// At most this many records change per transaction in a bulk update (GC,
/// reclaim, migration): etcd refuses transactions over 128 operations and a
/// record change is up to 7 (record, 3 index keys removed, 3 added).
const RECORDS_PER_TXN: usize = 16;

pub struct EtcdStore {
    client: Client,
    keys: Keys,
}

/// The records of a network with their mod revisions, and its cursors.
struct Snapshot {
    state: State,
    revisions: BTreeMap<IpAddr, i64>,
}

impl EtcdStore {
    pub fn open(cfg: &EtcdConfig) -> Result<EtcdStore> {
        Ok(EtcdStore {
            client: Client::new(cfg)?,
            keys: Keys::new(&cfg.prefix),
        })
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.client.timeout
    }

    /// The records and cursors of `net`, in one read at one revision.
    fn snapshot(&self, net: &str, deadline: Instant) -> Result<Snapshot> {
        let (ip, cur) = (self.keys.ip_prefix(net), self.keys.cursor_prefix(net));
        let (ip_end, cur_end) = (prefix_end(&ip), prefix_end(&cur));
        let mut both = self.client.read_many(
            &[(&ip, Some(&ip_end), false), (&cur, Some(&cur_end), false)],
            false,
            deadline,
        )?;
        let cursors = both.pop().map(|r| r.kvs).unwrap_or_default();
        let records = both.pop().map(|r| r.kvs).unwrap_or_default();
        let mut state = State::default();
        let mut revisions = BTreeMap::new();
        for kv in records {
            let rec = decode_record(&kv.key, &kv.value)?;
            revisions.insert(rec.ip, kv.mod_revision);
            state.records.push(rec);
        }
        state.normalize()?;
        for kv in cursors {
            let pool = self.keys.cursor_pool(net, &kv.key);
            let ip = std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|s| s.parse().ok());
            if let (Some(pool), Some(ip)) = (pool, ip) {
                state.cursors.insert(pool, ip);
            }
        }
        Ok(Snapshot { state, revisions })
    }

    fn contention(&self, tries: u32) -> Error {
        Error::TryAgain(format!(
            "etcd store: {tries} conflicting transactions within {:?}; try again",
            self.client.timeout
        ))
    }
}

/// A pause that grows with the conflicts, so racing calls spread out.
fn backoff(tries: u32) {
    std::thread::sleep(Duration::from_micros(
        200 * u64::from(tries.min(20)) * jitter(4) as u64,
    ));
}

/// A small pseudo-random number in `0..n` (no RNG dependency for this).
fn jitter(n: u128) -> u128 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let x = u128::from(t ^ std::process::id().wrapping_mul(2_654_435_761));
    x % n.max(1)
}

impl Store for EtcdStore {
    fn load(&self, network: &str) -> Result<State> {
        Ok(self.snapshot(network, self.deadline())?.state)
    }

    /// A bulk update (GC, reclaim, migrate, release) may change thousands
    /// of records in transactions of [`RECORDS_PER_TXN`]: the snapshot and
    /// each transaction get their own timeout, and what is committed stays
    /// committed. Conflicts re-read and go on with what is left, until no
    /// transaction has committed for a whole timeout.
    fn update(&self, network: &str, f: &mut dyn FnMut(&mut State) -> Result<()>) -> Result<()> {
        let mut tries = 0;
        let mut progress = Instant::now();
        loop {
            let snap = self.snapshot(network, self.deadline())?;
            let mut state = snap.state.clone();
            f(&mut state)?;
            let changes = diff(&snap.state, &state);
            let cursors: BTreeMap<String, IpAddr> = state
                .cursors
                .iter()
                .filter(|(p, ip)| snap.state.cursors.get(*p) != Some(ip))
                .map(|(p, ip)| (p.clone(), *ip))
                .collect();
            let mut all_ok = true;
            let items: Vec<(IpAddr, Option<Record>)> = changes.into_iter().collect();
            let chunks: Vec<&[(IpAddr, Option<Record>)]> = if items.is_empty() {
                vec![&[]]
            } else {
                items.chunks(RECORDS_PER_TXN).collect()
            };
            for (i, chunk) in chunks.into_iter().enumerate() {
                let read = chunk
                    .iter()
                    .map(|(ip, _)| {
                        (
                            *ip,
                            (
                                snap.state.get(ip).cloned(),
                                snap.revisions.get(ip).copied().unwrap_or(0),
                            ),
                        )
                    })
                    .collect();
                let written = chunk.iter().cloned().collect();
                let cur = if i == 0 {
                    cursors.clone()
                } else {
                    BTreeMap::new()
                };
                let tx = Tx::new(&self.client, &self.keys, network, self.deadline(), 0)
                    .with_changes(read, written, cur);
                if tx.commit()? {
                    progress = Instant::now();
                } else {
                    all_ok = false;
                }
            }
            if all_ok {
                return Ok(());
            }
            tries += 1;
            if progress.elapsed() >= self.client.timeout {
                return Err(self.contention(tries));
            }
            backoff(tries);
        }
    }

    fn networks(&self) -> Result<Vec<String>> {
        let root = self.keys.ip_root();
        let r = self.client.range(
            &root,
            Some(&prefix_end(&root)),
            true,
            false,
            self.deadline(),
        )?;
        let mut nets: Vec<String> = r
            .kvs
            .iter()
            .filter_map(|kv| self.keys.network_of(&kv.key))
            .collect();
        nets.dedup();
        Ok(nets)
    }

    fn inspect(&self, network: &str, f: &mut dyn FnMut(&dyn Ledger) -> Result<()>) -> Result<()> {
        let tx = Tx::new(&self.client, &self.keys, network, self.deadline(), 0);
        f(&tx.read_only())
    }

    fn transact(
        &self,
        network: &str,
        f: &mut dyn FnMut(&mut dyn Ledger) -> Result<()>,
    ) -> Result<()> {
        let deadline = self.deadline();
        let mut tries = 0u32;
        loop {
            let skip = if tries == 0 {
                0
            } else {
                jitter(16 << tries.min(6))
            };
            let mut tx = Tx::new(&self.client, &self.keys, network, deadline, skip);
            f(&mut tx)?;
            if tx.commit()? {
                return Ok(());
            }
            tries += 1;
            tracing::debug!(network, tries, "etcd store: conflict, deciding again");
            if Instant::now() >= deadline {
                return Err(self.contention(tries));
            }
            backoff(tries);
        }
    }
}

/// Per address, the record `new` has where it differs from `old` (`None`:
/// removed).
fn diff(old: &State, new: &State) -> BTreeMap<IpAddr, Option<Record>> {
    let mut out = BTreeMap::new();
    for r in &old.records {
        match new.get(&r.ip) {
            None => {
                out.insert(r.ip, None);
            }
            Some(n) if n != r => {
                out.insert(r.ip, Some(n.clone()));
            }
            Some(_) => {}
        }
    }
    for r in &new.records {
        if old.get(&r.ip).is_none() {
            out.insert(r.ip, Some(r.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{Attachment, StickyId};
    use serde_json::json;

    /// One record as etcd's gateway sends it in a range reply: the key and
    /// the JSON record in base64, revisions as strings (int64 at most).
    fn gateway_kv(keys: &Keys, net: &str, r: &Record) -> usize {
        let rev = i64::MAX.to_string();
        let kv = json!({"key": client::b64(keys.ip(net, &r.ip).as_bytes()),
            "create_revision": rev, "mod_revision": rev, "version": rev,
            "value": client::b64(&serde_json::to_vec(r).unwrap())});
        kv.to_string().len() + 1
    }

    #[test]
    fn reply_cap_holds_a_full_slash_16() {
        // Long but real names: Kubernetes allows 253-byte node and pod names
        // and 63-byte namespaces; runtimes use 64-hex container IDs; a
        // NetworkAttachmentDefinition name is at most 253 bytes.
        let long = "n".repeat(253);
        let r = Record {
            ip: "fd00:1234:5678:9abc:def0:1234:5678:9abc".parse().unwrap(),
            pool: "p".repeat(63),
            node: long.clone(),
            owner: Some(Attachment {
                container_id: "c".repeat(64),
                ifname: "i".repeat(15),
            }),
            sticky: Some(StickyId {
                namespace: "s".repeat(63),
                pod: long.clone(),
                ifname: "i".repeat(15),
            }),
        };
        let keys = Keys::new(config::DEFAULT_PREFIX);
        let per_record = gateway_kv(&keys, &long, &r);
        let whole = per_record * 65_536;
        assert!(
            whole < http::MAX_REPLY,
            "{per_record} bytes per record, {whole} for a /16, cap {}",
            http::MAX_REPLY
        );
        // Close to the cap, so the cap stays sized from this answer (the
        // README quotes 1,727 bytes and 108 MiB).
        assert!(
            whole > http::MAX_REPLY / 4 * 3,
            "{per_record} bytes per record"
        );
    }
}
