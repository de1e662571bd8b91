//! The one door to the kernel for every netlink family: a socket bound to one
//! network namespace, and the one request / ack / dump / batch loop that the
//! typed methods of each family (routing in `link`, `addr`, `route`, ...;
//! nf_tables in `nftables`) go through.
//!
//! A family is a [`Protocol`]: the netlink protocol number and the message
//! type the netlink-packet-* crates (or our own `NfMessage`) encode and
//! decode. Acknowledgements, interrupted dumps and the kernel's extended-ACK
//! text are handled here once, and every failure is an [`NlError`].
//!
//! The transport is the project's netlink stack: a netlink-proto
//! connection (framing, sequence numbers, replies matched to their request)
//! with our codec (`codec`: a batch is one datagram under one sequence
//! number), on tokio's current-thread runtime with IO and time only, one
//! runtime per process built on the first open. The API stays synchronous:
//! each method is one `block_on` of its exchange, under a 30 s timeout.
//!
//! A plugin is exec'd per call and makes a few dozen strictly sequential
//! requests, so the exchange polls its door's connection itself (nothing is
//! spawned), and the socket (`socket`) reads the kernel's answer right
//! after the send, since the kernel has queued it by then. A request thus
//! costs `sendto`, `recvfrom` and one `recvfrom` that finds the queue empty,
//! without a reactor turn or an armed timer; the reactor and the timer only
//! work when an answer is not there yet. Doors may be used from several
//! threads at once, one request at a time per door: a thread that does not
//! hold the runtime polls its own exchange and is woken by the one that does.

use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::pin::{pin, Pin};
use std::sync::{Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_proto::sys::{AsyncSocket, SocketAddr};
use netlink_proto::ConnectionHandle;
use netlink_sys::Socket;
use tokio::runtime::{Builder, Runtime};

use super::codec::{DoorCodec, Wire};
use super::errno::{from_errno, parse_ext_ack};
use super::socket::EagerSocket;
use super::{NlError, NlResult};
use crate::netns::NetNs;

/// A dump the kernel marks as interrupted (the object list changed under it)
/// is asked again this many times before giving up.
const DUMP_ATTEMPTS: usize = 5;

/// No request may hang a plugin: a reply that never comes fails the call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const HEADER_LEN: usize = 16;

/// A netlink family: its protocol number and its message type.
pub trait Protocol {
    const PROTOCOL: isize;
    type Message: NetlinkSerializable
        + NetlinkDeserializable
        + Clone
        + std::fmt::Debug
        + Send
        + Unpin
        + 'static;

    /// Socket options this family needs on top of the common ones.
    fn tune(_sock: &mut Socket) -> NlResult<()> {
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

type Connection<P> =
    netlink_proto::Connection<Wire<<P as Protocol>::Message>, EagerSocket, DoorCodec>;

/// A netlink socket of protocol `P`, bound to the netns it was opened in.
pub struct Door<P: Protocol> {
    handle: ConnectionHandle<Wire<P::Message>>,
    /// The connection (socket, framing, replies matched to requests). It is
    /// polled by the exchange waiting for its replies, not spawned: a
    /// spawned task would add a task switch and a reactor turn per request.
    /// One exchange at a time per socket (the kernel runs one dump per
    /// socket and refuses a second with EBUSY).
    conn: Mutex<Connection<P>>,
    rt: &'static Runtime,
    timeout: Duration,
    _protocol: PhantomData<fn() -> P>,
}

/// How a request failed: the error, and the failing message as the kernel
/// echoed it (its header, and its payload unless the ACK was capped).
struct Failure {
    error: NlError,
    echoed: Option<Vec<u8>>,
}

impl From<NlError> for Failure {
    fn from(error: NlError) -> Self {
        Failure {
            error,
            echoed: None,
        }
    }
}

/// The process's runtime: current-thread, IO for the sockets, time for the
/// request timeout. Never dropped (a plugin exits when its call is done).
fn runtime() -> NlResult<&'static Runtime> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| NlError::Io(format!("tokio runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> NlError {
    move |e| NlError::Io(format!("{what}: {e}"))
}

impl<P: Protocol> Door<P> {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> NlResult<Self> {
        let rt = runtime()?;
        let _ctx = rt.enter();
        Self::connect(rt, EagerSocket::new(P::PROTOCOL))
    }

    /// Open a socket inside `ns` (a socket belongs to the netns of the thread
    /// that creates it); the calling thread's namespace is not changed.
    pub fn open_in(ns: &NetNs) -> NlResult<Self> {
        let rt = runtime()?;
        // The socket registers with the runtime's reactor as it is created,
        // so the runtime's context is entered inside the namespace too.
        let sock = ns
            .run(|| {
                let _ctx = rt.enter();
                EagerSocket::new(P::PROTOCOL)
            })
            .map_err(io_err("enter netns"))?;
        Self::connect(rt, sock)
    }

    fn connect(rt: &'static Runtime, sock: std::io::Result<EagerSocket>) -> NlResult<Self> {
        let mut sock = sock.map_err(io_err("netlink socket"))?;
        let raw = sock.socket_mut();
        // Errors carry only the request header back, plus the kernel's
        // explanation string (best effort: old kernels lack them).
        let _ = raw.set_cap_ack(true);
        let _ = raw.set_ext_ack(true);
        P::tune(raw)?;
        let (mut conn, handle, _unsolicited) =
            netlink_proto::from_socket_with_codec::<_, _, DoorCodec>(sock);
        // We want to see the end of every request ourselves: a stream that
        // closes without an ACK/DONE means the connection died, not success,
        // and DONE carries the dump's error code and NLM_F_DUMP_INTR.
        conn.set_forward_done(true);
        conn.set_forward_ack(true);
        Ok(Door {
            handle,
            conn: Mutex::new(conn),
            rt,
            timeout: REQUEST_TIMEOUT,
            _protocol: PhantomData,
        })
    }

    /// A change the kernel acknowledges (`extra` adds CREATE/EXCL/REPLACE...).
    pub fn ack(&self, msg: P::Message, extra: u16) -> NlResult<()> {
        self.exchange(Wire::One(msg), NLM_F_REQUEST | NLM_F_ACK | extra)
            .map(|_| ())
            .map_err(|f| f.error)
    }

    /// A non-dump GET: exactly one reply, or an error.
    pub fn get(&self, msg: P::Message) -> NlResult<P::Message> {
        let (mut out, _) = self
            .exchange(Wire::One(msg), NLM_F_REQUEST)
            .map_err(|f| f.error)?;
        out.pop()
            .ok_or_else(|| NlError::Io("netlink: empty reply".into()))
    }

    /// A dump, asked again while the kernel says it was interrupted.
    pub fn dump(&self, msg: P::Message) -> NlResult<Vec<P::Message>> {
        retry_interrupted(|| {
            self.exchange(Wire::One(msg.clone()), NLM_F_REQUEST | NLM_F_DUMP)
                .map_err(|f| f.error)
        })
    }

    /// Send `msgs` (each with its flags) in one datagram under one sequence
    /// number, as nf_tables takes a transaction, and wait for the first ACK
    /// or error of any of them. The caller asks an ACK of the message whose
    /// ACK means the whole batch is done (nf_tables: the last change; the
    /// kernel answers only after the commit, and every error in message
    /// order before any later ACK). A refusal names the message the kernel
    /// echoed.
    pub fn batch(&self, msgs: &[(P::Message, u16)]) -> Result<(), Refusal> {
        if !msgs.iter().any(|(_, flags)| flags & NLM_F_ACK != 0) {
            return Err(Refusal {
                at: None,
                error: NlError::Io("netlink batch asks no ACK: nothing would end it".into()),
            });
        }
        match self.exchange(Wire::Batch(msgs.to_vec()), NLM_F_REQUEST | NLM_F_ACK) {
            Ok(_) => Ok(()),
            Err(f) => Err(Refusal {
                at: f.echoed.and_then(|echo| echoed_index(msgs, &echo)),
                error: f.error,
            }),
        }
    }

    /// Send one request and collect every reply until it is complete: the
    /// inner messages, and whether the kernel flagged the answer as an
    /// interrupted dump.
    fn exchange(
        &self,
        wire: Wire<P::Message>,
        flags: u16,
    ) -> Result<(Vec<P::Message>, bool), Failure> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(wire));
        // Outside the runtime and before the lock: an injected panic unwinds
        // from plain code and poisons nothing. Test builds only.
        #[cfg(feature = "fault-injection")]
        super::fault::maybe_abort();
        // A panic mid-exchange leaves nothing to repair: its late replies
        // carry its own sequence number and are dropped.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let handle = &self.handle;
        let exchange = async move {
            let replies = handle
                .request(req, SocketAddr::new(0, 0))
                .map_err(|e| NlError::Io(format!("netlink request: {e}")))?;
            let mut collect = pin!(collect(replies, flags));
            poll_fn(|cx| loop {
                // The connection sends the request, reads the socket and
                // hands our replies over; it only ends when the socket fails.
                // Polled again while the kernel's answer is due (it reads
                // before it sends), so a request is usually done in one
                // turn, without the reactor and without arming the timer.
                let closed = Pin::new(&mut *conn).poll(cx).is_ready();
                match collect.as_mut().poll(cx) {
                    Poll::Pending if closed => {
                        let closed = NlError::Io("netlink connection closed".into());
                        return Poll::Ready(Err(Failure::from(closed)));
                    }
                    Poll::Pending if conn.socket_mut().answer_due() => continue,
                    done => return done,
                }
            })
            .await
        };
        self.rt
            .block_on(async { tokio::time::timeout(self.timeout, exchange).await })
            .unwrap_or_else(|_| Err(NlError::Io("netlink request timed out".into()).into()))
    }
}

/// Read the replies to a request sent with `flags` until it is complete.
async fn collect<M>(
    mut replies: impl Stream<Item = NetlinkMessage<Wire<M>>> + Unpin,
    flags: u16,
) -> Result<(Vec<M>, bool), Failure> {
    let mut out = Vec::new();
    let mut intr = false;
    while let Some(reply) = replies.next().await {
        intr |= reply.header.flags & NLM_F_DUMP_INTR != 0;
        match reply.payload {
            NetlinkPayload::InnerMessage(Wire::One(m)) => {
                out.push(m);
                if flags & (NLM_F_DUMP | NLM_F_ACK) == 0 {
                    return Ok((out, intr));
                }
            }
            NetlinkPayload::Error(e) => match e.code {
                None => return Ok((out, intr)),
                Some(code) => {
                    let capped = reply.header.flags & NLM_F_CAPPED != 0;
                    return Err(Failure {
                        error: from_errno(-code.get(), parse_ext_ack(&e.header, capped)),
                        echoed: Some(echoed_request(&e.header, capped)),
                    });
                }
            },
            NetlinkPayload::Done(d) if d.code < 0 => return Err(from_errno(-d.code, None).into()),
            NetlinkPayload::Done(_) => return Ok((out, intr)),
            NetlinkPayload::Overrun(_) => return Err(NlError::Io("netlink overrun".into()).into()),
            _ => {}
        }
    }
    Err(NlError::Io("netlink connection closed".into()).into())
}

/// The request an NLMSG_ERROR echoes: its header, then (unless capped) the
/// rest of it; extended-ACK attributes follow and are left out.
fn echoed_request(payload: &[u8], capped: bool) -> Vec<u8> {
    let len = payload
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(0);
    let end = if capped { HEADER_LEN } else { len };
    payload[..end.min(payload.len())].to_vec()
}

/// Which message of `msgs` the kernel echoed: the first with the echoed
/// type, flags and length, and (when the echo is whole) the same payload.
fn echoed_index<M: NetlinkSerializable>(msgs: &[(M, u16)], echoed: &[u8]) -> Option<usize> {
    let u16_at = |at: usize| Some(u16::from_ne_bytes(echoed.get(at..at + 2)?.try_into().ok()?));
    let len = u32::from_ne_bytes(echoed.get(..4)?.try_into().ok()?) as usize;
    let (kind, flags) = (u16_at(4)?, u16_at(6)?);
    let payload = echoed.get(HEADER_LEN..len).filter(|_| echoed.len() == len);
    msgs.iter().position(|(m, f)| {
        let same_header =
            m.message_type() == kind && *f == flags && HEADER_LEN + m.buffer_len() == len;
        same_header
            && payload.is_none_or(|p| {
                let mut own = vec![0; m.buffer_len()];
                m.serialize(&mut own);
                own == p
            })
    })
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
    use super::super::conn::Route;
    use super::*;
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::RouteNetlinkMessage;
    use std::sync::{mpsc, Arc};

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

    /// A message of `len` bytes, all `fill`.
    #[derive(Debug, Clone)]
    struct Fill(u8, usize);

    impl NetlinkSerializable for Fill {
        fn message_type(&self) -> u16 {
            100
        }
        fn buffer_len(&self) -> usize {
            self.1
        }
        fn serialize(&self, buffer: &mut [u8]) {
            buffer.fill(self.0);
        }
    }

    /// The echo of `m` sent with `flags`, whole or capped to its header.
    fn echo(m: &Fill, flags: u16, whole: bool) -> Vec<u8> {
        let len = HEADER_LEN + m.1;
        let mut e = (len as u32).to_ne_bytes().to_vec();
        e.extend_from_slice(&m.message_type().to_ne_bytes());
        e.extend_from_slice(&flags.to_ne_bytes());
        e.extend_from_slice(&[0; 8]);
        if whole {
            e.extend(std::iter::repeat_n(m.0, m.1));
        }
        e
    }

    #[test]
    fn the_echoed_message_names_its_index_in_the_batch() {
        let msgs = [
            (Fill(0, 4), NLM_F_REQUEST),
            (Fill(1, 8), NLM_F_REQUEST),
            (Fill(2, 8), NLM_F_REQUEST),
            (Fill(3, 8), NLM_F_REQUEST | NLM_F_ACK),
        ];
        // A whole echo tells apart messages whose headers are the same.
        assert_eq!(
            echoed_index(&msgs, &echo(&msgs[2].0, NLM_F_REQUEST, true)),
            Some(2)
        );
        assert_eq!(
            echoed_index(&msgs, &echo(&msgs[0].0, NLM_F_REQUEST, true)),
            Some(0)
        );
        // A capped one gives the first message with that header; flags count.
        assert_eq!(
            echoed_index(&msgs, &echo(&msgs[2].0, NLM_F_REQUEST, false)),
            Some(1)
        );
        assert_eq!(
            echoed_index(&msgs, &echo(&msgs[3].0, NLM_F_REQUEST | NLM_F_ACK, false)),
            Some(3)
        );
        // Not ours, or garbage: no index, no panic.
        assert_eq!(
            echoed_index(&msgs, &echo(&Fill(9, 8), NLM_F_REQUEST, true)),
            None
        );
        assert_eq!(echoed_index(&msgs, &[1, 2, 3]), None);
        assert_eq!(echoed_index::<Fill>(&[], &[]), None);
        // The extended-ACK attributes after a whole echo are not part of it.
        let mut with_attrs = echo(&msgs[1].0, NLM_F_REQUEST, true);
        with_attrs.extend_from_slice(&[8, 0, 1, 0, b'x', 0, 0, 0]);
        let echoed = echoed_request(&with_attrs, false);
        assert_eq!(echoed_index(&msgs, &echoed), Some(1));
        assert_eq!(echoed_request(&with_attrs, true).len(), HEADER_LEN);
        assert!(echoed_request(&[200, 0, 0, 0, 1], false).len() <= 5);
    }

    fn get_links() -> RouteNetlinkMessage {
        RouteNetlinkMessage::GetLink(LinkMessage::default())
    }

    #[test]
    fn a_request_the_kernel_never_answers_times_out() {
        let mut door = Door::<Route>::open().unwrap();
        door.timeout = Duration::from_millis(100);
        // Without NLM_F_REQUEST the kernel ignores the message and, without
        // NLM_F_ACK, says nothing; with NLM_F_ECHO netlink-proto waits for
        // an answer.
        let echo_only = netlink_packet_core::NLM_F_ECHO;
        let got = door.exchange(Wire::One(get_links()), echo_only);
        assert!(
            matches!(&got, Err(Failure { error: NlError::Io(m), .. }) if m.contains("timed out")),
            "{:?}",
            got.map(|_| ()).map_err(|f| f.error)
        );
        // The door is still usable afterwards.
        door.timeout = REQUEST_TIMEOUT;
        assert!(!door.dump(get_links()).unwrap().is_empty());
    }

    #[test]
    fn doors_serve_several_threads_at_once() {
        let shared = Arc::new(Door::<Route>::open().unwrap());
        let (tx, rx) = mpsc::channel();
        for t in 0..3 {
            let (shared, tx) = (shared.clone(), tx.clone());
            std::thread::spawn(move || {
                let own = Door::<Route>::open().unwrap();
                for i in 0..40 {
                    let door = if (t + i) % 2 == 0 { &*shared } else { &own };
                    let links = door.dump(get_links()).unwrap();
                    assert!(!links.is_empty());
                }
                tx.send(t).unwrap();
            });
        }
        drop(tx);
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("a thread failed, or hangs in block_on");
        }
    }
}
