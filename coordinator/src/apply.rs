//! Applies a [`Plan`] and undoes it when a step fails, so a failed ADD
//! leaves nothing behind.

use std::collections::HashMap;
use std::net::IpAddr;

use cni::netlink::{Netlink, NlError, Route, Rule, VethSpec};
use cni::netns::{sysctl_set, NetNs};
use cni::{Error, Result};
use ipnet::IpNet;

use crate::names::format_mac;
use crate::nftables::{self, ReplyMark};
use crate::plan::{Plan, RouteSpec, Side, REPLY_MARK};

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
    ReAddRoute(Route),
    DelRule(Side, Rule),
    DelNeigh(Side, u32, IpAddr),
    DelAddr(u32, IpNet),
    RemoveReplyMark,
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

/// Apply `plan`. `uplinks`: host devices where stale neighbour entries for
/// the pod's addresses may linger.
pub fn apply(k: &Kernel, plan: &Plan, uplinks: &[u32]) -> Result<()> {
    let mut journal = Vec::new();
    let res = apply_steps(k, plan, uplinks, &mut journal);
    if let Err(e) = &res {
        tracing::warn!("ADD failed ({e}); undoing {} steps", journal.len());
        rollback(k, journal);
    }
    res
}

fn route_of(links: &mut Links, r: &RouteSpec) -> Result<Route> {
    let mut route = Route::new(r.dst, r.table);
    route.oif = Some(links.index(r.side, &r.dev)?);
    route.gateway = r.via;
    route.prefsrc = r.src;
    route.scope = r.scope;
    Ok(route)
}

fn describe(r: &RouteSpec) -> String {
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
    // Copies first, then the moves: main never lacks a route in between.
    for r in &pod_routes {
        add_route(&mut links, r, journal)?;
    }
    for m in &plan.moves {
        match k.pod.del_route(m) {
            Ok(()) => journal.push(Undo::ReAddRoute(m.clone())),
            Err(NlError::NotFound) => {}
            Err(e) => {
                return Err(Error::from(e).context(format!("moving route {} out of main", m.dst)))
            }
        }
    }
    for (side, rule) in plan.rules.iter().filter(|(s, _)| *s == Side::Pod) {
        add_rule(k, *side, rule, journal)?;
    }
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

fn write_sysctls(k: &Kernel, plan: &Plan) -> Result<()> {
    let pod: Vec<(String, String)> = plan
        .sysctls
        .iter()
        .filter(|s| s.side == Side::Pod)
        .map(|s| (s.key.clone(), s.value.clone()))
        .collect();
    if !pod.is_empty() {
        let res = k
            .pod_ns
            .run(move || -> std::io::Result<()> {
                for (key, val) in &pod {
                    sysctl_set(key, val)
                        .map_err(|e| std::io::Error::new(e.kind(), format!("{key}={val}: {e}")))?;
                }
                Ok(())
            })
            .and_then(|r| r);
        res.map_err(|e| Error::kernel("pod sysctl", e))?;
    }
    for s in plan.sysctls.iter().filter(|s| s.side == Side::Host) {
        sysctl_set(&s.key, &s.value)
            .map_err(|e| Error::kernel(format!("host sysctl {}={}", s.key, s.value), e))?;
    }
    Ok(())
}

fn rollback(k: &Kernel, journal: Vec<Undo>) {
    for step in journal.into_iter().rev() {
        let res = match &step {
            Undo::DelLink(name) => match k.host.link(name) {
                Ok(Some(l)) => k.host.del_link(l.index),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            Undo::DelRoute(side, r) => k.nl(*side).del_route(r),
            Undo::ReAddRoute(r) => k.pod.add_route(r),
            Undo::DelRule(side, r) => k.nl(*side).del_rule(r),
            Undo::DelNeigh(side, i, ip) => k.nl(*side).del_neighbour(*i, *ip),
            Undo::DelAddr(i, a) => k.pod.del_address(*i, *a),
            Undo::RemoveReplyMark => {
                nftables::remove(k.pod_ns).map_err(|e| NlError::Io(e.to_string()))
            }
        };
        match res {
            Ok(()) | Err(NlError::NotFound) => {}
            Err(e) => tracing::warn!("undo {step:?}: {e}"),
        }
    }
}
