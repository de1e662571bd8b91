//! The one door to the kernel for every netlink family: a socket bound to one
//! network namespace, and the one request / ack / dump / batch loop that the
//! typed methods of each family (routing in `link`, `addr`, `route`, ...;
//! nf_tables in `nftables`) go through.
//!
//! A family is a [`Protocol`]: the netlink protocol number and the message
//! type the netlink-packet-* crates (or our own `NfMessage`) encode and
//! decode. Framing, sequence numbers, acknowledgements, interrupted dumps and
//! the kernel's extended-ACK text are handled here once, and every failure is
//! an [`NlError`].
//!
//! The socket is plain blocking netlink-sys with a receive timeout: a CNI call
//! makes a few dozen strictly sequential requests, so an async connection and
//! its runtime would only add start-up cost.

use std::io;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NLM_F_ACK, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_sys::Socket;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::errno::{from_errno, parse_ext_ack};
use super::{NlError, NlResult};
use crate::netns::NetNs;

/// A dump the kernel marks as interrupted (the object list changed under it)
/// is asked again this many times before giving up.
const DUMP_ATTEMPTS: usize = 5;

/// No request may hang a plugin: a reply that never comes fails the call.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

/// Large enough for any datagram the kernel sends (dumps are cut to at most
/// 32 KiB per datagram); larger ones are detected with MSG_TRUNC.
const RECV_BUF: usize = 64 * 1024;

/// A netlink family: its protocol number and its message type.
pub trait Protocol {
    const PROTOCOL: isize;
    type Message: NetlinkSerializable + NetlinkDeserializable + Clone;

    /// Socket options this family needs on top of the common ones.
    fn tune(_sock: &Socket) -> NlResult<()> {
        Ok(())
    }
}

/// A message of a batch the kernel refused, by its index in the batch (None:
/// the exchange itself failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub at: Option<usize>,
    pub error: NlError,
}

/// A netlink socket of protocol `P`, bound to the netns it was opened in.
pub struct Door<P: Protocol> {
    inner: Mutex<Inner>,
    _protocol: PhantomData<fn() -> P>,
}

struct Inner {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> NlError {
    move |e| NlError::Io(format!("{what}: {e}"))
}

impl<P: Protocol> Door<P> {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> NlResult<Self> {
        Self::bind(Socket::new(P::PROTOCOL))
    }

    /// Open a socket inside `ns` (a socket belongs to the netns of the thread
    /// that creates it); the calling thread's namespace is not changed.
    pub fn open_in(ns: &NetNs) -> NlResult<Self> {
        let sock = ns
            .run(|| Socket::new(P::PROTOCOL))
            .map_err(io_err("enter netns"))?;
        Self::bind(sock)
    }

    fn bind(sock: io::Result<Socket>) -> NlResult<Self> {
        let mut sock = sock.map_err(io_err("netlink socket"))?;
        sock.bind_auto().map_err(io_err("netlink bind"))?;
        // Errors carry only the request header back, plus the kernel's
        // explanation string (best effort: old kernels lack them).
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        set_recv_timeout(&sock)?;
        P::tune(&sock)?;
        // A start that differs per socket, so a late reply meant for an
        // earlier user of the port can never be taken for ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(Door {
            inner: Mutex::new(Inner {
                sock,
                seq,
                buf: Vec::with_capacity(RECV_BUF),
            }),
            _protocol: PhantomData,
        })
    }

    fn lock(&self) -> NlResult<std::sync::MutexGuard<'_, Inner>> {
        // A panic mid-exchange may leave replies unread; they carry an old
        // sequence number and are skipped, so the socket stays usable.
        Ok(self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A change the kernel acknowledges (`extra` adds CREATE/EXCL/REPLACE...).
    pub fn ack(&self, msg: P::Message, extra: u16) -> NlResult<()> {
        self.request(msg, NLM_F_REQUEST | NLM_F_ACK | extra)
            .map(|_| ())
    }

    /// A non-dump GET: exactly one reply, or an error.
    pub fn get(&self, msg: P::Message) -> NlResult<P::Message> {
        let (mut out, _) = self.request(msg, NLM_F_REQUEST)?;
        out.pop()
            .ok_or_else(|| NlError::Io("netlink: empty reply".into()))
    }

    /// A dump, asked again while the kernel says it was interrupted.
    pub fn dump(&self, msg: P::Message) -> NlResult<Vec<P::Message>> {
        retry_interrupted(|| self.request(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP))
    }

    /// Send `msg` with `flags` and collect every reply until the request is
    /// complete: the inner messages, and whether the kernel flagged the answer
    /// as an interrupted dump.
    fn request(&self, msg: P::Message, flags: u16) -> NlResult<(Vec<P::Message>, bool)> {
        let mut inner = self.lock()?;
        let seq = inner.send(&[(msg, flags)])?;
        let mut out = Vec::new();
        let mut intr = false;
        inner.recv(|reply: NetlinkMessage<P::Message>| {
            if reply.header.sequence_number != seq {
                return Ok(false);
            }
            intr |= reply.header.flags & NLM_F_DUMP_INTR != 0;
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => {
                    out.push(m);
                    Ok(flags & (NLM_F_DUMP | NLM_F_ACK) == 0)
                }
                NetlinkPayload::Error(e) => match kernel_error(&reply.header, &e) {
                    None => Ok(true),
                    Some(err) => Err(err),
                },
                NetlinkPayload::Done(d) if d.code < 0 => Err(from_errno(-d.code, None)),
                NetlinkPayload::Done(_) => Ok(true),
                NetlinkPayload::Overrun(_) => Err(NlError::Io("netlink overrun".into())),
                _ => Ok(false),
            }
        })?;
        Ok((out, intr))
    }

    /// Send `msgs` (each with its flags) in one datagram, as a transaction
    /// like nf_tables' batches is, and wait for the ACK of every message that
    /// asks for one. A refusal of a message that asked for no ACK (a batch
    /// marker) ends the wait: nothing else follows it. The first refusal, in
    /// message order, is returned.
    pub fn batch(&self, msgs: &[(P::Message, u16)]) -> Result<(), Refusal> {
        let transport = |error| Refusal { at: None, error };
        let mut inner = self.lock().map_err(transport)?;
        let first = inner.send(msgs).map_err(transport)?;
        let mut answers: Vec<Option<Option<NlError>>> = msgs
            .iter()
            .map(|(_, f)| if f & NLM_F_ACK != 0 { None } else { Some(None) })
            .collect();
        inner
            .recv(|reply: NetlinkMessage<P::Message>| {
                let at = reply.header.sequence_number.wrapping_sub(first) as usize;
                let NetlinkPayload::Error(e) = &reply.payload else {
                    return Ok(false);
                };
                let Some(slot) = answers.get_mut(at) else {
                    return Ok(false);
                };
                let error = kernel_error(&reply.header, e);
                let unasked = slot.is_some();
                let fatal = unasked && error.is_some();
                *slot = Some(error);
                Ok(fatal || answers.iter().all(Option::is_some))
            })
            .map_err(transport)?;
        match answers
            .into_iter()
            .enumerate()
            .find_map(|(at, a)| a.flatten().map(|e| (at, e)))
        {
            Some((at, error)) => Err(Refusal {
                at: Some(at),
                error,
            }),
            None => Ok(()),
        }
    }
}

/// The error an NLMSG_ERROR carries, None for an ACK.
fn kernel_error(header: &NetlinkHeader, e: &netlink_packet_core::ErrorMessage) -> Option<NlError> {
    let code = e.code?;
    let capped = header.flags & NLM_F_CAPPED != 0;
    Some(from_errno(-code.get(), parse_ext_ack(&e.header, capped)))
}

impl Inner {
    /// Frame `msgs` with consecutive sequence numbers into one datagram and
    /// send it. Returns the first sequence number.
    fn send<M: NetlinkSerializable + Clone>(&mut self, msgs: &[(M, u16)]) -> NlResult<u32> {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(msgs.len() as u32);
        let mut bytes = Vec::new();
        for (i, (msg, flags)) in msgs.iter().enumerate() {
            let mut header = NetlinkHeader::default();
            header.flags = *flags;
            header.sequence_number = first.wrapping_add(i as u32);
            let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg.clone()));
            m.finalize();
            let at = bytes.len();
            // Messages in one datagram start 4-byte aligned.
            bytes.resize(at + align4(m.buffer_len()), 0);
            m.serialize(&mut bytes[at..at + m.buffer_len()]);
        }
        super::fault::maybe_abort();
        let sent = self.sock.send(&bytes, 0).map_err(io_err("netlink send"))?;
        if sent != bytes.len() {
            return Err(NlError::Io("netlink: short send".into()));
        }
        Ok(first)
    }

    /// Read datagrams and hand each message to `on` until it returns true.
    fn recv<M: NetlinkDeserializable>(
        &mut self,
        mut on: impl FnMut(NetlinkMessage<M>) -> NlResult<bool>,
    ) -> NlResult<()> {
        loop {
            self.buf.clear();
            let n = self
                .sock
                .recv(&mut self.buf, libc::MSG_TRUNC)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        NlError::Io("netlink request timed out".into())
                    }
                    _ => NlError::Io(format!("netlink recv: {e}")),
                })?;
            if n > self.buf.len() {
                return Err(NlError::Io(
                    "netlink reply larger than the receive buffer".into(),
                ));
            }
            let mut done = false;
            for msg in split(&self.buf) {
                done |= on(NetlinkMessage::<M>::deserialize(msg?)
                    .map_err(|e| NlError::Io(format!("undecodable netlink reply: {e}")))?)?;
            }
            if done {
                return Ok(());
            }
        }
    }
}

/// The messages of one datagram; an error for a length that does not fit.
fn split(buf: &[u8]) -> impl Iterator<Item = NlResult<&[u8]>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= buf.len() {
            return None;
        }
        let rest = &buf[at..];
        let Ok(msg) = NetlinkBuffer::new_checked(rest) else {
            at = buf.len();
            return Some(Err(NlError::Io("malformed netlink reply".into())));
        };
        let len = msg.length() as usize;
        at += align4(len).max(1);
        Some(Ok(&rest[..len]))
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn set_recv_timeout(sock: &Socket) -> NlResult<()> {
    let tv = TimeVal::new(RECV_TIMEOUT.as_secs() as libc::time_t, 0);
    setsockopt(sock, sockopt::ReceiveTimeout, &tv).map_err(|e| io_err("SO_RCVTIMEO")(e.into()))
}

/// Run `dump` until the kernel answers without NLM_F_DUMP_INTR (the object
/// list changed while it was being walked, so entries may be missing or
/// doubled), at most [`DUMP_ATTEMPTS`] times.
fn retry_interrupted<T>(mut dump: impl FnMut() -> NlResult<(Vec<T>, bool)>) -> NlResult<Vec<T>> {
    for attempt in 1..=DUMP_ATTEMPTS {
        let (out, intr) = dump()?;
        if !intr {
            return Ok(out);
        }
        tracing::debug!(attempt, "netlink dump interrupted, retrying");
    }
    Err(NlError::Io(format!(
        "netlink dump interrupted {DUMP_ATTEMPTS} times in a row"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_dumps_are_retried() {
        let mut calls = 0;
        let got = retry_interrupted(|| {
            calls += 1;
            Ok((vec![calls], calls < 3))
        });
        assert_eq!(got, Ok(vec![3]));

        let mut calls = 0;
        let got: NlResult<Vec<u8>> = retry_interrupted(|| {
            calls += 1;
            Ok((vec![], true))
        });
        assert!(matches!(got, Err(NlError::Io(_))));
        assert_eq!(calls, DUMP_ATTEMPTS);

        let got: NlResult<Vec<u8>> = retry_interrupted(|| Err(NlError::NotFound));
        assert_eq!(got, Err(NlError::NotFound));
    }

    fn header(len: u32, kind: u16) -> Vec<u8> {
        let mut h = len.to_ne_bytes().to_vec();
        h.extend_from_slice(&kind.to_ne_bytes());
        h.extend_from_slice(&[0u8; 10]);
        h
    }

    #[test]
    fn datagrams_split_at_aligned_lengths_and_garbage_is_an_error() {
        // A 20-byte message, a 17-byte one padded to 20, then a 16-byte one.
        let mut buf = header(20, 3);
        buf.extend_from_slice(&[0; 4]);
        buf.extend(header(17, 2));
        buf.extend_from_slice(&[0; 4]);
        buf.extend(header(16, 3));
        let lens: Vec<usize> = split(&buf).map(|m| m.unwrap().len()).collect();
        assert_eq!(lens, [20, 17, 16]);
        // A length past the end, a length below the header: errors, no panic.
        assert!(split(&header(64, 3)).any(|m| m.is_err()));
        assert!(split(&header(4, 3)).any(|m| m.is_err()));
        assert!(split(&[1, 2, 3]).any(|m| m.is_err()));
    }

    proptest::proptest! {
        #[test]
        fn splitting_arbitrary_bytes_never_panics(buf in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = split(&buf).count();
        }
    }
}
