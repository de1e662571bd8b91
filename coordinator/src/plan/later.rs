//! Later NICs (both modes): a policy table per NIC, and the first NIC's
//! own table once a later one is attached.

use std::collections::BTreeSet;

use cni::netlink::{Family, Route, Scope, TABLE_MAIN};
use ipnet::IpNet;

use super::host::host_side;
use super::underlay::via_veth;
use super::{
    copy_into, default_net, families, from_rules, host_net, is_connected, is_link_local,
    policy_routes, Inputs, Layout, Plan, PodView, RouteSpec, Side, PRIO_FROM, TABLE_FIRST_NIC,
    TABLE_REPLY,
};
use crate::config::Config;
use crate::names::POD_VETH;

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

pub(super) fn later_nic(cfg: &Config, inp: &Inputs, plan: &mut Plan) {
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
