//! Later NICs (both modes): a policy table per NIC, and the first NIC's
//! own table once a later one is attached.

use std::collections::BTreeSet;

use cni::netlink::{Family, Route, Scope, RTPROT_RA, TABLE_MAIN};
use ipnet::IpNet;

use super::first_table::first_nic_table;
use super::host::host_side;
use super::underlay::via_veth_from;
use super::{
    copy_into, default_net, families, from_rules, host_net, is_connected, is_link_local, is_ours,
    policy_routes, Inputs, Layout, Move, Plan, PodView, RouteSpec,
};
use super::{nic_ips, Side, SysctlSpec, RA_DEFRTR};
use crate::config::{is_reserved_table, Config};

/// Lowest table id >= `from` that no rule or route of the pod uses, skipping
/// `taken` and the kernel's reserved ids.
pub fn free_table(pod: &PodView, from: u32, taken: &[u32]) -> u32 {
    let used: BTreeSet<u32> = pod
        .rules
        .iter()
        .map(|r| r.table)
        .chain(pod.routes.iter().map(|r| r.table))
        .chain(taken.iter().copied())
        .collect();
    (from..=u32::MAX)
        .find(|t| !used.contains(t) && !is_reserved_table(*t))
        .unwrap_or(from)
}

/// The table a NIC already uses (a `from <its address>` rule at `priority`),
/// for repeated ADDs.
pub(super) fn existing_table(pod: &PodView, ips: &[IpNet], priority: u32) -> Option<u32> {
    pod.rules.iter().find_map(|r| {
        let src = r.src?;
        (r.priority == priority && ips.iter().any(|ip| host_net(ip.addr()) == src))
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
        // eth0's default: in main, or in table 100 once an earlier NIC took
        // main's default (podDefaultRouteNic); the lowest metric wins.
        let eth0_default = |t: u32| {
            inp.pod
                .routes
                .iter()
                .filter(|r| {
                    r.table == t
                        && r.oif == Some(eth0.index)
                        && r.dst.prefix_len() == 0
                        && r.family() == *f
                })
                .min_by_key(|r| r.metric.unwrap_or(0))
        };
        let Some(def) =
            eth0_default(TABLE_MAIN).or_else(|| eth0_default(cfg.ids.overlay_first_nic_table()))
        else {
            continue;
        };
        // An on-link gateway (Calico's `default via 169.254.1.1 dev eth0
        // onlink`) needs no route to it: the cluster routes are on-link too.
        // Otherwise the route that makes the gateway reachable; main already
        // has one from the overlay CNI (ptp, Calico), which must keep its
        // `src`. Only the CNI's own routes count, so CHECK and a repeated ADD
        // plan what the first ADD did.
        if let (Some(gw), false) = (def.gateway, def.onlink) {
            let gw_in_table = table == TABLE_MAIN
                && inp.pod.routes.iter().any(|r| {
                    r.table == TABLE_MAIN
                        && r.oif == Some(eth0.index)
                        && r.dst == host_net(gw)
                        && !is_ours(r)
                });
            if !gw_in_table {
                out.push(RouteSpec {
                    scope: Scope::Link,
                    ..RouteSpec::pod(host_net(gw), table, first)
                });
            }
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
            if def.gateway.is_some_and(|gw| dst == host_net(gw)) {
                continue;
            }
            // A device-only default (no gateway): the cluster is on the link.
            let scope = match def.gateway {
                Some(_) => Scope::Universe,
                None => Scope::Link,
            };
            out.push(RouteSpec {
                via: def.gateway,
                scope,
                onlink: def.onlink,
                ..RouteSpec::pod(dst, table, first)
            });
        }
    }
    out
}

/// Does another NIC route `r`'s prefix in `main` at the same metric?
fn shared_in_main(pod: &PodView, r: &Route) -> bool {
    pod.routes.iter().any(|o| {
        o.table == TABLE_MAIN
            && o.dst == r.dst
            && o.metric == r.metric
            && o.oif != r.oif
            && !is_ours(o)
    })
}

/// A route of `main` leaving it for a NIC's table: `route`, and the other
/// nexthops of the multipath route it belongs to, which stay.
pub(super) fn move_out(pod: &PodView, route: &Route) -> Move {
    let others = match route.multipath {
        false => Vec::new(),
        true => pod
            .routes
            .iter()
            .filter(|r| {
                r.multipath
                    && r != &route
                    && r.table == route.table
                    && r.dst == route.dst
                    && r.metric == route.metric
            })
            .cloned()
            .collect(),
    };
    Move {
        route: route.clone(),
        others,
    }
}

pub(super) fn later_nic(cfg: &Config, inp: &Inputs, plan: &mut Plan) {
    let Some(nic) = inp.pod.link(&inp.ifname) else {
        return;
    };
    let fams = families(&inp.ips);
    // prevResult's addresses and the NIC's SLAAC ones, alike: `from` rules,
    // cluster routes sourced from them, the node's routes to them.
    let own = nic_ips(inp);
    let own_fams = families(&own);
    let is_default_nic = cfg.default_route_nic() == inp.ifname;
    let ids = &cfg.ids;
    let table = existing_table(&inp.pod, &own, ids.from_priority)
        .unwrap_or_else(|| free_table(&inp.pod, ids.first_nic_table, &[ids.reply_table]));

    if cfg.tune_pod_routes {
        let mut has_default = BTreeSet::new();
        for r in inp
            .pod
            .routes
            .iter()
            .filter(|r| r.table == TABLE_MAIN && r.oif == Some(nic.index) && !is_ours(r))
            // Only the families of the NIC's addresses (prevResult's and
            // SLAAC's): its `from` rules are of those, and DEL finds the
            // table through them. A router advertisement's routes whatever
            // the family: its default must leave main even when the RA gave
            // the NIC no address.
            .filter(|r| own_fams.contains(&r.family()) || r.protocol == RTPROT_RA)
        {
            if is_link_local(&r.dst.addr()) && r.dst.prefix_len() > 0 {
                continue;
            }
            // Past its lifetime, not yet collected by the kernel.
            if r.expires == Some(0) {
                continue;
            }
            plan.routes.push(copy_into(r, table, &inp.ifname));
            if r.dst.prefix_len() == 0 {
                has_default.insert(r.family());
            }
            // main keeps one default (the default NIC's). Other routes stay
            // in main too (unbound traffic to them takes this NIC, with its
            // address; the main plugin's CHECK looks for them there) unless
            // another NIC routes the same prefix at the same metric: an IPv6
            // multipath route would hash replies onto either NIC.
            let is_default = r.dst.prefix_len() == 0;
            let moves = match is_default {
                true => !is_default_nic,
                false => shared_in_main(&inp.pod, r),
            };
            if !is_connected(r) && moves {
                plan.moves.push(move_out(&inp.pod, r));
            }
        }
        // Replies to remote clients need a default even when main had none.
        for gw in &inp.gateways {
            let f = Family::of(gw);
            if fams.contains(&f) && !has_default.contains(&f) {
                let tables = match is_default_nic {
                    true => vec![table, TABLE_MAIN],
                    false => vec![table],
                };
                for t in tables {
                    plan.routes.push(RouteSpec {
                        via: Some(*gw),
                        ..RouteSpec::pod(default_net(f), t, &inp.ifname)
                    });
                }
                has_default.insert(f);
            }
        }
        let cluster = match inp.layout {
            Layout::UnderlayLater => via_veth_from(inp, &own, cfg, table, &own_fams),
            // main too: a node address inside this NIC's subnet would
            // otherwise leave through this NIC (a macvlan cannot reach its
            // parent's address), and with podDefaultRouteNic = this NIC main's
            // default no longer leads to eth0 for Services and overlay pods.
            _ => {
                let mut v = via_overlay(inp, cfg, table, &own_fams);
                v.extend(via_overlay(inp, cfg, TABLE_MAIN, &own_fams));
                v
            }
        };
        plan.routes.extend(cluster);
        plan.rules
            .extend(from_rules(&own, table, ids.from_priority));
        // Only the default-route NIC's router advertisements may put a
        // default into main (one already there moved above, like any other
        // default). DEL puts the old value back.
        if !is_default_nic {
            let key = format!("net/ipv6/conf/{}/{RA_DEFRTR}", inp.ifname);
            plan.sysctls.push(SysctlSpec::new(Side::Pod, key, "0"));
        }
        first_nic_table(cfg, inp, table, plan, is_default_nic);
    }
    // Host side: the node reaches this NIC's addresses through the pod's
    // link to the host (veth0 in underlay, eth0's peer in overlay).
    match (inp.layout, &inp.veth, &inp.overlay_peer) {
        (Layout::UnderlayLater, Some(v), _) => host_side(cfg, &own, &v.host, v.pod_mac, plan),
        (Layout::OverlayLater, _, Some((peer, mac))) => host_side(cfg, &own, peer, *mac, plan),
        _ => {}
    }
    plan.policy = policy_routes(&cfg.policy_routes, table, &inp.ifname);
}
