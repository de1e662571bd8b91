//! The plan's data: what one ADD installs, and what the planner reads.

use std::net::IpAddr;

use cni::netlink::{Link, Mac, Route, Rule, Scope};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::is_link_local;

// Table ids and rule priorities are config (`crate::config::Ids`), read
// from the config wherever a plan needs one.

/// Connection mark (and packet mark) of connections that entered through veth0.
pub const REPLY_MARK: u32 = 0xc0de;
/// Pod sysctl that lets an accepted TCP connection (its SYN-ACK first) carry
/// the mark its SYN came in with: the reply mark of a connection that
/// entered through `veth0` (underlay first NIC).
pub const TCP_FWMARK_ACCEPT: &str = "net/ipv4/tcp_fwmark_accept";
/// Route protocol of every route the coordinator installs (RTPROT_* values
/// above 4 belong to routing daemons; 222 = 0xde is nobody's in iproute2's
/// list): what is ours is found by it, without the `from` rule that leads to
/// it, and the planner never mistakes its own routes for the main CNI's.
pub const ROUTE_PROTOCOL: u8 = 0xde;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Side {
    Host,
    Pod,
}

/// A route whose device is named: indices of links created by the plan are
/// only known when it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteSpec {
    pub side: Side,
    pub dst: IpNet,
    pub table: u32,
    pub dev: String,
    pub via: Option<IpAddr>,
    pub src: Option<IpAddr>,
    pub scope: Scope,
    /// Kept from a copied route: defaults of different metrics stay apart.
    pub metric: Option<u32>,
    /// Seconds left of a copied route that expires (one a router
    /// advertisement gave): the copy expires with it, never permanent.
    pub expires: Option<u32>,
    /// The gateway is on the link (Calico's `169.254.1.1`) without a route to it.
    pub onlink: bool,
    /// A copied route that uses a nexthop object keeps using it.
    pub nh_id: Option<u32>,
}

impl RouteSpec {
    /// A unicast pod route to `dst` in `table` out of `dev`, nothing else set.
    pub fn pod(dst: IpNet, table: u32, dev: &str) -> RouteSpec {
        RouteSpec {
            side: Side::Pod,
            dst,
            table,
            dev: dev.to_string(),
            via: None,
            src: None,
            scope: Scope::Universe,
            metric: None,
            expires: None,
            onlink: false,
            nh_id: None,
        }
    }
}

/// A route of `main` that leaves it once its copy is in a NIC's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub route: Route,
    /// The other nexthops of the multipath route `route` is one nexthop of:
    /// they stay in `main`.
    pub others: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighSpec {
    pub side: Side,
    pub dev: String,
    pub ip: IpAddr,
    pub mac: Mac,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlSpec {
    pub side: Side,
    pub key: String,
    pub value: String,
    /// A missing key is skipped: IPv6 keys on a node booted with
    /// `ipv6.disable=1` (no /proc/sys/net/ipv6 at all).
    pub optional: bool,
}

impl SysctlSpec {
    pub fn new(side: Side, key: String, value: &str) -> SysctlSpec {
        let optional = key.starts_with("net/ipv6/");
        SysctlSpec {
            side,
            key,
            value: value.to_string(),
            optional,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethPlan {
    pub host: String,
    pub host_mac: Mac,
    pub pod: String,
    pub pod_mac: Mac,
    pub mtu: u32,
    /// False when a previous ADD already made it (repeated ADD).
    pub create: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub veth: Option<VethPlan>,
    /// Written before links go up (DAD must be off before the first address).
    pub sysctls: Vec<SysctlSpec>,
    /// Pod addresses to add (dev, address), without DAD.
    pub addresses: Vec<(String, IpNet)>,
    /// Pod routes in any table, in order.
    pub routes: Vec<RouteSpec>,
    /// Pod `main` routes removed after their copy went into a NIC table.
    pub moves: Vec<Move>,
    pub rules: Vec<(Side, Rule)>,
    pub neighbours: Vec<NeighSpec>,
    /// Install the nftables reply mark on `veth0`.
    pub reply_mark: bool,
    /// Host: remove neighbour entries for these IPs on other devices.
    pub stale_neighbours: Vec<IpAddr>,
    /// (dev, txqueuelen) in the pod.
    pub txqlen: Option<(String, u32)>,
    /// `policyRoutes`, applied last: a bad gateway fails the ADD after
    /// everything else, and the undo takes it all back.
    pub policy: Vec<RouteSpec>,
    /// `podMACPrefix`: the MAC the NIC (dev) gets, before any probe.
    pub mac: Option<(String, Mac)>,
}

/// The pod as observed before the change.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub links: Vec<Link>,
    /// Routes of every table.
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    /// (link index, address) of every address.
    pub addrs: Vec<(u32, IpNet)>,
    /// Those of `addrs` the kernel configured from a router advertisement
    /// (SLAAC: global IPv6 with a lifetime), which no prevResult lists.
    pub slaac: Vec<(u32, IpNet)>,
}

impl PodView {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }
    pub fn addrs_of(&self, index: u32) -> Vec<IpNet> {
        self.addrs
            .iter()
            .filter(|(i, a)| *i == index && !is_link_local(&a.addr()))
            .map(|(_, a)| *a)
            .collect()
    }
}

/// The layout the current call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// First NIC of an underlay pod: host veth, hijack routes, reply mark.
    UnderlayFirst,
    /// Later NIC of an underlay pod: policy table, cluster traffic via veth0.
    UnderlayLater,
    /// First NIC from an overlay CNI: nothing to route, only tuning.
    OverlayFirst,
    /// Later (underlay) NIC of an overlay pod: policy table, cluster traffic via eth0.
    OverlayLater,
}

impl Layout {
    pub fn is_first(self) -> bool {
        matches!(self, Layout::UnderlayFirst | Layout::OverlayFirst)
    }
}

/// Everything the planner needs besides the config.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub layout: Layout,
    /// The NIC of this call (CNI_IFNAME).
    pub ifname: String,
    /// Its addresses (from prevResult), with prefix.
    pub ips: Vec<IpNet>,
    /// Gateways prevResult names for it.
    pub gateways: Vec<IpAddr>,
    pub pod: PodView,
    /// Node addresses, first of each family = hijack gateway.
    pub node_ips: Vec<IpAddr>,
    /// Host end of the veth (underlay), with its and the pod end's MACs.
    pub veth: Option<VethPlan>,
    /// Overlay: the host-side peer of the pod's first NIC, and that NIC's MAC.
    pub overlay_peer: Option<(String, Mac)>,
}
