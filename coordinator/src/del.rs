//! DEL: take back what the NIC's ADD did, as its record says
//! ([`crate::record`]): every change undone, last first, each pre-image put
//! back. An attachment without a record (an older release's, or a record
//! lost) falls back to what the planner derives from the pod
//! ([`crate::plan::teardown`]) and what any release left behind
//! ([`crate::plan::sweep`]). What is already gone (netns, links, routes) is
//! success; any other failure is collected, the remaining steps still run,
//! and DEL fails so the runtime retries it.

use std::path::Path;

use cni::error::code;
use cni::netlink::{Netlink, NlError, Route, Rule};
use cni::netns::NetNs;
use cni::plugin::Call;
use cni::{Error, Result};
use ipnet::IpNet;

use crate::apply::{describe, route_spec};
use crate::config::{Config, Mode};
use crate::context::{context_of, first_nic_host_peer, lock_pod, nic_addresses};
use crate::names::{host_veth_name, POD_VETH};
use crate::observe::pod_view;
use crate::plan::{
    plan_add, sweep, teardown, teardown_without_plan, Plan, PodView, Side, Teardown,
};
#[cfg(test)]
use crate::record::Origin;
use crate::record::{self, Attachments, Record};
use crate::undo::{self, Failure, Sides, Undo};

pub fn del(call: &Call, cfg: &Config) -> Result<()> {
    let root = Path::new(record::ROOT);
    // A record is undone whatever the config says now (an operator may have
    // disabled the coordinator since the pod was attached).
    if cfg.mode == Mode::Disabled
        && Attachments::open(root, &call.env.container_id, false)?.is_none()
    {
        return Ok(());
    }
    let ifname = call.env.ifname.as_str();
    let host = Netlink::open()?;
    let pod_ns = match call.env.netns.as_ref().map(|p| NetNs::open_pod(p)) {
        Some(Ok(ns)) => Some(ns),
        // Gone, unmounted, or the plugin's own netns (no pod's: left alone).
        None | Some(Err(Error::UnknownContainer(_) | Error::InvalidEnv(_))) => None,
        Some(Err(e)) => return Err(e),
    };
    if let Some(ns) = &pod_ns {
        // Not while an ADD of another NIC of the pod reads or changes it.
        lock_pod(ns)?;
    }
    let pod = pod_ns.as_ref().map(Netlink::open_in).transpose()?;
    let records = Attachments::open(root, &call.env.container_id, false)?;
    let rec = match records.as_ref().map(|a| a.read(ifname)) {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            tracing::warn!("{e}: removing what the planner finds instead");
            None
        }
        None => None,
    };
    let inode = pod_ns.as_ref().and_then(NetNs::inode);
    let failures = match (rec, &records) {
        (Some(rec), Some(records)) if !rec.of_netns(inode) => {
            // An earlier pod of this container ID whose DEL never came: its
            // pod is gone, and what it made on the node is named like this
            // pod's. Nothing of it is undone.
            tracing::warn!(
                "{}: left by an earlier pod, removed",
                records.path(ifname).display()
            );
            records.remove(ifname)?;
            by_plan(cfg, call, &host, pod.as_ref(), pod_ns.as_ref())?
        }
        (Some(rec), Some(records)) => {
            let sides = Sides {
                host: &host,
                pod: pod.as_ref().zip(pod_ns.as_ref()),
            };
            by_record(&sides, records, rec, inode)?
        }
        _ if cfg.mode == Mode::Disabled => Vec::new(),
        _ => {
            let failures = by_plan(cfg, call, &host, pod.as_ref(), pod_ns.as_ref())?;
            if let (true, Some(records)) = (failures.is_empty(), &records) {
                // An unreadable record: the planner's teardown replaced it.
                records.remove(ifname)?;
            }
            failures
        }
    };
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
        return Err(Error::plugin(
            code::TRY_AGAIN,
            format!("DEL of {ifname} incomplete: {}", list.join("; ")),
        ));
    }
    tracing::info!(container = call.env.container_id, ifname, "DEL done");
    Ok(())
}

/// GC (spec 1.1.0): every record of this network whose attachment is not in
/// `cni.dev/valid-attachments` belongs to a pod whose DEL never came. What
/// it made on the node is undone (the host veth, host routes and
/// neighbours; its pod netns is gone or not ours to enter) and the record
/// removed. Records of other networks, and records written before records
/// named their network, are left alone.
pub fn gc(call: &Call) -> Result<()> {
    let network = call.conf.name.as_str();
    let valid = call.conf.valid_attachments()?;
    let root = Path::new(record::ROOT);
    let host = Netlink::open()?;
    let sides = Sides {
        host: &host,
        pod: None,
    };
    let mut failures = Vec::new();
    for container in record::containers(root) {
        let Some(records) = Attachments::open(root, &container, false)? else {
            continue;
        };
        let mut stale = Vec::new();
        for r in records.siblings("", None) {
            let listed = valid
                .iter()
                .any(|a| a.container_id == container && a.ifname == r.ifname);
            if r.network.as_deref() == Some(network) && !listed {
                stale.push(r);
            }
        }
        for r in stale {
            let steps: Vec<Undo> = r.steps.iter().rev().cloned().collect();
            let failed = undo::replay(&sides, &steps);
            match failed.is_empty() {
                true => {
                    tracing::info!(container, ifname = r.ifname, "GC: attachment gone");
                    records.remove(&r.ifname)?;
                }
                false => failures.extend(failed),
            }
        }
    }
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
        return Err(Error::plugin(
            code::TRY_AGAIN,
            format!("GC incomplete: {}", list.join("; ")),
        ));
    }
    Ok(())
}

/// Does `plan` (another NIC's of the same pod) rely on what `step` of the
/// NIC whose plan is `own` undoes?
fn needs(plan: &Plan, own: &Plan, step: &Undo) -> bool {
    match step {
        Undo::DelRoute {
            side: Side::Pod,
            dev,
            route,
        }
        | Undo::RestoreRoute {
            side: Side::Pod,
            dev,
            route,
        } => plan.routes.iter().chain(&plan.policy).any(|r| {
            r.side == Side::Pod
                && r.dst == route.dst
                && r.table == route.table
                && r.dev == *dev
                && r.via == route.gateway
        }),
        Undo::DelRule {
            side: Side::Pod,
            rule,
        } => plan.rules.iter().any(|(s, r)| *s == Side::Pod && r == rule),
        Undo::UnMove { moved } => plan.moves.iter().any(|m| {
            m.route.dst == moved.route.dst
                && m.route.table == moved.route.table
                && m.route.oif == moved.route.oif
                && m.route.gateway == moved.route.gateway
        }),
        Undo::DelNeigh {
            side: Side::Pod,
            dev,
            ip,
            ..
        }
        | Undo::RestoreNeigh {
            side: Side::Pod,
            dev,
            ip,
            ..
        } => plan
            .neighbours
            .iter()
            .any(|n| n.side == Side::Pod && n.dev == *dev && n.ip == *ip),
        // Only when the other NIC wants the value this one set: two NICs'
        // configs may disagree (`podRPFilter` per network), and then the
        // old value (the other's, or the pod's own) comes back.
        Undo::Sysctl {
            side: Side::Pod,
            key,
            ..
        } => {
            let want = |p: &Plan| {
                p.sysctls
                    .iter()
                    .find(|s| s.side == Side::Pod && s.key == *key)
                    .map(|s| s.value.clone())
            };
            want(plan).is_some() && want(plan) == want(own)
        }
        _ => false,
    }
}

/// DEL of an attachment with a record: its steps undone, last first. A
/// step that another NIC of the pod still relies on (the first NIC's table
/// a later NIC made, a pod-wide sysctl) is handed to that NIC's record
/// instead, ahead of its own steps, so the last one to go undoes it.
fn by_record(
    sides: &Sides,
    records: &Attachments,
    rec: Record,
    inode: Option<u64>,
) -> Result<Vec<Failure>> {
    let siblings = records.siblings(&rec.ifname, inode.or(rec.netns_inode));
    let mut handed: Vec<(usize, Undo)> = Vec::new();
    let mut todo: Vec<Undo> = Vec::new();
    for step in rec.steps.iter().rev() {
        match siblings
            .iter()
            .position(|s| needs(&s.plan, &rec.plan, step))
        {
            Some(i) => handed.push((i, step.clone())),
            None => todo.push(step.clone()),
        }
    }
    for (i, sib) in siblings.iter().enumerate() {
        let mut mine: Vec<Undo> = handed
            .iter()
            .rev()
            .filter(|(j, _)| *j == i)
            .map(|(_, u)| u.clone())
            .collect();
        if mine.is_empty() {
            continue;
        }
        tracing::debug!(
            to = sib.ifname,
            steps = mine.len(),
            "handing shared steps over"
        );
        let mut next = sib.clone();
        mine.extend(next.steps);
        next.steps = mine;
        records.write(&next)?;
    }
    let failures = undo::replay(sides, &todo);
    match failures.is_empty() {
        true => records.remove(&rec.ifname)?,
        // What failed is retried by the runtime's next DEL; the rest is done.
        false => {
            let failed: Vec<&String> = failures.iter().map(|f| &f.step).collect();
            let mut left = rec.clone();
            left.steps.retain(|s| failed.contains(&&s.describe()));
            records.write(&left)?;
        }
    }
    Ok(failures)
}

/// DEL of an attachment without a record (made by an older release, or its
/// record lost): what the planner derives from the pod, and what any
/// release left behind ([`crate::plan::sweep`]).
fn by_plan(
    cfg: &Config,
    call: &Call,
    host: &Netlink,
    pod: Option<&Netlink>,
    pod_ns: Option<&NetNs>,
) -> Result<Vec<Failure>> {
    let ifname = call.env.ifname.as_str();
    let view = pod.map(pod_view).transpose()?;

    // The NIC's addresses: prevResult when the runtime passed it, else what
    // the NIC still holds.
    let (mut ips, gateways) = match call.prev_result() {
        Ok(Some(prev)) => nic_addresses(&prev, ifname),
        _ => (Vec::new(), Vec::new()),
    };
    if let (true, Some(v)) = (ips.is_empty(), &view) {
        if let Some(nic) = v.link(ifname) {
            ips = v.addrs_of(nic.index);
        }
    }

    let (mut td, known) = match &view {
        Some(v) if v.link(ifname).is_some() => {
            match context_of(cfg, call, ips.clone(), gateways, host, v.clone(), &[]) {
                Ok(Some(ctx)) => (
                    teardown(cfg, &plan_add(cfg, &ctx.inputs), &ctx.inputs),
                    ctx.host_links,
                ),
                Ok(None) => (Teardown::default(), Vec::new()),
                Err(e) => {
                    tracing::info!("DEL: no plan for {ifname} ({e}): removing by name and mark");
                    by_name(cfg, call, host, view.as_ref(), &ips)?
                }
            }
        }
        _ => by_name(cfg, call, host, view.as_ref(), &ips)?,
    };
    if let Some(v) = &view {
        let left = sweep(cfg, v, &td);
        td.merge(left);
    }
    tracing::debug!(?td, "teardown");
    Ok(remove(host, &known, pod, pod_ns, view.as_ref(), &td))
}

/// The teardown of a NIC whose plan cannot be computed, and the host
/// devices looked up for it.
fn by_name(
    cfg: &Config,
    call: &Call,
    host: &Netlink,
    view: Option<&PodView>,
    ips: &[IpNet],
) -> Result<(Teardown, Vec<(String, u32)>)> {
    let hveth = host_veth_name(&call.env.container_id);
    let host_veth = host.link(&hveth)?.map(|l| (l.name, l.index));
    // An overlay pod's later NIC is routed through the first NIC's host peer.
    let overlay_peer = match view.and_then(|v| v.link(&cfg.pod_default_cni_nic)) {
        Some(eth0) => first_nic_host_peer(host, eth0)?.map(|l| (l.name, l.index)),
        None => None,
    };
    let dev = host_veth
        .as_ref()
        .or(overlay_peer.as_ref())
        .map(|(n, _)| n.clone());
    let veth = host_veth
        .as_ref()
        .map(|(h, _)| (h.clone(), POD_VETH.to_string()));
    let td = teardown_without_plan(cfg, &call.env.ifname, ips, dev.as_deref(), veth);
    Ok((td, host_veth.into_iter().chain(overlay_peer).collect()))
}

/// Carry out `td`; every failure but "already gone", described. `known`:
/// host devices (name, index) this call has looked up already.
fn remove(
    host: &Netlink,
    known: &[(String, u32)],
    pod: Option<&Netlink>,
    pod_ns: Option<&NetNs>,
    view: Option<&PodView>,
    td: &Teardown,
) -> Vec<Failure> {
    let mut errors = Vec::new();
    let mut note = |step: String, r: std::result::Result<(), NlError>| match r {
        Ok(()) | Err(NlError::NotFound) => {}
        Err(error) => errors.push(Failure { step, error }),
    };
    let nl = |side: Side| match side {
        Side::Host => Some(host),
        Side::Pod => pod,
    };
    // Each host device is looked up once (a host route and a neighbour per
    // address name the same one); pod devices come from the view.
    let mut host_links: Vec<(&str, std::result::Result<Option<u32>, NlError>)> = known
        .iter()
        .map(|(n, i)| (n.as_str(), Ok(Some(*i))))
        .collect();
    let devs = td.routes.iter().map(|r| (r.side, r.dev.as_str()));
    let devs = devs.chain(td.neighbours.iter().map(|n| (n.side, n.dev.as_str())));
    let devs = devs.chain(td.veth.iter().map(|(h, _)| (Side::Host, h.as_str())));
    for (_, dev) in devs.filter(|(side, _)| *side == Side::Host) {
        if !host_links.iter().any(|(d, _)| *d == dev) {
            host_links.push((dev, host.link(dev).map(|l| l.map(|l| l.index))));
        }
    }
    let index = |side: Side, dev: &str| -> std::result::Result<Option<u32>, NlError> {
        match side {
            Side::Pod => Ok(view.and_then(|v| v.link(dev)).map(|l| l.index)),
            Side::Host => host_links
                .iter()
                .find(|(d, _)| *d == dev)
                .map_or(Ok(None), |(_, i)| i.clone()),
        }
    };
    for n in &td.neighbours {
        let Some(nlk) = nl(n.side) else { continue };
        let what = format!("neighbour {} dev {}", n.ip, n.dev);
        match index(n.side, &n.dev) {
            Ok(Some(i)) => note(what, nlk.del_neighbour(i, n.ip)),
            Ok(None) => {}
            Err(e) => note(what, Err(e)),
        }
    }
    for r in &td.routes {
        let Some(nlk) = nl(r.side) else { continue };
        match index(r.side, &r.dev) {
            Ok(Some(i)) => note(describe(r), nlk.del_route(&route_spec(r, i))),
            Ok(None) => {}
            Err(e) => note(describe(r), Err(e)),
        }
    }
    if let Some(pod) = pod {
        // Back into main before the table that holds them goes.
        for r in &td.restores {
            let what = format!("default {} back into main", r.dst);
            note(what, pod.replace_route(r));
        }
        let dumped: Vec<Rule> = view.map(|v| v.rules.clone()).unwrap_or_default();
        for r in &td.rules {
            let what = format!("pod rule priority {} lookup {}", r.priority, r.table);
            note(what, pod.del_rule_listed(r, &dumped));
        }
        // Routes on the veth's pod end go with the veth below.
        let doomed = td
            .veth
            .as_ref()
            .and_then(|(_, p)| view.and_then(|v| v.link(p)))
            .map(|l| l.index);
        for t in &td.tables {
            let routes = view
                .map(|v| {
                    v.routes
                        .iter()
                        // Ours only: another owner's routes in the table stay.
                        .filter(|r| r.table == *t && crate::plan::is_ours(r))
                        .filter(|r| doomed.is_none() || r.oif != doomed)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            flush(pod, *t, routes, &mut note);
        }
        for r in &td.stale_routes {
            note(
                format!("route {} table {}", r.dst, r.table),
                pod.del_route(r),
            );
        }
        if let Some(ns) = pod_ns {
            for (key, default) in &td.sysctl_defaults {
                note(format!("sysctl {key}"), copy_sysctl(ns, default, key));
            }
        }
        if let (true, Some(ns)) = (td.reply_mark, pod_ns) {
            let res = crate::nftables::remove(ns).map_err(|e| NlError::Io(e.to_string()));
            note("nftables reply-mark table".into(), res);
        }
    }
    if let Some((h, p)) = &td.veth {
        // The host end takes the pod end, and every route and neighbour on
        // either, along. Without it (a stray pod end), the pod end alone.
        match index(Side::Host, h) {
            Ok(Some(i)) => note(format!("veth {h}"), host.del_link(i)),
            Ok(None) => {
                if let (Some(pod), Some(Some(l))) = (pod, view.map(|v| v.link(p))) {
                    note(format!("pod veth {p}"), pod.del_link(l.index));
                }
            }
            Err(e) => note(format!("veth {h}"), Err(e)),
        }
    }
    errors
}

/// Empty table `t` of the pod as dumped (both families). Routes are removed
/// exactly as the kernel reported them.
fn flush(
    pod: &Netlink,
    t: u32,
    routes: Vec<Route>,
    note: &mut impl FnMut(String, std::result::Result<(), NlError>),
) {
    for r in routes {
        note(format!("route {} table {t}", r.dst), pod.del_route(&r));
    }
}

/// Pod sysctl `to` takes `from`'s value; a key gone with its link is NotFound.
fn copy_sysctl(ns: &NetNs, from: &str, to: &str) -> std::result::Result<(), NlError> {
    use cni::netns::{sysctl_get, sysctl_set};
    let res = ns
        .run(|| sysctl_set(to, &sysctl_get(from)?))
        .and_then(|r| r);
    res.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => NlError::NotFound,
        _ => NlError::Io(format!("{to} from {from}: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Layout, SysctlSpec};
    use cni::netlink::{Family, Rule};

    fn rule(t: u32) -> Rule {
        let mut r = Rule::new(Family::V4, 1000, t);
        r.src = Some("10.6.1.1/32".parse().unwrap());
        r
    }

    /// eth0's table was made by net1's ADD and net2 relies on it too; the
    /// pod-wide `all/rp_filter` was first written by net1. Deleting net1
    /// first hands both to net2, ahead of net2's own steps, so net2's DEL
    /// undoes them last.
    #[test]
    fn steps_another_nic_relies_on_are_handed_over() {
        let root = tempfile::tempdir().unwrap();
        let a = Attachments::open(root.path(), "ctr", true)
            .unwrap()
            .unwrap();
        let all = "net/ipv4/conf/all/rp_filter";
        let shared = Plan {
            rules: vec![(Side::Pod, rule(102))],
            sysctls: vec![SysctlSpec::new(Side::Pod, all.into(), "0")],
            ..Plan::default()
        };
        let mut w1 = a
            .begin(
                "net1",
                Origin::default(),
                Layout::UnderlayLater,
                &shared,
                None,
            )
            .unwrap();
        let own = Undo::DelRule {
            side: Side::Pod,
            rule: rule(101),
        };
        let handed_rule = Undo::DelRule {
            side: Side::Pod,
            rule: rule(102),
        };
        let handed_sysctl = Undo::Sysctl {
            side: Side::Pod,
            key: all.into(),
            old: "1".into(),
        };
        for u in [handed_sysctl.clone(), own.clone(), handed_rule.clone()] {
            w1.push(u).unwrap();
        }
        drop(w1);
        let mut w2 = a
            .begin(
                "net2",
                Origin::default(),
                Layout::UnderlayLater,
                &shared,
                None,
            )
            .unwrap();
        let net2_own = Undo::DelRule {
            side: Side::Pod,
            rule: rule(103),
        };
        w2.push(net2_own.clone()).unwrap();
        drop(w2);

        let host = Netlink::open().unwrap();
        let sides = Sides {
            host: &host,
            pod: None,
        };
        let rec = a.read("net1").unwrap().unwrap();
        let failures = by_record(&sides, &a, rec, None).unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        assert!(a.read("net1").unwrap().is_none(), "net1's record removed");
        let net2 = a.read("net2").unwrap().unwrap();
        assert_eq!(net2.steps, vec![handed_sysctl, handed_rule, net2_own]);
    }
}
