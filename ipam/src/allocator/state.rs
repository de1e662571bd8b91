//! What is recorded: attachments, sticky identities, records, the state of
//! one network, and the [`Ledger`] lookups the decisions make through.

use std::collections::BTreeMap;
use std::net::IpAddr;

use cni::error::code;
use cni::{Error, Result};
use serde::{Deserialize, Serialize};

/// (CNI_CONTAINERID, CNI_IFNAME) within one network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// A sticky identity (network implicit, family from the address): the pod's
/// namespace and name, not its UID, which changes when it is recreated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StickyId {
    pub namespace: String,
    pub pod: String,
    pub ifname: String,
}

/// One reserved address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub ip: IpAddr,
    pub pool: String,
    /// The node of the last attachment that held it.
    pub node: String,
    /// `None` when parked for its sticky identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Attachment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyId>,
}

impl Record {
    pub fn parked(&self) -> bool {
        self.owner.is_none()
    }
}

pub const STATE_VERSION: u32 = 1;

/// The whole allocation state of one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub version: u32,
    /// Sorted by address, one record per address.
    #[serde(default)]
    pub records: Vec<Record>,
    /// Last address handed out per pool, so allocation rotates.
    #[serde(default)]
    pub cursors: BTreeMap<String, IpAddr>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            records: Vec::new(),
            cursors: BTreeMap::new(),
        }
    }
}

impl State {
    pub(super) fn index(&self, ip: &IpAddr) -> std::result::Result<usize, usize> {
        self.records.binary_search_by(|r| r.ip.cmp(ip))
    }

    pub fn get(&self, ip: &IpAddr) -> Option<&Record> {
        self.index(ip).ok().map(|i| &self.records[i])
    }

    /// Insert or replace the record of `rec.ip`, keeping the order.
    pub fn put(&mut self, rec: Record) {
        match self.index(&rec.ip) {
            Ok(i) => self.records[i] = rec,
            Err(i) => self.records.insert(i, rec),
        }
    }

    pub fn remove(&mut self, ip: &IpAddr) -> Option<Record> {
        self.index(ip).ok().map(|i| self.records.remove(i))
    }

    pub fn owned_by<'a>(&'a self, a: &'a Attachment) -> impl Iterator<Item = &'a Record> + 'a {
        self.records
            .iter()
            .filter(move |r| r.owner.as_ref() == Some(a))
    }

    /// Sorting restores the invariant if a hand-edited file broke it; a
    /// duplicate address means two owners and is reported, not guessed at.
    pub fn normalize(&mut self) -> Result<()> {
        self.records.sort_by_key(|r| r.ip);
        if let Some(w) = self.records.windows(2).find(|w| w[0].ip == w[1].ip) {
            return Err(Error::plugin(
                code::STORE_CORRUPT,
                format!("address {} is recorded twice", w[0].ip),
            ));
        }
        Ok(())
    }
}

/// What ADD, DEL and CHECK read and write: the lookups they make, not the
/// whole state. [`State`] answers from memory; a store can answer from an
/// index (the file store from its snapshot without decoding every record, an
/// etcd store from one key per address / attachment / sticky identity), so a
/// call's cost need not grow with the number of records. Fallible because a
/// store may fail mid-way; a failed call changes nothing (the store commits
/// only when the whole decision succeeded).
pub trait Ledger {
    /// The record of `ip`, if reserved.
    fn record(&self, ip: &IpAddr) -> Result<Option<Record>>;
    /// Is `ip` reserved?
    fn taken(&self, ip: &IpAddr) -> Result<bool> {
        Ok(self.record(ip)?.is_some())
    }
    /// The records this attachment holds, by address.
    fn held_by(&self, a: &Attachment) -> Result<Vec<Record>>;
    /// The records of this sticky identity (held or parked), by address.
    fn sticky_records(&self, s: &StickyId) -> Result<Vec<Record>>;
    fn cursor(&self, pool: &str) -> Result<Option<IpAddr>>;
    fn set_cursor(&mut self, pool: &str, ip: IpAddr) -> Result<()>;
    /// Insert or replace the record of `r.ip`.
    fn put_record(&mut self, r: Record) -> Result<()>;
    fn remove_record(&mut self, ip: &IpAddr) -> Result<()>;
}

impl Ledger for State {
    fn record(&self, ip: &IpAddr) -> Result<Option<Record>> {
        Ok(self.get(ip).cloned())
    }

    fn taken(&self, ip: &IpAddr) -> Result<bool> {
        Ok(self.index(ip).is_ok())
    }

    fn held_by(&self, a: &Attachment) -> Result<Vec<Record>> {
        Ok(self.owned_by(a).cloned().collect())
    }

    fn sticky_records(&self, s: &StickyId) -> Result<Vec<Record>> {
        Ok(self
            .records
            .iter()
            .filter(|r| r.sticky.as_ref() == Some(s))
            .cloned()
            .collect())
    }

    fn cursor(&self, pool: &str) -> Result<Option<IpAddr>> {
        Ok(self.cursors.get(pool).copied())
    }

    fn set_cursor(&mut self, pool: &str, ip: IpAddr) -> Result<()> {
        self.cursors.insert(pool.to_string(), ip);
        Ok(())
    }

    fn put_record(&mut self, r: Record) -> Result<()> {
        self.put(r);
        Ok(())
    }

    fn remove_record(&mut self, ip: &IpAddr) -> Result<()> {
        self.remove(ip);
        Ok(())
    }
}
