//! The routing family (NETLINK_ROUTE) behind the door: how its socket is
//! opened, and the three request shapes the typed methods in `link`, `addr`,
//! `route`, `rule` and `neigh` use.

use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

use super::door::{Door, Protocol};
use super::{Netlink, NlError, NlResult};
use crate::netns::NetNs;

/// NETLINK_ROUTE, spoken with netlink-packet-route's messages.
pub struct Route;

impl Protocol for Route {
    const PROTOCOL: isize = NETLINK_ROUTE;
    type Message = RouteNetlinkMessage;

    fn tune(sock: &mut Socket) -> NlResult<()> {
        // Strict checking makes the kernel honour the filters of our dump
        // requests (table, ifindex) instead of ignoring them.
        sock.set_netlink_get_strict_chk(true)
            .map_err(|e| NlError::Io(format!("NETLINK_GET_STRICT_CHK: {e}")))
    }
}

impl Netlink {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> NlResult<Netlink> {
        Ok(Netlink {
            door: Door::open()?,
        })
    }

    /// Open a socket inside `ns`. The socket stays bound to `ns`; the calling
    /// thread's namespace is never changed.
    pub fn open_in(ns: &NetNs) -> NlResult<Netlink> {
        Ok(Netlink {
            door: Door::open_in(ns)?,
        })
    }

    /// A change the kernel acknowledges (`extra` adds CREATE/EXCL/REPLACE).
    pub(super) fn ack(&self, msg: RouteNetlinkMessage, extra: u16) -> NlResult<()> {
        self.door.ack(msg, extra)
    }

    /// A non-dump GET: exactly one reply, or an error.
    pub(super) fn get(&self, msg: RouteNetlinkMessage) -> NlResult<RouteNetlinkMessage> {
        self.door.get(msg)
    }

    /// A dump, asked again while the kernel says it was interrupted.
    pub(super) fn dump(&self, msg: RouteNetlinkMessage) -> NlResult<Vec<RouteNetlinkMessage>> {
        self.door.dump(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Netlink>();
    }
}
