//! The socket, its runtime, and the three request shapes the typed methods
//! use: acknowledged change, single reply, dump.

use std::time::Duration;

use futures::StreamExt;
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, TokioSocket};
use tokio::runtime::{Builder, Runtime};

use super::errno::{from_errno, parse_ext_ack};
use super::{Netlink, NlError, NlResult};
use crate::netns::NetNs;

/// A dump the kernel marks as interrupted (the table changed under it) is
/// asked again this many times before giving up.
const DUMP_ATTEMPTS: usize = 5;

/// No single request may hang a plugin: a reply the decoder drops would
/// otherwise leave us waiting forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket and runtime of a [`Netlink`].
pub(super) struct Conn {
    // Field order matters for Drop: the handle goes before the runtime that
    // runs its connection task.
    handle: rtnetlink::Handle,
    rt: Runtime,
}

impl Netlink {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> NlResult<Netlink> {
        Netlink::build(|rt| {
            let _ctx = rt.enter();
            TokioSocket::new(NETLINK_ROUTE)
        })
    }

    /// Open a socket inside `ns`. The socket stays bound to `ns`; the calling
    /// thread's namespace is never changed.
    pub fn open_in(ns: &NetNs) -> NlResult<Netlink> {
        Netlink::build(|rt| {
            // The socket must be created by a thread inside `ns`; registering
            // it with our reactor from there is fine (the reactor is shared).
            let handle = rt.handle().clone();
            ns.run(move || {
                let _ctx = handle.enter();
                TokioSocket::new(NETLINK_ROUTE)
            })
            .and_then(|r| r)
        })
    }

    fn build(make: impl FnOnce(&Runtime) -> std::io::Result<TokioSocket>) -> NlResult<Netlink> {
        let rt = Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| NlError::Io(format!("tokio runtime: {e}")))?;
        let socket = make(&rt).map_err(|e| NlError::Io(format!("netlink socket: {e}")))?;
        let (mut conn, handle, _unsolicited) = rtnetlink::from_socket(socket);
        {
            let sock = conn.socket_mut().socket_mut();
            // Strict checking makes the kernel honour the filters of our dump
            // requests (table, ifindex) instead of ignoring them.
            sock.set_netlink_get_strict_chk(true)
                .map_err(|e| NlError::Io(format!("NETLINK_GET_STRICT_CHK: {e}")))?;
            // Errors carry only the request header back, plus the kernel's
            // explanation string (best effort: old kernels lack them).
            let _ = sock.set_cap_ack(true);
            let _ = sock.set_ext_ack(true);
        }
        // We want to see the end of every request ourselves: a stream that
        // closes without an ACK/DONE means the connection died, not success,
        // and DONE carries the dump's error code and NLM_F_DUMP_INTR.
        conn.set_forward_done(true);
        conn.set_forward_ack(true);
        rt.spawn(conn);
        Ok(Netlink {
            conn: Conn { handle, rt },
        })
    }

    /// Send `msg` with `flags` and collect every reply until the request is
    /// complete. Returns the inner messages and whether the kernel flagged the
    /// answer as an interrupted dump.
    fn exchange(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> NlResult<(Vec<RouteNetlinkMessage>, bool)> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.conn.handle.clone();
        let fut = async move {
            let mut stream = handle
                .request(req)
                .map_err(|e| NlError::Io(format!("netlink request: {e}")))?;
            let mut out = Vec::new();
            let mut intr = false;
            while let Some(reply) = stream.next().await {
                intr |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if flags & (NLM_F_DUMP | NLM_F_ACK) == 0 {
                            return Ok((out, intr));
                        }
                    }
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok((out, intr)),
                        Some(code) => {
                            let capped = reply.header.flags & NLM_F_CAPPED != 0;
                            let msg = parse_ext_ack(&e.header, capped);
                            return Err(from_errno(-code.get(), msg));
                        }
                    },
                    NetlinkPayload::Done(d) => {
                        if d.code < 0 {
                            return Err(from_errno(-d.code, None));
                        }
                        return Ok((out, intr));
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(NlError::Io("netlink overrun".into()));
                    }
                    _ => {}
                }
            }
            Err(NlError::Io("netlink connection closed".into()))
        };
        self.conn
            .rt
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, fut).await })
            .map_err(|_| NlError::Io("netlink request timed out".into()))?
    }

    /// A change the kernel acknowledges (`extra` adds CREATE/EXCL/REPLACE).
    pub(super) fn ack(&self, msg: RouteNetlinkMessage, extra: u16) -> NlResult<()> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | extra)
            .map(|_| ())
    }

    /// A non-dump GET: exactly one reply, or an error.
    pub(super) fn get(&self, msg: RouteNetlinkMessage) -> NlResult<RouteNetlinkMessage> {
        let (mut out, _) = self.exchange(msg, NLM_F_REQUEST)?;
        out.pop()
            .ok_or_else(|| NlError::Io("netlink: empty reply".into()))
    }

    /// A dump, asked again while the kernel says it was interrupted.
    pub(super) fn dump(&self, msg: RouteNetlinkMessage) -> NlResult<Vec<RouteNetlinkMessage>> {
        retry_interrupted(|| self.exchange(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP))
    }
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

    #[test]
    fn netlink_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Netlink>();
    }
}
