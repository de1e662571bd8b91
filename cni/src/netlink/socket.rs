//! The door's socket: netlink-sys's tokio socket, except that it does not
//! wait for the reactor when the kernel has already answered.
//!
//! The kernel handles a netlink request inside the sender's `sendmsg`: its
//! reply (or the first part of a dump) is queued before `sendmsg` returns,
//! and each read of a dump queues the next part. Waiting for the reactor to
//! report the socket readable would cost an `epoll_wait` and a turn of the
//! runtime per request for data that is already there. So after a send the
//! socket reads straight away until the kernel has nothing more, and only
//! then leaves it to the reactor (a reply that is not there yet is waited
//! for as usual, under the request's timeout). Sends go straight out too:
//! the reactor reports a new socket writable only after its first turn.

use std::cell::Cell;
use std::io;
use std::task::{Context, Poll};

use netlink_proto::sys::{AsyncSocket, SocketAddr, TokioSocket};
use netlink_sys::Socket;

pub(super) struct EagerSocket {
    inner: TokioSocket,
    /// Something was sent and not all of its answer has been read.
    answer_due: Cell<bool>,
}

impl EagerSocket {
    /// Whether a read may find data without the reactor's say.
    pub(super) fn answer_due(&self) -> bool {
        self.answer_due.get()
    }

    fn sent(&self, sent: io::Result<usize>) -> io::Result<usize> {
        if sent.is_ok() {
            self.answer_due.set(true);
        }
        sent
    }
}

fn would_block<T>(r: &io::Result<T>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

impl AsyncSocket for EagerSocket {
    fn socket_ref(&self) -> &Socket {
        self.inner.socket_ref()
    }

    fn socket_mut(&mut self) -> &mut Socket {
        self.inner.socket_mut()
    }

    fn new(protocol: isize) -> io::Result<Self> {
        Ok(EagerSocket {
            inner: TokioSocket::new(protocol)?,
            answer_due: Cell::new(false),
        })
    }

    fn poll_send(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let sent = self.socket_ref().send(buf, 0);
        if !would_block(&sent) {
            return Poll::Ready(self.sent(sent));
        }
        self.inner.poll_send(cx, buf).map(|r| self.sent(r))
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        addr: &SocketAddr,
    ) -> Poll<io::Result<usize>> {
        let sent = self.socket_ref().send_to(buf, addr, 0);
        if !would_block(&sent) {
            return Poll::Ready(self.sent(sent));
        }
        self.inner.poll_send_to(cx, buf, addr).map(|r| self.sent(r))
    }

    fn poll_recv<B>(&self, cx: &mut Context<'_>, buf: &mut B) -> Poll<io::Result<()>>
    where
        B: bytes::BufMut,
    {
        self.inner.poll_recv(cx, buf)
    }

    fn poll_recv_from<B>(&self, cx: &mut Context<'_>, buf: &mut B) -> Poll<io::Result<SocketAddr>>
    where
        B: bytes::BufMut,
    {
        if self.answer_due.get() {
            let got = self.socket_ref().recv_from(buf, 0);
            if !would_block(&got) {
                return Poll::Ready(got.map(|(_, addr)| addr));
            }
            self.answer_due.set(false);
        }
        self.inner.poll_recv_from(cx, buf)
    }

    fn poll_recv_from_full(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Vec<u8>, SocketAddr)>> {
        self.inner.poll_recv_from_full(cx)
    }
}
