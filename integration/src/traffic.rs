//! Traffic checks from inside a netns, all bounded in time.
//!
//! Sockets are created on a thread that entered the netns; a socket keeps the
//! netns it was made in, so it can then be used from any thread.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cni::netns::NetNs;

use crate::nsexec::{self, Enter};

/// Run `f` on a thread inside `ns` (name or path).
fn inside<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    NetNs::open(nsexec::netns_path(ns))?.run(f)?
}

/// A TCP server in a netns. Each connection gets one line,
/// `from <peer> to <local>\n`, and is closed: the client learns which source
/// address reached the server (did a NAT or a wrong route rewrite it?).
pub struct TcpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listen on `addr` inside `ns` (`[::]:port` takes both families).
    pub fn start(ns: &str, addr: SocketAddr) -> io::Result<TcpServer> {
        let listener = inside(ns, move || TcpListener::bind(addr))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, peers) = (Arc::clone(&stop), Arc::clone(&peers));
            std::thread::spawn(move || serve(listener, stop, peers))
        };
        Ok(TcpServer {
            addr,
            stop,
            peers,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Peer addresses of the connections served so far (IPv4-mapped IPv6
    /// shown as IPv4).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn serve(listener: TcpListener, stop: Arc<AtomicBool>, peers: Arc<Mutex<Vec<SocketAddr>>>) {
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Short poll so Drop is prompt.
        // SAFETY: `pfd` is one valid pollfd, and 1 says so.
        unsafe { libc::poll(&mut pfd, 1, 50) };
        let (mut conn, peer) = match listener.accept() {
            Ok(c) => c,
            Err(_) => continue,
        };
        let peer = canonical(peer);
        let local = conn.local_addr().map(canonical).unwrap_or(peer);
        if let Ok(mut p) = peers.lock() {
            p.push(peer);
        }
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = conn.write_all(format!("from {peer} to {local}\n").as_bytes());
    }
}

/// The peer address in a [`TcpServer`] reply line.
pub fn reply_peer(reply: &str) -> Option<SocketAddr> {
    reply
        .strip_prefix("from ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Connect from `ns` (optionally from source `src`) to `dst`, read the reply
/// until the server closes. The whole exchange is bounded by `timeout`.
pub fn tcp_request(
    ns: &str,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<String> {
    let stream = inside(ns, move || connect(src, dst, timeout))?;
    let deadline = Instant::now() + timeout;
    let mut stream = stream;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "reply timed out"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if out.len() > 64 * 1024 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).trim_end().to_string())
}

fn connect(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) takes only integers; the result is checked.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(src) = src {
        let (sa, len) = sockaddr(SocketAddr::new(src, 0));
        // SAFETY: `sa` holds a sockaddr of `len` bytes for the duration of the call.
        if unsafe { libc::bind(fd.as_raw_fd(), sa.as_ptr(), len) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("bind {src}: {e}")));
        }
    }
    let (sa, len) = sockaddr(dst);
    // SAFETY: `sa` holds a sockaddr of `len` bytes for the duration of the call.
    if unsafe { libc::connect(fd.as_raw_fd(), sa.as_ptr(), len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is one valid pollfd, and 1 says so.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect {dst} timed out"),
            ));
        }
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are valid for writes of the sizes `len` states.
        unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if err != 0 {
            let e = io::Error::from_raw_os_error(err);
            return Err(io::Error::new(e.kind(), format!("connect {dst}: {e}")));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A `sockaddr_storage` for `addr`, with its length.
fn sockaddr(addr: SocketAddr) -> (SockAddrBuf, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (SockAddrBuf(ss), len as libc::socklen_t)
}

struct SockAddrBuf(libc::sockaddr_storage);

impl SockAddrBuf {
    fn as_ptr(&self) -> *const libc::sockaddr {
        &self.0 as *const _ as *const libc::sockaddr
    }
}

/// One ping from `ns` to `dst` (optionally from source `src`), at most ~2 s.
/// `ping` is exec'd straight into the netns, no shell and no `ip netns exec`.
pub fn ping(ns: &str, dst: IpAddr, src: Option<IpAddr>) -> bool {
    let Ok(mut cmd) = nsexec::command_in(ns, "ping", Enter::NetOnly) else {
        return false;
    };
    cmd.args(["-n", "-q", "-c", "1", "-W", "1", "-w", "2"]);
    if let Some(s) = src {
        cmd.arg("-I").arg(s.to_string());
    }
    cmd.arg(dst.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().map(|s| s.success()).unwrap_or(false)
}
