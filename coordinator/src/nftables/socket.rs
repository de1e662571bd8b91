//! The NETLINK_NETFILTER socket: send a batch or a request, collect the
//! kernel's answers and turn every NLMSG_ERROR into a typed failure.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::wire::{encode_batch, parse_replies, Reply, Request, NLM_F_ACK, NLM_F_DUMP};

/// Large enough for any datagram the kernel sends to a socket with the
/// default receive buffer (dumps are cut to at most 32 KiB per datagram).
const RECV_BUF: usize = 64 * 1024;
/// A missing ACK must not hang a CNI call forever.
const RECV_TIMEOUT_SECS: i64 = 10;

/// Why a netlink exchange failed.
#[derive(Debug)]
pub enum NlError {
    /// The kernel refused a message: negative errno and its ext-ack text.
    Kernel {
        errno: i32,
        what: String,
        ext: Option<String>,
    },
    /// The socket failed, or the reply made no sense.
    Transport(io::Error),
}

impl NlError {
    /// The errno of a kernel refusal (positive, like `libc::ENOENT`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { errno, .. } => Some(-errno),
            NlError::Transport(_) => None,
        }
    }
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NlError::Kernel { errno, what, ext } => {
                write!(f, "{what}: {}", io::Error::from_raw_os_error(-errno))?;
                if let Some(ext) = ext {
                    write!(f, " ({ext})")?;
                }
                Ok(())
            }
            NlError::Transport(e) => write!(f, "netlink: {e}"),
        }
    }
}

impl From<io::Error> for NlError {
    fn from(e: io::Error) -> Self {
        NlError::Transport(e)
    }
}

fn malformed() -> NlError {
    NlError::Transport(io::Error::new(
        io::ErrorKind::InvalidData,
        "malformed netlink reply",
    ))
}

pub struct NfSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NfSocket {
    /// Open a socket in the calling thread's netns.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        // Ask for error text and for errors without the whole request echoed.
        // Both are optional kernel features: failing to set them is harmless.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads exactly `size_of::<timeval>()` bytes from a
        // live stack value.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Random-ish start so replies meant for an earlier socket user can
        // never be mistaken for ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(NfSocket {
            sock,
            seq,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn next_seq(&mut self, n: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(n);
        first
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NlError> {
        let sent = self.sock.send(bytes, 0)?;
        if sent != bytes.len() {
            return Err(NlError::Transport(io::Error::other("short netlink send")));
        }
        Ok(())
    }

    /// Receive one datagram and hand each message in it to `f`; `f` returns
    /// true once it has seen everything it waits for.
    fn recv_with(
        &mut self,
        mut f: impl FnMut(Reply<'_>) -> Result<bool, NlError>,
    ) -> Result<bool, NlError> {
        self.buf.clear();
        let n = self.sock.recv(&mut self.buf, libc::MSG_TRUNC)?;
        if n > self.buf.len() {
            return Err(NlError::Transport(io::Error::other(
                "netlink reply larger than the receive buffer",
            )));
        }
        let mut finished = false;
        for reply in parse_replies(&self.buf).ok_or_else(malformed)? {
            finished |= f(reply)?;
        }
        Ok(finished)
    }

    /// Send `msgs` as one atomic transaction, each with NLM_F_ACK, and wait
    /// for every ACK. The kernel answers a failing batch with one entry per
    /// message (then rolls everything back); the first refusal is returned,
    /// named after the `what` of its message.
    pub fn batch(&mut self, msgs: &[(Request, String)]) -> Result<(), NlError> {
        let reqs: Vec<Request> = msgs
            .iter()
            .map(|(r, _)| Request {
                flags: r.flags | NLM_F_ACK,
                ..r.clone()
            })
            .collect();
        let first = self.next_seq(reqs.len() as u32 + 2);
        let (bytes, seqs) = encode_batch(&reqs, first);
        self.send(&bytes)?;
        let batch_end = first.wrapping_add(reqs.len() as u32 + 1);
        let mut pending: Vec<Option<(i32, Option<String>)>> = vec![None; seqs.len()];
        loop {
            let done = self.recv_with(|reply| {
                let Reply::Ack { seq, errno, msg } = reply else {
                    return Ok(false);
                };
                if let Some(i) = seqs.iter().position(|s| *s == seq) {
                    pending[i] = Some((errno, msg));
                    return Ok(pending.iter().all(Option::is_some));
                }
                if errno != 0 && (seq == first || seq == batch_end) {
                    // The batch framing itself was refused: no per-message ACKs follow.
                    return Err(NlError::Kernel {
                        errno,
                        what: "nftables batch".into(),
                        ext: msg,
                    });
                }
                Ok(false)
            })?;
            if done {
                break;
            }
        }
        for (i, slot) in pending.into_iter().enumerate() {
            if let Some((errno, ext)) = slot {
                if errno != 0 {
                    return Err(NlError::Kernel {
                        errno,
                        what: msgs[i].1.clone(),
                        ext,
                    });
                }
            }
        }
        Ok(())
    }

    /// A single GET, plain or dump (`NLM_F_DUMP` in its flags). Returns the
    /// attributes of every object the kernel sent back.
    pub fn get(&mut self, req: &Request, what: &str) -> Result<Vec<Vec<u8>>, NlError> {
        let dump = req.flags & NLM_F_DUMP == NLM_F_DUMP;
        // A dump ends with NLMSG_DONE; a plain GET is closed by its ACK.
        let req = Request {
            flags: if dump {
                req.flags
            } else {
                req.flags | NLM_F_ACK
            },
            ..req.clone()
        };
        let seq = self.next_seq(1);
        let mut bytes = Vec::new();
        req.encode(seq, &mut bytes);
        self.send(&bytes)?;
        let mut objects = Vec::new();
        loop {
            let done = self.recv_with(|reply| match reply {
                Reply::Object { seq: s, attrs, .. } if s == seq => {
                    objects.push(attrs.to_vec());
                    Ok(false)
                }
                Reply::Done { seq: s } if s == seq => Ok(true),
                Reply::Ack { seq: s, errno, msg } if s == seq => {
                    if errno != 0 {
                        return Err(NlError::Kernel {
                            errno,
                            what: what.to_string(),
                            ext: msg,
                        });
                    }
                    Ok(!dump)
                }
                _ => Ok(false),
            })?;
            if done {
                return Ok(objects);
            }
        }
    }
}
