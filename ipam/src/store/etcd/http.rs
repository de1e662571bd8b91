//! A minimal blocking HTTP/1.1 client for etcd's JSON gateway: one
//! keep-alive connection, POST with a JSON body, `Content-Length` or chunked
//! replies, TLS through rustls.
//!
//! Why not a general HTTP crate: a plugin exec makes a handful of requests to
//! one server and exits; this is all it needs, and it keeps the binary and
//! its start-up small (see ipam/README.md, "etcd store").

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::config::Endpoint;

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
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
    /// The server asked to close after the last reply.
    closed: bool,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "timed out"))
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl Conn {
    /// Connect (and handshake, for https) before `deadline`.
    pub fn open(
        ep: &Endpoint,
        tls: Option<&Arc<ClientConfig>>,
        deadline: Instant,
    ) -> io::Result<Conn> {
        let addrs = (ep.host.as_str(), ep.port).to_socket_addrs()?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, remaining(deadline)?) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or(last)?;
        tcp.set_nodelay(true)?;
        let stream = match (ep.https, tls) {
            (false, _) => Stream::Plain(tcp),
            (true, None) => return Err(invalid("https endpoint without TLS settings")),
            (true, Some(cfg)) => {
                let name = ServerName::try_from(ep.host.clone())
                    .map_err(|e| invalid(format!("bad TLS server name: {e}")))?;
                let conn = ClientConnection::new(cfg.clone(), name)
                    .map_err(|e| invalid(format!("TLS: {e}")))?;
                let mut s = StreamOwned::new(conn, tcp);
                set_timeouts(&s.sock, deadline)?;
                // Handshake now, so a certificate problem is reported as such.
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock)?;
                }
                Stream::Tls(Box::new(s))
            }
        };
        Ok(Conn {
            stream: BufReader::new(stream),
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
        set_timeouts(self.stream.get_ref().tcp(), deadline)?;
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
        let w = self.stream.get_mut();
        w.write_all(&msg)?;
        w.flush()?;
        self.read_response()
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let n = (&mut self.stream)
            .take(16 * 1024)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let s = String::from_utf8(line).map_err(|_| invalid("non-UTF-8 header"))?;
        Ok(s.trim_end_matches(['\r', '\n']).to_string())
    }

    fn read_response(&mut self) -> io::Result<Response> {
        let status_line = self.read_line()?;
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = Some(
                        v.parse::<usize>()
                            .map_err(|_| invalid("bad Content-Length"))?,
                    )
                }
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => self.closed |= v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let body = if chunked {
            self.read_chunked()?
        } else if let Some(n) = length {
            let mut b = vec![0; n];
            self.stream.read_exact(&mut b)?;
            b
        } else {
            self.closed = true;
            let mut b = Vec::new();
            self.stream.read_to_end(&mut b)?;
            b
        };
        Ok(Response { status, body })
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            let n = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
            if n == 0 {
                // Trailers, then the empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + n, 0);
            self.stream.read_exact(&mut body[start..])?;
            self.read_line()?;
        }
    }
}

fn set_timeouts(tcp: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = remaining(deadline)?;
    tcp.set_read_timeout(Some(left))?;
    tcp.set_write_timeout(Some(left))
}
