//! The binary snapshot of one network's state (`state.bin`), indexed.
//!
//! Every ADD and DEL opens the snapshot, so what it costs to answer their
//! lookups from it is what keeps a call flat in the number of records. JSON
//! cost ~7,000 instructions per record to parse; this format answers "is this
//! address taken", "what does this attachment hold" and "what does this
//! sticky identity hold" by binary search over tables stored in the file,
//! decoding only the records returned. What stays proportional to the size
//! is reading the bytes and one checksum pass over them (a few instructions
//! per 8 bytes). Operators read the state with `coordinator-ipam list`.
//!
//! Layout (integers little-endian, offsets absolute):
//! ```text
//! magic "CIPAMSN2" | u32 version | u32 n
//! | n x u32 offset of record i        (records ascending by address)
//! | u32 k | k x u32 record index      (records with an owner, by containerId, ifname)
//! | u32 s | s x u32 record index      (sticky records, by namespace, pod, ifname)
//! | n records | u32 m | m cursors | u64 checksum of all the bytes before it
//! record: ip | str pool | str node | u8 flags (1 owner, 2 sticky)
//!         | [str containerId, str ifname] | [str namespace, str pod, str ifname]
//! cursor: str pool | ip
//! ip:     u8 4 + 4 bytes | u8 6 + 16 bytes (sorts like IpAddr)
//! str:    u16 length + UTF-8 bytes
//! ```
//! The file is only ever replaced whole (write, fsync, rename), so it is the
//! old or the new one; the checksum catches damage from outside (disk,
//! hand edits), which must be reported, never acted on. Every read is bounds
//! checked, so even a damaged file that passed the checksum cannot panic.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::allocator::{Attachment, Record, State, StickyId, STATE_VERSION};

const MAGIC: &[u8; 8] = b"CIPAMSN2";
const OWNER: u8 = 1;
const STICKY: u8 = 2;

/// A multiplicative hash over 8-byte words: ~3 instructions per word,
/// enough to tell a damaged file from a written one.
fn checksum(data: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h: u64 = (data.len() as u64).wrapping_mul(K);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    for b in chunks.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(K).rotate_left(29);
    }
    h ^ (h >> 32)
}

fn put_u32(out: &mut Vec<u8>, n: usize) -> Result<(), String> {
    let n = u32::try_from(n).map_err(|_| format!("{n} does not fit the snapshot format"))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

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

fn put_record(out: &mut Vec<u8>, r: &Record) -> Result<(), String> {
    put_ip(out, &r.ip);
    put_str(out, &r.pool)?;
    put_str(out, &r.node)?;
    let flags =
        if r.owner.is_some() { OWNER } else { 0 } | if r.sticky.is_some() { STICKY } else { 0 };
    out.push(flags);
    if let Some(o) = &r.owner {
        put_str(out, &o.container_id)?;
        put_str(out, &o.ifname)?;
    }
    if let Some(s) = &r.sticky {
        put_str(out, &s.namespace)?;
        put_str(out, &s.pod)?;
        put_str(out, &s.ifname)?;
    }
    Ok(())
}

/// `state.records` must be sorted by address with no repeats (what
/// `State::normalize` ensures). Fails only on sizes no valid state has.
pub fn encode(state: &State) -> Result<Vec<u8>, String> {
    encode_iter(state.version, state.records.iter().map(Ok), &state.cursors)
}

/// [`encode`] from records streamed in ascending address order (the
/// caller's to ensure, as `normalize` does for [`encode`]): a
/// compaction writes the new snapshot while decoding one record at a time,
/// so its peak memory is the new file's bytes, not every record decoded
/// (4000 records decoded cost ~1.3 MiB). The records are written first; the
/// owner and sticky tables are sorted by comparing keys in those bytes; the
/// header then goes in front, in the same buffer.
pub fn encode_iter<R: std::borrow::Borrow<Record>>(
    version: u32,
    records: impl Iterator<Item = Result<R, String>>,
    cursors: &BTreeMap<String, IpAddr>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut at = Vec::new();
    for r in records {
        at.push(out.len());
        put_record(&mut out, r?.borrow())?;
    }
    let n = at.len();
    let raws: Vec<Raw> = at
        .iter()
        .map(|a| raw_record(&mut Reader { buf: &out, pos: *a }))
        .collect::<Result<_, _>>()?;
    let mut owners: Vec<usize> = (0..n).filter(|i| raws[*i].owner.is_some()).collect();
    owners.sort_by(|a, b| raws[*a].owner.cmp(&raws[*b].owner));
    let mut sticky: Vec<usize> = (0..n).filter(|i| raws[*i].sticky.is_some()).collect();
    sticky.sort_by(|a, b| raws[*a].sticky.cmp(&raws[*b].sticky));
    drop(raws);

    let base = MAGIC.len() + 4 + 4 + 4 * n + 4 + 4 * owners.len() + 4 + 4 * sticky.len();
    let mut head = Vec::with_capacity(base);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&version.to_le_bytes());
    put_u32(&mut head, n)?;
    for a in at {
        put_u32(&mut head, base + a)?;
    }
    for table in [&owners, &sticky] {
        put_u32(&mut head, table.len())?;
        for i in table.iter() {
            put_u32(&mut head, *i)?;
        }
    }
    let tail: usize = cursors.keys().map(|p| 2 + p.len() + 17).sum::<usize>() + 4 + 8;
    out.reserve_exact(base + tail);
    out.splice(0..0, head);
    put_u32(&mut out, cursors.len())?;
    for (pool, ip) in cursors {
        put_str(&mut out, pool)?;
        put_ip(&mut out, ip);
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
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

    fn raw_str(&mut self) -> Result<&'a [u8], String> {
        let b = self.take(2)?;
        self.take(usize::from(u16::from_le_bytes([b[0], b[1]])))
    }

    fn str(&mut self) -> Result<String, String> {
        let at = self.pos;
        std::str::from_utf8(self.raw_str()?)
            .map(str::to_string)
            .map_err(|_| format!("invalid UTF-8 at byte {at}"))
    }

    fn raw_ip(&mut self) -> Result<&'a [u8], String> {
        let at = self.pos;
        match self.u8()? {
            4 => self.take(4),
            6 => self.take(16),
            f => Err(format!("bad address family {f} at byte {at}")),
        }?;
        Ok(&self.buf[at..self.pos])
    }

    fn ip(&mut self) -> Result<IpAddr, String> {
        let b = self.raw_ip()?;
        Ok(match b.len() {
            5 => IpAddr::V4(Ipv4Addr::new(b[1], b[2], b[3], b[4])),
            _ => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[1..]);
                IpAddr::V6(Ipv6Addr::from(a))
            }
        })
    }
}

/// The stored form of an address.
fn ip_key(ip: &IpAddr) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    put_ip(&mut k, ip);
    k
}

/// A table of u32 in the file: where it starts and how many entries.
#[derive(Clone, Copy)]
struct Table {
    at: usize,
    len: usize,
}

/// The parts of one record that lookups compare, borrowed from the file.
struct Raw<'a> {
    ip: &'a [u8],
    owner: Option<(&'a [u8], &'a [u8])>,
    sticky: Option<(&'a [u8], &'a [u8], &'a [u8])>,
}

/// A snapshot opened for lookups: header and cursors read, checksum
/// verified, records decoded only on demand.
pub struct Indexed<B: AsRef<[u8]> = Vec<u8>> {
    buf: B,
    version: u32,
    offsets: Table,
    owners: Table,
    sticky: Table,
    cursors: BTreeMap<String, IpAddr>,
}

impl<B: AsRef<[u8]> + Default> Indexed<B> {
    /// The snapshot of a network that has none yet.
    pub fn new_empty() -> Indexed<B> {
        let empty = Table { at: 0, len: 0 };
        Indexed {
            buf: B::default(),
            version: STATE_VERSION,
            offsets: empty,
            owners: empty,
            sticky: empty,
            cursors: BTreeMap::new(),
        }
    }
}

impl<B: AsRef<[u8]>> Indexed<B> {
    /// Open `buf` (owned bytes or a read-only mapping of the file).
    pub fn new(buf: B) -> Result<Indexed<B>, String> {
        let bytes = buf.as_ref();
        let body_len = bytes
            .len()
            .checked_sub(8)
            .filter(|l| *l >= MAGIC.len())
            .ok_or("too short to be a snapshot")?;
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a coordinator-ipam snapshot".into());
        }
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&bytes[body_len..]);
        if u64::from_le_bytes(sum) != checksum(&bytes[..body_len]) {
            return Err("checksum mismatch".into());
        }
        let body = &bytes[..body_len];
        let mut r = Reader {
            buf: body,
            pos: MAGIC.len(),
        };
        let version = r.u32()?;
        let table = |r: &mut Reader| -> Result<Table, String> {
            let len = r.u32()? as usize;
            let at = r.pos;
            r.take(len.checked_mul(4).ok_or("table too large")?)?;
            Ok(Table { at, len })
        };
        let offsets = table(&mut r)?;
        let owners = table(&mut r)?;
        let sticky = table(&mut r)?;
        // The cursors follow the last record.
        let end = match offsets.len {
            0 => r.pos,
            n => {
                let mut last = Reader {
                    buf: body,
                    pos: u32_at(body, offsets.at + 4 * (n - 1))? as usize,
                };
                skip_record(&mut last)?;
                last.pos
            }
        };
        let mut r = Reader {
            buf: body,
            pos: end,
        };
        let m = r.u32()?;
        let mut cursors = BTreeMap::new();
        for _ in 0..m {
            let pool = r.str()?;
            cursors.insert(pool, r.ip()?);
        }
        if r.pos != body.len() {
            return Err(format!("{} bytes after the end", body.len() - r.pos));
        }
        Ok(Indexed {
            buf,
            version,
            offsets,
            owners,
            sticky,
            cursors,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.offsets.len
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.len == 0
    }

    pub fn cursors(&self) -> &BTreeMap<String, IpAddr> {
        &self.cursors
    }

    fn entry(&self, t: Table, i: usize) -> Result<usize, String> {
        if i >= t.len {
            return Err(format!("index {i} outside a table of {}", t.len));
        }
        Ok(u32_at(self.buf.as_ref(), t.at + 4 * i)? as usize)
    }

    fn reader(&self, i: usize) -> Result<Reader<'_>, String> {
        Ok(Reader {
            buf: self.buf.as_ref(),
            pos: self.entry(self.offsets, i)?,
        })
    }

    fn raw(&self, i: usize) -> Result<Raw<'_>, String> {
        raw_record(&mut self.reader(i)?)
    }

    /// The first position in table `t` whose record does not compare Less
    /// than the target, by binary search.
    fn lower_bound(
        &self,
        t: Table,
        cmp: impl Fn(&Raw) -> Ordering,
        through: bool,
    ) -> Result<usize, String> {
        let (mut lo, mut hi) = (0, t.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let i = if through { self.entry(t, mid)? } else { mid };
            if cmp(&self.raw(i)?) == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The records of table `t` equal to the target.
    fn equal_range(&self, t: Table, cmp: impl Fn(&Raw) -> Ordering) -> Result<Vec<usize>, String> {
        let mut pos = self.lower_bound(t, &cmp, true)?;
        let mut out = Vec::new();
        while pos < t.len {
            let i = self.entry(t, pos)?;
            if cmp(&self.raw(i)?) != Ordering::Equal {
                break;
            }
            out.push(i);
            pos += 1;
        }
        Ok(out)
    }

    /// The index of the record of `ip`.
    pub fn find(&self, ip: &IpAddr) -> Result<Option<usize>, String> {
        let key = ip_key(ip);
        let cmp = |r: &Raw| r.ip.cmp(&key[..]);
        let pos = self.lower_bound(self.offsets, cmp, false)?;
        if pos < self.len() && cmp(&self.raw(pos)?) == Ordering::Equal {
            return Ok(Some(pos));
        }
        Ok(None)
    }

    /// The indexes of the records held by this attachment.
    pub fn held_by(&self, a: &Attachment) -> Result<Vec<usize>, String> {
        let key = (a.container_id.as_bytes(), a.ifname.as_bytes());
        self.equal_range(self.owners, |r| match r.owner {
            Some(o) => o.cmp(&key),
            None => Ordering::Less,
        })
    }

    /// The indexes of the records of this sticky identity.
    pub fn sticky_of(&self, s: &StickyId) -> Result<Vec<usize>, String> {
        let key = (
            s.namespace.as_bytes(),
            s.pod.as_bytes(),
            s.ifname.as_bytes(),
        );
        self.equal_range(self.sticky, |r| match r.sticky {
            Some(k) => k.cmp(&key),
            None => Ordering::Less,
        })
    }

    pub fn record(&self, i: usize) -> Result<Record, String> {
        let mut r = self.reader(i)?;
        let ip = r.ip()?;
        let pool = r.str()?;
        let node = r.str()?;
        let flags = r.u8()?;
        if flags & !(OWNER | STICKY) != 0 {
            return Err(format!("bad record flags {flags} at byte {}", r.pos - 1));
        }
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

    /// Every record, decoded (the caller checks order with `normalize`).
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

/// The record at the reader's position, its keys borrowed from the bytes
/// (byte order of UTF-8 is the strings' order).
fn raw_record<'a>(r: &mut Reader<'a>) -> Result<Raw<'a>, String> {
    let ip = r.raw_ip()?;
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
    Ok(Raw { ip, owner, sticky })
}

fn u32_at(buf: &[u8], at: usize) -> Result<u32, String> {
    Reader { buf, pos: at }.u32()
}

fn skip_record(r: &mut Reader) -> Result<(), String> {
    r.raw_ip()?;
    r.raw_str()?;
    r.raw_str()?;
    let flags = r.u8()?;
    let n = if flags & OWNER != 0 { 2 } else { 0 } + if flags & STICKY != 0 { 3 } else { 0 };
    for _ in 0..n {
        r.raw_str()?;
    }
    Ok(())
}

/// Recompute the trailing checksum over the bytes before it, so a fuzzer's
/// mutation of the body reaches the structure checks behind the checksum.
pub fn reseal(buf: &mut [u8]) {
    if let Some(body_len) = buf.len().checked_sub(8) {
        let sum = checksum(&buf[..body_len]).to_le_bytes();
        buf[body_len..].copy_from_slice(&sum);
    }
}

pub fn decode(buf: &[u8]) -> Result<State, String> {
    Indexed::new(buf)?.state()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ip: &str, owner: Option<(&str, &str)>, sticky: Option<(&str, &str)>) -> Record {
        Record {
            ip: ip.parse().unwrap(),
            pool: "p".into(),
            node: "ñode".into(),
            owner: owner.map(|(c, i)| Attachment {
                container_id: c.into(),
                ifname: i.into(),
            }),
            sticky: sticky.map(|(ns, pod)| StickyId {
                namespace: ns.into(),
                pod: pod.into(),
                ifname: "net1".into(),
            }),
        }
    }

    fn sample() -> State {
        let mut s = State::default();
        s.put(rec("10.0.0.2", Some(("c", "eth0")), None));
        s.put(rec("10.0.0.9", Some(("b", "eth0")), Some(("db", "m-1"))));
        s.put(rec("fd00::2", None, Some(("db", "m-0"))));
        s.put(rec("10.0.0.3", None, Some(("db", "m-0"))));
        s.put(rec("fd00::9", Some(("b", "eth0")), Some(("db", "m-1"))));
        s.put(rec("10.0.0.4", Some(("c", "eth1")), None));
        s.cursors.insert("p".into(), "10.0.0.2".parse().unwrap());
        s
    }

    /// The streamed encoder is the encoder: same bytes; a record that
    /// cannot be read fails the whole encoding.
    #[test]
    fn streamed_records_encode_the_same_bytes() {
        let s = sample();
        let streamed = encode_iter(s.version, s.records.iter().map(Ok), &s.cursors).unwrap();
        assert_eq!(streamed, encode(&s).unwrap());
        let failing = [Ok(s.records[0].clone()), Err("damaged".to_string())];
        assert_eq!(
            encode_iter(s.version, failing.into_iter(), &s.cursors),
            Err("damaged".to_string())
        );
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
    fn every_truncation_extension_and_flipped_byte_is_rejected() {
        let bytes = encode(&sample()).unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "{n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad).is_err(), "flipped byte {at}");
        }
    }

    #[test]
    fn lookups_by_address_attachment_and_identity() {
        let s = sample();
        let ix = Indexed::new(encode(&s).unwrap()).unwrap();
        assert_eq!(ix.len(), s.records.len());
        for (i, r) in s.records.iter().enumerate() {
            assert_eq!(ix.find(&r.ip).unwrap(), Some(i));
            assert_eq!(ix.record(i).unwrap(), *r);
        }
        for ip in [
            "10.0.0.1",
            "10.0.0.5",
            "10.0.0.255",
            "::",
            "fd00::3",
            "ffff::",
        ] {
            assert_eq!(ix.find(&ip.parse().unwrap()).unwrap(), None, "{ip}");
        }
        let ips = |v: Vec<usize>| -> Vec<String> {
            v.iter()
                .map(|i| ix.record(*i).unwrap().ip.to_string())
                .collect()
        };
        let att = |c: &str, i: &str| Attachment {
            container_id: c.into(),
            ifname: i.into(),
        };
        assert_eq!(
            ips(ix.held_by(&att("b", "eth0")).unwrap()),
            ["10.0.0.9", "fd00::9"]
        );
        assert_eq!(ips(ix.held_by(&att("c", "eth0")).unwrap()), ["10.0.0.2"]);
        assert_eq!(ips(ix.held_by(&att("c", "eth1")).unwrap()), ["10.0.0.4"]);
        assert!(ix.held_by(&att("a", "eth0")).unwrap().is_empty());
        assert!(ix.held_by(&att("d", "eth0")).unwrap().is_empty());
        let sid = |pod: &str| StickyId {
            namespace: "db".into(),
            pod: pod.into(),
            ifname: "net1".into(),
        };
        assert_eq!(
            ips(ix.sticky_of(&sid("m-0")).unwrap()),
            ["10.0.0.3", "fd00::2"]
        );
        assert_eq!(
            ips(ix.sticky_of(&sid("m-1")).unwrap()),
            ["10.0.0.9", "fd00::9"]
        );
        assert!(ix.sticky_of(&sid("m-2")).unwrap().is_empty());
        let empty = Indexed::new(encode(&State::default()).unwrap()).unwrap();
        assert_eq!(empty.find(&"10.0.0.2".parse().unwrap()).unwrap(), None);
        assert!(empty.held_by(&att("c", "eth0")).unwrap().is_empty());
    }
}
