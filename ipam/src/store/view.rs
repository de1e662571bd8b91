//! The file store's [`Ledger`] over the mapped snapshot and the journal.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use cni::Result;

use super::file::corrupt;
use super::journal::Change;
use super::mapped::Mapped;
use super::snapshot;
use crate::allocator::{Attachment, Ledger, Record, StickyId};

/// The file store's [`Ledger`]: the indexed snapshot, with the journal and
/// this call's changes laid over it as an overlay. Lookups by address are a
/// binary search; lookups by attachment or sticky identity compare bytes in
/// place. No record is decoded unless it is returned.
pub(super) struct View {
    pub(super) path: PathBuf,
    pub(super) snap: snapshot::Indexed<Mapped>,
    /// Address -> its record, or `None` when deleted since the snapshot.
    pub(super) overlay: BTreeMap<IpAddr, Option<Record>>,
    pub(super) cursors: BTreeMap<String, IpAddr>,
    /// What this call changed, in order: the journal entries to append.
    pub(super) changes: Vec<Change>,
}

impl View {
    pub(super) fn apply(&mut self, c: Change) {
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

    /// Every record in ascending address order, the overlay over the
    /// snapshot, decoded one at a time (a compaction streams them into the
    /// new snapshot). An address out of order or twice (a damaged snapshot)
    /// is an error, as `State::normalize` makes it for a whole state.
    pub(super) fn merged(&self) -> impl Iterator<Item = std::result::Result<Record, String>> + '_ {
        let mut last: Option<IpAddr> = None;
        self.merge().map(move |r| {
            let r = r?;
            if last.is_some_and(|l| l >= r.ip) {
                return Err(format!(
                    "address {} is recorded twice or out of order",
                    r.ip
                ));
            }
            last = Some(r.ip);
            Ok(r)
        })
    }

    fn merge(&self) -> impl Iterator<Item = std::result::Result<Record, String>> + '_ {
        let mut over = self.overlay.iter().peekable();
        let mut next = 0;
        let mut pending: Option<Record> = None;
        std::iter::from_fn(move || loop {
            if pending.is_none() && next < self.snap.len() {
                match self.snap.record(next) {
                    Ok(r) => pending = Some(r),
                    Err(e) => {
                        next = self.snap.len();
                        return Some(Err(e));
                    }
                }
                next += 1;
            }
            let overlay_first = match (&pending, over.peek()) {
                (None, None) => return None,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(p), Some((ip, _))) => **ip <= p.ip,
            };
            if !overlay_first {
                return pending.take().map(Ok);
            }
            let (ip, rec) = over.next()?;
            // Replaced or deleted since the snapshot.
            if pending.as_ref().is_some_and(|p| p.ip == *ip) {
                pending = None;
            }
            if let Some(r) = rec {
                return Some(Ok(r.clone()));
            }
        })
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
