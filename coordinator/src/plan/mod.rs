//! What one ADD changes, computed as plain data from what the pod and the
//! host look like. No kernel access here: unit tests call these functions
//! with hand-made views and compare the plans.
//!
//! Table ids and rule priorities come from the config ([`Ids`]; defaults in
//! brackets, documented in the README):
//! - pod `podReplyRulePriority` (900): `fwmark REPLY_MARK lookup
//!   podReplyTable` (100): replies of connections that entered through
//!   `veth0` (kubelet probes, NodePort/Service traffic) leave through `veth0`;
//! - pod `podRulePriority` (1000): `from <NIC address> lookup <NIC table>`,
//!   NIC tables the lowest free ids from `podRuleTableFirst` (101) up;
//! - both before `main` (32766), the fwmark rule first;
//! - host `hostRulePriority` (1000): `from all lookup hostRuleTable` (500).

mod first_table;
mod host;
mod later;
mod teardown;
mod types;
mod underlay;
mod verify;

#[cfg(test)]
mod exact;
#[cfg(test)]
mod follow;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::IpAddr;

use cni::netlink::{Family, Route, Rule, Scope, RTPROT_KERNEL};
use ipnet::IpNet;

use crate::config::{Config, Ids, PolicyRoute};

pub use later::free_table;
use later::later_nic;
pub use teardown::{sweep, teardown, teardown_without_plan, Teardown};
pub use types::*;
use underlay::underlay_first;
pub use verify::{drift, metric_of, verify, Observed};

pub fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

pub(super) fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

pub(super) fn default_net(f: Family) -> IpNet {
    match f {
        Family::V4 => "0.0.0.0/0".parse().expect("valid"),
        Family::V6 => "::/0".parse().expect("valid"),
    }
}

pub(super) fn families(ips: &[IpNet]) -> BTreeSet<Family> {
    ips.iter().map(Family::of_net).collect()
}

pub(super) fn first_of(ips: &[IpAddr], f: Family) -> Option<IpAddr> {
    ips.iter().copied().find(|ip| Family::of(ip) == f)
}

pub(super) fn src_for(ips: &[IpNet], f: Family) -> Option<IpAddr> {
    ips.iter()
        .map(|n| n.addr())
        .find(|a| Family::of(a) == f && !is_link_local(a))
}

pub(super) fn from_rules(ips: &[IpNet], table: u32, priority: u32) -> Vec<(Side, Rule)> {
    ips.iter()
        .filter(|ip| !is_link_local(&ip.addr()))
        .map(|ip| {
            let mut r = Rule::new(Family::of_net(ip), priority, table);
            r.src = Some(host_net(ip.addr()));
            (Side::Pod, r)
        })
        .collect()
}

/// The current NIC's addresses: prevResult's, then those the kernel
/// configured on it from a router advertisement (SLAAC). The runtime never
/// hears of the latter, but they answer connections all the same, so they
/// get `from` rules into the NIC's table like the former.
pub(super) fn nic_ips(inp: &Inputs) -> Vec<IpNet> {
    let mut ips = inp.ips.clone();
    let Some(nic) = inp.pod.link(&inp.ifname) else {
        return ips;
    };
    for (_, a) in inp.pod.slaac.iter().filter(|(i, _)| *i == nic.index) {
        if !ips.iter().any(|ip| ip.addr() == a.addr()) {
            ips.push(*a);
        }
    }
    ips
}

/// The per-NIC sysctl that keeps a router advertisement's default route out
/// of `main` (the kernel puts it nowhere else).
pub const RA_DEFRTR: &str = "accept_ra_defrtr";

/// The pod's reply-mark rule of `f`.
pub(super) fn fwmark_rule(ids: &Ids, f: Family) -> Rule {
    let mut r = Rule::new(f, ids.reply_priority, ids.reply_table);
    r.fwmark = Some(REPLY_MARK);
    r.fwmask = Some(0xffff_ffff);
    r
}

/// Is `r` a rule a plan of ours makes in the pod, by its shape: the
/// reply-mark rule, or a `from` rule (one address, nothing else matched) at
/// our priority into a table of ours. The address is not asked for: a rule
/// of an address the pod no longer holds is a leftover of ours, which DEL's
/// sweep removes. A rule of another owner with exactly this shape cannot be
/// told from ours.
pub fn is_our_rule(ids: &Ids, r: &Rule) -> bool {
    *r == fwmark_rule(ids, r.family) || is_our_from_rule(ids, r)
}

/// The `from` half of [`is_our_rule`]: what DEL's sweep may take as a
/// leftover `from` rule of ours.
pub fn is_our_from_rule(ids: &Ids, r: &Rule) -> bool {
    r.priority == ids.from_priority
        && r.src.is_some_and(|s| s.prefix_len() == s.max_prefix_len())
        && r.dst.is_none()
        && r.fwmark.is_none()
        && r.iif.is_none()
        && r.oif.is_none()
        && ids.is_pod_table(r.table)
}

/// Installed by the coordinator (any release that marks its routes).
pub fn is_ours(r: &Route) -> bool {
    r.protocol == ROUTE_PROTOCOL
}

pub(super) fn is_connected(r: &Route) -> bool {
    r.protocol == RTPROT_KERNEL && r.gateway.is_none()
}

pub(super) fn policy_routes(routes: &[PolicyRoute], table: u32, dev: &str) -> Vec<RouteSpec> {
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
            metric: None,
            expires: None,
            onlink: false,
            nh_id: None,
        })
        .collect()
}

pub(super) fn copy_into(r: &Route, table: u32, dev: &str) -> RouteSpec {
    RouteSpec {
        side: Side::Pod,
        dst: r.dst,
        table,
        dev: dev.to_string(),
        via: r.gateway,
        src: r.prefsrc,
        scope: r.scope,
        metric: r.metric,
        expires: r.expires,
        onlink: r.onlink,
        // One nexthop of a group goes into a NIC's table on its own.
        nh_id: r.nh_id.filter(|_| !r.multipath),
    }
}

/// Tuning of the current NIC that every layout gets.
fn tuning(cfg: &Config, inp: &Inputs, plan: &mut Plan) {
    if let Some(v) = cfg.pod_rp_filter {
        for dev in ["all", inp.ifname.as_str()] {
            plan.sysctls.push(SysctlSpec::new(
                Side::Pod,
                format!("net/ipv4/conf/{dev}/rp_filter"),
                &v.to_string(),
            ));
        }
    }
    if cfg.tx_queue_len > 0 {
        plan.txqlen = Some((inp.ifname.clone(), cfg.tx_queue_len));
    }
    plan.mac = cfg
        .pod_mac_prefix
        .and_then(|p| crate::macprefix::mac_for(p, &inp.ips))
        .map(|m| (inp.ifname.clone(), m));
    // Without detection the kernel announces the new MAC (ADD turns
    // `arp_notify` on before changing it) and keeps announcing it on every
    // link-up; with detection it is only held off during the probes.
    let detecting = cfg.detect_ip_conflict || cfg.detect_gateway;
    if plan.mac.is_some() && !detecting && inp.ips.iter().any(|n| n.addr().is_ipv4()) {
        plan.sysctls.push(SysctlSpec::new(
            Side::Pod,
            format!("net/ipv4/conf/{}/arp_notify", inp.ifname),
            "1",
        ));
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
    // Two layout rules may want the same route (the gateway's on-link route
    // copied from main and planned for the table): install it once.
    let mut seen = std::collections::HashSet::new();
    plan.routes.retain(|r| seen.insert(r.clone()));
    plan
}
