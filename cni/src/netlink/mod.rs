//! The one door to the kernel's netlink: routing (links, addresses, routes,
//! rules, neighbours) and nf_tables, through one socket type and one
//! request loop ([`door`]), with one error type ([`NlError`]).
//!
//! Nothing else in the project names `netlink-sys`, `netlink-proto`, `tokio`
//! or `netlink-packet-route`: their APIs change every release, so the blast
//! radius of an upgrade stays in this module. The types below are plain data that the planning code builds
//! and unit tests compare without root.
//!
//! A [`Netlink`] is bound to the network namespace it was opened in, for its
//! whole life (a netlink socket belongs to the netns of the thread that created
//! it). So the plugins open one for the host and one for the pod and never
//! switch namespaces in the middle of their logic.
//!
//! The API is synchronous: each request is one `block_on` of the door's
//! exchange on the process's current-thread tokio runtime, with a timeout.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::netns::NetNs;

mod addr;
mod codec;
mod conn;
mod door;
mod errno;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod link;
mod lookup;
mod neigh;
pub mod nftables;
mod route;
mod rule;
mod socket;

pub use lookup::{Lookup, LookupQuery, Routed};

pub type Mac = [u8; 6];

/// IP family of a route, rule, neighbour or dump.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    pub fn of_net(net: &IpNet) -> Family {
        Family::of(&net.addr())
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Errors of the netlink layer, with the cases callers branch on made explicit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NlError {
    /// EEXIST: the object is already there.
    #[error("already exists")]
    Exists,
    /// ENOENT / ESRCH / ENODEV / EADDRNOTAVAIL: the object (or its device) is gone.
    #[error("not found")]
    NotFound,
    /// Any other kernel error.
    #[error("{msg} (errno {errno})")]
    Kernel { errno: i32, msg: String },
    /// Socket, runtime or decoding trouble.
    #[error("{0}")]
    Io(String),
}

pub type NlResult<T> = std::result::Result<T, NlError>;

impl From<NlError> for crate::Error {
    fn from(e: NlError) -> Self {
        crate::Error::plugin(crate::error::code::KERNEL, e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND: "veth", "macvlan", "ipvlan", "bridge", ... None for physical NICs.
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// IFF_UP set.
    pub up: bool,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's netns); for macvlan, the parent.
    pub link: Option<u32>,
    /// IFLA_LINK_NETNSID: set when the peer/parent lives in another netns.
    pub link_netnsid: Option<i32>,
    pub txqlen: u32,
    /// IFLA_IPVLAN_MODE when `kind` is "ipvlan".
    pub ipvlan_mode: Option<IpvlanMode>,
}

/// The mode of an ipvlan link. It decides what the pod's NIC can do on the
/// wire: an L3/L3S slave is `NOARP` (no ARP, no ND, no kernel DAD) and the
/// kernel routes its traffic in the master's netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpvlanMode {
    L2,
    L3,
    L3s,
    Other(u16),
}

impl IpvlanMode {
    /// No ARP or neighbour discovery leaves the slave (L3, L3S).
    pub fn is_l3(self) -> bool {
        self != IpvlanMode::L2
    }
}

impl Link {
    /// The ipvlan mode when this link is an ipvlan slave.
    pub fn ipvlan(&self) -> Option<IpvlanMode> {
        match self.kind.as_deref() {
            Some("ipvlan") => Some(self.ipvlan_mode.unwrap_or(IpvlanMode::Other(u16::MAX))),
            _ => None,
        }
    }
}

/// What to create for a veth pair: `name` stays in this netns, `peer_name`
/// ends up in `peer_netns` (or this one when None). Both ends get their MAC and MTU.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub name: String,
    pub mac: Option<Mac>,
    pub peer_name: String,
    pub peer_mac: Option<Mac>,
    pub mtu: Option<u32>,
    pub peer_netns: Option<&'a NetNs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddrFlags {
    pub tentative: bool,
    pub dadfailed: bool,
    pub nodad: bool,
    pub permanent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    /// Address with its prefix length.
    pub addr: IpNet,
    pub flags: AddrFlags,
    /// RT_SCOPE_*: 0 universe (global), 253 link, 254 host.
    pub scope: u8,
    /// IFA_LABEL (IPv4 only): the device's name, or `name:alias`; the kernel
    /// keeps it in step when the device is renamed.
    pub label: Option<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Scope {
    #[default]
    Universe,
    Link,
    Host,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum RouteKind {
    #[default]
    Unicast,
    Local,
    Broadcast,
    Multicast,
    /// Anything else (blackhole, unreachable, anycast, ...).
    Other,
}

/// A route, as dumped or to be installed. Equality is what `ip route` would
/// consider the same route: the remaining lifetime ([`Route::expires`]) is
/// not part of it (two dumps of one route a second apart are the same route).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Route {
    pub dst: IpNet,
    /// Routing table id (254 = main, 255 = local).
    pub table: u32,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
    pub scope: Scope,
    pub metric: Option<u32>,
    /// RTPROT_*: 2 kernel, 3 boot, 4 static. Installs use `boot` unless set.
    pub protocol: u8,
    pub kind: RouteKind,
    /// RTA_NH_ID: the route uses a nexthop object (installed by id alone).
    pub nh_id: Option<u32>,
    /// One nexthop of a multipath route: dumps give one `Route` per nexthop
    /// of an RTA_MULTIPATH, sharing dst, table and metric.
    pub multipath: bool,
    /// RTNH_F_ONLINK: the gateway is on the link whatever the subnets say.
    pub onlink: bool,
    /// Seconds the route has left (IPv6 routes the kernel learnt from a
    /// router advertisement, `proto ra`, or a prefix's lifetime): RTA_CACHEINFO's
    /// `rta_expires` in a dump, RTA_EXPIRES on install. None: permanent.
    pub expires: Option<u32>,
}

impl PartialEq for Route {
    fn eq(&self, o: &Route) -> bool {
        self.dst == o.dst
            && self.table == o.table
            && self.oif == o.oif
            && self.gateway == o.gateway
            && self.prefsrc == o.prefsrc
            && self.scope == o.scope
            && self.metric == o.metric
            && self.protocol == o.protocol
            && self.kind == o.kind
            && self.nh_id == o.nh_id
            && self.multipath == o.multipath
            && self.onlink == o.onlink
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self.dst, self.table, self.oif, self.gateway, self.prefsrc).hash(h);
        (self.scope, self.metric, self.protocol, self.kind).hash(h);
        (self.nh_id, self.multipath, self.onlink).hash(h);
    }
}

pub const TABLE_MAIN: u32 = 254;
pub const TABLE_LOCAL: u32 = 255;
pub const RTPROT_KERNEL: u8 = 2;
pub const RTPROT_BOOT: u8 = 3;
pub const RTPROT_STATIC: u8 = 4;
/// Learnt from a router advertisement (the kernel's own IPv6 default routers
/// and route information options).
pub const RTPROT_RA: u8 = 9;

impl Route {
    /// A unicast route in `table` with nothing else set.
    pub fn new(dst: IpNet, table: u32) -> Route {
        Route {
            dst,
            table,
            oif: None,
            gateway: None,
            prefsrc: None,
            scope: Scope::Universe,
            metric: None,
            protocol: RTPROT_BOOT,
            kind: RouteKind::Unicast,
            nh_id: None,
            multipath: false,
            onlink: false,
            expires: None,
        }
    }
    pub fn family(&self) -> Family {
        Family::of_net(&self.dst)
    }
}

/// A policy routing rule. Every rule installed has action `FR_ACT_TO_TBL`
/// (a rule without an action makes lookups fail).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    pub table: u32,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub fwmark: Option<u32>,
    pub fwmask: Option<u32>,
    pub iif: Option<String>,
    pub oif: Option<String>,
}

impl Rule {
    pub fn new(family: Family, priority: u32, table: u32) -> Rule {
        Rule {
            family,
            priority,
            table,
            src: None,
            dst: None,
            fwmark: None,
            fwmask: None,
            iif: None,
            oif: None,
        }
    }
}

/// NUD_* states.
pub const NUD_PERMANENT: u16 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    /// NUD_* bits.
    pub state: u16,
}

/// Result of a kernel route lookup (`ip route get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLookup {
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
    pub table: u32,
}

/// A netlink socket bound to one network namespace.
///
/// Methods are grouped by kernel object in the submodules (`link`, `addr`,
/// `route`, `rule`, `neigh`); `conn` holds open/open_in and the request
/// shapes, `door` the connection and its loop (`codec`: how requests become
/// datagrams, `socket`: the socket under it).
pub struct Netlink {
    door: door::Door<conn::Route>,
}
