//! Routes, in any table, and kernel route lookups.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteNextHopFlags, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::errno::errno_of;
use super::{Family, Netlink, NlError, NlResult, Route, RouteKind, RouteLookup, Scope};

impl Netlink {
    /// Routes of one family; of one table when `table` is set (filtered by the
    /// kernel with strict checking, so only that table crosses the socket).
    /// A table that does not exist yet is simply empty.
    pub fn routes(&self, family: Family, table: Option<u32>) -> NlResult<Vec<Route>> {
        self.routes_on(family, table, None)
    }

    /// [`Netlink::routes`] of one output device when `oif` is set (also
    /// filtered by the kernel), so a table that grows with the node's pods,
    /// such as an overlay node's `main`, is not read whole for one uplink.
    pub fn routes_on(
        &self,
        family: Family,
        table: Option<u32>,
        oif: Option<u32>,
    ) -> NlResult<Vec<Route>> {
        self.route_dump(address_family(family), table, oif)
    }

    /// The routes of every table in both families, in one dump (IPv4 first).
    pub fn all_routes(&self) -> NlResult<Vec<Route>> {
        self.route_dump(AddressFamily::Unspec, None, None)
    }

    fn route_dump(
        &self,
        af: AddressFamily,
        table: Option<u32>,
        oif: Option<u32>,
    ) -> NlResult<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = af;
        if let Some(t) = table {
            msg.header.table = header_table(t);
            msg.attributes.push(RouteAttribute::Table(t));
        }
        if let Some(i) = oif {
            msg.attributes.push(RouteAttribute::Oif(i));
        }
        let out = match self.dump(RouteNetlinkMessage::GetRoute(msg)) {
            Err(NlError::NotFound) if table.is_some() => return Ok(Vec::new()),
            r => r?,
        };
        Ok(out
            .into_iter()
            .flat_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(r),
                _ => Vec::new(),
            })
            // Kernels without strict checking ignore the filter.
            .filter(|r| table.is_none_or(|t| r.table == t))
            .filter(|r| oif.is_none_or(|i| r.oif == Some(i)))
            .collect())
    }

    /// Ask the kernel which route it would use toward `dst` (no dump).
    /// None when the destination is unreachable.
    pub fn route_get(&self, dst: IpAddr) -> NlResult<Option<RouteLookup>> {
        let mut msg = RouteMessage::default();
        let family = Family::of(&dst);
        msg.header.address_family = address_family(family);
        msg.header.destination_prefix_length = match family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        if family == Family::V4 {
            // Report the table the route came from (IPv6 always does, and
            // rejects this flag).
            msg.header.flags = RouteFlags::LookupTable;
        }
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let reply = match self.get(RouteNetlinkMessage::GetRoute(msg)) {
            Ok(RouteNetlinkMessage::NewRoute(r)) => r,
            Ok(other) => {
                return Err(NlError::Io(format!(
                    "unexpected reply to RTM_GETROUTE: {other:?}"
                )))
            }
            Err(e) if matches!(errno_of(&e), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if matches!(
            reply.header.kind,
            RouteType::Unreachable | RouteType::BlackHole | RouteType::Prohibit
        ) {
            return Ok(None);
        }
        let mut lookup = RouteLookup {
            oif: None,
            prefsrc: None,
            gateway: None,
            table: reply.header.table as u32,
        };
        for attr in reply.attributes {
            match attr {
                RouteAttribute::Oif(i) => lookup.oif = Some(i),
                RouteAttribute::PrefSource(a) => lookup.prefsrc = ip_of(&a),
                RouteAttribute::Gateway(a) => lookup.gateway = ip_of(&a),
                RouteAttribute::Table(t) => lookup.table = t,
                _ => {}
            }
        }
        Ok(Some(lookup))
    }

    /// Create; `Exists` when an identical key is present.
    pub fn add_route(&self, route: &Route) -> NlResult<()> {
        let msg = route_message(route, false)?;
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Create or replace.
    pub fn replace_route(&self, route: &Route) -> NlResult<()> {
        let msg = route_message(route, false)?;
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Add next to what is there: an IPv6 route of the same dst and metric
    /// becomes one more nexthop of a multipath route (`ip route append`).
    pub fn append_route(&self, route: &Route) -> NlResult<()> {
        let msg = route_message(route, false)?;
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_APPEND,
        )
    }

    /// Replace the route of `hops[0]`'s dst, table and metric by one with
    /// exactly `hops` as nexthops (one hop: a plain route). IPv4 keeps a
    /// multipath route as one object, so taking one nexthop out of it means
    /// writing the others back.
    pub fn replace_nexthops(&self, hops: &[Route]) -> NlResult<()> {
        let Some(first) = hops.first() else {
            return Err(invalid("a route needs at least one nexthop".into()));
        };
        if hops.len() == 1 {
            let mut one = first.clone();
            one.multipath = false;
            return self.replace_route(&one);
        }
        let mut msg = route_message(&Route::new(first.dst, first.table), false)?;
        msg.header.protocol = RouteProtocol::from(first.protocol);
        msg.header.scope = RouteScope::Universe;
        if let Some(m) = first.metric {
            msg.attributes.push(RouteAttribute::Priority(m));
        }
        let nexthops = hops
            .iter()
            .map(|h| {
                let mut nh = RouteNextHop::default();
                nh.interface_index = h.oif.unwrap_or(0);
                if h.onlink {
                    nh.flags = RouteNextHopFlags::Onlink;
                }
                if let Some(gw) = h.gateway {
                    nh.attributes
                        .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
                }
                nh
            })
            .collect();
        msg.attributes.push(RouteAttribute::MultiPath(nexthops));
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `NotFound` when absent. Matches like `ip route del`: dst, table, kind,
    /// and oif/gateway/prefsrc/metric when set; scope and protocol are not
    /// compared.
    pub fn del_route(&self, route: &Route) -> NlResult<()> {
        let msg = route_message(route, true)?;
        self.ack(RouteNetlinkMessage::DelRoute(msg), 0)
    }
}

fn address_family(f: Family) -> AddressFamily {
    match f {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

/// rtm_table is 8 bits: larger ids go in RTA_TABLE with RT_TABLE_UNSPEC here.
pub(super) fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC)
}

pub(super) fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn invalid(msg: String) -> NlError {
    NlError::Kernel {
        errno: libc::EINVAL,
        msg,
    }
}

/// The request for `route`. A delete leaves scope and protocol as wildcards
/// (RT_SCOPE_NOWHERE, RTPROT_UNSPEC), like iproute2.
fn route_message(route: &Route, delete: bool) -> NlResult<RouteMessage> {
    let family = route.family();
    let mut msg = RouteMessage::default();
    msg.header.address_family = address_family(family);
    msg.header.destination_prefix_length = route.dst.prefix_len();
    msg.header.table = header_table(route.table);
    msg.header.kind = match route.kind {
        RouteKind::Unicast => RouteType::Unicast,
        RouteKind::Local => RouteType::Local,
        RouteKind::Broadcast => RouteType::Broadcast,
        RouteKind::Multicast => RouteType::Multicast,
        RouteKind::Other if delete => RouteType::Unspec,
        RouteKind::Other => return Err(invalid("cannot install a route of kind Other".into())),
    };
    if delete {
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
    } else {
        msg.header.scope = match route.scope {
            Scope::Universe => RouteScope::Universe,
            Scope::Link => RouteScope::Link,
            Scope::Host => RouteScope::Host,
        };
        msg.header.protocol = RouteProtocol::from(route.protocol);
    }
    if route.dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                route.dst.addr(),
            )));
    }
    msg.attributes.push(RouteAttribute::Table(route.table));
    if let Some(id) = route.nh_id {
        // The object holds device and gateway; the kernel refuses both at once.
        msg.attributes.push(RouteAttribute::NhId(id));
    } else {
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(gw) = route.gateway {
            if Family::of(&gw) != family {
                return Err(invalid(format!(
                    "gateway {gw} is not of the family of {}",
                    route.dst
                )));
            }
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
    }
    if route.onlink && !delete {
        msg.header.flags |= RouteFlags::Onlink;
    }
    if let Some(src) = route.prefsrc {
        if Family::of(&src) != family {
            return Err(invalid(format!(
                "source {src} is not of the family of {}",
                route.dst
            )));
        }
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    if let Some(metric) = route.metric {
        msg.attributes.push(RouteAttribute::Priority(metric));
    }
    // Only IPv6 routes can expire (the kernel ignores RTA_EXPIRES for IPv4);
    // a delete matches whatever lifetime is left.
    if let (Some(secs), Family::V6, false) = (route.expires, family, delete) {
        msg.attributes.push(RouteAttribute::Expires(secs));
    }
    Ok(msg)
}

/// `clock_t` in the netlink ABI counts USER_HZ ticks: 100 a second on every
/// architecture we build for (iproute2 divides by the same to print
/// `expires <n>sec`).
const USER_HZ: i64 = 100;

/// Seconds left of a dumped route's RTA_CACHEINFO `rta_expires` (a signed
/// count of ticks; 0: the route does not expire), rounded up so a route with
/// less than a second left is not read as permanent. A route past its time
/// that the kernel has not collected yet has 0 seconds left.
fn expires_secs(ticks: u32) -> Option<u32> {
    match ticks as i32 as i64 {
        0 => None,
        t if t < 0 => Some(0),
        t => Some(((t + USER_HZ - 1) / USER_HZ) as u32),
    }
}

/// The routes of one message: one per nexthop of an RTA_MULTIPATH (each
/// with its own device, gateway and on-link flag), else one. Empty when the
/// message is not of a family or shape we route.
fn parse_route(msg: RouteMessage) -> Vec<Route> {
    let family = match msg.header.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return Vec::new(),
    };
    let mut dst_ip = match family {
        Family::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let Ok(unspec) = IpNet::new(dst_ip, 0) else {
        return Vec::new();
    };
    let mut route = Route::new(unspec, msg.header.table as u32);
    route.protocol = msg.header.protocol.into();
    route.scope = match msg.header.scope {
        RouteScope::Link => Scope::Link,
        RouteScope::Host => Scope::Host,
        _ => Scope::Universe,
    };
    route.kind = match msg.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local => RouteKind::Local,
        RouteType::Broadcast => RouteKind::Broadcast,
        RouteType::Multicast => RouteKind::Multicast,
        _ => RouteKind::Other,
    };
    route.onlink = msg.header.flags.contains(RouteFlags::Onlink);
    let mut hops = Vec::new();
    for attr in msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => match ip_of(&a) {
                Some(ip) => dst_ip = ip,
                None => return Vec::new(),
            },
            // RTA_TABLE holds the full id; rtm_table is capped at 252 (compat).
            RouteAttribute::Table(t) => route.table = t,
            RouteAttribute::Oif(i) => route.oif = Some(i),
            RouteAttribute::Gateway(a) => route.gateway = ip_of(&a),
            RouteAttribute::PrefSource(a) => route.prefsrc = ip_of(&a),
            RouteAttribute::Priority(p) => route.metric = Some(p),
            RouteAttribute::NhId(id) => route.nh_id = Some(id),
            RouteAttribute::MultiPath(nhs) => hops = nhs,
            RouteAttribute::CacheInfo(ci) => route.expires = expires_secs(ci.expires),
            _ => {}
        }
    }
    let Ok(dst) = IpNet::new(dst_ip, msg.header.destination_prefix_length) else {
        return Vec::new();
    };
    route.dst = dst;
    if hops.is_empty() {
        return vec![route];
    }
    hops.into_iter()
        .map(|nh| {
            let mut r = route.clone();
            r.multipath = true;
            r.oif = Some(nh.interface_index);
            r.onlink = nh.flags.contains(RouteNextHopFlags::Onlink);
            r.gateway = nh.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => ip_of(g),
                _ => None,
            });
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{RTPROT_KERNEL, TABLE_MAIN};

    #[test]
    fn big_tables_go_in_the_attribute() {
        assert_eq!(header_table(254), 254);
        assert_eq!(header_table(1000), 0);
        let mut r = Route::new("10.1.0.0/16".parse().unwrap(), 1000);
        r.gateway = Some("10.0.0.1".parse().unwrap());
        let msg = route_message(&r, false).unwrap();
        assert_eq!(msg.header.table, 0);
        assert!(msg.attributes.contains(&RouteAttribute::Table(1000)));
        assert_eq!(msg.header.protocol, RouteProtocol::Boot);
        let del = route_message(&r, true).unwrap();
        assert_eq!(del.header.scope, RouteScope::NoWhere);
        assert_eq!(del.header.protocol, RouteProtocol::Unspec);
    }

    #[test]
    fn mixed_families_are_refused() {
        let mut r = Route::new("fd00::/64".parse().unwrap(), 100);
        r.gateway = Some("10.0.0.1".parse().unwrap());
        assert!(matches!(
            route_message(&r, false),
            Err(NlError::Kernel {
                errno: libc::EINVAL,
                ..
            })
        ));
        let mut r = Route::new("fd00::/64".parse().unwrap(), 100);
        r.kind = RouteKind::Other;
        assert!(route_message(&r, false).is_err());
        assert!(route_message(&r, true).is_ok());
    }

    #[test]
    fn parse_fills_every_field() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = 252;
        msg.header.protocol = RouteProtocol::Kernel;
        msg.header.scope = RouteScope::Link;
        msg.header.kind = RouteType::Unicast;
        msg.header.destination_prefix_length = 24;
        msg.attributes = vec![
            RouteAttribute::Table(1000),
            RouteAttribute::Destination(RouteAddress::Inet("10.2.0.0".parse().unwrap())),
            RouteAttribute::Oif(3),
            RouteAttribute::PrefSource(RouteAddress::Inet("10.2.0.5".parse().unwrap())),
            RouteAttribute::Gateway(RouteAddress::Inet("10.2.0.1".parse().unwrap())),
            RouteAttribute::Priority(77),
        ];
        let r = parse_route(msg).remove(0);
        assert_eq!(
            r,
            Route {
                dst: "10.2.0.0/24".parse().unwrap(),
                table: 1000,
                oif: Some(3),
                gateway: Some("10.2.0.1".parse().unwrap()),
                prefsrc: Some("10.2.0.5".parse().unwrap()),
                scope: Scope::Link,
                metric: Some(77),
                protocol: RTPROT_KERNEL,
                kind: RouteKind::Unicast,
                nh_id: None,
                multipath: false,
                onlink: false,
                expires: None,
            }
        );

        // No RTA_DST: the default route of the family; no RTA_TABLE: rtm_table.
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet6;
        msg.header.table = TABLE_MAIN as u8;
        msg.header.kind = RouteType::BlackHole;
        let r = parse_route(msg).remove(0);
        assert_eq!(r.dst, "::/0".parse::<IpNet>().unwrap());
        assert_eq!(r.table, TABLE_MAIN);
        assert_eq!(r.kind, RouteKind::Other);

        // Garbage prefix length: skipped.
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 40;
        assert!(parse_route(msg).is_empty());
    }

    fn hop(oif: u32, gw: &str, onlink: bool) -> RouteNextHop {
        let mut nh = RouteNextHop::default();
        nh.interface_index = oif;
        if onlink {
            nh.flags = RouteNextHopFlags::Onlink;
        }
        nh.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(
                gw.parse().unwrap(),
            )));
        nh
    }

    /// The kernel merges IPv6 routes of one metric into one RTA_MULTIPATH:
    /// each nexthop reads back as a route of its own device and gateway.
    #[test]
    fn multipath_reads_as_one_route_per_nexthop() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet6;
        msg.header.table = TABLE_MAIN as u8;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![
            RouteAttribute::Table(TABLE_MAIN),
            RouteAttribute::Priority(1024),
            RouteAttribute::NhId(7),
            RouteAttribute::MultiPath(vec![hop(2, "fd00:6::1", false), hop(3, "fe80::1", true)]),
        ];
        let got = parse_route(msg);
        let want = |oif: u32, gw: &str, onlink: bool| {
            let mut r = Route::new("::/0".parse().unwrap(), TABLE_MAIN);
            r.oif = Some(oif);
            r.gateway = Some(gw.parse().unwrap());
            r.metric = Some(1024);
            r.nh_id = Some(7);
            r.multipath = true;
            r.onlink = onlink;
            r
        };
        assert_eq!(
            got,
            vec![want(2, "fd00:6::1", false), want(3, "fe80::1", true)]
        );
    }

    #[test]
    fn nexthop_objects_and_onlink_are_installed_as_such() {
        let mut r = Route::new("0.0.0.0/0".parse().unwrap(), 101);
        r.oif = Some(2);
        r.gateway = Some("169.254.1.1".parse().unwrap());
        r.onlink = true;
        let msg = route_message(&r, false).unwrap();
        assert!(msg.header.flags.contains(RouteFlags::Onlink));
        assert!(msg.attributes.contains(&RouteAttribute::Oif(2)));
        r.nh_id = Some(9);
        let msg = route_message(&r, false).unwrap();
        assert!(msg.attributes.contains(&RouteAttribute::NhId(9)));
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(_) | RouteAttribute::Gateway(_))));
    }

    /// RTA_CACHEINFO as the kernel fills it: eight u32, `rta_expires` third.
    fn cache_info(expires_ticks: i32) -> RouteAttribute {
        let mut raw = [0u8; 32];
        raw[8..12].copy_from_slice(&expires_ticks.to_ne_bytes());
        RouteAttribute::CacheInfo(netlink_packet_route::route::RouteCacheInfo::parse(&raw).unwrap())
    }

    /// A router advertisement's default: `proto ra`, its lifetime in
    /// RTA_CACHEINFO; read as seconds left, installed back with RTA_EXPIRES,
    /// and its lifetime is no part of the route's identity.
    #[test]
    fn expiry_is_read_from_cacheinfo_and_installed_as_rta_expires() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet6;
        msg.header.table = TABLE_MAIN as u8;
        msg.header.protocol = RouteProtocol::Ra;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![
            RouteAttribute::Table(TABLE_MAIN),
            RouteAttribute::Oif(3),
            RouteAttribute::Gateway(RouteAddress::Inet6("fe80::1".parse().unwrap())),
            RouteAttribute::Priority(1024),
            cache_info(179_950),
        ];
        let r = parse_route(msg.clone()).remove(0);
        assert_eq!(r.protocol, crate::netlink::RTPROT_RA);
        assert_eq!(r.expires, Some(1800));
        let mut later = r.clone();
        later.expires = Some(1790);
        assert_eq!(r, later);

        let out = route_message(&r, false).unwrap();
        assert!(out.attributes.contains(&RouteAttribute::Expires(1800)));
        let del = route_message(&r, true).unwrap();
        assert!(!del
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Expires(_))));

        // No lifetime, less than a tick's second left, past its time.
        msg.attributes.pop();
        msg.attributes.push(cache_info(0));
        assert_eq!(parse_route(msg.clone()).remove(0).expires, None);
        msg.attributes.pop();
        msg.attributes.push(cache_info(30));
        assert_eq!(parse_route(msg.clone()).remove(0).expires, Some(1));
        msg.attributes.pop();
        msg.attributes.push(cache_info(-5));
        assert_eq!(parse_route(msg).remove(0).expires, Some(0));

        // IPv4 routes never carry one.
        let mut v4 = Route::new("10.0.0.0/8".parse().unwrap(), 101);
        v4.expires = Some(60);
        assert!(!route_message(&v4, false)
            .unwrap()
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Expires(_))));
    }
}
