//! The first NIC's own table, planned by whichever later NIC's ADD finds
//! the pod with a second NIC: `from` rules of the first NIC's addresses, its
//! connected and default routes copied in (and, with `podDefaultRouteNic`
//! on a later NIC, its defaults out of `main`), so a reply from the first
//! NIC's address leaves through it whatever subnet the client is on.

use cni::netlink::{Route, Scope, TABLE_MAIN};

use super::later::{existing_table, free_table, move_out};
use super::{
    copy_into, from_rules, is_connected, is_link_local, is_ours, Inputs, Layout, Move, Plan,
};
use crate::config::Config;
use crate::names::POD_VETH;

/// Once the pod has a second NIC, the first NIC gets a table of its own too,
/// reached by `from` rules of its addresses: a reply from the first NIC's
/// address then leaves through the first NIC even toward a client on a later
/// NIC's subnet (whose connected route stays in `main`). When
/// `podDefaultRouteNic` names this later NIC (`move_default`), the first
/// NIC's default also leaves `main`.
pub(super) fn first_nic_table(
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
        .filter(|r| !is_ours(r))
        .collect();
    let eth0_ips = inp.pod.addrs_of(eth0.index);
    if eth0_ips.is_empty() {
        return;
    }
    let ids = &cfg.ids;
    let table = match inp.layout {
        Layout::OverlayLater => ids.overlay_first_nic_table(),
        _ => existing_table(&inp.pod, &eth0_ips, ids.from_priority).unwrap_or_else(|| {
            free_table(
                &inp.pod,
                ids.first_nic_table,
                &[ids.reply_table, this_table],
            )
        }),
    };
    for r in inp
        .pod
        .routes
        .iter()
        .filter(|r| r.table == TABLE_MAIN && r.oif == Some(eth0.index) && !is_ours(r))
        .filter(|r| is_connected(r) || r.dst.prefix_len() == 0)
        .filter(|r| !(is_link_local(&r.dst.addr()) && r.dst.prefix_len() > 0))
    {
        plan.routes.push(copy_into(r, table, first));
    }
    // ptp-style overlays reach their gateway through a /32 scope-link route.
    for r in inp.pod.routes.iter().filter(|r| {
        r.table == TABLE_MAIN
            && r.oif == Some(eth0.index)
            && !is_ours(r)
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
        let moves: Vec<Move> = defaults
            .into_iter()
            .map(|r| move_out(&inp.pod, r))
            .collect();
        plan.moves.extend(moves);
    }
    plan.rules
        .extend(from_rules(&eth0_ips, table, ids.from_priority));
}
