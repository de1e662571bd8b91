//! DEL: take back what the NIC's ADD installed, as the planner derives it
//! ([`crate::plan::teardown`] of the plan CHECK compares and ADD applies),
//! and what any release left behind ([`crate::plan::sweep`]). What is already
//! gone (netns, links, routes) is success; any other failure is collected,
//! the remaining steps still run, and DEL fails so the runtime retries it.

use cni::error::code;
use cni::netlink::{Netlink, NlError, Route, Rule};
use cni::netns::NetNs;
use cni::plugin::Call;
use cni::{Error, Result};
use ipnet::IpNet;

use crate::add::{context_of, first_nic_host_peer, lock_pod, nic_addresses};
use crate::apply::{describe, route_spec};
use crate::config::{Config, Mode};
use crate::names::{host_veth_name, POD_VETH};
use crate::observe::pod_view;
use crate::plan::{plan_add, sweep, teardown, teardown_without_plan, PodView, Side, Teardown};

pub fn del(call: &Call, cfg: &Config) -> Result<()> {
    if cfg.mode == Mode::Disabled {
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
    let view = pod.as_ref().map(pod_view).transpose()?;

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
            match context_of(cfg, call, ips.clone(), gateways, &host, v.clone()) {
                Ok(Some(ctx)) => (
                    teardown(cfg, &plan_add(cfg, &ctx.inputs), &ctx.inputs),
                    ctx.host_links,
                ),
                Ok(None) => (Teardown::default(), Vec::new()),
                Err(e) => {
                    tracing::info!("DEL: no plan for {ifname} ({e}): removing by name and mark");
                    by_name(cfg, call, &host, view.as_ref(), &ips)?
                }
            }
        }
        _ => by_name(cfg, call, &host, view.as_ref(), &ips)?,
    };
    if let Some(v) = &view {
        let left = sweep(cfg, v, &td);
        td.merge(left);
    }
    tracing::debug!(?td, "teardown");
    let errors = remove(
        &host,
        &known,
        pod.as_ref(),
        pod_ns.as_ref(),
        view.as_ref(),
        &td,
    );
    if !errors.is_empty() {
        return Err(Error::plugin(
            code::TRY_AGAIN,
            format!("DEL of {ifname} incomplete: {}", errors.join("; ")),
        ));
    }
    tracing::info!(container = call.env.container_id, ifname, "DEL done");
    Ok(())
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
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut note = |what: String, r: std::result::Result<(), NlError>| match r {
        Ok(()) | Err(NlError::NotFound) => {}
        Err(e) => errors.push(format!("{what}: {e}")),
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
