//! Applies a [`Plan`] and undoes it when a step fails, so a failed ADD
//! leaves nothing behind.

use std::collections::HashMap;
use std::net::IpAddr;

use cni::netlink::{Mac, Netlink, NlError, Route, Rule, VethSpec};
use cni::netns::{sysctl_set, NetNs};
use cni::{Error, Result};
use ipnet::IpNet;

use crate::names::format_mac;
use crate::nftables::{self, ReplyMark};
use crate::plan::{Move, Plan, RouteSpec, Side, SysctlSpec, REPLY_MARK, ROUTE_PROTOCOL};

/// The two netlink sockets of a call and the pod's netns.
pub struct Kernel<'a> {
    pub host: &'a Netlink,
    pub pod: &'a Netlink,
    pub pod_ns: &'a NetNs,
}

impl Kernel<'_> {
    pub fn nl(&self, side: Side) -> &Netlink {
        match side {
            Side::Host => self.host,
            Side::Pod => self.pod,
        }
    }
}

/// What to do to take back one applied step.
#[derive(Debug)]
enum Undo {
    DelLink(String),
    DelRoute(Side, Route),
    /// Put a moved route back: a nexthop back into its multipath route.
    UnMove(Move),
    DelRule(Side, Rule),
    DelNeigh(Side, u32, IpAddr),
    DelAddr(u32, IpNet),
    RemoveReplyMark,
    /// Give a pod link its MAC back (`podMACPrefix`).
    SetMac(u32, Mac),
    /// Write a pod sysctl's old value back.
    PodSysctl {
        key: String,
        old: String,
    },
}

/// Every change of one ADD, from the first (a sysctl, the MAC) to the last,
/// with how to take it back. Dropped without [`Journal::commit`] (an error
/// returned, or a panic unwinding through the ADD) it undoes them all, last
/// first.
pub struct Journal<'a> {
    k: &'a Kernel<'a>,
    steps: Vec<Undo>,
}

impl<'a> Journal<'a> {
    pub fn new(k: &'a Kernel<'a>) -> Journal<'a> {
        Journal {
            k,
            steps: Vec::new(),
        }
    }

    /// `key` in the pod was changed from `old`.
    pub fn pod_sysctl(&mut self, key: String, old: String) {
        self.steps.push(Undo::PodSysctl { key, old });
    }

    /// Link `index` in the pod had MAC `old`.
    pub fn mac(&mut self, index: u32, old: Mac) {
        self.steps.push(Undo::SetMac(index, old));
    }

    /// Put pod sysctl `key` back now (the change was only needed for a
    /// while) and forget it.
    pub fn restore_pod_sysctl(&mut self, key: &str) {
        let at = self
            .steps
            .iter()
            .position(|u| matches!(u, Undo::PodSysctl { key: k, .. } if k == key));
        if let Some(at) = at {
            let step = self.steps.remove(at);
            undo(self.k, step);
        }
    }

    /// The ADD succeeded: keep every change.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Journal<'_> {
    fn drop(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        tracing::warn!("ADD failed; undoing {} steps", self.steps.len());
        for step in std::mem::take(&mut self.steps).into_iter().rev() {
            undo(self.k, step);
        }
    }
}

/// Resolves link names to indices once per side.
struct Links<'a> {
    k: &'a Kernel<'a>,
    cache: HashMap<(Side, String), u32>,
}

impl<'a> Links<'a> {
    fn index(&mut self, side: Side, name: &str) -> Result<u32> {
        if let Some(i) = self.cache.get(&(side, name.to_string())) {
            return Ok(*i);
        }
        let link = self
            .k
            .nl(side)
            .link(name)?
            .ok_or_else(|| Error::kernel(format!("{side:?} link {name}"), "not found"))?;
        self.cache.insert((side, name.to_string()), link.index);
        Ok(link.index)
    }
}

/// Apply `plan`, each step recorded in `journal`. `uplinks`: host devices
/// where stale neighbour entries for the pod's addresses may linger.
pub fn apply(k: &Kernel, plan: &Plan, uplinks: &[u32], journal: &mut Journal) -> Result<()> {
    let res = apply_steps(k, plan, uplinks, &mut journal.steps);
    if let Err(e) = &res {
        tracing::warn!("ADD failed: {e}");
    }
    res
}

fn route_of(links: &mut Links, r: &RouteSpec) -> Result<Route> {
    Ok(route_spec(r, links.index(r.side, &r.dev)?))
}

/// The route `r` names, out of link `oif`, as we install it.
pub fn route_spec(r: &RouteSpec, oif: u32) -> Route {
    let mut route = Route::new(r.dst, r.table);
    route.oif = Some(oif);
    route.gateway = r.via;
    route.prefsrc = r.src;
    route.scope = r.scope;
    route.metric = r.metric;
    route.expires = r.expires;
    route.onlink = r.onlink;
    route.nh_id = r.nh_id;
    route.protocol = ROUTE_PROTOCOL;
    route
}

pub fn describe(r: &RouteSpec) -> String {
    let via = r.via.map(|v| format!(" via {v}")).unwrap_or_default();
    format!(
        "{:?} route {}{} dev {} table {}",
        r.side, r.dst, via, r.dev, r.table
    )
    .to_lowercase()
}

fn apply_steps(k: &Kernel, plan: &Plan, uplinks: &[u32], journal: &mut Vec<Undo>) -> Result<()> {
    let mut links = Links {
        k,
        cache: HashMap::new(),
    };
    // First: the nf_tables commit leaves an RCU grace period behind (see
    // nftables::in_netns) that then elapses while the steps below run. The
    // table only matches packets entering through veth0, so it may exist
    // before veth0 does, and the pod runs nothing during ADD.
    if plan.reply_mark {
        nftables::install(
            k.pod_ns,
            &ReplyMark {
                iif: crate::names::POD_VETH.into(),
                mark: REPLY_MARK,
            },
        )?;
        journal.push(Undo::RemoveReplyMark);
    }
    if let Some(v) = plan.veth.as_ref().filter(|v| v.create) {
        k.host
            .add_veth(&VethSpec {
                name: v.host.clone(),
                mac: Some(v.host_mac),
                peer_name: v.pod.clone(),
                peer_mac: Some(v.pod_mac),
                mtu: Some(v.mtu),
                peer_netns: Some(k.pod_ns),
            })
            .map_err(|e| Error::from(e).context(format!("creating veth {}/{}", v.host, v.pod)))?;
        journal.push(Undo::DelLink(v.host.clone()));
    }
    write_sysctls(k, plan)?;
    if let Some(v) = &plan.veth {
        for (side, name) in [(Side::Host, &v.host), (Side::Pod, &v.pod)] {
            let i = links.index(side, name)?;
            k.nl(side)
                .set_link_up(i)
                .map_err(|e| Error::from(e).context(format!("setting {name} up")))?;
        }
    }
    if let Some((dev, qlen)) = &plan.txqlen {
        let i = links.index(Side::Pod, dev)?;
        k.pod
            .set_link_txqlen(i, *qlen)
            .map_err(|e| Error::from(e).context(format!("txqueuelen of {dev}")))?;
    }
    for (dev, addr) in &plan.addresses {
        let i = links.index(Side::Pod, dev)?;
        match k.pod.add_address(i, *addr, true) {
            Ok(()) => journal.push(Undo::DelAddr(i, *addr)),
            Err(NlError::Exists) => {}
            Err(e) => return Err(Error::from(e).context(format!("adding {addr} to {dev}"))),
        }
    }
    for n in plan.neighbours.iter().filter(|n| n.side == Side::Pod) {
        let i = links.index(n.side, &n.dev)?;
        k.pod.set_permanent_neighbour(i, n.ip, n.mac).map_err(|e| {
            Error::from(e).context(format!(
                "neighbour {} lladdr {} dev {}",
                n.ip,
                format_mac(&n.mac),
                n.dev
            ))
        })?;
    }
    let (pod_routes, host_routes): (Vec<&RouteSpec>, Vec<&RouteSpec>) =
        plan.routes.iter().partition(|r| r.side == Side::Pod);
    // Copies first, then the rules that lead to them, then the moves: main
    // never lacks a route in between, and a process killed after a move
    // leaves the rule by which DEL finds the moved route's copy.
    for r in &pod_routes {
        add_route(&mut links, r, journal)?;
    }
    for (side, rule) in plan.rules.iter().filter(|(s, _)| *s == Side::Pod) {
        add_rule(k, *side, rule, journal)?;
    }
    for m in &plan.moves {
        match move_out(k.pod, m) {
            Ok(()) => journal.push(Undo::UnMove(m.clone())),
            Err(NlError::NotFound) => {}
            Err(e) => {
                return Err(
                    Error::from(e).context(format!("moving route {} out of main", m.route.dst))
                )
            }
        }
    }
    for r in &host_routes {
        add_route(&mut links, r, journal)?;
    }
    for n in plan.neighbours.iter().filter(|n| n.side == Side::Host) {
        let i = links.index(n.side, &n.dev)?;
        // A stale entry elsewhere would keep the node talking to an old MAC.
        for up in uplinks.iter().filter(|u| **u != i) {
            match k.host.neighbour(*up, n.ip) {
                Ok(Some(_)) => match k.host.del_neighbour(*up, n.ip) {
                    Ok(()) | Err(NlError::NotFound) => {}
                    Err(e) => tracing::warn!("removing stale neighbour {} on {up}: {e}", n.ip),
                },
                Ok(None) | Err(NlError::NotFound) => {}
                Err(e) => tracing::warn!("looking up neighbour {} on {up}: {e}", n.ip),
            }
        }
        k.host
            .set_permanent_neighbour(i, n.ip, n.mac)
            .map_err(|e| {
                Error::from(e).context(format!("host neighbour {} dev {}", n.ip, n.dev))
            })?;
        journal.push(Undo::DelNeigh(Side::Host, i, n.ip));
    }
    // policyRoutes last but one: a bad gateway fails here and the journal
    // takes the rest back.
    for r in &plan.policy {
        add_route(&mut links, r, journal)?;
    }
    // The host rule is shared by every pod, so it is never undone; added last,
    // a failed first ADD on a node leaves no rule behind.
    for (side, rule) in plan.rules.iter().filter(|(s, _)| *s == Side::Host) {
        add_rule(k, *side, rule, journal)?;
    }
    Ok(())
}

fn add_route(links: &mut Links, r: &RouteSpec, journal: &mut Vec<Undo>) -> Result<()> {
    let route = route_of(links, r)?;
    let nl = links.k.nl(r.side);
    match nl.add_route(&route) {
        Ok(()) => {
            journal.push(Undo::DelRoute(r.side, route));
            Ok(())
        }
        // A repeated ADD finds its own routes: make them match the plan.
        Err(NlError::Exists) => nl
            .replace_route(&route)
            .map_err(|e| Error::from(e).context(describe(r))),
        Err(e) => Err(Error::from(e).context(describe(r))),
    }
}

fn add_rule(k: &Kernel, side: Side, rule: &Rule, journal: &mut Vec<Undo>) -> Result<()> {
    match k.nl(side).add_rule(rule) {
        // The host rule is shared by every pod: never journal it for removal.
        Ok(()) if side == Side::Pod => {
            journal.push(Undo::DelRule(side, rule.clone()));
            Ok(())
        }
        Ok(()) | Err(NlError::Exists) => Ok(()),
        Err(e) => Err(Error::from(e).context(format!(
            "{side:?} rule priority {} lookup {}",
            rule.priority, rule.table
        ))),
    }
}

/// Take `m.route` out of `main`. An IPv6 multipath route is a list of
/// sibling routes: deleting by gateway removes exactly that nexthop. IPv4
/// keeps one object (and a nexthop group is one object in both families):
/// the remaining nexthops are written back in its place.
fn move_out(pod: &Netlink, m: &Move) -> std::result::Result<(), NlError> {
    let r = &m.route;
    let whole_object = r.family() == cni::netlink::Family::V4 || r.nh_id.is_some();
    if r.multipath && whole_object && !m.others.is_empty() {
        let others: Vec<Route> = m.others.iter().map(plain_hop).collect();
        return pod.replace_nexthops(&others);
    }
    pod.del_route(&plain_hop(r))
}

/// One nexthop as a route of its own (no group id: its device and gateway).
fn plain_hop(r: &Route) -> Route {
    let mut one = r.clone();
    if r.multipath {
        one.nh_id = None;
    }
    one
}

fn undo_move(pod: &Netlink, m: &Move) -> std::result::Result<(), NlError> {
    let r = &m.route;
    if !r.multipath || m.others.is_empty() {
        return pod.add_route(r);
    }
    if r.nh_id.is_some() {
        let mut group = r.clone();
        group.multipath = false;
        return pod.replace_route(&group);
    }
    match r.family() {
        cni::netlink::Family::V6 => pod.append_route(r),
        cni::netlink::Family::V4 => {
            let mut all = m.others.clone();
            all.push(r.clone());
            pod.replace_nexthops(&all)
        }
    }
}

/// Write one sysctl; a missing optional key (IPv6 disabled at boot) is fine.
pub fn write_sysctl(key: &str, value: &str, optional: bool) -> std::io::Result<()> {
    match sysctl_set(key, value) {
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!("sysctl {key} absent, skipped");
            Ok(())
        }
        r => r.map_err(|e| std::io::Error::new(e.kind(), format!("{key}={value}: {e}"))),
    }
}

fn write_sysctls(k: &Kernel, plan: &Plan) -> Result<()> {
    let pod: Vec<SysctlSpec> = plan
        .sysctls
        .iter()
        .filter(|s| s.side == Side::Pod)
        .cloned()
        .collect();
    if !pod.is_empty() {
        let res = k
            .pod_ns
            .run(move || -> std::io::Result<()> {
                for s in &pod {
                    write_sysctl(&s.key, &s.value, s.optional)?;
                }
                Ok(())
            })
            .and_then(|r| r);
        res.map_err(|e| Error::kernel("pod sysctl", e))?;
    }
    for s in plan.sysctls.iter().filter(|s| s.side == Side::Host) {
        write_sysctl(&s.key, &s.value, s.optional).map_err(|e| Error::kernel("host sysctl", e))?;
    }
    Ok(())
}

fn undo(k: &Kernel, step: Undo) {
    let res = match &step {
        Undo::DelLink(name) => match k.host.link(name) {
            Ok(Some(l)) => k.host.del_link(l.index),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        },
        Undo::DelRoute(side, r) => k.nl(*side).del_route(r),
        Undo::UnMove(m) => undo_move(k.pod, m),
        Undo::DelRule(side, r) => k.nl(*side).del_rule(r),
        Undo::DelNeigh(side, i, ip) => k.nl(*side).del_neighbour(*i, *ip),
        Undo::DelAddr(i, a) => k.pod.del_address(*i, *a),
        Undo::RemoveReplyMark => nftables::remove(k.pod_ns).map_err(|e| NlError::Io(e.to_string())),
        Undo::SetMac(i, mac) => k.pod.set_link_mac(*i, *mac),
        Undo::PodSysctl { key, old } => k
            .pod_ns
            .run(|| sysctl_set(key, old))
            .and_then(|r| r)
            .map_err(|e| NlError::Io(format!("{key}={old}: {e}"))),
    };
    match res {
        Ok(()) | Err(NlError::NotFound) => {}
        Err(e) => tracing::warn!("undo {step:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node booted with ipv6.disable=1 has no /proc/sys/net/ipv6: its IPv6
    /// keys are skipped, any other missing key is still an error.
    #[test]
    fn a_missing_optional_sysctl_is_skipped() {
        let key = "net/ipv6/conf/cl-no-such-link0/accept_dad";
        assert!(write_sysctl(key, "0", true).is_ok());
        let err = write_sysctl(key, "0", false).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(err.to_string().contains(key), "{err}");
    }
}
