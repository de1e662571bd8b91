//! The binary snapshot of one network's state (`state.bin`).
//!
//! Every ADD and DEL reads the whole snapshot, so its decoding cost is what
//! keeps a call's cost flat in the number of records: JSON took ~7,000
//! instructions per record, this format a few hundred (no text to scan, no
//! address to parse). Operators read the state with `coordinator-ipam list`.
//!
//! Layout (integers little-endian):
//! ```text
//! magic "CIPAMSN1" | u32 version | u32 n | n records | u32 m | m cursors
//! record: ip | str pool | str node | u8 flags (1 owner, 2 sticky)
//!         | [str containerId, str ifname] | [str namespace, str pod, str ifname]
//! cursor: str pool | ip
//! ip:     u8 4 + 4 bytes | u8 6 + 16 bytes
//! str:    u16 length + UTF-8 bytes
//! ```
//! No checksum: the file is only ever replaced whole (write, fsync, rename),
//! so it is the old or the new one; decoding still rejects anything that is
//! not exactly one well-formed snapshot.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::allocator::{Attachment, Record, State, StickyId};

const MAGIC: &[u8; 8] = b"CIPAMSN1";
const OWNER: u8 = 1;
const STICKY: u8 = 2;

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    let len = u16::try_from(s.len()).map_err(|_| format!("string of {} bytes", s.len()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) -> Result<(), String> {
    let n = u32::try_from(n).map_err(|_| format!("{n} entries"))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

/// Fails only on a string longer than 64 KiB, which no valid name is.
pub fn encode(state: &State) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64 + state.records.len() * 96);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&state.version.to_le_bytes());
    put_u32(&mut out, state.records.len())?;
    for r in &state.records {
        put_ip(&mut out, &r.ip);
        put_str(&mut out, &r.pool)?;
        put_str(&mut out, &r.node)?;
        let flags = if r.owner.is_some() { OWNER } else { 0 }
            | if r.sticky.is_some() { STICKY } else { 0 };
        out.push(flags);
        if let Some(o) = &r.owner {
            put_str(&mut out, &o.container_id)?;
            put_str(&mut out, &o.ifname)?;
        }
        if let Some(s) = &r.sticky {
            put_str(&mut out, &s.namespace)?;
            put_str(&mut out, &s.pod)?;
            put_str(&mut out, &s.ifname)?;
        }
    }
    put_u32(&mut out, state.cursors.len())?;
    for (pool, ip) in &state.cursors {
        put_str(&mut out, pool)?;
        put_ip(&mut out, ip);
    }
    Ok(out)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn str(&mut self) -> Result<String, String> {
        let b = self.take(2)?;
        let len = usize::from(u16::from_le_bytes([b[0], b[1]]));
        let at = self.pos;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| format!("invalid UTF-8 at byte {at}"))
    }

    fn ip(&mut self) -> Result<IpAddr, String> {
        match self.u8()? {
            4 => {
                let b = self.take(4)?;
                Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16)?);
                Ok(IpAddr::V6(Ipv6Addr::from(a)))
            }
            f => Err(format!("bad address family {f} at byte {}", self.pos - 1)),
        }
    }
}

/// The fields of one record that lookups compare, borrowed from the snapshot.
struct Raw<'a> {
    owner: Option<(&'a [u8], &'a [u8])>,
    sticky: Option<(&'a [u8], &'a [u8], &'a [u8])>,
}

impl<'a> Reader<'a> {
    fn skip_ip(&mut self) -> Result<(), String> {
        match self.u8()? {
            4 => self.take(4).map(drop),
            6 => self.take(16).map(drop),
            f => Err(format!("bad address family {f} at byte {}", self.pos - 1)),
        }
    }

    fn raw_str(&mut self) -> Result<&'a [u8], String> {
        let b = self.take(2)?;
        self.take(usize::from(u16::from_le_bytes([b[0], b[1]])))
    }
}

/// A snapshot whose structure has been checked, with the offset of each
/// record: one record is found by binary search and decoded alone, and an
/// attachment's records are found by comparing bytes, without decoding (or
/// allocating for) the others. Records are strictly ascending by address.
pub struct Indexed {
    buf: Vec<u8>,
    version: u32,
    offsets: Vec<u32>,
    cursors: BTreeMap<String, IpAddr>,
}

/// The stored form of an address: family byte then big-endian bytes, which
/// sorts like `IpAddr` (IPv4 before IPv6, then numerically).
fn ip_key(ip: &IpAddr) -> ([u8; 17], usize) {
    let mut k = [0u8; 17];
    match ip {
        IpAddr::V4(a) => {
            k[0] = 4;
            k[1..5].copy_from_slice(&a.octets());
            (k, 5)
        }
        IpAddr::V6(a) => {
            k[0] = 6;
            k[1..17].copy_from_slice(&a.octets());
            (k, 17)
        }
    }
}

impl Indexed {
    pub fn empty() -> Indexed {
        Indexed {
            buf: Vec::new(),
            version: crate::allocator::STATE_VERSION,
            offsets: Vec::new(),
            cursors: BTreeMap::new(),
        }
    }

    pub fn new(buf: Vec<u8>) -> Result<Indexed, String> {
        if u32::try_from(buf.len()).is_err() {
            return Err(format!("{} bytes is too large", buf.len()));
        }
        let mut r = Reader { buf: &buf, pos: 0 };
        if r.take(MAGIC.len()).ok() != Some(&MAGIC[..]) {
            return Err("not a coordinator-ipam snapshot".into());
        }
        let version = r.u32()?;
        let n = r.u32()? as usize;
        // Each record takes at least 11 bytes: do not trust a count that
        // says more than the file can hold.
        let mut offsets = Vec::with_capacity(n.min(buf.len() / 11));
        let mut prev: &[u8] = &[];
        for _ in 0..n {
            let at = r.pos;
            r.skip_ip()?;
            let ip = &buf[at..r.pos];
            if ip <= prev {
                return Err(format!("records out of order or repeated at byte {at}"));
            }
            prev = ip;
            r.raw_str()?;
            r.raw_str()?;
            let flags = r.u8()?;
            if flags & !(OWNER | STICKY) != 0 {
                return Err(format!("bad record flags {flags} at byte {}", r.pos - 1));
            }
            let owner = if flags & OWNER != 0 { 2 } else { 0 };
            let sticky = if flags & STICKY != 0 { 3 } else { 0 };
            for _ in 0..owner + sticky {
                r.raw_str()?;
            }
            // Fits: the buffer length was checked above.
            offsets.push(at as u32);
        }
        let m = r.u32()?;
        let mut cursors = BTreeMap::new();
        for _ in 0..m {
            let pool = r.str()?;
            cursors.insert(pool, r.ip()?);
        }
        if r.pos != buf.len() {
            return Err(format!("{} bytes after the end", buf.len() - r.pos));
        }
        Ok(Indexed {
            buf,
            version,
            offsets,
            cursors,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub fn cursors(&self) -> &BTreeMap<String, IpAddr> {
        &self.cursors
    }

    fn reader(&self, i: usize) -> Reader<'_> {
        let pos = self.offsets.get(i).map_or(self.buf.len(), |o| *o as usize);
        Reader { buf: &self.buf, pos }
    }

    /// The stored address of record `i` (checked by `new`).
    fn ip_bytes(&self, i: usize) -> &[u8] {
        let at = self.offsets.get(i).map_or(self.buf.len(), |o| *o as usize);
        let len = if self.buf.get(at) == Some(&4) { 5 } else { 17 };
        self.buf.get(at..at + len).unwrap_or(&[])
    }

    /// The index of the record of `ip`.
    pub fn find(&self, ip: &IpAddr) -> Option<usize> {
        let (k, len) = ip_key(ip);
        let key = &k[..len];
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.ip_bytes(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    fn raw(&self, i: usize) -> Result<Raw<'_>, String> {
        let mut r = self.reader(i);
        r.skip_ip()?;
        r.raw_str()?;
        r.raw_str()?;
        let flags = r.u8()?;
        let owner = if flags & OWNER != 0 {
            Some((r.raw_str()?, r.raw_str()?))
        } else {
            None
        };
        let sticky = if flags & STICKY != 0 {
            Some((r.raw_str()?, r.raw_str()?, r.raw_str()?))
        } else {
            None
        };
        Ok(Raw { owner, sticky })
    }

    /// Is record `i` held by this attachment?
    pub fn owned_by(&self, i: usize, a: &Attachment) -> bool {
        matches!(self.raw(i), Ok(Raw { owner: Some((c, f)), .. })
            if c == a.container_id.as_bytes() && f == a.ifname.as_bytes())
    }

    /// Is record `i` of this sticky identity?
    pub fn sticky_is(&self, i: usize, s: &StickyId) -> bool {
        matches!(self.raw(i), Ok(Raw { sticky: Some((ns, pod, f)), .. })
            if ns == s.namespace.as_bytes() && pod == s.pod.as_bytes() && f == s.ifname.as_bytes())
    }

    pub fn record(&self, i: usize) -> Result<Record, String> {
        let mut r = self.reader(i);
        let ip = r.ip()?;
        let pool = r.str()?;
        let node = r.str()?;
        let flags = r.u8()?;
        let owner = if flags & OWNER != 0 {
            Some(Attachment {
                container_id: r.str()?,
                ifname: r.str()?,
            })
        } else {
            None
        };
        let sticky = if flags & STICKY != 0 {
            Some(StickyId {
                namespace: r.str()?,
                pod: r.str()?,
                ifname: r.str()?,
            })
        } else {
            None
        };
        Ok(Record {
            ip,
            pool,
            node,
            owner,
            sticky,
        })
    }

    /// Every record, decoded.
    pub fn state(&self) -> Result<State, String> {
        Ok(State {
            version: self.version,
            records: (0..self.len())
                .map(|i| self.record(i))
                .collect::<Result<_, _>>()?,
            cursors: self.cursors.clone(),
        })
    }
}

pub fn decode(buf: &[u8]) -> Result<State, String> {
    Indexed::new(buf.to_vec())?.state()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let mut s = State::default();
        s.put(Record {
            ip: "10.0.0.2".parse().unwrap(),
            pool: "p".into(),
            node: "n1".into(),
            owner: Some(Attachment {
                container_id: "c".into(),
                ifname: "eth0".into(),
            }),
            sticky: None,
        });
        s.put(Record {
            ip: "fd00::2".parse().unwrap(),
            pool: "p6".into(),
            node: "ñode".into(),
            owner: None,
            sticky: Some(StickyId {
                namespace: "db".into(),
                pod: "m-0".into(),
                ifname: "net1".into(),
            }),
        });
        s.cursors.insert("p".into(), "10.0.0.2".parse().unwrap());
        s
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(decode(&encode(&s).unwrap()).unwrap(), s);
        assert_eq!(
            decode(&encode(&State::default()).unwrap()).unwrap(),
            State::default()
        );
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        let bytes = encode(&sample()).unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "{n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut huge = bytes.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        // Records must be strictly ascending (one per address).
        let mut s = sample();
        s.records.swap(0, 1);
        assert!(decode(&encode(&s).unwrap()).is_err());
        s.records[0] = s.records[1].clone();
        assert!(decode(&encode(&s).unwrap()).is_err());
    }

    #[test]
    fn indexed_lookups() {
        let s = sample();
        let ix = Indexed::new(encode(&s).unwrap()).unwrap();
        assert_eq!(ix.len(), 2);
        for (i, r) in s.records.iter().enumerate() {
            assert_eq!(ix.find(&r.ip), Some(i));
            assert_eq!(ix.record(i).unwrap(), *r);
            if let Some(o) = &r.owner {
                assert!(ix.owned_by(i, o));
            }
            if let Some(st) = &r.sticky {
                assert!(ix.sticky_is(i, st));
            }
        }
        assert_eq!(ix.find(&"10.0.0.3".parse().unwrap()), None);
        assert_eq!(ix.find(&"::".parse().unwrap()), None);
        let other = Attachment {
            container_id: "c".into(),
            ifname: "eth1".into(),
        };
        assert!(!ix.owned_by(0, &other) && !ix.owned_by(1, &other));

    }
}
