//! Host names of etcd endpoints to addresses, without the C library's
//! resolver: `/etc/hosts`, then DNS over UDP to the servers of
//! `/etc/resolv.conf`, all within the caller's deadline.
//!
//! Why our own: glibc resolves names through NSS modules it loads at run
//! time, which a statically linked executable cannot do safely (the node's
//! modules must be of the very glibc version it was linked with), and an
//! image without a distribution base has none. A plugin needs only what an
//! etcd endpoint list needs: addresses of a few names, from the hosts file
//! and the node's DNS servers, like glibc's `files dns` order.
//!
//! Every size comes from a bounded read or from this side: the files are
//! read capped, a reply is read into a fixed buffer, and name decompression
//! follows a bounded number of pointers that may only point backwards.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

const HOSTS: &str = "/etc/hosts";
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Larger hosts or resolv.conf files are refused rather than read.
const FILE_LIMIT: u64 = 1 << 20;
/// The most a UDP reply without EDNS can be is 512 bytes; a server that
/// sends more gets the rest cut off, which truncates, never overflows.
const REPLY_BUF: usize = 1232;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// What `/etc/resolv.conf` says, with glibc's defaults and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvConf {
    pub servers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
    /// Per server and try.
    pub timeout: Duration,
    pub attempts: u32,
}

impl Default for ResolvConf {
    fn default() -> Self {
        ResolvConf {
            servers: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))],
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut c = ResolvConf {
            servers: Vec::new(),
            ..ResolvConf::default()
        };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") if c.servers.len() < 3 => {
                    // A zone index (fe80::1%eth0) is not ours to honour.
                    let addr = words.next().and_then(|w| w.split('%').next());
                    if let Some(ip) = addr.and_then(|a| a.parse::<IpAddr>().ok()) {
                        c.servers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search") => c.search = words.take(6).map(normalise).collect(),
                Some("domain") => c.search = words.next().map(normalise).into_iter().collect(),
                Some("options") => {
                    for opt in words {
                        let (k, v) = opt.split_once(':').unwrap_or((opt, ""));
                        let n = v.parse::<u64>().ok();
                        match (k, n) {
                            ("ndots", Some(n)) => c.ndots = n.min(15) as usize,
                            ("timeout", Some(n)) => c.timeout = Duration::from_secs(n.clamp(1, 30)),
                            ("attempts", Some(n)) => c.attempts = n.clamp(1, 5) as u32,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        c.search.retain(|d| !d.is_empty());
        if c.servers.is_empty() {
            c.servers = ResolvConf::default().servers;
        }
        c
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The addresses `/etc/hosts` gives `name`, in the file's order.
pub fn from_hosts(text: &str, name: &str) -> Vec<IpAddr> {
    let name = normalise(name);
    text.lines()
        .filter_map(|line| {
            let mut words = line.split('#').next()?.split_whitespace();
            let ip = words.next()?.split('%').next()?.parse::<IpAddr>().ok()?;
            words.any(|w| normalise(w) == name).then_some(ip)
        })
        .collect()
}

/// The names to ask for, in order (resolv.conf(5)): as given first when it
/// has at least `ndots` dots, else after the search domains.
fn candidates(name: &str, conf: &ResolvConf) -> Vec<String> {
    if let Some(abs) = name.strip_suffix('.') {
        return vec![abs.to_ascii_lowercase()];
    }
    let name = name.to_ascii_lowercase();
    let searched = conf.search.iter().map(|d| format!("{name}.{d}"));
    if name.matches('.').count() >= conf.ndots {
        std::iter::once(name.clone()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(name.clone())).collect()
    }
}

/// A query for `name`, or `None` when it is not a valid DNS name.
pub fn query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let mut q = Vec::with_capacity(18 + name.len());
    // ID, flags (recursion desired), one question, no other records.
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(q)
}

/// What one reply says.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The addresses of the name (none: the name exists without this type).
    Found(Vec<IpAddr>),
    /// NXDOMAIN: try the next candidate name, not the next server.
    NoSuchName,
    /// SERVFAIL, REFUSED, a malformed reply: ask another server.
    Failed(String),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// Skips a (possibly compressed) name; returns it lower-cased. Pointers
    /// must point before the place they are read from, and at most 64 are
    /// followed: a loop or a forward chain cannot make this spin.
    fn name(&mut self) -> Option<String> {
        let mut out = String::new();
        let mut at = self.pos;
        let mut jumped = false;
        for _ in 0..64 {
            let len = *self.buf.get(at)? as usize;
            match len {
                0 => {
                    if !jumped {
                        self.pos = at + 1;
                    }
                    return Some(out);
                }
                l if l & 0xc0 == 0xc0 => {
                    let target = ((l & 0x3f) << 8) | *self.buf.get(at + 1)? as usize;
                    if target >= at {
                        return None;
                    }
                    if !jumped {
                        self.pos = at + 2;
                    }
                    jumped = true;
                    at = target;
                }
                l if l <= 63 => {
                    let label = self.buf.get(at + 1..at + 1 + l)?;
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
                    if out.len() > 255 {
                        return None;
                    }
                    at += 1 + l;
                }
                _ => return None,
            }
        }
        None
    }
}

/// Parses the reply to `id`'s question for `name`; `None` when it is not
/// that reply at all (a stray or spoofed datagram: keep waiting).
pub fn parse_reply(buf: &[u8], id: u16, name: &str, qtype: u16) -> Option<Answer> {
    let mut r = Reader { buf, pos: 0 };
    if r.u16()? != id {
        return None;
    }
    let flags = r.u16()?;
    let (qd, an) = (r.u16()?, r.u16()?);
    r.take(4)?;
    // A reply (QR), to a standard query, about exactly our question.
    if flags & 0x8000 == 0 || flags & 0x7800 != 0 || qd != 1 {
        return None;
    }
    if r.name()? != name || r.u16()? != qtype || r.u16()? != CLASS_IN {
        return None;
    }
    match flags & 0x000f {
        0 => {}
        3 => return Some(Answer::NoSuchName),
        rcode => return Some(Answer::Failed(format!("the server answered rcode {rcode}"))),
    }
    // The name, then the names it is an alias of (CNAME records, in the
    // order the server gives them): addresses of any of these are ours.
    let mut owners = vec![name.to_string()];
    let mut found = Vec::new();
    for _ in 0..an {
        let Some(owner) = r.name() else {
            return Some(Answer::Failed("a malformed answer record".into()));
        };
        let (Some(rtype), Some(class)) = (r.u16(), r.u16()) else {
            return Some(Answer::Failed("a truncated answer record".into()));
        };
        let (Some(_ttl), Some(len)) = (r.take(4).map(|_| ()), r.u16()) else {
            return Some(Answer::Failed("a truncated answer record".into()));
        };
        let data_at = r.pos;
        let Some(data) = r.take(len as usize) else {
            return Some(Answer::Failed("a truncated answer record".into()));
        };
        if class != CLASS_IN || !owners.contains(&owner) {
            continue;
        }
        match (rtype, data.len()) {
            (TYPE_A, 4) => found.push(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
            (TYPE_AAAA, 16) => found.push(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
            (TYPE_CNAME, _) => {
                let mut alias = Reader { buf, pos: data_at };
                if let Some(target) = alias.name() {
                    if owners.len() < 16 {
                        owners.push(target);
                    }
                }
            }
            _ => {}
        }
    }
    Some(Answer::Found(found))
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: the buffer is valid for writes of its length; getrandom
    // writes at most that many bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n != 2 {
        // No entropy this early is unlikely on a node; the source port is
        // random anyway.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return (t.subsec_nanos() ^ std::process::id()) as u16;
    }
    u16::from_ne_bytes(b)
}

fn timed_out(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("timed out resolving {name}"),
    )
}

/// Asks `server` for the A and AAAA records of `name` at once and waits
/// for both replies, until `until`.
fn ask(server: SocketAddr, name: &str, until: Instant) -> io::Result<Answer> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local)?;
    // Connected: the kernel drops datagrams from anyone but the server.
    sock.connect(server)?;
    let mut pending = Vec::new();
    for qtype in [TYPE_A, TYPE_AAAA] {
        let id = random_id();
        let q = query(id, name, qtype)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a valid host name"))?;
        sock.send(&q)?;
        pending.push((id, qtype));
    }
    let mut found = Vec::new();
    let mut buf = [0u8; REPLY_BUF];
    while !pending.is_empty() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(name));
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out(name))
            }
            Err(e) => return Err(e),
        };
        let reply = &buf[..n];
        let Some(i) = pending
            .iter()
            .position(|(id, qt)| parse_reply(reply, *id, name, *qt).is_some())
        else {
            continue;
        };
        let (id, qtype) = pending.swap_remove(i);
        match parse_reply(reply, id, name, qtype) {
            Some(Answer::Found(mut a)) => found.append(&mut a),
            Some(other) => return Ok(other),
            None => {}
        }
    }
    // IPv4 first, as the A reply may come second: a fixed order for the
    // caller, which tries them in turn.
    found.sort_by_key(|ip| ip.is_ipv6());
    Ok(Answer::Found(found))
}

/// The addresses of `name` from DNS as `conf` says, before `deadline`.
pub fn from_dns(name: &str, conf: &ResolvConf, deadline: Instant) -> io::Result<Vec<IpAddr>> {
    let mut last = format!("no DNS server answered for {name}");
    for candidate in candidates(name, conf) {
        let mut no_such_name = false;
        'tries: for _ in 0..conf.attempts {
            for server in &conf.servers {
                let now = Instant::now();
                if now >= deadline {
                    return Err(timed_out(name));
                }
                let until = deadline.min(now + conf.timeout);
                match ask(*server, &candidate, until) {
                    Ok(Answer::Found(a)) if !a.is_empty() => return Ok(a),
                    Ok(Answer::Found(_)) | Ok(Answer::NoSuchName) => {
                        no_such_name = true;
                        break 'tries;
                    }
                    Ok(Answer::Failed(why)) => last = format!("{server}: {why}"),
                    Err(e) if e.kind() == io::ErrorKind::TimedOut && Instant::now() >= deadline => {
                        return Err(e)
                    }
                    Err(e) => last = format!("{server}: {e}"),
                }
            }
        }
        if !no_such_name {
            return Err(io::Error::new(io::ErrorKind::NotFound, last));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{name} has no address (hosts file and DNS)"),
    ))
}

fn read_small(path: &str) -> io::Result<String> {
    let bytes = cni::fsutil::read_optional(Path::new(path), FILE_LIMIT)
        .map_err(|e| io::Error::other(e.to_string()))?
        .unwrap_or_default();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The addresses of `host` (a literal, a name in the hosts file, or one
/// that DNS knows), each with `port`.
pub fn lookup(host: &str, port: u16, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut ips = from_hosts(&read_small(HOSTS)?, host);
    if ips.is_empty() && normalise(host) == "localhost" {
        ips = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    }
    if ips.is_empty() {
        let conf = ResolvConf::parse(&read_small(RESOLV_CONF)?);
        ips = from_dns(host, &conf, deadline)?;
    }
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_as_glibc_reads_it() {
        let c = ResolvConf::parse(
            "# comment\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\n\
             nameserver 10.0.0.54\nnameserver 10.0.0.55\nsearch Cluster.Local. svc.cluster.local\n\
             options ndots:5 timeout:2 attempts:9 rotate\n",
        );
        assert_eq!(
            c.servers,
            vec![
                "10.0.0.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "10.0.0.54:53".parse().unwrap()
            ]
        );
        assert_eq!(c.search, vec!["cluster.local", "svc.cluster.local"]);
        assert_eq!(c.ndots, 5);
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.attempts, 5);
        assert_eq!(ResolvConf::parse(""), ResolvConf::default());
    }

    #[test]
    fn hosts_file_lookup() {
        let hosts = "127.0.0.1 localhost\n10.1.0.5 etcd-0.Example etcd-0 # the first\n\
                     # 10.9.9.9 etcd-0\nfd00::5 etcd-0\nnot-an-ip etcd-0\n";
        let want: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(from_hosts(hosts, "ETCD-0"), want);
        assert_eq!(from_hosts(hosts, "etcd-0.example."), want[..1]);
        assert!(from_hosts(hosts, "etcd-1").is_empty());
    }

    #[test]
    fn search_order_follows_ndots() {
        let mut c = ResolvConf {
            search: vec!["a.test".into(), "b.test".into()],
            ..ResolvConf::default()
        };
        assert_eq!(
            candidates("etcd", &c),
            ["etcd.a.test", "etcd.b.test", "etcd"]
        );
        assert_eq!(
            candidates("etcd.kube", &c),
            ["etcd.kube", "etcd.kube.a.test", "etcd.kube.b.test"]
        );
        c.ndots = 5;
        assert_eq!(candidates("etcd.kube", &c)[0], "etcd.kube.a.test");
        assert_eq!(candidates("Etcd.Kube.", &c), ["etcd.kube"]);
    }

    #[test]
    fn queries_are_encoded_and_bad_names_refused() {
        let q = query(0x1234, "a.bc", TYPE_AAAA).unwrap();
        assert_eq!(
            q,
            [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 28, 0, 1]
        );
        assert!(query(1, "a..b", TYPE_A).is_none());
        assert!(query(1, &"x".repeat(64), TYPE_A).is_none());
        assert!(query(1, &["abc"; 70].join("."), TYPE_A).is_none());
    }

    /// A reply to `q` with `rcode` and answer records (owner name bytes,
    /// type, data).
    fn reply(q: &[u8], rcode: u8, answers: &[(&[u8], u16, &[u8])]) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= 0x80;
        r[3] = rcode;
        r[7] = answers.len() as u8;
        for (owner, rtype, data) in answers {
            r.extend_from_slice(owner);
            r.extend_from_slice(&rtype.to_be_bytes());
            r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(data);
        }
        r
    }

    #[test]
    fn replies_with_aliases_and_compression() {
        let q = query(7, "etcd.test", TYPE_A).unwrap();
        // etcd.test (pointer to the question at 12) is an alias of
        // db.test, whose A record names it as "db" + pointer to ".test".
        let alias = [2, b'd', b'b', 0xc0, 17];
        let answers: [(&[u8], u16, &[u8]); 3] = [
            (&[0xc0, 12], TYPE_CNAME, &alias),
            (&[2, b'd', b'b', 0xc0, 17], TYPE_A, &[10, 0, 0, 9]),
            // Someone else's address in the same reply is not ours.
            (
                &[5, b'o', b't', b'h', b'e', b'r', 0],
                TYPE_A,
                &[10, 6, 6, 6],
            ),
        ];
        let r = reply(&q, 0, &answers);
        assert_eq!(
            parse_reply(&r, 7, "etcd.test", TYPE_A),
            Some(Answer::Found(vec!["10.0.0.9".parse().unwrap()]))
        );
        // Another ID or question: not our reply.
        assert_eq!(parse_reply(&r, 8, "etcd.test", TYPE_A), None);
        assert_eq!(parse_reply(&r, 7, "etcd.other", TYPE_A), None);
        assert_eq!(parse_reply(&r, 7, "etcd.test", TYPE_AAAA), None);
        assert_eq!(
            parse_reply(&reply(&q, 3, &[]), 7, "etcd.test", TYPE_A),
            Some(Answer::NoSuchName)
        );
        assert!(matches!(
            parse_reply(&reply(&q, 2, &[]), 7, "etcd.test", TYPE_A),
            Some(Answer::Failed(_))
        ));
    }

    #[test]
    fn hostile_replies_end_quickly() {
        let q = query(7, "etcd.test", TYPE_A).unwrap();
        // A pointer to itself, a forward pointer, a reserved label type:
        // refused, no loop, no panic.
        for owner in [&[0xc0u8, 27][..], &[0xc0, 0xff], &[0x40]] {
            let r = reply(&q, 0, &[(owner, TYPE_A, &[1, 2, 3, 4])]);
            assert!(matches!(
                parse_reply(&r, 7, "etcd.test", TYPE_A),
                Some(Answer::Failed(_))
            ));
        }
        let mut r = reply(&q, 0, &[(&[0xc0, 12], TYPE_A, &[1, 2, 3, 4])]);
        r.truncate(r.len() - 2);
        assert!(matches!(
            parse_reply(&r, 7, "etcd.test", TYPE_A),
            Some(Answer::Failed(_))
        ));
        // Every prefix of a valid reply, and random bytes after the header.
        let good = reply(&q, 0, &[(&[0xc0, 12], TYPE_A, &[1, 2, 3, 4])]);
        for n in 0..good.len() {
            let _ = parse_reply(&good[..n], 7, "etcd.test", TYPE_A);
        }
        let mut x: u32 = 1;
        for _ in 0..20_000 {
            let mut r = good.clone();
            for b in r.iter_mut().skip(12) {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if x >> 29 == 0 {
                    *b = (x >> 8) as u8;
                }
            }
            let _ = parse_reply(&r, 7, "etcd.test", TYPE_A);
        }
    }

    /// A DNS server on loopback: answers A and AAAA for `etcd.test`,
    /// NXDOMAIN for anything else, after a stray datagram of its own.
    fn server() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let q = &buf[..n];
                let _ = sock.send_to(b"junk", from);
                let name_end = 12 + q[12..].iter().position(|b| *b == 0).unwrap();
                let qtype = u16::from_be_bytes([q[name_end + 1], q[name_end + 2]]);
                let ours = &q[12..name_end] == b"\x04etcd\x04test";
                let r = match (ours, qtype) {
                    (false, _) => reply(q, 3, &[]),
                    (true, TYPE_A) => reply(q, 0, &[(&[0xc0, 12], TYPE_A, &[10, 1, 0, 5])]),
                    (true, _) => reply(q, 0, &[(&[0xc0, 12], TYPE_AAAA, &[0xfd; 16])]),
                };
                let _ = sock.send_to(&r, from);
            }
        });
        addr
    }

    #[test]
    fn asks_a_real_server_on_loopback() {
        let conf = ResolvConf {
            servers: vec![server()],
            search: vec!["test".into()],
            ..ResolvConf::default()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let want: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), IpAddr::from([0xfd; 16])];
        // "etcd" has no dot: the search domain makes it etcd.test.
        assert_eq!(from_dns("etcd", &conf, deadline).unwrap(), want);
        assert_eq!(from_dns("etcd.test.", &conf, deadline).unwrap(), want);
        let e = from_dns("nope.test.", &conf, deadline).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn a_silent_server_ends_at_the_deadline() {
        // Bound but never answering.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let conf = ResolvConf {
            servers: vec![silent.local_addr().unwrap()],
            ..ResolvConf::default()
        };
        let start = Instant::now();
        let e = from_dns("etcd.test", &conf, start + Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("etcd.test"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn literals_need_no_lookup() {
        let past = Instant::now();
        assert_eq!(
            lookup("[fd00::1]", 2379, past).unwrap(),
            vec!["[fd00::1]:2379".parse().unwrap()]
        );
        assert_eq!(
            lookup("10.0.0.1", 2379, past).unwrap(),
            vec!["10.0.0.1:2379".parse().unwrap()]
        );
    }
}
