//! Applies a [`Plan`] and undoes it when a step fails, so a failed ADD
//! leaves nothing behind.

use std::collections::HashMap;

use cni::netlink::{Netlink, NlError, Route, Rule, VethSpec, NUD_PERMANENT};
use cni::netns::{sysctl_get, sysctl_set, NetNs};
use cni::{Error, Result};

use crate::names::format_mac;
use crate::nftables::{self, ReplyMark};
use crate::plan::{
    metric_of, Move, NeighSpec, Plan, PodView, RouteSpec, Side, SysctlSpec, REPLY_MARK,
    ROUTE_PROTOCOL,
};
use crate::record::{Attachments, Writer};
use crate::undo::{self, Sides, Undo};

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

    pub fn sides(&self) -> Sides<'_> {
        Sides {
            host: self.host,
            pod: Some((self.pod, self.pod_ns)),
        }
    }
}

/// Every change of one ADD, from the first (a sysctl, the MAC) to the last,
/// each preceded by its [`Undo`] in the attachment's record. Dropped without
/// [`Journal::commit`] (an error returned, or a panic unwinding through the
/// ADD) it undoes this call's changes, last first, and puts the record back
/// as it was before the call: a failed repeated ADD leaves everything that
/// existed before it.
pub struct Journal<'a> {
    k: &'a Kernel<'a>,
    records: &'a Attachments,
    w: Option<Writer>,
}

impl<'a> Journal<'a> {
    pub fn new(k: &'a Kernel<'a>, records: &'a Attachments, w: Writer) -> Journal<'a> {
        Journal {
            k,
            records,
            w: Some(w),
        }
    }

    fn writer(&mut self) -> &mut Writer {
        self.w
            .as_mut()
            .expect("a journal writes until it is committed")
    }

    /// Record `undo` ahead of its change; its sequence number.
    pub fn push(&mut self, undo: Undo) -> Result<u64> {
        self.writer().push(undo)
    }

    /// Record several undos ahead of their changes, in one write.
    pub fn push_all(&mut self, undos: Vec<Undo>) -> Result<Vec<u64>> {
        self.writer().push_all(undos)
    }

    /// The change of step `seq` was not made, or not by us.
    pub fn forget(&mut self, seq: u64) -> Result<()> {
        self.writer().forget(seq)
    }

    /// Undo step `seq` now (the change was only needed for a while) and
    /// forget it.
    pub fn undo_now(&mut self, seq: u64) -> Result<()> {
        let step = self.writer().this_call().find(|(s, _)| *s == seq).cloned();
        if let Some((_, step)) = step {
            if let Err(e) = undo::run(&self.k.sides(), &step) {
                tracing::warn!("{}: {e}", step.describe());
            }
            self.forget(seq)?;
        }
        Ok(())
    }

    /// The ADD succeeded: keep every change. A repeated ADD's record is
    /// compacted (its earlier steps first, then this call's).
    pub fn commit(mut self) -> Result<()> {
        let w = self.w.take().expect("committed once");
        if w.before().is_some() {
            self.records.write(w.record())?;
        }
        Ok(())
    }
}

impl Drop for Journal<'_> {
    fn drop(&mut self) {
        let Some(w) = self.w.take() else { return };
        let steps: Vec<Undo> = w.this_call().rev().map(|(_, u)| u.clone()).collect();
        if !steps.is_empty() {
            tracing::warn!("ADD failed; undoing {} steps", steps.len());
        }
        for f in undo::replay(&self.k.sides(), &steps) {
            tracing::warn!("undo {f}");
        }
        let res = match w.before() {
            Some(rec) => self.records.write(rec),
            None => self.records.remove(&w.record().ifname),
        };
        if let Err(e) = res {
            tracing::warn!("putting the attachment record back: {e}");
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

/// Apply `plan` to the pod whose view (`pre`) the plan was made from, each
/// change preceded by its undo in `journal`. `uplinks`: host devices where
/// stale neighbour entries for the pod's addresses may linger.
pub fn apply(
    k: &Kernel,
    plan: &Plan,
    pre: &PodView,
    uplinks: &[u32],
    journal: &mut Journal,
) -> Result<()> {
    let res = apply_steps(k, plan, pre, uplinks, journal);
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

/// Devices this ADD creates: nothing on them needs a pre-image.
fn created(plan: &Plan, side: Side, dev: &str) -> bool {
    plan.veth.as_ref().is_some_and(|v| {
        v.create
            && match side {
                Side::Host => v.host == dev,
                Side::Pod => v.pod == dev,
            }
    })
}

fn apply_steps(
    k: &Kernel,
    plan: &Plan,
    pre: &PodView,
    uplinks: &[u32],
    journal: &mut Journal,
) -> Result<()> {
    let mut links = Links {
        k,
        cache: HashMap::new(),
    };
    // First: the nf_tables commit leaves an RCU grace period behind (see
    // nftables::in_netns) that then elapses while the steps below run. The
    // table only matches packets entering through veth0, so it may exist
    // before veth0 does, and the pod runs nothing during ADD.
    if plan.reply_mark {
        let seq = journal.push(Undo::RemoveReplyMark)?;
        let created = nftables::install(
            k.pod_ns,
            &ReplyMark {
                iif: crate::names::POD_VETH.into(),
                mark: REPLY_MARK,
            },
        )?;
        if !created {
            // A repeated ADD rewrote the table an earlier ADD made.
            journal.forget(seq)?;
        }
    }
    if let Some(v) = plan.veth.as_ref().filter(|v| v.create) {
        journal.push(Undo::DelLink {
            name: v.host.clone(),
        })?;
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
    }
    write_sysctls(k, plan, journal)?;
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
        let old = pre.link(dev).map(|l| l.txqlen);
        if old != Some(*qlen) {
            if let Some(old) = old {
                journal.push(Undo::SetTxqlen {
                    dev: dev.clone(),
                    index: i,
                    qlen: old,
                })?;
            }
            k.pod
                .set_link_txqlen(i, *qlen)
                .map_err(|e| Error::from(e).context(format!("txqueuelen of {dev}")))?;
        }
    }
    for (dev, addr) in &plan.addresses {
        let i = links.index(Side::Pod, dev)?;
        let seq = journal.push(Undo::DelAddr {
            dev: dev.clone(),
            index: i,
            addr: *addr,
        })?;
        match k.pod.add_address(i, *addr, true) {
            Ok(()) => {}
            Err(NlError::Exists) => journal.forget(seq)?,
            Err(e) => return Err(Error::from(e).context(format!("adding {addr} to {dev}"))),
        }
    }
    for n in plan.neighbours.iter().filter(|n| n.side == Side::Pod) {
        set_neighbour(&mut links, plan, n, journal)?;
    }
    let (pod_routes, host_routes): (Vec<&RouteSpec>, Vec<&RouteSpec>) =
        plan.routes.iter().partition(|r| r.side == Side::Pod);
    // Copies first, then the rules that lead to them, then the moves: main
    // never lacks a route in between, and a process killed after a move
    // leaves the rule by which DEL finds the moved route's copy.
    add_routes(&mut links, plan, pre, &pod_routes, journal)?;
    let pod_rules: Vec<&Rule> = plan
        .rules
        .iter()
        .filter(|(s, _)| *s == Side::Pod)
        .map(|(_, r)| r)
        .collect();
    add_pod_rules(k, &pod_rules, journal)?;
    let undos = plan
        .moves
        .iter()
        .map(|m| Undo::UnMove { moved: m.clone() })
        .collect();
    let seqs = journal.push_all(undos)?;
    for (m, seq) in plan.moves.iter().zip(seqs) {
        match move_out(k.pod, m) {
            Ok(()) => {}
            // Already out of main (a repeated ADD): an earlier record holds it.
            Err(NlError::NotFound) => journal.forget(seq)?,
            Err(e) => {
                return Err(
                    Error::from(e).context(format!("moving route {} out of main", m.route.dst))
                )
            }
        }
    }
    add_routes(&mut links, plan, pre, &host_routes, journal)?;
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
        set_neighbour(&mut links, plan, n, journal)?;
    }
    // policyRoutes last but one: a bad gateway fails here and the journal
    // takes the rest back.
    let policy: Vec<&RouteSpec> = plan.policy.iter().collect();
    add_routes(&mut links, plan, pre, &policy, journal)?;
    // The host rule is shared by every pod, so it is never undone; added last,
    // a failed first ADD on a node leaves no rule behind.
    for (_, rule) in plan.rules.iter().filter(|(s, _)| *s == Side::Host) {
        match k.host.add_rule(rule) {
            Ok(()) | Err(NlError::Exists) => {}
            Err(e) => {
                return Err(Error::from(e).context(format!(
                    "host rule priority {} lookup {}",
                    rule.priority, rule.table
                )))
            }
        }
    }
    Ok(())
}

/// The route of `view` that an add of `r` would collide with (same table,
/// destination and metric: the kernel's key).
fn occupant<'v>(view: &'v PodView, r: &Route) -> Option<&'v Route> {
    view.routes
        .iter()
        .find(|x| x.table == r.table && x.dst == r.dst && metric_of(x) == metric_of(r))
}

/// Add `routes`, the undo of each (the pre-image of a route it replaces)
/// recorded ahead of them in one write.
fn add_routes(
    links: &mut Links,
    plan: &Plan,
    pre: &PodView,
    routes: &[&RouteSpec],
    journal: &mut Journal,
) -> Result<()> {
    let mut todo = Vec::new();
    let mut undos = Vec::new();
    for r in routes {
        let route = route_of(links, r)?;
        let before = match (r.side, created(plan, r.side, &r.dev)) {
            (Side::Pod, false) => occupant(pre, &route),
            _ => None,
        };
        if before == Some(&route) {
            // Already as planned (a repeated ADD): nothing changes.
            continue;
        }
        undos.push(match before {
            Some(old) => Undo::RestoreRoute {
                side: r.side,
                dev: r.dev.clone(),
                route: old.clone(),
            },
            None => Undo::DelRoute {
                side: r.side,
                dev: r.dev.clone(),
                route: route.clone(),
            },
        });
        todo.push((*r, route, before.is_some()));
    }
    let seqs = journal.push_all(undos)?;
    for ((r, route, replaces), seq) in todo.into_iter().zip(seqs) {
        let nl = links.k.nl(r.side);
        let res = match replaces {
            true => nl.replace_route(&route),
            false => match nl.add_route(&route) {
                // A host route an earlier ADD of this pod made (the guard
                // refused any other device's): its record owns it.
                Err(NlError::Exists) => {
                    journal.forget(seq)?;
                    nl.replace_route(&route)
                }
                other => other,
            },
        };
        res.map_err(|e| Error::from(e).context(describe(r)))?;
    }
    Ok(())
}

/// Add the pod's `rules`, their undos recorded ahead in one write; one that
/// exists already (a repeated ADD, another NIC's) is not ours to undo.
fn add_pod_rules(k: &Kernel, rules: &[&Rule], journal: &mut Journal) -> Result<()> {
    let undos = rules
        .iter()
        .map(|r| Undo::DelRule {
            side: Side::Pod,
            rule: (*r).clone(),
        })
        .collect();
    let seqs = journal.push_all(undos)?;
    for (rule, seq) in rules.iter().zip(seqs) {
        match k.pod.add_rule(rule) {
            Ok(()) => {}
            Err(NlError::Exists) => journal.forget(seq)?,
            Err(e) => {
                return Err(Error::from(e).context(format!(
                    "pod rule priority {} lookup {}",
                    rule.priority, rule.table
                )))
            }
        }
    }
    Ok(())
}

/// A permanent neighbour, the entry it replaces recorded first.
fn set_neighbour(
    links: &mut Links,
    plan: &Plan,
    n: &NeighSpec,
    journal: &mut Journal,
) -> Result<()> {
    let i = links.index(n.side, &n.dev)?;
    let nl = links.k.nl(n.side);
    let old = match created(plan, n.side, &n.dev) {
        true => None,
        false => nl
            .neighbour(i, n.ip)
            .map_err(|e| Error::from(e).context(format!("neighbour {} dev {}", n.ip, n.dev)))?,
    };
    let old_permanent = old
        .filter(|o| o.state & NUD_PERMANENT != 0)
        .and_then(|o| o.mac);
    if old_permanent == Some(n.mac) {
        return Ok(());
    }
    journal.push(match old_permanent {
        Some(mac) => Undo::RestoreNeigh {
            side: n.side,
            dev: n.dev.clone(),
            index: i,
            ip: n.ip,
            mac,
        },
        // A learnt entry is learnt again.
        None => Undo::DelNeigh {
            side: n.side,
            dev: n.dev.clone(),
            index: i,
            ip: n.ip,
        },
    })?;
    nl.set_permanent_neighbour(i, n.ip, n.mac).map_err(|e| {
        Error::from(e).context(format!(
            "neighbour {} lladdr {} dev {}",
            n.ip,
            format_mac(&n.mac),
            n.dev
        ))
    })
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

/// The value of each of `specs` now: None for a missing optional key.
fn read_sysctls(specs: &[SysctlSpec]) -> std::io::Result<Vec<Option<String>>> {
    specs
        .iter()
        .map(|s| match sysctl_get(&s.key) {
            Ok(v) => Ok(Some(v)),
            Err(e) if s.optional && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", s.key))),
        })
        .collect()
}

/// Write the plan's sysctls that differ, their old values recorded first:
/// read, record, write in one entry into the pod's netns (the record's file
/// is written through its descriptor, whatever the thread's netns).
fn write_sysctls(k: &Kernel, plan: &Plan, journal: &mut Journal) -> Result<()> {
    for side in [Side::Pod, Side::Host] {
        let specs: Vec<SysctlSpec> = plan
            .sysctls
            .iter()
            .filter(|s| s.side == side)
            .cloned()
            .collect();
        if specs.is_empty() {
            continue;
        }
        let what = format!("{side:?} sysctl").to_lowercase();
        let mut step = || -> Result<()> {
            let old = read_sysctls(&specs).map_err(|e| Error::kernel(&what, e))?;
            let mut todo = Vec::new();
            let mut undos = Vec::new();
            for (s, old) in specs.iter().zip(old) {
                let Some(old) = old.filter(|o| *o != s.value) else {
                    continue;
                };
                undos.push(Undo::Sysctl {
                    side,
                    key: s.key.clone(),
                    old,
                });
                todo.push(s);
            }
            journal.push_all(undos)?;
            for s in todo {
                write_sysctl(&s.key, &s.value, s.optional).map_err(|e| Error::kernel(&what, e))?;
            }
            Ok(())
        };
        match side {
            Side::Pod => k
                .pod_ns
                .run(step)
                .map_err(|e| Error::kernel("entering the pod netns", e))??,
            Side::Host => step()?,
        }
    }
    Ok(())
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
