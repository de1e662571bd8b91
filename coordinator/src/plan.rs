//! What one ADD changes, computed as plain data from what the pod and the
//! host look like. No kernel access here: unit tests call these functions
//! with hand-made views and compare the plans.
//!
//! Rule priorities (pod netns) — fixed, documented in the README:
//! - [`PRIO_FWMARK`]: `fwmark REPLY_MARK lookup 100`: replies of connections
//!   that entered through `veth0` (kubelet probes, NodePort/Service traffic)
//!   leave through `veth0`;
//! - [`PRIO_FROM`]: `from <NIC address> lookup <NIC table>`;
//! - both before `main` (32766).
//!
//! Host netns: [`PRIO_HOST`]: `from all lookup <hostRuleTable>`, before `main`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use cni::netlink::{Family, Link, Mac, Route, Rule, Scope, RTPROT_KERNEL, TABLE_MAIN};
use ipnet::IpNet;

use crate::config::{Config, PolicyRoute};
use crate::names::POD_VETH;

pub const PRIO_FWMARK: u32 = 900;
pub const PRIO_FROM: u32 = 1000;
pub const PRIO_HOST: u32 = 1000;
/// Pod table holding the way back through `veth0` for marked replies.
pub const TABLE_REPLY: u32 = 100;
/// First table id handed to a NIC.
pub const TABLE_FIRST_NIC: u32 = 101;
/// Connection mark (and packet mark) of connections that entered through veth0.
pub const REPLY_MARK: u32 = 0xc0de;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Host,
    Pod,
}

/// A route whose device is named: indices of links created by the plan are
/// only known when it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteSpec {
    pub side: Side,
    pub dst: IpNet,
    pub table: u32,
    pub dev: String,
    pub via: Option<IpAddr>,
    pub src: Option<IpAddr>,
    pub scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighSpec {
    pub side: Side,
    pub dev: String,
    pub ip: IpAddr,
    pub mac: Mac,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlSpec {
    pub side: Side,
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPlan {
    pub host: String,
    pub host_mac: Mac,
    pub pod: String,
    pub pod_mac: Mac,
    pub mtu: u32,
    /// False when a previous ADD already made it (repeated ADD).
    pub create: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub veth: Option<VethPlan>,
    /// Written before links go up (DAD must be off before the first address).
    pub sysctls: Vec<SysctlSpec>,
    /// Pod addresses to add (dev, address), without DAD.
    pub addresses: Vec<(String, IpNet)>,
    /// Pod routes in any table, in order.
    pub routes: Vec<RouteSpec>,
    /// Pod `main` routes removed after their copy went into a NIC table.
    pub moves: Vec<Route>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub fn is_underlay(self) -> bool {
        matches!(self, Layout::UnderlayFirst | Layout::UnderlayLater)
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

pub fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn default_net(f: Family) -> IpNet {
    match f {
        Family::V4 => "0.0.0.0/0".parse().expect("valid"),
        Family::V6 => "::/0".parse().expect("valid"),
    }
}

fn families(ips: &[IpNet]) -> BTreeSet<Family> {
    ips.iter().map(Family::of_net).collect()
}

fn first_of(ips: &[IpAddr], f: Family) -> Option<IpAddr> {
    ips.iter().copied().find(|ip| Family::of(ip) == f)
}

fn src_for(ips: &[IpNet], f: Family) -> Option<IpAddr> {
    ips.iter()
        .map(|n| n.addr())
        .find(|a| Family::of(a) == f && !is_link_local(a))
}

/// Lowest table id >= `from` that no rule or route of the pod uses, skipping `taken`.
pub fn free_table(pod: &PodView, from: u32, taken: &[u32]) -> u32 {
    let used: BTreeSet<u32> = pod
        .rules
        .iter()
        .map(|r| r.table)
        .chain(pod.routes.iter().map(|r| r.table))
        .chain(taken.iter().copied())
        .collect();
    (from..).find(|t| !used.contains(t)).unwrap_or(from)
}

/// The table a NIC already uses (a `from <its address>` rule), for repeated ADDs.
fn existing_table(pod: &PodView, ips: &[IpNet]) -> Option<u32> {
    pod.rules.iter().find_map(|r| {
        let src = r.src?;
        (r.priority == PRIO_FROM && ips.iter().any(|ip| host_net(ip.addr()) == src))
            .then_some(r.table)
    })
}

fn from_rules(ips: &[IpNet], table: u32) -> Vec<(Side, Rule)> {
    ips.iter()
        .filter(|ip| !is_link_local(&ip.addr()))
        .map(|ip| {
            let mut r = Rule::new(Family::of_net(ip), PRIO_FROM, table);
            r.src = Some(host_net(ip.addr()));
            (Side::Pod, r)
        })
        .collect()
}

fn is_connected(r: &Route) -> bool {
    r.protocol == RTPROT_KERNEL && r.gateway.is_none()
}

/// Routes to the node and the hijacked CIDRs through `veth0` (underlay), in `table`.
fn via_veth(inp: &Inputs, cfg: &Config, table: u32, pod_fams: &BTreeSet<Family>) -> Vec<RouteSpec> {
    via_veth_from(inp, &inp.ips, cfg, table, pod_fams)
}

/// [`via_veth`] for traffic sourced from `ips` (the NIC whose table it is).
fn via_veth_from(
    inp: &Inputs,
    ips: &[IpNet],
    cfg: &Config,
    table: u32,
    pod_fams: &BTreeSet<Family>,
) -> Vec<RouteSpec> {
    let mut out = Vec::new();
    for ip in &inp.node_ips {
        let f = Family::of(ip);
        if !pod_fams.contains(&f) {
            continue;
        }
        out.push(RouteSpec {
            side: Side::Pod,
            dst: host_net(*ip),
            table,
            dev: POD_VETH.into(),
            via: None,
            src: src_for(ips, f),
            scope: Scope::Link,
        });
    }
    for net in cfg.hijack_all() {
        let f = Family::of_net(&net);
        if let (true, Some(gw)) = (pod_fams.contains(&f), first_of(&inp.node_ips, f)) {
            out.push(RouteSpec {
                side: Side::Pod,
                dst: net,
                table,
                dev: POD_VETH.into(),
                via: Some(gw),
                // veth0 may carry a link-local `vethLinkAddress`, which the
                // kernel would pick as source; the node cannot answer it.
                src: src_for(ips, f),
                scope: Scope::Universe,
            });
        }
    }
    out
}

/// Overlay: routes to the node and hijacked CIDRs through eth0's gateway.
fn via_overlay(
    inp: &Inputs,
    cfg: &Config,
    table: u32,
    pod_fams: &BTreeSet<Family>,
) -> Vec<RouteSpec> {
    let first = &cfg.pod_default_cni_nic;
    let Some(eth0) = inp.pod.link(first) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for f in pod_fams {
        // eth0's default gateway: in main, or in table 100 once an earlier
        // NIC took main's default (podDefaultRouteNic).
        let eth0_default = |t: u32| {
            inp.pod.routes.iter().find(|r| {
                r.table == t
                    && r.oif == Some(eth0.index)
                    && r.dst.prefix_len() == 0
                    && r.family() == *f
            })
        };
        let Some(def) = eth0_default(TABLE_MAIN).or_else(|| eth0_default(TABLE_REPLY)) else {
            continue;
        };
        let Some(gw) = def.gateway else { continue };
        // The on-link route that makes the gateway reachable; main already has
        // one from the overlay CNI (ptp, Calico), which must keep its `src`.
        let gw_in_table = table == TABLE_MAIN
            && inp.pod.routes.iter().any(|r| {
                r.table == TABLE_MAIN && r.oif == Some(eth0.index) && r.dst == host_net(gw)
            });
        if !gw_in_table {
            out.push(RouteSpec {
                side: Side::Pod,
                dst: host_net(gw),
                table,
                dev: first.clone(),
                via: None,
                src: None,
                scope: Scope::Link,
            });
        }
        let dsts = inp
            .node_ips
            .iter()
            .filter(|ip| Family::of(ip) == *f)
            .map(|ip| host_net(*ip))
            .chain(
                cfg.hijack_all()
                    .into_iter()
                    .filter(|n| Family::of_net(n) == *f),
            );
        for dst in dsts {
            if dst == host_net(gw) {
                continue;
            }
            out.push(RouteSpec {
                side: Side::Pod,
                dst,
                table,
                dev: first.clone(),
                via: Some(gw),
                src: None,
                scope: Scope::Universe,
            });
        }
    }
    out
}

fn policy_routes(routes: &[PolicyRoute], table: u32, dev: &str) -> Vec<RouteSpec> {
    routes
        .iter()
        .map(|p| RouteSpec {
            side: Side::Pod,
            dst: p.dst,
            table,
            dev: dev.to_string(),
            via: Some(p.gw),
            src: None,
            scope: Scope::Universe,
        })
        .collect()
}

fn copy_into(r: &Route, table: u32, dev: &str) -> RouteSpec {
    RouteSpec {
        side: Side::Pod,
        dst: r.dst,
        table,
        dev: dev.to_string(),
        via: r.gateway,
        src: r.prefsrc,
        scope: r.scope,
    }
}

/// Host: `from all lookup hostRuleTable`, pod address routes and neighbours on `dev`.
fn host_side(cfg: &Config, ips: &[IpNet], dev: &str, mac: Mac, plan: &mut Plan) {
    for f in families(ips) {
        let mut r = Rule::new(f, PRIO_HOST, cfg.host_rule_table);
        r.src = None;
        if !plan.rules.iter().any(|(s, x)| *s == Side::Host && *x == r) {
            plan.rules.push((Side::Host, r));
        }
    }
    for ip in ips.iter().filter(|ip| !is_link_local(&ip.addr())) {
        plan.routes.push(RouteSpec {
            side: Side::Host,
            dst: host_net(ip.addr()),
            table: cfg.host_rule_table,
            dev: dev.to_string(),
            via: None,
            src: None,
            scope: Scope::Link,
        });
        plan.neighbours.push(NeighSpec {
            side: Side::Host,
            dev: dev.to_string(),
            ip: ip.addr(),
            mac,
        });
        plan.stale_neighbours.push(ip.addr());
    }
}

/// Tuning of the current NIC that every layout gets.
fn tuning(cfg: &Config, inp: &Inputs, plan: &mut Plan) {
    if let Some(v) = cfg.pod_rp_filter {
        for dev in ["all", inp.ifname.as_str()] {
            plan.sysctls.push(SysctlSpec {
                side: Side::Pod,
                key: format!("net/ipv4/conf/{dev}/rp_filter"),
                value: v.to_string(),
            });
        }
    }
    if cfg.tx_queue_len > 0 {
        plan.txqlen = Some((inp.ifname.clone(), cfg.tx_queue_len));
    }
}

/// The plan of one ADD.
pub fn plan_add(cfg: &Config, inp: &Inputs) -> Plan {
    let mut plan = Plan::default();
    tuning(cfg, inp, &mut plan);
    match inp.layout {
        Layout::UnderlayFirst => underlay_first(cfg, inp, &mut plan),
        Layout::OverlayFirst => {}
        Layout::UnderlayLater | Layout::OverlayLater => later_nic(cfg, inp, &mut plan),
    }
    plan
}

fn underlay_first(cfg: &Config, inp: &Inputs, plan: &mut Plan) {
    let Some(veth) = inp.veth.clone() else {
        return;
    };
    let fams = families(&inp.ips);
    if let Some(v) = cfg.pod_rp_filter {
        plan.sysctls.push(SysctlSpec {
            side: Side::Pod,
            key: format!("net/ipv4/conf/{}/rp_filter", veth.pod),
            value: v.to_string(),
        });
    }
    // A veth pair cannot collide: DAD would only delay the path by ~2 s.
    for (side, dev) in [(Side::Pod, &veth.pod), (Side::Host, &veth.host)] {
        plan.sysctls.push(SysctlSpec {
            side,
            key: format!("net/ipv6/conf/{dev}/accept_dad"),
            value: "0".into(),
        });
    }
    // The host end needs no address of its own (permanent neighbours both
    // ways); without a link-local it stays out of the host's address dumps.
    plan.sysctls.push(SysctlSpec {
        side: Side::Host,
        key: format!("net/ipv6/conf/{}/addr_gen_mode", veth.host),
        value: "1".into(),
    });
    if let Some(a) = cfg.veth_link_address {
        plan.addresses.push((veth.pod.clone(), a));
    }
    // main: node IPs on-link through veth0, hijacked CIDRs via the first node IP.
    plan.routes.extend(via_veth(inp, cfg, TABLE_MAIN, &fams));
    // Table 100: the way back for connections that came in through veth0.
    plan.routes.extend(
        via_veth(inp, cfg, TABLE_REPLY, &fams)
            .into_iter()
            .filter(|r| r.via.is_none()),
    );
    for f in &fams {
        if let Some(gw) = first_of(&inp.node_ips, *f) {
            plan.routes.push(RouteSpec {
                side: Side::Pod,
                dst: default_net(*f),
                table: TABLE_REPLY,
                dev: POD_VETH.into(),
                via: Some(gw),
                src: None,
                scope: Scope::Universe,
            });
            let mut r = Rule::new(*f, PRIO_FWMARK, TABLE_REPLY);
            r.fwmark = Some(REPLY_MARK);
            r.fwmask = Some(0xffff_ffff);
            plan.rules.push((Side::Pod, r));
        }
    }
    for ip in &inp.node_ips {
        if fams.contains(&Family::of(ip)) {
            plan.neighbours.push(NeighSpec {
                side: Side::Pod,
                dev: POD_VETH.into(),
                ip: *ip,
                mac: veth.host_mac,
            });
        }
    }
    plan.reply_mark = true;
    host_side(cfg, &inp.ips, &veth.host, veth.pod_mac, plan);
    // policyRoutes of the first NIC go to main, through it.
    plan.policy = policy_routes(&cfg.policy_routes, TABLE_MAIN, &inp.ifname);
    plan.veth = Some(veth);
}

fn later_nic(cfg: &Config, inp: &Inputs, plan: &mut Plan) {
    let Some(nic) = inp.pod.link(&inp.ifname) else {
        return;
    };
    let fams = families(&inp.ips);
    let is_default_nic = cfg.default_route_nic() == inp.ifname;
    let table = existing_table(&inp.pod, &inp.ips)
        .unwrap_or_else(|| free_table(&inp.pod, TABLE_FIRST_NIC, &[TABLE_REPLY]));

    if cfg.tune_pod_routes {
        let mut has_default = BTreeSet::new();
        for r in inp
            .pod
            .routes
            .iter()
            .filter(|r| r.table == TABLE_MAIN && r.oif == Some(nic.index))
        {
            if is_link_local(&r.dst.addr()) && r.dst.prefix_len() > 0 {
                continue;
            }
            plan.routes.push(copy_into(r, table, &inp.ifname));
            if r.dst.prefix_len() == 0 {
                has_default.insert(r.family());
            }
            let stays_default = is_default_nic && r.dst.prefix_len() == 0;
            if !is_connected(r) && !stays_default {
                plan.moves.push(r.clone());
            }
        }
        // Replies to remote clients need a default even when main had none.
        for gw in &inp.gateways {
            let f = Family::of(gw);
            if fams.contains(&f) && !has_default.contains(&f) {
                plan.routes.push(RouteSpec {
                    side: Side::Pod,
                    dst: default_net(f),
                    table,
                    dev: inp.ifname.clone(),
                    via: Some(*gw),
                    src: None,
                    scope: Scope::Universe,
                });
                if is_default_nic {
                    plan.routes.push(RouteSpec {
                        side: Side::Pod,
                        dst: default_net(f),
                        table: TABLE_MAIN,
                        dev: inp.ifname.clone(),
                        via: Some(*gw),
                        src: None,
                        scope: Scope::Universe,
                    });
                }
                has_default.insert(f);
            }
        }
        let cluster = match inp.layout {
            Layout::UnderlayLater => via_veth(inp, cfg, table, &fams),
            // main too: a node address inside this NIC's subnet would
            // otherwise leave through this NIC (a macvlan cannot reach its
            // parent's address), and with podDefaultRouteNic = this NIC main's
            // default no longer leads to eth0 for Services and overlay pods.
            _ => {
                let mut v = via_overlay(inp, cfg, table, &fams);
                v.extend(via_overlay(inp, cfg, TABLE_MAIN, &fams));
                v
            }
        };
        plan.routes.extend(cluster);
        plan.rules.extend(from_rules(&inp.ips, table));
        first_nic_table(cfg, inp, table, plan, is_default_nic);
    }
    // Host side: the node reaches this NIC's addresses through the pod's
    // link to the host (veth0 in underlay, eth0's peer in overlay).
    match (inp.layout, &inp.veth, &inp.overlay_peer) {
        (Layout::UnderlayLater, Some(v), _) => host_side(cfg, &inp.ips, &v.host, v.pod_mac, plan),
        (Layout::OverlayLater, _, Some((peer, mac))) => host_side(cfg, &inp.ips, peer, *mac, plan),
        _ => {}
    }
    plan.policy = policy_routes(&cfg.policy_routes, table, &inp.ifname);
}

/// Once the pod has a second NIC, the first NIC gets a table of its own too,
/// reached by `from` rules of its addresses: a reply from the first NIC's
/// address then leaves through the first NIC even toward a client on a later
/// NIC's subnet (whose connected route stays in `main`). When
/// `podDefaultRouteNic` names this later NIC (`move_default`), the first
/// NIC's default also leaves `main`.
fn first_nic_table(
    cfg: &Config,
    inp: &Inputs,
    this_table: u32,
    plan: &mut Plan,
    move_default: bool,
) {
    let first = &cfg.pod_default_cni_nic;
    let Some(eth0) = inp.pod.link(first) else {
        return;
    };
    let defaults: Vec<&Route> = inp
        .pod
        .routes
        .iter()
        .filter(|r| r.table == TABLE_MAIN && r.oif == Some(eth0.index) && r.dst.prefix_len() == 0)
        .collect();
    let eth0_ips = inp.pod.addrs_of(eth0.index);
    if eth0_ips.is_empty() {
        return;
    }
    let table = match inp.layout {
        Layout::OverlayLater => TABLE_REPLY,
        _ => existing_table(&inp.pod, &eth0_ips)
            .unwrap_or_else(|| free_table(&inp.pod, TABLE_FIRST_NIC, &[TABLE_REPLY, this_table])),
    };
    for r in inp
        .pod
        .routes
        .iter()
        .filter(|r| r.table == TABLE_MAIN && r.oif == Some(eth0.index))
        .filter(|r| is_connected(r) || r.dst.prefix_len() == 0)
        .filter(|r| !(is_link_local(&r.dst.addr()) && r.dst.prefix_len() > 0))
    {
        plan.routes.push(copy_into(r, table, first));
    }
    // ptp-style overlays reach their gateway through a /32 scope-link route.
    for r in inp.pod.routes.iter().filter(|r| {
        r.table == TABLE_MAIN
            && r.oif == Some(eth0.index)
            && r.scope == Scope::Link
            && !is_connected(r)
            && r.dst.prefix_len() > 0
    }) {
        plan.routes.push(copy_into(r, table, first));
    }
    // Once eth0's addresses have a `from` rule, even unbound sockets end up
    // in this table (the route is looked up again with the chosen source):
    // the node and the hijacked CIDRs must stay behind veth0 here too.
    if inp.layout == Layout::UnderlayLater {
        // The same routes main got at the first NIC's ADD (node addresses
        // on-link, hijacked CIDRs via the first NIC's node address): copied,
        // not recomputed, so every later NIC's call writes the same table.
        if let Some(v0) = inp.pod.link(POD_VETH) {
            for r in inp
                .pod
                .routes
                .iter()
                .filter(|r| r.table == TABLE_MAIN && r.oif == Some(v0.index))
            {
                plan.routes.push(copy_into(r, table, POD_VETH));
            }
        }
    }
    if move_default {
        plan.moves.extend(defaults.into_iter().cloned());
    }
    plan.rules.extend(from_rules(&eth0_ips, table));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use cni::netlink::{RouteKind, RTPROT_BOOT};
    use serde_json::json;

    fn cfg(extra: serde_json::Value) -> Config {
        let mut v = extra;
        v["defaultsFile"] = json!("/nonexistent");
        Config::from_raw(&v).unwrap()
    }

    fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.map(str::to_string),
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            mtu: 1500,
            up: true,
            link: None,
            link_netnsid: None,
            txqlen: 1000,
        }
    }

    fn route(dst: &str, table: u32, oif: u32, gw: Option<&str>, proto: u8, scope: Scope) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            table,
            oif: Some(oif),
            gateway: gw.map(|g| g.parse().unwrap()),
            prefsrc: None,
            scope,
            metric: None,
            protocol: proto,
            kind: RouteKind::Unicast,
        }
    }

    fn veth() -> VethPlan {
        VethPlan {
            host: "vethabc".into(),
            host_mac: [2, 1, 1, 1, 1, 1],
            pod: POD_VETH.into(),
            pod_mac: [2, 2, 2, 2, 2, 2],
            mtu: 1500,
            create: true,
        }
    }

    /// An underlay pod: macvlan eth0 (10.6.0.5/16, fd00:6::5/64) and, when
    /// `net1`, a macvlan net1 (10.7.0.5/16) with its default in main.
    fn pod(net1: bool) -> PodView {
        let mut p = PodView {
            links: vec![link(1, "lo", None), link(2, "eth0", Some("macvlan"))],
            routes: vec![
                route(
                    "10.6.0.0/16",
                    TABLE_MAIN,
                    2,
                    None,
                    RTPROT_KERNEL,
                    Scope::Link,
                ),
                route(
                    "0.0.0.0/0",
                    TABLE_MAIN,
                    2,
                    Some("10.6.0.1"),
                    RTPROT_BOOT,
                    Scope::Universe,
                ),
                route(
                    "fd00:6::/64",
                    TABLE_MAIN,
                    2,
                    None,
                    RTPROT_KERNEL,
                    Scope::Universe,
                ),
                route(
                    "fe80::/64",
                    TABLE_MAIN,
                    2,
                    None,
                    RTPROT_KERNEL,
                    Scope::Universe,
                ),
            ],
            rules: vec![],
            addrs: vec![
                (2, "10.6.0.5/16".parse().unwrap()),
                (2, "fd00:6::5/64".parse().unwrap()),
            ],
        };
        if net1 {
            p.links.push(link(3, "net1", Some("macvlan")));
            p.links.push(link(4, "veth0", Some("veth")));
            // What eth0's underlay ADD put in main through veth0.
            for (dst, gw, scope) in [
                ("10.6.0.2/32", None, Scope::Link),
                ("10.233.0.0/18", Some("10.6.0.2"), Scope::Universe),
            ] {
                let mut r = route(dst, TABLE_MAIN, 4, gw, RTPROT_BOOT, scope);
                r.prefsrc = Some("10.6.0.5".parse().unwrap());
                p.routes.push(r);
            }
            p.routes.push(route(
                "10.7.0.0/16",
                TABLE_MAIN,
                3,
                None,
                RTPROT_KERNEL,
                Scope::Link,
            ));
            p.routes.push(route(
                "172.16.0.0/12",
                TABLE_MAIN,
                3,
                Some("10.7.0.1"),
                RTPROT_BOOT,
                Scope::Universe,
            ));
            p.addrs.push((3, "10.7.0.5/16".parse().unwrap()));
        }
        p
    }

    fn first_inputs() -> Inputs {
        Inputs {
            layout: Layout::UnderlayFirst,
            ifname: "eth0".into(),
            ips: vec![
                "10.6.0.5/16".parse().unwrap(),
                "fd00:6::5/64".parse().unwrap(),
            ],
            gateways: vec!["10.6.0.1".parse().unwrap()],
            pod: pod(false),
            node_ips: vec![
                "10.6.0.2".parse().unwrap(),
                "fd00:6::2".parse().unwrap(),
                "192.168.50.1".parse().unwrap(),
            ],
            veth: Some(veth()),
            overlay_peer: None,
        }
    }

    fn has_route(
        p: &Plan,
        side: Side,
        dst: &str,
        table: u32,
        dev: &str,
        via: Option<&str>,
    ) -> bool {
        p.routes.iter().chain(&p.policy).any(|r| {
            r.side == side
                && r.dst == dst.parse::<IpNet>().unwrap()
                && r.table == table
                && r.dev == dev
                && r.via == via.map(|v| v.parse().unwrap())
        })
    }

    #[test]
    fn underlay_first_nic_layout() {
        let c = cfg(
            json!({"serviceCIDR": ["10.233.0.0/18", "fd00:233::/110"], "hijackCIDR": ["169.254.25.10/32"]}),
        );
        let p = plan_add(&c, &first_inputs());
        // node IPs on-link through veth0, in main and in the reply table.
        for t in [TABLE_MAIN, TABLE_REPLY] {
            assert!(has_route(&p, Side::Pod, "10.6.0.2/32", t, "veth0", None));
            assert!(has_route(
                &p,
                Side::Pod,
                "192.168.50.1/32",
                t,
                "veth0",
                None
            ));
            assert!(has_route(&p, Side::Pod, "fd00:6::2/128", t, "veth0", None));
        }
        // hijack via the first node IP of each family.
        assert!(has_route(
            &p,
            Side::Pod,
            "10.233.0.0/18",
            TABLE_MAIN,
            "veth0",
            Some("10.6.0.2")
        ));
        assert!(has_route(
            &p,
            Side::Pod,
            "fd00:233::/110",
            TABLE_MAIN,
            "veth0",
            Some("fd00:6::2")
        ));
        assert!(has_route(
            &p,
            Side::Pod,
            "169.254.25.10/32",
            TABLE_MAIN,
            "veth0",
            Some("10.6.0.2")
        ));
        assert!(has_route(
            &p,
            Side::Pod,
            "0.0.0.0/0",
            TABLE_REPLY,
            "veth0",
            Some("10.6.0.2")
        ));
        assert!(has_route(
            &p,
            Side::Pod,
            "::/0",
            TABLE_REPLY,
            "veth0",
            Some("fd00:6::2")
        ));
        // fwmark rule per family, host rule per family.
        let fw: Vec<_> = p
            .rules
            .iter()
            .filter(|(s, r)| *s == Side::Pod && r.fwmark == Some(REPLY_MARK))
            .collect();
        assert_eq!(fw.len(), 2);
        assert!(fw
            .iter()
            .all(|(_, r)| r.table == TABLE_REPLY && r.priority == PRIO_FWMARK));
        let host: Vec<_> = p.rules.iter().filter(|(s, _)| *s == Side::Host).collect();
        assert_eq!(host.len(), 2);
        assert!(host.iter().all(|(_, r)| r.table == 500 && r.src.is_none()));
        // host routes and neighbours for both pod addresses.
        assert!(has_route(
            &p,
            Side::Host,
            "10.6.0.5/32",
            500,
            "vethabc",
            None
        ));
        assert!(has_route(
            &p,
            Side::Host,
            "fd00:6::5/128",
            500,
            "vethabc",
            None
        ));
        assert_eq!(
            p.neighbours.iter().filter(|n| n.side == Side::Host).count(),
            2
        );
        assert!(p
            .neighbours
            .iter()
            .filter(|n| n.side == Side::Pod)
            .all(|n| n.mac == [2, 1, 1, 1, 1, 1] && n.dev == "veth0"));
        assert!(p.reply_mark);
        assert_eq!(p.stale_neighbours.len(), 2);
        // no route leaves main for the first NIC.
        assert!(p.moves.is_empty());
        // v4 routes to node IPs carry the pod's source address.
        let r = p
            .routes
            .iter()
            .find(|r| r.dst == "10.6.0.2/32".parse::<IpNet>().unwrap())
            .unwrap();
        assert_eq!(r.src, Some("10.6.0.5".parse().unwrap()));
        // So do hijack routes: a link-local vethLinkAddress on veth0 must not
        // become the source of Service traffic.
        for (dst, src) in [
            ("10.233.0.0/18", "10.6.0.5"),
            ("fd00:233::/110", "fd00:6::5"),
        ] {
            let r = p
                .routes
                .iter()
                .find(|r| r.dst == dst.parse::<IpNet>().unwrap() && r.table == TABLE_MAIN)
                .unwrap();
            assert_eq!(r.src, Some(src.parse().unwrap()), "{dst}");
        }
    }

    #[test]
    fn ipv4_only_pod_gets_no_ipv6_routes() {
        let mut i = first_inputs();
        i.ips.truncate(1);
        let p = plan_add(&cfg(json!({"serviceCIDR": ["fd00:233::/110"]})), &i);
        assert!(p.routes.iter().all(|r| r.dst.addr().is_ipv4()));
        assert!(p.rules.iter().all(|(_, r)| r.family == Family::V4));
    }

    fn later_inputs(layout: Layout) -> Inputs {
        Inputs {
            layout,
            ifname: "net1".into(),
            ips: vec!["10.7.0.5/16".parse().unwrap()],
            gateways: vec!["10.7.0.1".parse().unwrap()],
            pod: pod(true),
            node_ips: vec!["10.6.0.2".parse().unwrap()],
            veth: Some(veth()),
            overlay_peer: None,
        }
    }

    #[test]
    fn later_nic_gets_its_own_table() {
        let c = cfg(
            json!({"serviceCIDR": ["10.233.0.0/18"], "policyRoutes": [{"dst": "192.168.0.0/16", "gw": "10.7.0.254"}]}),
        );
        let p = plan_add(&c, &later_inputs(Layout::UnderlayLater));
        let t = TABLE_FIRST_NIC;
        assert!(has_route(&p, Side::Pod, "10.7.0.0/16", t, "net1", None));
        assert!(has_route(
            &p,
            Side::Pod,
            "172.16.0.0/12",
            t,
            "net1",
            Some("10.7.0.1")
        ));
        // main had no default for net1; prevResult's gateway gives the table one.
        assert!(has_route(
            &p,
            Side::Pod,
            "0.0.0.0/0",
            t,
            "net1",
            Some("10.7.0.1")
        ));
        assert!(!has_route(
            &p,
            Side::Pod,
            "0.0.0.0/0",
            TABLE_MAIN,
            "net1",
            Some("10.7.0.1")
        ));
        assert!(has_route(&p, Side::Pod, "10.6.0.2/32", t, "veth0", None));
        assert!(has_route(
            &p,
            Side::Pod,
            "10.233.0.0/18",
            t,
            "veth0",
            Some("10.6.0.2")
        ));
        // policyRoutes are planned apart, applied last.
        assert!(p
            .policy
            .iter()
            .any(|r| r.dst == "192.168.0.0/16".parse::<IpNet>().unwrap()
                && r.table == t
                && r.dev == "net1"
                && r.via == Some("10.7.0.254".parse().unwrap())));
        // the static route moves, the connected one stays in main too.
        assert_eq!(p.moves.len(), 1, "{:?}", p.moves);
        assert_eq!(p.moves[0].dst, "172.16.0.0/12".parse::<IpNet>().unwrap());
        let from: Vec<_> = p
            .rules
            .iter()
            .filter(|(s, r)| *s == Side::Pod && r.priority == PRIO_FROM && r.table == t)
            .collect();
        assert_eq!(from.len(), 1);
        assert_eq!(from[0].1.src, Some("10.7.0.5/32".parse().unwrap()));
        // The first NIC gets a table of its own: replies from its addresses
        // leave through it even toward net1's subnet. Its default stays in main.
        let eth0_rules: Vec<_> = p
            .rules
            .iter()
            .filter(|(s, r)| *s == Side::Pod && r.priority == PRIO_FROM && r.table != t)
            .collect();
        assert_eq!(eth0_rules.len(), 2, "{eth0_rules:?}");
        let t0 = eth0_rules[0].1.table;
        assert!(eth0_rules
            .iter()
            .all(|(_, r)| r.table == t0 && t0 != TABLE_REPLY));
        assert!(has_route(
            &p,
            Side::Pod,
            "0.0.0.0/0",
            t0,
            "eth0",
            Some("10.6.0.1")
        ));
        assert!(has_route(&p, Side::Pod, "10.6.0.0/16", t0, "eth0", None));
        assert!(has_route(&p, Side::Pod, "10.6.0.2/32", t0, "veth0", None));
        assert!(!p.moves.iter().any(|m| m.oif == Some(2)));
        // the node reaches net1's address through the veth.
        assert!(has_route(
            &p,
            Side::Host,
            "10.7.0.5/32",
            500,
            "vethabc",
            None
        ));
    }

    #[test]
    fn table_ids_skip_used_ones_and_are_reused_on_repeat() {
        let mut i = later_inputs(Layout::UnderlayLater);
        i.pod.rules.push(Rule::new(Family::V4, 5, 101));
        i.pod
            .routes
            .push(route("1.2.3.0/24", 102, 2, None, RTPROT_BOOT, Scope::Link));
        let p = plan_add(&cfg(json!({})), &i);
        assert!(p.routes.iter().any(|r| r.table == 103));
        let mut again = i.clone();
        let mut r = Rule::new(Family::V4, PRIO_FROM, 107);
        r.src = Some("10.7.0.5/32".parse().unwrap());
        again.pod.rules.push(r);
        let p = plan_add(&cfg(json!({})), &again);
        let net1_src = Some("10.7.0.5/32".parse().unwrap());
        assert!(p
            .rules
            .iter()
            .filter(|(s, r)| *s == Side::Pod && r.src == net1_src)
            .all(|(_, r)| r.table == 107));
        // eth0's table is reused on a repeat as well.
        let mut r0 = Rule::new(Family::V4, PRIO_FROM, 109);
        r0.src = Some("10.6.0.5/32".parse().unwrap());
        again.pod.rules.push(r0);
        let p = plan_add(&cfg(json!({})), &again);
        assert!(p
            .rules
            .iter()
            .filter(|(s, r)| *s == Side::Pod && r.priority == PRIO_FROM && r.src != net1_src)
            .all(|(_, r)| r.table == 109));
    }

    #[test]
    fn default_route_nic_moves_the_first_nics_default() {
        let c = cfg(json!({"podDefaultRouteNic": "net1"}));
        let mut i = later_inputs(Layout::UnderlayLater);
        i.pod.routes.push(route(
            "0.0.0.0/0",
            TABLE_MAIN,
            3,
            Some("10.7.0.1"),
            RTPROT_BOOT,
            Scope::Universe,
        ));
        let p = plan_add(&c, &i);
        // net1's default stays in main (not moved), eth0's default moves to eth0's table.
        assert!(!p
            .moves
            .iter()
            .any(|r| r.oif == Some(3) && r.dst.prefix_len() == 0));
        assert!(p
            .moves
            .iter()
            .any(|r| r.oif == Some(2) && r.dst.prefix_len() == 0));
        let eth0_table = TABLE_FIRST_NIC + 1;
        assert!(has_route(
            &p,
            Side::Pod,
            "0.0.0.0/0",
            eth0_table,
            "eth0",
            Some("10.6.0.1")
        ));
        assert!(has_route(
            &p,
            Side::Pod,
            "10.6.0.0/16",
            eth0_table,
            "eth0",
            None
        ));
        assert!(p
            .rules
            .iter()
            .any(|(_, r)| r.table == eth0_table && r.src == Some("10.6.0.5/32".parse().unwrap())));
        // Traffic from eth0's address still reaches the node and Services
        // through veth0, with eth0's address as source.
        let c = cfg(json!({"podDefaultRouteNic": "net1", "serviceCIDR": ["10.233.0.0/18"]}));
        let p = plan_add(&c, &i);
        for (dst, via) in [("10.6.0.2/32", None), ("10.233.0.0/18", Some("10.6.0.2"))] {
            assert!(
                has_route(&p, Side::Pod, dst, eth0_table, "veth0", via),
                "{dst} in eth0's table"
            );
            let r = p
                .routes
                .iter()
                .find(|r| r.table == eth0_table && r.dst == dst.parse::<IpNet>().unwrap())
                .unwrap();
            assert_eq!(r.src, Some("10.6.0.5".parse().unwrap()));
        }
        // naming a NIC not attached yet is fine: net1's call with net2 as default moves nothing of eth0.
        let c = cfg(json!({"podDefaultRouteNic": "net2"}));
        let p = plan_add(&c, &i);
        assert!(!p.moves.iter().any(|r| r.oif == Some(2)));
    }

    #[test]
    fn overlay_later_nic_goes_through_eth0() {
        let c = cfg(json!({"serviceCIDR": ["10.233.0.0/18"]}));
        let mut i = later_inputs(Layout::OverlayLater);
        // ptp-style eth0: /32 address, gateway 10.244.0.1 on-link.
        i.pod.links[1].kind = Some("veth".into());
        i.pod.links.retain(|l| l.name != "veth0");
        i.pod.routes.retain(|r| r.oif != Some(2));
        i.pod.routes.push(route(
            "10.244.0.1/32",
            TABLE_MAIN,
            2,
            None,
            RTPROT_BOOT,
            Scope::Link,
        ));
        i.pod.routes.push(route(
            "0.0.0.0/0",
            TABLE_MAIN,
            2,
            Some("10.244.0.1"),
            RTPROT_BOOT,
            Scope::Universe,
        ));
        i.veth = None;
        i.overlay_peer = Some(("vethpeer".into(), [2, 9, 9, 9, 9, 9]));
        let p = plan_add(&c, &i);
        let t = TABLE_FIRST_NIC;
        assert!(has_route(&p, Side::Pod, "10.244.0.1/32", t, "eth0", None));
        assert!(has_route(
            &p,
            Side::Pod,
            "10.6.0.2/32",
            t,
            "eth0",
            Some("10.244.0.1")
        ));
        assert!(has_route(
            &p,
            Side::Pod,
            "10.233.0.0/18",
            t,
            "eth0",
            Some("10.244.0.1")
        ));
        assert!(!p.reply_mark);
        assert!(has_route(
            &p,
            Side::Host,
            "10.7.0.5/32",
            500,
            "vethpeer",
            None
        ));
        assert!(p
            .neighbours
            .iter()
            .any(|n| n.side == Side::Host && n.mac == [2, 9, 9, 9, 9, 9]));
        // podDefaultRouteNic=net1 in overlay: eth0's default goes to table 100.
        let c = cfg(json!({"podDefaultRouteNic": "net1"}));
        let p = plan_add(&c, &i);
        assert!(has_route(
            &p,
            Side::Pod,
            "0.0.0.0/0",
            TABLE_REPLY,
            "eth0",
            Some("10.244.0.1")
        ));
        assert!(has_route(
            &p,
            Side::Pod,
            "10.244.0.1/32",
            TABLE_REPLY,
            "eth0",
            None
        ));
        assert!(has_route(
            &p,
            Side::Pod,
            "0.0.0.0/0",
            TABLE_MAIN,
            "net1",
            Some("10.7.0.1")
        ));
    }

    /// Overlay pod: ptp-style eth0 (10.244.0.5/32 via 10.244.0.1), net1 macvlan.
    fn overlay_inputs() -> Inputs {
        let mut i = later_inputs(Layout::OverlayLater);
        i.pod.links[1].kind = Some("veth".into());
        i.pod.links.retain(|l| l.name != "veth0");
        i.pod.routes.retain(|r| r.oif != Some(2));
        i.pod.addrs.retain(|(idx, _)| *idx != 2);
        i.pod.addrs.push((2, "10.244.0.5/32".parse().unwrap()));
        for (dst, gw) in [("10.244.0.1/32", None), ("0.0.0.0/0", Some("10.244.0.1"))] {
            let scope = if gw.is_some() {
                Scope::Universe
            } else {
                Scope::Link
            };
            i.pod
                .routes
                .push(route(dst, TABLE_MAIN, 2, gw, RTPROT_BOOT, scope));
        }
        i.veth = None;
        i.overlay_peer = Some(("vethpeer".into(), [2, 9, 9, 9, 9, 9]));
        i
    }

    /// Bug found by the overlay lab: the node address 10.6.0.2 sits in net1's
    /// subnet 10.6.0.0/16, so unsourced traffic to it left through net1 (a
    /// macvlan cannot reach its parent's address); and with
    /// podDefaultRouteNic=net1, Services left through net1's gateway.
    #[test]
    fn overlay_later_nic_puts_cluster_routes_in_main_too() {
        let c = cfg(json!({"serviceCIDR": ["10.233.0.0/18"], "overlayPodCIDR": ["10.244.0.0/16"]}));
        let mut i = overlay_inputs();
        i.ips = vec!["10.6.0.5/16".parse().unwrap()];
        i.gateways = vec!["10.6.0.1".parse().unwrap()];
        i.pod.routes.push(route(
            "10.6.0.0/16",
            TABLE_MAIN,
            3,
            None,
            RTPROT_KERNEL,
            Scope::Link,
        ));
        for p in [
            plan_add(&c, &i),
            plan_add(
                &cfg(
                    json!({"serviceCIDR": ["10.233.0.0/18"], "overlayPodCIDR": ["10.244.0.0/16"], "podDefaultRouteNic": "net1"}),
                ),
                &i,
            ),
        ] {
            for dst in ["10.6.0.2/32", "10.233.0.0/18", "10.244.0.0/16"] {
                assert!(
                    has_route(&p, Side::Pod, dst, TABLE_MAIN, "eth0", Some("10.244.0.1")),
                    "{dst} in main: {:#?}",
                    p.routes
                );
            }
            // main keeps the overlay CNI's own gateway route (and its src).
            assert!(!has_route(
                &p,
                Side::Pod,
                "10.244.0.1/32",
                TABLE_MAIN,
                "eth0",
                None
            ));
            assert!(has_route(
                &p,
                Side::Pod,
                "10.244.0.1/32",
                TABLE_FIRST_NIC,
                "eth0",
                None
            ));
        }
    }

    /// A third NIC after podDefaultRouteNic moved eth0's default to table 100
    /// still gets cluster routes through eth0's gateway.
    #[test]
    fn overlay_third_nic_finds_eth0_gateway_in_table_100() {
        let c = cfg(json!({"serviceCIDR": ["10.233.0.0/18"]}));
        let mut i = overlay_inputs();
        for r in i.pod.routes.iter_mut() {
            if r.oif == Some(2) && r.dst.prefix_len() == 0 {
                r.table = TABLE_REPLY;
            }
        }
        let p = plan_add(&c, &i);
        let t = TABLE_FIRST_NIC;
        assert!(has_route(
            &p,
            Side::Pod,
            "10.233.0.0/18",
            t,
            "eth0",
            Some("10.244.0.1")
        ));
        assert!(has_route(
            &p,
            Side::Pod,
            "10.6.0.2/32",
            t,
            "eth0",
            Some("10.244.0.1")
        ));
    }

    #[test]
    fn tune_pod_routes_off_leaves_pod_routes() {
        let p = plan_add(
            &cfg(json!({"tunePodRoutes": false})),
            &later_inputs(Layout::UnderlayLater),
        );
        assert!(p.routes.iter().all(|r| r.side == Side::Host));
        assert!(p.moves.is_empty());
    }

    #[test]
    fn tuning_applies_to_every_layout() {
        let c = cfg(json!({"podRPFilter": 2, "txQueueLen": 3000}));
        let p = plan_add(&c, &later_inputs(Layout::OverlayLater));
        assert!(p
            .sysctls
            .iter()
            .any(|s| s.key == "net/ipv4/conf/all/rp_filter" && s.value == "2"));
        assert!(p
            .sysctls
            .iter()
            .any(|s| s.key == "net/ipv4/conf/net1/rp_filter"));
        assert_eq!(p.txqlen, Some(("net1".into(), 3000)));
        let p = plan_add(
            &cfg(json!({"podRPFilter": -1})),
            &later_inputs(Layout::OverlayLater),
        );
        assert!(p.sysctls.is_empty());
    }
}
