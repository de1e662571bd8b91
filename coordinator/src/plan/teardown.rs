//! What DEL takes back, as data: derived from the plan ADD applies (so a
//! route added to the planner is removed without DEL knowing about it),
//! plus what any release left that the plan no longer names, found by our
//! marks (the configured rule priority and our rules' shape, route
//! protocol). No kernel access here.

use std::collections::BTreeSet;
use std::net::IpAddr;

use cni::netlink::{Family, Route, Rule, RTPROT_BOOT, TABLE_MAIN};
use ipnet::IpNet;

use super::{
    fwmark_rule, host_net, is_link_local, is_our_from_rule, is_ours, Inputs, NeighSpec, Plan,
    PodView, RouteSpec, Side,
};
use super::{nic_ips, RA_DEFRTR};
use crate::config::{Config, Ids};

/// Everything one DEL removes, in the order the executor removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Teardown {
    /// Pod rules, removed first: nothing leads into a table being emptied.
    pub rules: Vec<Rule>,
    /// Pod tables emptied in both families of every route of ours
    /// (protocol 222): a NIC's table holds whatever any release copied into
    /// it, not only what this plan names. Another owner's routes stay.
    pub tables: BTreeSet<u32>,
    /// Single routes in tables the NIC shares (pod `main`, the host table),
    /// matched by destination, table, device and gateway.
    pub routes: Vec<RouteSpec>,
    /// Pod routes of ours found by their protocol, removed exactly as dumped.
    pub stale_routes: Vec<Route>,
    pub neighbours: Vec<NeighSpec>,
    /// Routes put back into pod `main`: the first NIC's default that this
    /// NIC's ADD took out of it (`podDefaultRouteNic`).
    pub restores: Vec<Route>,
    /// The nftables reply-mark table of the pod.
    pub reply_mark: bool,
    /// The veth pair ADD created (host end, pod end), deleted last; every
    /// route and neighbour on it goes with it.
    pub veth: Option<(String, String)>,
    /// Pod sysctls of a NIC that outlives DEL, as (key, source): each gets
    /// the value of its netns's `conf/default` key, what the NIC was created
    /// with. The fallback for an attachment without a record of the value
    /// its ADD found.
    pub sysctl_defaults: Vec<(String, String)>,
}

/// `from` rule sources as the kernel stores them.
fn sources(ips: &[IpNet]) -> Vec<IpNet> {
    ips.iter()
        .filter(|ip| !is_link_local(&ip.addr()))
        .map(|ip| host_net(ip.addr()))
        .collect()
}

fn from_rule_of(ids: &Ids, r: &Rule, srcs: &[IpNet]) -> bool {
    r.priority == ids.from_priority && r.src.is_some_and(|s| srcs.contains(&s))
}

/// Is one of `rules` the `from` rule of a NIC other than those whose sources
/// are `not`, for an address the pod holds? Rules of addresses gone are
/// leftovers, not NICs.
fn later_nic_remains<'a>(
    ids: &Ids,
    rules: impl IntoIterator<Item = &'a Rule>,
    pod: &PodView,
    not: &[&[IpNet]],
) -> bool {
    let live: Vec<IpAddr> = pod.addrs.iter().map(|(_, a)| a.addr()).collect();
    rules.into_iter().any(|r| {
        is_our_from_rule(ids, r)
            && r.src.is_some_and(|s| {
                not.iter().all(|srcs| !srcs.contains(&s)) && live.contains(&s.addr())
            })
    })
}

/// What DEL removes for the NIC whose ADD `plan` describes (the plan of the
/// same inputs, as CHECK and a repeated ADD compute it). A later NIC shares
/// the first NIC's table, `from` rules and cluster routes with every other
/// later NIC: they go with the last one.
pub fn teardown(cfg: &Config, plan: &Plan, inp: &Inputs) -> Teardown {
    let mine = sources(&nic_ips(inp));
    let pod_rules: Vec<&Rule> = plan
        .rules
        .iter()
        .filter(|(side, _)| *side == Side::Pod)
        .map(|(_, r)| r)
        .collect();
    let (own, shared): (Vec<&Rule>, Vec<&Rule>) = pod_rules.into_iter().partition(|r| {
        inp.layout.is_first() || r.src.is_none() || from_rule_of(&cfg.ids, r, &mine)
    });
    let first_srcs: Vec<IpNet> = shared.iter().filter_map(|r| r.src).collect();
    let last = !later_nic_remains(&cfg.ids, &inp.pod.rules, &inp.pod, &[&mine, &first_srcs]);
    let mut td = Teardown::default();
    for r in own
        .into_iter()
        .chain(shared.iter().copied().filter(|_| last))
    {
        if !td.rules.contains(r) {
            td.rules.push(r.clone());
        }
        td.tables.insert(r.table);
    }
    // The kernel removes what is on a deleted link with it.
    let gone_with_veth = |side: Side, dev: &str| {
        plan.veth.as_ref().is_some_and(|v| match side {
            Side::Pod => dev == v.pod,
            Side::Host => dev == v.host,
        })
    };
    for r in plan.routes.iter().chain(&plan.policy) {
        let flushed = r.side == Side::Pod && td.tables.contains(&r.table);
        let shared_route = r.side == Side::Pod && !inp.layout.is_first() && r.dev != inp.ifname;
        if flushed || gone_with_veth(r.side, &r.dev) || (shared_route && !last) {
            continue;
        }
        if !td.routes.contains(r) {
            td.routes.push(r.clone());
        }
    }
    td.neighbours = plan
        .neighbours
        .iter()
        .filter(|n| !gone_with_veth(n.side, &n.dev))
        .cloned()
        .collect();
    if cfg.default_route_nic() == inp.ifname && !inp.layout.is_first() {
        td.restores = moved_defaults(&cfg.ids, &inp.pod, &cfg.pod_default_cni_nic, &first_srcs);
    }
    td.reply_mark = plan.reply_mark;
    td.veth = plan.veth.as_ref().map(|v| (v.host.clone(), v.pod.clone()));
    td.sysctl_defaults = plan
        .sysctls
        .iter()
        .filter(|s| s.side == Side::Pod)
        .filter_map(|s| default_of(&s.key))
        .collect();
    td
}

/// `(key, net/ipv6/conf/default/<name>)` for a NIC's `accept_ra_defrtr`.
fn default_of(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix("net/ipv6/conf/")?;
    let (dev, name) = rest.split_once('/')?;
    (name == RA_DEFRTR && dev != "default" && dev != "all")
        .then(|| (key.to_string(), format!("net/ipv6/conf/default/{name}")))
}

/// The first NIC's defaults that live in its own table but not in `main`:
/// `podDefaultRouteNic` took them out of `main`; they go back as the main
/// plugin's routes.
fn moved_defaults(ids: &Ids, pod: &PodView, first: &str, first_srcs: &[IpNet]) -> Vec<Route> {
    let Some(eth0) = pod.link(first) else {
        return Vec::new();
    };
    let is_default = |r: &&Route, table: u32| {
        r.table == table && r.dst.prefix_len() == 0 && r.oif == Some(eth0.index)
    };
    let tables: BTreeSet<u32> = pod
        .rules
        .iter()
        .filter(|r| from_rule_of(ids, r, first_srcs))
        .map(|r| r.table)
        .collect();
    let mut out: Vec<Route> = Vec::new();
    for t in tables {
        for d in pod.routes.iter().filter(|r| is_default(r, t)) {
            let in_main = pod
                .routes
                .iter()
                .any(|m| is_default(&m, TABLE_MAIN) && m.family() == d.family());
            let mut back = d.clone();
            back.table = TABLE_MAIN;
            back.protocol = RTPROT_BOOT;
            if !in_main && !out.contains(&back) {
                out.push(back);
            }
        }
    }
    out
}

/// What DEL removes when the plan cannot be computed (the NIC or the pod's
/// netns is already gone, or the pod no longer has the layout it was given):
/// what a NIC of this kind owns, found by name and mark. `host_dev`: the
/// host link the NIC's addresses are routed through, when it still exists.
pub fn teardown_without_plan(
    cfg: &Config,
    ifname: &str,
    ips: &[IpNet],
    host_dev: Option<&str>,
    veth: Option<(String, String)>,
) -> Teardown {
    let mut td = Teardown::default();
    if let Some(dev) = host_dev {
        for ip in ips.iter().filter(|ip| !is_link_local(&ip.addr())) {
            td.routes.push(RouteSpec {
                side: Side::Host,
                scope: cni::netlink::Scope::Link,
                ..RouteSpec::pod(host_net(ip.addr()), cfg.ids.host_table, dev)
            });
            td.neighbours.push(NeighSpec {
                side: Side::Host,
                dev: dev.to_string(),
                ip: ip.addr(),
                mac: [0; 6],
            });
        }
    }
    if ifname == cfg.pod_default_cni_nic {
        for f in [Family::V4, Family::V6] {
            td.rules.push(fwmark_rule(&cfg.ids, f));
        }
        td.tables.insert(cfg.ids.reply_table);
        td.reply_mark = true;
        td.veth = veth;
    }
    td
}

/// Leftovers of an ADD or DEL killed between two requests, by any release:
/// `from` rules of ours (by priority and shape, [`is_our_from_rule`]) of
/// addresses the pod no longer holds (their tables emptied), tables holding
/// routes of ours that no remaining rule leads to (the reply table
/// included), and, once no later NIC remains, our routes in `main` through
/// the first NIC of an overlay pod (the cluster routes its later NICs put
/// there; an underlay pod's first NIC has its own `policyRoutes` there).
pub fn sweep(cfg: &Config, pod: &PodView, td: &Teardown) -> Teardown {
    let live: Vec<IpAddr> = pod.addrs.iter().map(|(_, a)| a.addr()).collect();
    let remaining: Vec<&Rule> = pod.rules.iter().filter(|r| !td.rules.contains(r)).collect();
    let mut out = Teardown::default();
    for r in &remaining {
        if is_our_from_rule(&cfg.ids, r) && r.src.is_some_and(|s| !live.contains(&s.addr())) {
            out.rules.push((*r).clone());
            out.tables.insert(r.table);
        }
    }
    let led_to: BTreeSet<u32> = remaining
        .iter()
        .filter(|r| !out.rules.contains(r))
        .map(|r| r.table)
        .collect();
    for r in pod.routes.iter().filter(|r| is_ours(r)) {
        let orphan_table = r.table != TABLE_MAIN && !led_to.contains(&r.table);
        if orphan_table && !td.tables.contains(&r.table) {
            out.tables.insert(r.table);
        }
    }
    let first = pod.link(&cfg.pod_default_cni_nic);
    let first_srcs: Vec<IpNet> = first
        .map(|l| sources(&pod.addrs_of(l.index)))
        .unwrap_or_default();
    let later_remains = later_nic_remains(&cfg.ids, remaining.iter().copied(), pod, &[&first_srcs]);
    let overlay = pod.link(crate::names::POD_VETH).is_none();
    if let (false, true, Some(eth0)) = (later_remains, overlay, first) {
        out.stale_routes = pod
            .routes
            .iter()
            .filter(|r| r.table == TABLE_MAIN && is_ours(r) && r.oif == Some(eth0.index))
            .cloned()
            .collect();
    }
    out
}

impl Teardown {
    /// Add `other`'s items that are not already here.
    pub fn merge(&mut self, other: Teardown) {
        for r in other.rules {
            if !self.rules.contains(&r) {
                self.rules.push(r);
            }
        }
        self.tables.extend(other.tables);
        for r in other.routes {
            if !self.routes.contains(&r) {
                self.routes.push(r);
            }
        }
        for r in other.stale_routes {
            if !self.stale_routes.contains(&r) {
                self.stale_routes.push(r);
            }
        }
        self.neighbours.extend(other.neighbours);
        self.restores.extend(other.restores);
        self.reply_mark |= other.reply_mark;
        self.veth = self.veth.take().or(other.veth);
        for s in other.sysctl_defaults {
            if !self.sysctl_defaults.contains(&s) {
                self.sysctl_defaults.push(s);
            }
        }
    }
}
