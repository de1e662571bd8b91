//! The kernel's own route lookup (`ip route get`) with everything a real
//! packet carries: source, input interface, mark, output interface.
//!
//! With an input interface the kernel runs the input path (`ip_route_input`):
//! forwarding, martian and rp_filter checks of that device included, so a
//! request the kernel would drop comes back as [`Lookup::Dropped`] rather
//! than as a route. Without one it is the output path a local socket takes.

use std::net::IpAddr;

use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::errno::errno_of;
use super::route::ip_of;
use super::{Family, Netlink, NlError, NlResult, RouteKind};

/// One packet to route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupQuery {
    pub dst: IpAddr,
    pub src: Option<IpAddr>,
    /// The interface the packet arrives on (input path); None = sent locally.
    pub iif: Option<u32>,
    /// A socket bound to a device (SO_BINDTODEVICE).
    pub oif: Option<u32>,
    /// The packet's fwmark.
    pub mark: Option<u32>,
}

impl LookupQuery {
    pub fn to(dst: IpAddr) -> LookupQuery {
        LookupQuery {
            dst,
            src: None,
            iif: None,
            oif: None,
            mark: None,
        }
    }
    pub fn from(mut self, src: IpAddr) -> LookupQuery {
        self.src = Some(src);
        self
    }
    pub fn arriving_on(mut self, iif: u32) -> LookupQuery {
        self.iif = Some(iif);
        self
    }
    pub fn marked(mut self, mark: u32) -> LookupQuery {
        self.mark = Some(mark);
        self
    }
}

/// The route the kernel picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// `Local` when the packet is delivered to this netns.
    pub kind: RouteKind,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
    pub table: u32,
}

/// What the kernel would do with the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Routed(Routed),
    /// No route (ENETUNREACH/EHOSTUNREACH, or an unreachable, blackhole or
    /// prohibit route).
    Unreachable,
    /// The input path refused the packet: `errno` EXDEV is the reverse-path
    /// filter, EINVAL a martian source.
    Dropped {
        errno: i32,
        why: String,
    },
}

impl Netlink {
    /// Ask the kernel how it would route `q` in this socket's netns.
    pub fn lookup(&self, q: &LookupQuery) -> NlResult<Lookup> {
        let reply = match self.get(RouteNetlinkMessage::GetRoute(query_message(q)?)) {
            Ok(RouteNetlinkMessage::NewRoute(r)) => r,
            Ok(other) => {
                return Err(NlError::Io(format!(
                    "unexpected reply to RTM_GETROUTE: {other:?}"
                )))
            }
            Err(e) => {
                return match errno_of(&e) {
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => Ok(Lookup::Unreachable),
                    Some(errno @ (libc::EXDEV | libc::EINVAL)) if q.iif.is_some() => {
                        Ok(Lookup::Dropped {
                            errno,
                            why: dropped_why(errno).into(),
                        })
                    }
                    _ => Err(e),
                }
            }
        };
        Ok(parse_answer(reply))
    }
}

fn dropped_why(errno: i32) -> &'static str {
    if errno == libc::EXDEV {
        "reverse-path filter (rp_filter)"
    } else {
        "martian or invalid source"
    }
}

fn query_message(q: &LookupQuery) -> NlResult<RouteMessage> {
    let family = Family::of(&q.dst);
    if q.src.is_some_and(|s| Family::of(&s) != family) {
        return Err(NlError::Kernel {
            errno: libc::EINVAL,
            msg: format!("lookup of {} from {:?}: mixed families", q.dst, q.src),
        });
    }
    let mut msg = RouteMessage::default();
    let full = match family {
        Family::V4 => {
            msg.header.address_family = AddressFamily::Inet;
            // Report the table the route came from (IPv6 always does, and
            // rejects this flag).
            msg.header.flags = RouteFlags::LookupTable;
            32
        }
        Family::V6 => {
            msg.header.address_family = AddressFamily::Inet6;
            128
        }
    };
    msg.header.destination_prefix_length = full;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(q.dst)));
    if let Some(src) = q.src {
        msg.header.source_prefix_length = full;
        msg.attributes
            .push(RouteAttribute::Source(RouteAddress::from(src)));
    }
    if let Some(i) = q.iif {
        msg.attributes.push(RouteAttribute::Iif(i));
    }
    if let Some(o) = q.oif {
        msg.attributes.push(RouteAttribute::Oif(o));
    }
    if let Some(m) = q.mark {
        msg.attributes.push(RouteAttribute::Mark(m));
    }
    Ok(msg)
}

fn parse_answer(reply: RouteMessage) -> Lookup {
    let kind = match reply.header.kind {
        RouteType::Unreachable | RouteType::BlackHole | RouteType::Prohibit => {
            return Lookup::Unreachable
        }
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local => RouteKind::Local,
        RouteType::Broadcast => RouteKind::Broadcast,
        RouteType::Multicast => RouteKind::Multicast,
        _ => RouteKind::Other,
    };
    let mut r = Routed {
        kind,
        oif: None,
        gateway: None,
        prefsrc: None,
        table: if reply.header.table == RouteHeader::RT_TABLE_UNSPEC {
            0
        } else {
            reply.header.table as u32
        },
    };
    for attr in reply.attributes {
        match attr {
            RouteAttribute::Oif(i) => r.oif = Some(i),
            RouteAttribute::PrefSource(a) => r.prefsrc = ip_of(&a),
            RouteAttribute::Gateway(a) => r.gateway = ip_of(&a),
            RouteAttribute::Table(t) => r.table = t,
            _ => {}
        }
    }
    Lookup::Routed(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_carries_source_iif_and_mark() {
        let q = LookupQuery::to("10.6.1.5".parse().unwrap())
            .from("10.6.0.2".parse().unwrap())
            .arriving_on(7)
            .marked(0xc0de);
        let m = query_message(&q).unwrap();
        assert_eq!(m.header.destination_prefix_length, 32);
        assert_eq!(m.header.source_prefix_length, 32);
        assert!(m.attributes.contains(&RouteAttribute::Iif(7)));
        assert!(m.attributes.contains(&RouteAttribute::Mark(0xc0de)));
        assert!(m
            .attributes
            .contains(&RouteAttribute::Source(RouteAddress::from(
                "10.6.0.2".parse::<IpAddr>().unwrap()
            ))));
        let v6 = query_message(&LookupQuery::to("fd00::1".parse().unwrap())).unwrap();
        assert_eq!(v6.header.destination_prefix_length, 128);
        assert!(v6.header.flags.is_empty());
        let mixed = LookupQuery::to("fd00::1".parse().unwrap()).from("10.0.0.1".parse().unwrap());
        assert!(query_message(&mixed).is_err());
    }

    #[test]
    fn answers() {
        let mut m = RouteMessage::default();
        m.header.kind = RouteType::Local;
        m.header.table = 255;
        m.attributes.push(RouteAttribute::Oif(1));
        assert_eq!(
            parse_answer(m.clone()),
            Lookup::Routed(Routed {
                kind: RouteKind::Local,
                oif: Some(1),
                gateway: None,
                prefsrc: None,
                table: 255
            })
        );
        m.header.kind = RouteType::Prohibit;
        assert_eq!(parse_answer(m), Lookup::Unreachable);
    }
}
