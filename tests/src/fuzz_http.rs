//! A hostile HTTP (and TLS) peer for the etcd client's fuzz target: replies
//! from a grammar of status lines, headers, chunk sizes and bodies, delivered
//! in pieces on a fake clock (trickles, stalls, an endless tail, a cut), so
//! the client's parser runs without sockets and a million inputs take
//! seconds.

use std::io::{self, Read, Write};

use crate::fuzz::{mutate_bytes, Rng};

/// The fake deadline of every read, in fake milliseconds.
pub const DEADLINE_MS: u64 = 1000;

/// What the peer sends: pieces after delays, then maybe the same piece
/// forever, then the end of the stream.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub pieces: Vec<(u64, Vec<u8>)>,
    /// Repeated after the pieces, each time after its delay.
    pub endless: Option<(u64, Vec<u8>)>,
    /// The body a correct client reads, when the reply is well formed,
    /// arrives in time and fits the cap.
    pub expect: Option<Vec<u8>>,
}

/// The peer as the client's reader sees it: like the client's deadline
/// socket, a read that would wait past the deadline fails with `TimedOut`.
/// It counts what a client must never do: read again after a timeout, or
/// keep reading after the end of the stream.
pub struct FakePeer {
    script: Script,
    piece: usize,
    offset: usize,
    in_endless: bool,
    /// The current piece's delay is spent.
    started: bool,
    pub now_ms: u64,
    /// Reads at most this many bytes at a time (a short read).
    pub max_read: usize,
    pub reads: u64,
    pub reads_after_timeout: u64,
    pub reads_after_eof: u64,
    timed_out: bool,
    eof: bool,
    pub written: u64,
}

impl FakePeer {
    pub fn new(script: Script, max_read: usize) -> FakePeer {
        FakePeer {
            script,
            piece: 0,
            offset: 0,
            in_endless: false,
            started: false,
            now_ms: 0,
            max_read: max_read.max(1),
            reads: 0,
            reads_after_timeout: 0,
            reads_after_eof: 0,
            timed_out: false,
            eof: false,
            written: 0,
        }
    }

    fn current(&self) -> Option<&(u64, Vec<u8>)> {
        if self.in_endless {
            self.script.endless.as_ref()
        } else {
            self.script.pieces.get(self.piece)
        }
    }

    fn next_piece(&mut self) {
        self.offset = 0;
        self.started = false;
        if !self.in_endless {
            self.piece += 1;
            if self.piece >= self.script.pieces.len() {
                self.in_endless = self.script.endless.is_some();
            }
        }
    }

    fn timeout(&mut self) -> io::Error {
        self.timed_out = true;
        self.now_ms = DEADLINE_MS;
        io::Error::new(io::ErrorKind::TimedOut, "fake deadline")
    }

    fn tick(&mut self) -> io::Result<()> {
        if self.timed_out {
            self.reads_after_timeout += 1;
        }
        if self.now_ms >= DEADLINE_MS {
            return Err(self.timeout());
        }
        Ok(())
    }
}

impl Read for FakePeer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        self.tick()?;
        if self.eof {
            self.reads_after_eof += 1;
        }
        loop {
            // Lengths and delays first: the harness must not allocate (the
            // target measures the client's allocations).
            let Some((delay, len)) = self.current().map(|(d, b)| (*d, b.len())) else {
                self.eof = true;
                return Ok(0);
            };
            if self.offset >= len {
                if len == 0 && self.in_endless {
                    // An endless run of nothing is a stall.
                    return Err(self.timeout());
                }
                self.next_piece();
                continue;
            }
            if !self.started {
                self.started = true;
                self.now_ms = self.now_ms.saturating_add(delay);
                if self.now_ms >= DEADLINE_MS {
                    return Err(self.timeout());
                }
            }
            let n = buf.len().min(self.max_read).min(len - self.offset);
            let at = self.offset;
            if let Some((_, bytes)) = self.current() {
                buf[..n].copy_from_slice(&bytes[at..at + n]);
            }
            self.offset += n;
            return Ok(n);
        }
    }
}

impl Write for FakePeer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tick()?;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn push(out: &mut Vec<u8>, s: &str, crlf: bool) {
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
}

const STATUS: &[&str] = &[
    "HTTP/1.1 200 OK",
    "HTTP/1.0 200",
    "HTTP/1.1 503 Service Unavailable",
    "HTTP/1.1 401 Unauthorized",
    "HTTP/1.1 100 Continue",
    "HTTP/1.1 999 x",
    "HTTP/1.1 20",
    "HTTP/2 200",
    "HTTP/1.1 2é0 OK",
    "",
    "SSH-2.0-OpenSSH_9.2",
];

const LENGTHS: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "107374182400",
    "1073741824",
    "65537",
    "-1",
    "+5",
    "0x10",
    "5, 5",
    "",
    "99999999999999999999999999999999",
    "4294967296",
];

const ENCODINGS: &[&str] = &[
    "chunked",
    "Chunked",
    "gzip, chunked",
    "chunked, gzip",
    "identity",
    "",
    "chunked;q=1",
    "identity, chunked",
];

const CHUNK_SIZES: &[&str] = &[
    "ffffffffffffffff",
    "10000000000000000",
    "fffffffffffffffff0",
    "7fffffffffffffff",
    "-1",
    "zz",
    "",
    "0x10",
    "40000000",
    "10001",
    " 1 ",
    "1;ext=\"x\"",
];

fn body_bytes(rng: &mut Rng) -> Vec<u8> {
    let n = *rng.pick(&[0usize, 1, 2, 17, 100, 4096, 30_000, 70_000]);
    let mut b: Vec<u8> = br#"{"header":{"revision":"7"},"kvs":[]}"#.to_vec();
    b.resize(n, b'x');
    b
}

/// Headers for a well-formed reply of `body` with the chosen framing.
fn framing(rng: &mut Rng, body: &[u8], crlf: bool, head: &mut Vec<u8>, rest: &mut Vec<u8>) {
    match rng.below(3) {
        0 => {
            push(head, &format!("Content-Length: {}", body.len()), crlf);
            rest.extend_from_slice(body);
        }
        1 => {
            push(head, "Transfer-Encoding: chunked", crlf);
            let mut left = body;
            while !left.is_empty() {
                let n = (1 + rng.below(9000)).min(left.len());
                let ext = if rng.chance(10) { ";a=b" } else { "" };
                push(rest, &format!("{n:x}{ext}"), crlf);
                rest.extend_from_slice(&left[..n]);
                push(rest, "", crlf);
                left = &left[n..];
            }
            push(rest, "0", crlf);
            if rng.chance(20) {
                push(rest, "Trailer: x", crlf);
            }
            push(rest, "", crlf);
        }
        _ => {
            // Close-delimited: the body ends with the stream.
            push(head, "Connection: close", crlf);
            rest.extend_from_slice(body);
        }
    }
}

/// A hostile header or body part: absurd sizes, unknown codings, junk.
fn hostile_part(rng: &mut Rng, crlf: bool, head: &mut Vec<u8>, rest: &mut Vec<u8>) {
    match rng.below(8) {
        0 => push(
            head,
            &format!("Content-Length: {}", rng.pick(LENGTHS)),
            crlf,
        ),
        1 => push(
            head,
            &format!("Transfer-Encoding: {}", rng.pick(ENCODINGS)),
            crlf,
        ),
        2 => {
            push(head, "Transfer-Encoding: chunked", crlf);
            for _ in 0..rng.below(3) {
                push(rest, "3", crlf);
                rest.extend_from_slice(b"abc");
                push(rest, "", crlf);
            }
            let size = *rng.pick(CHUNK_SIZES);
            push(rest, size, crlf);
            rest.extend_from_slice(&body_bytes(rng));
        }
        3 => {
            for _ in 0..rng.below(300) {
                push(head, "X-Pad: a", crlf);
            }
        }
        4 => push(head, &format!("X-Long: {}", "y".repeat(16 * 1024)), crlf),
        5 => push(head, "no colon here", crlf),
        6 => push(head, "Connection: keep-alive, close", crlf),
        _ => {
            head.extend_from_slice(b"X-Bin: \xff\xfe");
            push(head, "", crlf);
        }
    }
}

/// One reply from the grammar.
pub fn http_reply(rng: &mut Rng, cap: usize) -> Script {
    let crlf = rng.chance(90);
    let valid = rng.chance(35);
    let mut head = Vec::new();
    let mut rest = Vec::new();
    let status = if valid {
        "HTTP/1.1 200 OK"
    } else {
        *rng.pick(STATUS)
    };
    push(&mut head, status, crlf);
    push(&mut head, "Content-Type: application/json", crlf);
    let body = body_bytes(rng);
    let mut expect = None;
    if valid || rng.chance(50) {
        framing(rng, &body, crlf, &mut head, &mut rest);
        expect = (valid && body.len() <= cap).then(|| body.clone());
    }
    if !valid {
        for _ in 0..1 + rng.below(3) {
            hostile_part(rng, crlf, &mut head, &mut rest);
        }
    }
    push(&mut head, "", crlf);
    let mut all = head;
    all.extend_from_slice(&rest);
    let mut script = deliver(rng, all, !valid);
    if let Some(e) = expect {
        // Only a reply that arrives whole and in time must be read.
        let late = script
            .pieces
            .iter()
            .fold(0u64, |t, p| t.saturating_add(p.0));
        let cut = script.endless.is_some();
        if late < DEADLINE_MS && !cut {
            script.expect = Some(e);
        }
    }
    script
}

/// Cut `bytes` into pieces with delays: mostly at once, sometimes a
/// trickle or a stall; a hostile reply may be damaged, cut short or go on
/// forever.
fn deliver(rng: &mut Rng, mut bytes: Vec<u8>, hostile: bool) -> Script {
    let mut script = Script::default();
    if hostile {
        match rng.below(6) {
            0 => bytes.truncate(rng.below(bytes.len() + 1)),
            1 => {
                for _ in 0..1 + rng.below(3) {
                    mutate_bytes(rng, &mut bytes);
                }
            }
            2 => {
                let tails: [&[u8]; 5] = [
                    &b"X-Pad: a\r\n"[..],
                    b"1\r\na\r\n",
                    b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    b"T: v\r\n",
                    b"",
                ];
                let tail = *rng.pick(&tails);
                script.endless = Some((*rng.pick(&[0, 0, 1, 50]), tail.to_vec()));
            }
            _ => {}
        }
    }
    let trickle = rng.chance(5);
    let mut at = 0;
    while at < bytes.len() {
        // A trickle passes the deadline after 20 bytes: the rest in one.
        let n = if trickle && at < 64 {
            1
        } else if trickle {
            bytes.len() - at
        } else {
            (1 + rng.below(bytes.len())).min(bytes.len() - at)
        };
        let delay = match (trickle, rng.below(20)) {
            (true, _) => 50,
            (false, 0) => *rng.pick(&[200, 999, 1000, 5000, u64::MAX]),
            _ => 0,
        };
        script.pieces.push((delay, bytes[at..at + n].to_vec()));
        at += n;
    }
    script
}

/// TLS records from a grammar, for the client's handshake: a server hello
/// of any size, alerts, application data before the handshake, records
/// announcing more than they hold, junk; trickled or stalled like replies.
pub fn tls_reply(rng: &mut Rng) -> Script {
    let mut bytes = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let kind = *rng.pick(&[0x16u8, 0x16, 0x15, 0x17, 0x14, 0x00, 0xff]);
        let version = *rng.pick(&[[3u8, 3], [3, 1], [3, 4], [0, 0], [0xfe, 0xfd]]);
        let len = *rng.pick(&[0usize, 1, 4, 40, 122, 16384, 16385, 18432, 65535]);
        let real = if rng.chance(70) {
            len.min(2000)
        } else {
            rng.below(64)
        };
        bytes.push(kind);
        bytes.extend_from_slice(&version);
        bytes.extend_from_slice(&(len as u16).to_be_bytes());
        let mut body = vec![0u8; real];
        if kind == 0x16 && !body.is_empty() {
            // A handshake message header: server hello (2), certificate
            // (11) or junk, with a length of its own.
            body[0] = *rng.pick(&[2u8, 11, 14, 0xff]);
            let inner = *rng.pick(&[0u32, 1, 70, 0x00ff_ffff]);
            for (i, b) in inner.to_be_bytes()[1..].iter().enumerate() {
                if let Some(x) = body.get_mut(1 + i) {
                    *x = *b;
                }
            }
        }
        for x in body.iter_mut().skip(4) {
            *x = rng.next_u64() as u8;
        }
        bytes.extend_from_slice(&body);
    }
    deliver(rng, bytes, true)
}
