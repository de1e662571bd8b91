//! The underlay pod's first NIC: veth pair, node and hijack routes through
//! `veth0`, the reply path for connections entering through it.

use std::collections::BTreeSet;

use cni::netlink::{Family, Scope, TABLE_MAIN};
use ipnet::IpNet;

use super::host::host_side;
use super::{
    default_net, families, first_of, fwmark_rule, host_net, policy_routes, src_for, Inputs,
    NeighSpec, Plan, RouteSpec, Side, SysctlSpec, TCP_FWMARK_ACCEPT,
};
use crate::config::Config;
use crate::names::POD_VETH;

/// Routes to the node and the hijacked CIDRs through `veth0` (underlay), in `table`.
pub(super) fn via_veth(
    inp: &Inputs,
    cfg: &Config,
    table: u32,
    pod_fams: &BTreeSet<Family>,
) -> Vec<RouteSpec> {
    via_veth_from(inp, &inp.ips, cfg, table, pod_fams)
}

/// [`via_veth`] for traffic sourced from `ips` (the NIC whose table it is).
pub(super) fn via_veth_from(
    inp: &Inputs,
    ips: &[IpNet],
    cfg: &Config,
    table: u32,
    pod_fams: &BTreeSet<Family>,
) -> Vec<RouteSpec> {
    let mut out = Vec::new();
    for ip in &inp.node_ips {
        let f = Family::of(ip);
        if !pod_fams.contains(&f) {
            continue;
        }
        out.push(RouteSpec {
            side: Side::Pod,
            dst: host_net(*ip),
            table,
            dev: POD_VETH.into(),
            via: None,
            src: src_for(ips, f),
            scope: Scope::Link,
            metric: None,
            expires: None,
            onlink: false,
            nh_id: None,
        });
    }
    for net in cfg.hijack_all() {
        let f = Family::of_net(&net);
        if let (true, Some(gw)) = (pod_fams.contains(&f), first_of(&inp.node_ips, f)) {
            out.push(RouteSpec {
                side: Side::Pod,
                dst: net,
                table,
                dev: POD_VETH.into(),
                via: Some(gw),
                // veth0 may carry a link-local `vethLinkAddress`, which the
                // kernel would pick as source; the node cannot answer it.
                src: src_for(ips, f),
                scope: Scope::Universe,
                metric: None,
                expires: None,
                onlink: false,
                nh_id: None,
            });
        }
    }
    out
}

pub(super) fn underlay_first(cfg: &Config, inp: &Inputs, plan: &mut Plan) {
    let Some(veth) = inp.veth.clone() else {
        return;
    };
    let fams = families(&inp.ips);
    if let Some(v) = cfg.pod_rp_filter {
        plan.sysctls.push(SysctlSpec::new(
            Side::Pod,
            format!("net/ipv4/conf/{}/rp_filter", veth.pod),
            &v.to_string(),
        ));
    }
    // A veth pair cannot collide: DAD would only delay the path by ~2 s.
    for (side, dev) in [(Side::Pod, &veth.pod), (Side::Host, &veth.host)] {
        plan.sysctls.push(SysctlSpec::new(
            side,
            format!("net/ipv6/conf/{dev}/accept_dad"),
            "0",
        ));
    }
    // The host end needs no address of its own (permanent neighbours both
    // ways); without a link-local it stays out of the host's address dumps.
    plan.sysctls.push(SysctlSpec::new(
        Side::Host,
        format!("net/ipv6/conf/{}/addr_gen_mode", veth.host),
        "1",
    ));
    if let Some(a) = cfg.veth_link_address {
        plan.addresses.push((veth.pod.clone(), a));
    }
    // main: node IPs on-link through veth0, hijacked CIDRs via the first node IP.
    plan.routes.extend(via_veth(inp, cfg, TABLE_MAIN, &fams));
    // The reply table: the way back for connections that came in through veth0.
    plan.routes.extend(
        via_veth(inp, cfg, cfg.ids.reply_table, &fams)
            .into_iter()
            .filter(|r| r.via.is_none()),
    );
    for f in &fams {
        if let Some(gw) = first_of(&inp.node_ips, *f) {
            plan.routes.push(RouteSpec {
                side: Side::Pod,
                dst: default_net(*f),
                table: cfg.ids.reply_table,
                dev: POD_VETH.into(),
                via: Some(gw),
                src: None,
                scope: Scope::Universe,
                metric: None,
                expires: None,
                onlink: false,
                nh_id: None,
            });
            plan.rules.push((Side::Pod, fwmark_rule(&cfg.ids, *f)));
        }
    }
    for ip in &inp.node_ips {
        if fams.contains(&Family::of(ip)) {
            plan.neighbours.push(NeighSpec {
                side: Side::Pod,
                dev: POD_VETH.into(),
                ip: *ip,
                mac: veth.host_mac,
            });
        }
    }
    plan.reply_mark = true;
    // A SYN-ACK is routed by the request socket before the output chain can
    // mark it: with no default in main that first lookup fails and the
    // NodePort client never hears back. With this the request socket takes
    // the SYN's mark (set on ingress by the reply-mark table) into that
    // lookup; one IPv4 key, per netns, for IPv4 and IPv6 sockets alike.
    plan.sysctls
        .push(SysctlSpec::new(Side::Pod, TCP_FWMARK_ACCEPT.into(), "1"));
    host_side(cfg, &inp.ips, &veth.host, veth.pod_mac, plan);
    // policyRoutes of the first NIC go to main, through it.
    plan.policy = policy_routes(&cfg.policy_routes, TABLE_MAIN, &inp.ifname);
    plan.veth = Some(veth);
}
