//! A minimal blocking HTTP/1.1 client for etcd's JSON gateway: one
//! keep-alive connection, POST with a JSON body, `Content-Length`, chunked
//! or close-delimited replies, TLS through rustls.
//!
//! Why not a general HTTP crate: a plugin exec makes a handful of requests to
//! one server and exits; this is all it needs, and it keeps the binary and
//! its start-up small (see ipam/README.md, "etcd store").
//!
//! The peer is not trusted to be sane (a broken proxy, a hostile listener on
//! the endpoint's port). Two rules hold for everything read from it:
//! - time: every read and write of the socket is bounded by one absolute
//!   deadline ([`Timed`]), so a peer that trickles a byte at a time, never
//!   ends its headers or stalls a TLS handshake is left at the deadline, not
//!   after a fresh timeout per byte; name resolution is bounded too;
//! - memory: no size the peer announces is believed. Lengths are parsed with
//!   overflow checks, a reply over [`MAX_REPLY`] is refused, and the body
//!   grows only as its bytes arrive, never past the cap.
//!
//! The reply parser ([`read_response`]) and the TLS handshake ([`handshake`])
//! take any reader, so the fuzz harness drives them with a scripted peer and
//! a fake clock.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::config::Endpoint;

/// The largest reply accepted, in bytes. The largest real answer is the
/// snapshot of a whole network (GC, `list`, `reclaim`, `migrate`): every
/// record of a /16, 65,536 of them. As etcd's gateway sends one (the key
/// and the JSON record, both base64, and three revisions), a record with
/// long but real names (64-hex container ID, 253-byte node, pod and network
/// names, an IPv6 address) is 1,727 bytes, so 65,536 are 108 MiB; 128 MiB
/// holds them (`reply_cap_holds_a_full_slash_16` keeps this true). Typical
/// records are about 0.5 KB.
pub const MAX_REPLY: usize = 128 << 20;

/// The longest status, header or chunk-size line.
pub const MAX_LINE: usize = 16 * 1024;

/// The most header lines (and trailer lines) in one reply; etcd's gateway
/// sends about five.
pub const MAX_HEADERS: usize = 100;

/// Read buffer: large replies arrive in fewer reads.
const BUF_SIZE: usize = 64 * 1024;

/// The reason inside the `io::Error` of a reply over its cap, so the client
/// can say so plainly.
#[derive(Debug)]
pub struct TooLarge(pub usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reply exceeds {} bytes", self.0)
    }
}

impl std::error::Error for TooLarge {}

fn too_large(limit: usize) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TooLarge(limit))
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

fn closed(when: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {when}"),
    )
}

/// The time left before `deadline`; none left is an error.
fn remaining(deadline: Instant, what: &str) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, format!("timed out {what}")))
}

/// A socket that never waits past its deadline. `SO_RCVTIMEO` alone bounds
/// one read, and a peer sending a byte just before each read times out
/// would stretch a call forever: so each read and write is armed with the
/// time left, and a result that arrives after the deadline is a timeout.
pub struct Timed {
    sock: TcpStream,
    deadline: Instant,
    /// What the call was doing, for the timeout message.
    phase: &'static str,
}

impl Timed {
    fn arm(&mut self, deadline: Instant, phase: &'static str) {
        self.deadline = deadline;
        self.phase = phase;
    }

    fn left(&self) -> io::Result<Duration> {
        remaining(self.deadline, self.phase)
    }

    /// A read or write that ran out of time (`SO_RCVTIMEO` shows as
    /// `WouldBlock`), or returned after the deadline, is a timeout.
    fn finish<T>(&self, r: io::Result<T>) -> io::Result<T> {
        let waited_out = matches!(&r, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
        if waited_out || Instant::now() >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out {}", self.phase),
            ));
        }
        r
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(self.left()?))?;
        let r = self.sock.read(buf);
        self.finish(r)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.left()?))?;
        let r = self.sock.write(buf);
        self.finish(r)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

enum Stream {
    Plain(Timed),
    Tls(Box<StreamOwned<ClientConnection, Timed>>),
}

impl Stream {
    fn timed(&mut self) -> &mut Timed {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &mut s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

pub struct Conn {
    stream: BufReader<Stream>,
    host: String,
    /// The server asked to close after the last reply (or a reply was cut
    /// short): open a new connection for the next request.
    closed: bool,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server closes the connection after this reply.
    pub close: bool,
}

/// The addresses of `host`, before `deadline`: an address literal as it
/// is, a name from the hosts file or DNS by our own resolver (the C
/// library's would need NSS modules, which a static executable cannot load
/// safely, and it has its own timeouts of 5 s per server and try).
fn resolve(host: &str, port: u16, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
    super::resolve::lookup(host, port, deadline)
}

fn connect(addrs: &[SocketAddr], deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    for a in addrs {
        match TcpStream::connect_timeout(a, remaining(deadline, "connecting")?) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Drive a TLS client handshake over `sock` to its end. A step that moves
/// no byte either way would repeat forever: it is an error instead.
pub fn handshake<S: Read + Write>(conn: &mut ClientConnection, sock: &mut S) -> io::Result<()> {
    while conn.is_handshaking() {
        if conn.complete_io(sock)? == (0, 0) {
            return Err(closed("during the TLS handshake"));
        }
    }
    Ok(())
}

impl Conn {
    /// Resolve, connect (and handshake, for https) before `deadline`.
    pub fn open(
        ep: &Endpoint,
        tls: Option<&Arc<ClientConfig>>,
        deadline: Instant,
    ) -> io::Result<Conn> {
        let tcp = connect(&resolve(&ep.host, ep.port, deadline)?, deadline)?;
        tcp.set_nodelay(true)?;
        let mut sock = Timed {
            sock: tcp,
            deadline,
            phase: "during the TLS handshake",
        };
        let stream = match (ep.https, tls) {
            (false, _) => Stream::Plain(sock),
            (true, None) => return Err(invalid("https endpoint without TLS settings")),
            (true, Some(cfg)) => {
                let name = ServerName::try_from(ep.host.clone())
                    .map_err(|e| invalid(format!("bad TLS server name: {e}")))?;
                let mut conn = ClientConnection::new(cfg.clone(), name)
                    .map_err(|e| invalid(format!("TLS: {e}")))?;
                // Handshake now, so a certificate problem is reported as such.
                handshake(&mut conn, &mut sock)?;
                Stream::Tls(Box::new(StreamOwned::new(conn, sock)))
            }
        };
        Ok(Conn {
            stream: BufReader::with_capacity(BUF_SIZE, stream),
            host: ep.host.clone(),
            closed: false,
        })
    }

    pub fn reusable(&self) -> bool {
        !self.closed
    }

    /// POST `body` to `path` and read the whole reply before `deadline`.
    pub fn post(
        &mut self,
        path: &str,
        body: &[u8],
        auth: Option<&str>,
        deadline: Instant,
    ) -> io::Result<Response> {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if let Some(token) = auth {
            req.push_str("Authorization: ");
            req.push_str(token);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let mut msg = req.into_bytes();
        msg.extend_from_slice(body);
        // Until a whole reply is read, the connection is in no state to reuse.
        self.closed = true;
        let w = self.stream.get_mut();
        w.timed().arm(deadline, "sending the request");
        w.write_all(&msg)?;
        w.flush()?;
        w.timed().arm(deadline, "waiting for the reply");
        let resp = read_response(&mut self.stream, MAX_REPLY)?;
        self.closed = resp.close;
        Ok(resp)
    }
}

/// Read one reply from `r`, its body at most `limit` bytes. Each read of `r`
/// may block; `r` is what ends the wait at the deadline (see [`Timed`]).
pub fn read_response<R: BufRead>(r: &mut R, limit: usize) -> io::Result<Response> {
    let status = parse_status(&read_line(r)?)?;
    let head = read_headers(r)?;
    let mut body = Vec::new();
    let close = match head.framing() {
        Framing::Chunked => {
            read_chunked(r, &mut body, limit)?;
            head.close
        }
        Framing::Length(n) => {
            if n > limit as u64 {
                return Err(too_large(limit));
            }
            fill(r, &mut body, n, limit)?;
            head.close
        }
        Framing::UntilClose => {
            fill_to_eof(r, &mut body, limit)?;
            true
        }
    };
    Ok(Response {
        status,
        body,
        close,
    })
}

/// One line without its CRLF, at most [`MAX_LINE`] bytes.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        if n > MAX_LINE {
            return Err(invalid(format!(
                "a header line longer than {} KiB",
                MAX_LINE >> 10
            )));
        }
        return Err(closed(if n == 0 {
            "before the reply"
        } else {
            "in the middle of a line"
        }));
    }
    let s = String::from_utf8(line).map_err(|_| invalid("non-UTF-8 header"))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

/// `HTTP/1.x NNN reason`.
fn parse_status(line: &str) -> io::Result<u16> {
    line.strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| invalid(format!("bad status line {:?}", truncate(line))))
}

/// At most 80 characters of a peer's line for a message.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[derive(Default)]
struct Head {
    length: Option<u64>,
    chunked: bool,
    close: bool,
}

enum Framing {
    Chunked,
    Length(u64),
    UntilClose,
}

impl Head {
    /// Chunked wins over a length (RFC 9112 6.3); neither: until close.
    fn framing(&self) -> Framing {
        match (self.chunked, self.length) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::UntilClose,
        }
    }
}

fn read_headers<R: BufRead>(r: &mut R) -> io::Result<Head> {
    let mut head = Head::default();
    for _ in 0..=MAX_HEADERS {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok(head);
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = parse_length(v)?;
                if head.length.is_some_and(|m| m != n) {
                    return Err(invalid("conflicting Content-Length headers"));
                }
                head.length = Some(n);
            }
            "transfer-encoding" => head.chunked |= parse_transfer_encoding(v)?,
            "connection" => {
                head.close |= v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
            }
            _ => {}
        }
    }
    Err(invalid(format!("more than {MAX_HEADERS} header lines")))
}

/// Digits only (no sign, no spaces inside), and no more than fits a u64.
fn parse_length(v: &str) -> io::Result<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!("bad Content-Length {:?}", truncate(v))));
    }
    v.parse::<u64>()
        .map_err(|_| invalid("Content-Length overflows"))
}

/// Whether the body is chunked. Only `chunked` (last) and `identity` are
/// understood; a compressed body is refused rather than misread.
fn parse_transfer_encoding(v: &str) -> io::Result<bool> {
    let codings: Vec<String> = v
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    match codings.as_slice() {
        [] => Ok(false),
        [c] if c == "chunked" => Ok(true),
        _ => Err(invalid(format!(
            "unsupported Transfer-Encoding {:?}",
            truncate(v)
        ))),
    }
}

fn read_chunked<R: BufRead>(r: &mut R, body: &mut Vec<u8>, limit: usize) -> io::Result<()> {
    loop {
        let n = parse_chunk_size(&read_line(r)?)?;
        if n == 0 {
            return skip_trailers(r);
        }
        if n > (limit - body.len()) as u64 {
            return Err(too_large(limit));
        }
        fill(r, body, n, limit)?;
        if !read_line(r)?.is_empty() {
            return Err(invalid("a chunk is longer than its size"));
        }
    }
}

/// Hex digits before any `;extension`, no more than fit a u64.
fn parse_chunk_size(line: &str) -> io::Result<u64> {
    let s = line.split(';').next().unwrap_or("").trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!("bad chunk size {:?}", truncate(line))));
    }
    u64::from_str_radix(s, 16).map_err(|_| invalid("chunk size overflows"))
}

fn skip_trailers<R: BufRead>(r: &mut R) -> io::Result<()> {
    for _ in 0..=MAX_HEADERS {
        if read_line(r)?.is_empty() {
            return Ok(());
        }
    }
    Err(invalid(format!("more than {MAX_HEADERS} trailer lines")))
}

/// Append exactly `n` more bytes of `r` to `body`, as they arrive.
fn fill<R: BufRead>(r: &mut R, body: &mut Vec<u8>, n: u64, limit: usize) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        let got = append(r, body, left, limit)?;
        if got == 0 {
            return Err(closed("in the middle of the body"));
        }
        left -= got as u64;
    }
    Ok(())
}

/// Append the rest of `r` (a body delimited by the connection's end).
fn fill_to_eof<R: BufRead>(r: &mut R, body: &mut Vec<u8>, limit: usize) -> io::Result<()> {
    while append(r, body, u64::MAX, limit)? > 0 {}
    Ok(())
}

/// Move what `r` has buffered (one read), at most `max` bytes, to `body`;
/// 0 at the end of the stream. Past `limit` bytes in all is an error.
fn append<R: BufRead>(r: &mut R, body: &mut Vec<u8>, max: u64, limit: usize) -> io::Result<usize> {
    let buf = loop {
        match r.fill_buf() {
            Ok(b) => break b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let take = buf.len().min(usize::try_from(max).unwrap_or(usize::MAX));
    if take > limit.saturating_sub(body.len()) {
        return Err(too_large(limit));
    }
    grow(body, take, limit);
    body.extend_from_slice(&buf[..take]);
    r.consume(take);
    Ok(take)
}

/// Room for `extra` more bytes: doubling as usual, but never past `limit`
/// (the caller checked that `len + extra` fits).
fn grow(body: &mut Vec<u8>, extra: usize, limit: usize) {
    let need = body.len() + extra;
    if need <= body.capacity() {
        return;
    }
    let target = need
        .max(body.capacity().saturating_mul(2))
        .max(4096)
        .min(limit)
        .max(need);
    body.reserve_exact(target - body.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(reply: &[u8], limit: usize) -> io::Result<Response> {
        read_response(&mut io::BufReader::with_capacity(7, reply), limit)
    }

    fn err(reply: &[u8], limit: usize) -> String {
        match parse(reply, limit) {
            Ok(r) => panic!("accepted: status {} body {:?}", r.status, r.body),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_framing_reads_its_body() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcXYZ", 100).unwrap();
        assert_eq!((r.status, &r.body[..], r.close), (200, &b"abc"[..], false));
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, close\r\n\r\n3;x=y\r\nabc\r\n1\r\nd\r\n0\r\nT: v\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!((&r.body[..], r.close), (&b"abcd"[..], true));
        let r = parse(b"HTTP/1.0 503 x\r\n\r\nuntil close", 100).unwrap();
        assert_eq!(
            (r.status, &r.body[..], r.close),
            (503, &b"until close"[..], true)
        );
    }

    #[test]
    fn announced_sizes_are_not_believed() {
        for cl in [
            "18446744073709551615",
            "18446744073709551616",
            "100000000000",
        ] {
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\n{{}}");
            let e = err(reply.as_bytes(), 1000);
            assert!(
                e.contains("exceeds 1000") || e.contains("overflows"),
                "{cl}: {e}"
            );
        }
        for size in [
            "ffffffffffffffff",
            "10000000000000000",
            "fffffffffffffffff0",
            "-1",
            "0x10",
            "",
        ] {
            let reply = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n{size}\r\n"
            );
            let e = err(reply.as_bytes(), 1000);
            assert!(
                e.contains("exceeds") || e.contains("chunk size"),
                "{size}: {e}"
            );
        }
        assert!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc", 10).contains("Content-Length")
        );
        assert!(err(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            10
        )
        .contains("conflicting"));
        assert!(err(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            10
        )
        .contains("Transfer-Encoding"));
    }

    #[test]
    fn a_body_never_grows_past_the_cap() {
        let mut endless = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..5000 {
            endless.extend_from_slice(b"3\r\nabc\r\n");
        }
        assert!(err(&endless, 4096).contains("exceeds 4096 bytes"));
        let mut close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        close.resize(close.len() + 4097, b'x');
        assert!(err(&close, 4096).contains("exceeds 4096 bytes"));
        close.pop();
        let r = parse(&close, 4096).unwrap();
        assert_eq!((r.body.len(), r.body.capacity()), (4096, 4096));
    }

    #[test]
    fn header_lines_are_bounded_in_length_and_number() {
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"X: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert!(err(&many, 10).contains("header lines"));
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "y".repeat(MAX_LINE));
        assert!(err(long.as_bytes(), 10).contains("longer than"));
        assert!(err(b"HTTP/1.1 200 OK\r\nX: y", 10).contains("closed"));
        assert!(err(b"", 10).contains("closed"));
        assert!(err(b"HTTP/2 200\r\n\r\n", 10).contains("status"));
    }

    #[test]
    fn resolving_an_address_literal_needs_no_lookup() {
        // A deadline already passed would fail any lookup that waits.
        let past = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(resolve("fd00::1", 1, past).unwrap()[0].port(), 1);
        assert!(resolve("etcd-0.invalid.", 1, past)
            .unwrap_err()
            .to_string()
            .contains("resolving etcd-0.invalid"));
    }
}
