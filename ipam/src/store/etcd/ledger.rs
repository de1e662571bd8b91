//! One call's view of the etcd store: the [`Ledger`] lookups answered by
//! reads, the changes collected, and one conditional transaction at the end.
//!
//! Optimistic concurrency instead of a lock: every address key the call
//! writes, and every record it found through an index (what it holds, what
//! its sticky identity holds), is compared in the commit against the
//! revision it was read at (a key read as absent must still never have been
//! created: `create_revision == 0`), and every index range it listed must
//! have no key modified since. If anything moved, nothing is written and the
//! caller runs the decision again on fresh reads. Addresses merely seen taken
//! while searching are not compared: had one been freed meanwhile, skipping
//! it was still a valid choice. Cursors are written unconditionally: they are
//! hints, and two calls racing on one never make a duplicate (the address
//! keys decide).
//!
//! The search for a free address asks [`Ledger::taken`] address by address;
//! each miss reads the next [`PROBE_WINDOW`] addresses in one round trip, so
//! a search that runs over many taken addresses (a cursor lagging behind
//! concurrent allocations) costs one request per window, not per address.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use cni::error::code;
use cni::{Error, Result};
use serde_json::Value;

use super::client::{self, cmp_absent, cmp_mod, op_delete, op_put, Client};
use super::keys::{ip_of, Keys};
use crate::allocator::{Attachment, Ledger, Record, StickyId};
use crate::pool::{self, Family};

/// Addresses read ahead per round trip while searching (see the module doc).
const PROBE_WINDOW: u128 = 16;

/// Keys read in one request at most (etcd's limit is 128 operations).
const MAX_READS: usize = 112;

/// `PROBE_WINDOW` consecutive addresses from `ip`, not wrapping.
fn window(ip: IpAddr) -> Vec<IpAddr> {
    let fam = Family::of(&ip);
    let first = pool::to_u128(ip);
    (0..PROBE_WINDOW)
        .filter_map(|i| first.checked_add(i))
        .map(|x| pool::from_u128(x, fam))
        .filter(|a| pool::to_u128(*a) >= first)
        .collect()
}

/// Records of one call: as read (with the revision; 0 = absent) and as
/// written.
pub struct Tx<'a> {
    client: &'a Client,
    keys: &'a Keys,
    net: &'a str,
    deadline: Instant,
    // Cells: the `Ledger` lookups take `&self` but remember what they read.
    read: RefCell<BTreeMap<IpAddr, (Option<Record>, i64)>>,
    ranges: RefCell<Vec<(String, i64)>>,
    /// Read through an index: compared at commit even if not written.
    guarded: RefCell<BTreeSet<IpAddr>>,
    /// The network's cursors, read along with the first index.
    stored_cursors: RefCell<Option<BTreeMap<String, IpAddr>>>,
    written: BTreeMap<IpAddr, Option<Record>>,
    cursors: BTreeMap<String, IpAddr>,
    /// After a conflict, start the search this far past the cursor, so that
    /// racing calls spread out instead of all trying the same next address.
    skip: u128,
    /// Serializable reads (see [`Client::read_many`]); off for a read-only
    /// call, which has no commit to catch a stale answer.
    serializable: bool,
}

pub fn decode_record(key: &str, value: &[u8]) -> Result<Record> {
    serde_json::from_slice(value).map_err(|e| {
        Error::plugin(
            code::STORE_CORRUPT,
            format!("etcd store: the value of {key} is not a record ({e}); repair or delete it after checking which addresses are in use"),
        )
    })
}

impl<'a> Tx<'a> {
    pub fn new(
        client: &'a Client,
        keys: &'a Keys,
        net: &'a str,
        deadline: Instant,
        skip: u128,
    ) -> Tx<'a> {
        Tx {
            client,
            keys,
            net,
            deadline,
            read: RefCell::default(),
            ranges: RefCell::default(),
            guarded: RefCell::default(),
            stored_cursors: RefCell::default(),
            written: BTreeMap::new(),
            cursors: BTreeMap::new(),
            skip,
            serializable: true,
        }
    }

    /// For lookups that commit nothing (CHECK): linearizable reads.
    pub fn read_only(mut self) -> Tx<'a> {
        self.serializable = false;
        self
    }

    /// A transaction that writes `changes` over records already read at
    /// the given revisions (what [`super::EtcdStore::update`] diffs out).
    pub fn with_changes(
        mut self,
        read: BTreeMap<IpAddr, (Option<Record>, i64)>,
        changes: BTreeMap<IpAddr, Option<Record>>,
        cursors: BTreeMap<String, IpAddr>,
    ) -> Tx<'a> {
        self.read = RefCell::new(read);
        self.written = changes;
        self.cursors = cursors;
        self
    }

    /// Read the records of `ips` not read yet, in one round trip.
    fn fetch(&self, ips: &[IpAddr]) -> Result<()> {
        let missing: Vec<IpAddr> = {
            let read = self.read.borrow();
            ips.iter()
                .filter(|ip| !read.contains_key(ip))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = missing
            .iter()
            .map(|ip| self.keys.ip(self.net, ip))
            .collect();
        let reqs: Vec<(&str, Option<&str>, bool)> =
            keys.iter().map(|k| (k.as_str(), None, false)).collect();
        let got: Vec<Option<client::Kv>> = if keys.len() == 1 {
            vec![self
                .client
                .range(&keys[0], None, false, self.serializable, self.deadline)?
                .kvs
                .into_iter()
                .next()]
        } else {
            let ranges = self
                .client
                .read_many(&reqs, self.serializable, self.deadline)?;
            ranges
                .into_iter()
                .map(|r| r.kvs.into_iter().next())
                .collect()
        };
        for ((ip, key), kv) in missing.iter().zip(&keys).zip(got) {
            let entry = match kv {
                None => (None, 0),
                Some(kv) => (Some(decode_record(key, &kv.value)?), kv.mod_revision),
            };
            self.read.borrow_mut().insert(*ip, entry);
        }
        Ok(())
    }

    fn current(&self, ip: &IpAddr) -> Option<Record> {
        match self.written.get(ip) {
            Some(w) => w.clone(),
            None => self.read.borrow().get(ip).and_then(|(r, _)| r.clone()),
        }
    }

    /// The records listed under an index prefix that still match `keep`,
    /// with this call's own writes applied.
    fn indexed(&self, prefix: String, keep: impl Fn(&Record) -> bool) -> Result<Vec<Record>> {
        let end = client::prefix_end(&prefix);
        let r = if self.stored_cursors.borrow().is_some() {
            self.client
                .range(&prefix, Some(&end), true, self.serializable, self.deadline)?
        } else {
            // The first lookup of a call (ADD's "what do I hold already")
            // brings the cursors along: one round trip fewer per family.
            let cp = self.keys.cursor_prefix(self.net);
            let cend = client::prefix_end(&cp);
            let mut two = self.client.read_many(
                &[(&prefix, Some(&end), true), (&cp, Some(&cend), false)],
                self.serializable,
                self.deadline,
            )?;
            let cursors = two
                .pop()
                .map(|c| self.parse_cursors(c.kvs))
                .unwrap_or_default();
            *self.stored_cursors.borrow_mut() = Some(cursors);
            two.pop().expect("two ranges asked, two returned")
        };
        self.ranges.borrow_mut().push((prefix, r.revision));
        let mut ips: BTreeSet<IpAddr> = r.kvs.iter().filter_map(|kv| ip_of(&kv.key)).collect();
        self.fetch(&ips.iter().copied().collect::<Vec<_>>())?;
        self.guarded.borrow_mut().extend(ips.iter().copied());
        ips.extend(self.written.keys());
        Ok(ips
            .iter()
            .filter_map(|ip| self.current(ip))
            .filter(|r| keep(r))
            .collect())
    }

    fn parse_cursors(&self, kvs: Vec<client::Kv>) -> BTreeMap<String, IpAddr> {
        kvs.into_iter()
            .filter_map(|kv| {
                let pool = self.keys.cursor_pool(self.net, &kv.key)?;
                let ip = std::str::from_utf8(&kv.value).ok()?.parse().ok()?;
                Some((pool, ip))
            })
            .collect()
    }

    /// Commit; `Ok(false)` when something read has changed since (retry).
    pub fn commit(self) -> Result<bool> {
        if self.written.is_empty() && self.cursors.is_empty() {
            return Ok(true);
        }
        let mut compare = Vec::new();
        let read = self.read.borrow();
        let guarded = self.guarded.borrow();
        let decisive = read
            .iter()
            .filter(|(ip, _)| self.written.contains_key(ip) || guarded.contains(ip));
        for (ip, (_, rev)) in decisive {
            let key = self.keys.ip(self.net, ip);
            compare.push(match rev {
                0 => cmp_absent(&key),
                r => cmp_mod(&key, None, "EQUAL", *r),
            });
        }
        for (prefix, rev) in self.ranges.borrow().iter() {
            compare.push(cmp_mod(
                prefix,
                Some(&client::prefix_end(prefix)),
                "LESS",
                rev + 1,
            ));
        }
        let mut ops = Vec::new();
        for (ip, new) in &self.written {
            let old = read.get(ip).and_then(|(r, _)| r.as_ref());
            self.changes(ip, old, new.as_ref(), &mut ops)?;
        }
        for (pool, ip) in &self.cursors {
            ops.push(op_put(
                &self.keys.cursor(self.net, pool),
                ip.to_string().as_bytes(),
            ));
        }
        drop((read, guarded));
        let (ok, _) = self.client.txn(compare, ops, self.deadline)?;
        Ok(ok)
    }

    /// The ops that turn `old` into `new` for one address: the record and
    /// its index keys.
    fn changes(
        &self,
        ip: &IpAddr,
        old: Option<&Record>,
        new: Option<&Record>,
        ops: &mut Vec<Value>,
    ) -> Result<()> {
        let old_idx: BTreeSet<String> = old
            .map(|r| self.keys.index(self.net, r))
            .unwrap_or_default()
            .into_iter()
            .collect();
        let new_idx: BTreeSet<String> = new
            .map(|r| self.keys.index(self.net, r))
            .unwrap_or_default()
            .into_iter()
            .collect();
        let key = self.keys.ip(self.net, ip);
        match new {
            Some(r) => ops.push(op_put(&key, &serde_json::to_vec(r)?)),
            None if old.is_some() => ops.push(op_delete(&key)),
            None => {}
        }
        for k in old_idx.difference(&new_idx) {
            ops.push(op_delete(k));
        }
        for k in new_idx.difference(&old_idx) {
            ops.push(op_put(k, b""));
        }
        Ok(())
    }
}

impl Ledger for Tx<'_> {
    fn record(&self, ip: &IpAddr) -> Result<Option<Record>> {
        self.fetch(&[*ip])?;
        Ok(self.current(ip))
    }

    fn taken(&self, ip: &IpAddr) -> Result<bool> {
        if !self.read.borrow().contains_key(ip) && !self.written.contains_key(ip) {
            // The window from `ip`, and the windows after the other families'
            // cursors, which the next pool's search is about to ask for: a
            // dual-stack ADD probes both families in one round trip.
            let mut probe = window(*ip);
            let others: Vec<IpAddr> = self
                .stored_cursors
                .borrow()
                .iter()
                .flat_map(|c| c.values())
                .filter(|c| Family::of(c) != Family::of(ip))
                .copied()
                .collect();
            for c in others {
                let next = pool::to_u128(c)
                    .checked_add(1)
                    .map(|x| pool::from_u128(x, Family::of(&c)));
                probe.extend(next.map(window).unwrap_or_default());
            }
            // etcd refuses a transaction of more than 128 operations.
            probe.truncate(MAX_READS);
            self.fetch(&probe)?;
        }
        Ok(self.current(ip).is_some())
    }

    fn held_by(&self, a: &Attachment) -> Result<Vec<Record>> {
        self.indexed(self.keys.attachment(self.net, a), |r| {
            r.owner.as_ref() == Some(a)
        })
    }

    fn sticky_records(&self, s: &StickyId) -> Result<Vec<Record>> {
        self.indexed(self.keys.sticky(self.net, s), |r| {
            r.sticky.as_ref() == Some(s)
        })
    }

    fn cursor(&self, pool: &str) -> Result<Option<IpAddr>> {
        if let Some(ip) = self.cursors.get(pool) {
            return Ok(Some(*ip));
        }
        let stored = self
            .stored_cursors
            .borrow()
            .as_ref()
            .map(|c| c.get(pool).copied());
        let ip = match stored {
            Some(ip) => ip,
            None => {
                let key = self.keys.cursor(self.net, pool);
                let r = self
                    .client
                    .range(&key, None, false, self.serializable, self.deadline)?;
                self.parse_cursors(r.kvs).remove(pool)
            }
        };
        Ok(ip.map(|ip| {
            let fam = Family::of(&ip);
            let max = if fam == Family::V4 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
            let x = pool::to_u128(ip).saturating_add(self.skip).min(max);
            pool::from_u128(x, fam)
        }))
    }

    fn set_cursor(&mut self, pool: &str, ip: IpAddr) -> Result<()> {
        self.cursors.insert(pool.to_string(), ip);
        Ok(())
    }

    fn put_record(&mut self, r: Record) -> Result<()> {
        self.fetch(&[r.ip])?;
        self.written.insert(r.ip, Some(r));
        Ok(())
    }

    fn remove_record(&mut self, ip: &IpAddr) -> Result<()> {
        self.fetch(&[*ip])?;
        self.written.insert(*ip, None);
        Ok(())
    }
}
