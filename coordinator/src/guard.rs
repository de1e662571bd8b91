//! Addresses no pod may be given: the node's own, and the gateways the node
//! routes through. ADD puts a `/32` `/128` host route for every pod address
//! into `hostRuleTable`, which the node looks up before `main`; for such an
//! address that route would send the node's own traffic (to its gateway, or
//! to itself) into the pod. So ADD refuses them before it changes anything.
//!
//! Nor may a pod take an address the node already routes to another pod:
//! adding its host route would replace the other pod's (the node loses that
//! pod), and its DEL would then leave no route at all.

use std::net::IpAddr;

use cni::error::code;
use cni::netlink::{Family, Netlink, TABLE_MAIN};
use cni::{Error, Result};
use ipnet::IpNet;

use crate::config::Config;
use crate::context::Context;
use crate::plan::{is_link_local, Layout};

/// What the node holds that a pod must not: its addresses (any device) and
/// the gateways of its routes on the uplinks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeOwned {
    pub addrs: Vec<IpAddr>,
    pub gateways: Vec<IpAddr>,
}

/// The first pod address the node owns, as an error naming both.
pub fn refuse(pod_ips: &[IpNet], node: &NodeOwned) -> Result<()> {
    for ip in pod_ips.iter().map(IpNet::addr) {
        let what = if node.addrs.contains(&ip) {
            "an address of the node"
        } else if node.gateways.contains(&ip) {
            "a gateway of the node"
        } else {
            continue;
        };
        return Err(Error::plugin(
            code::IP_CONFLICT,
            format!(
                "pod address {ip} is {what}: its host route would take the node's own traffic \
                 into the pod; fix the IPAM pool (exclude {ip})"
            ),
        ));
    }
    Ok(())
}

/// Where the node routes a pod address now: the table and the output
/// device of its route lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRoute {
    pub ip: IpAddr,
    pub table: u32,
    pub oif: u32,
}

/// The first pod address the node already routes through `host_table` (the
/// host route of another pod) to a device other than `own`, the index of
/// the host device this NIC's host routes use (None: not created yet, so
/// every device is another's). A repeated ADD finds its own routes.
pub fn taken(routes: &[NodeRoute], host_table: u32, own: Option<u32>) -> Option<NodeRoute> {
    routes
        .iter()
        .find(|r| r.table == host_table && Some(r.oif) != own)
        .copied()
}

/// The refusal of an address `taken` found, naming the other pod's device.
pub fn refuse_taken(r: &NodeRoute, dev: &str) -> Error {
    Error::plugin(
        code::IP_CONFLICT,
        format!(
            "pod address {} is already routed by the node to {dev} (table {}): another pod \
             on this node holds it, and its host route would be replaced; give each pod \
             its own address",
            r.ip, r.table
        ),
    )
}

/// Everything ADD refuses before it changes anything: a table id or rule
/// priority of ours another owner uses in the pod ([`crate::owners`], from
/// the pod view already read), then what the node owns: the call's
/// addresses that collide with it. Only layouts that add host routes need
/// the latter (an overlay first NIC adds none).
pub fn check(host: &Netlink, ctx: &Context, cfg: &Config) -> Result<()> {
    crate::owners::check(cfg, ctx)?;
    if ctx.layout == Layout::OverlayFirst || ctx.inputs.ips.is_empty() {
        return Ok(());
    }
    // The addresses come from the host view's dump; the gateways from `main`
    // read per uplink, never whole (an overlay node keeps a route per pod there).
    let mut node = NodeOwned {
        addrs: ctx.host_view.addrs.clone(),
        gateways: Vec::new(),
    };
    let mut families: Vec<Family> = ctx.inputs.ips.iter().map(Family::of_net).collect();
    families.sort();
    families.dedup();
    for f in families {
        for &uplink in &ctx.host_view.uplinks {
            for r in host.routes_on(f, Some(TABLE_MAIN), Some(uplink))? {
                if let Some(gw) = r.gateway {
                    node.gateways.push(gw);
                }
            }
        }
    }
    refuse(&ctx.inputs.ips, &node)?;
    // `hostRuleTable`, where the call's host routes go.
    check_routed(host, ctx, cfg.ids.host_table)
}

/// Refuse an address another pod's host route already holds: one route
/// lookup per address (the node's own path to it), never a dump of the host
/// table, whose size grows with the number of pods.
fn check_routed(host: &Netlink, ctx: &Context, host_table: u32) -> Result<()> {
    let own_dev = match (&ctx.inputs.veth, &ctx.inputs.overlay_peer) {
        (Some(v), _) => Some(v.host.as_str()),
        (None, Some((peer, _))) => Some(peer.as_str()),
        (None, None) => None,
    };
    let own = own_dev
        .and_then(|d| ctx.host_links.iter().find(|(n, _)| n == d))
        .map(|(_, i)| *i);
    let mut routes = Vec::new();
    for ip in ctx.inputs.ips.iter().map(IpNet::addr) {
        if is_link_local(&ip) {
            continue;
        }
        if let Some(l) = host.route_get(ip)? {
            if let Some(oif) = l.oif {
                routes.push(NodeRoute {
                    ip,
                    table: l.table,
                    oif,
                });
            }
        }
    }
    let Some(r) = taken(&routes, host_table, own) else {
        return Ok(());
    };
    let dev = match host.link_by_index(r.oif)? {
        Some(l) => l.name,
        None => format!("ifindex {}", r.oif),
    };
    Err(refuse_taken(&r, &dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn an_address_routed_to_another_pod_is_taken() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let r = |a: &str, table, oif| NodeRoute {
            ip: ip(a),
            table,
            oif,
        };
        // Through the uplink (main) or the node itself (local): free.
        let free = [r("10.6.1.5", 254, 2), r("fd00:6::5", 255, 1)];
        assert_eq!(taken(&free, 500, None), None);
        // Our own host veth: a repeated ADD.
        assert_eq!(taken(&[r("10.6.1.5", 500, 7)], 500, Some(7)), None);
        // Another pod's veth, before ours exists or after.
        for own in [None, Some(7)] {
            assert_eq!(
                taken(&[free[0], r("fd00:6::5", 500, 9)], 500, own),
                Some(r("fd00:6::5", 500, 9))
            );
        }
        // Another host table than ours holds it: not our route to replace.
        assert_eq!(taken(&[r("10.6.1.5", 600, 9)], 500, None), None);
        let e = refuse_taken(&r("10.6.1.5", 500, 9), "veth0123456789a");
        assert_eq!(e.code(), code::IP_CONFLICT);
        let msg = e.to_string();
        assert!(
            msg.contains("10.6.1.5") && msg.contains("veth0123456789a"),
            "{msg}"
        );
    }

    #[test]
    fn node_addresses_and_gateways_are_refused() {
        let node = NodeOwned {
            addrs: vec!["10.6.0.2".parse().unwrap(), "fd00:6::2".parse().unwrap()],
            gateways: vec!["10.6.0.1".parse().unwrap()],
        };
        refuse(&nets(&["10.6.1.5/16", "fd00:6::5/64"]), &node).unwrap();
        refuse(&[], &node).unwrap();
        for (ips, what) in [
            (nets(&["10.6.0.1/16"]), "gateway of the node"),
            (
                nets(&["10.6.1.5/16", "fd00:6::2/64"]),
                "address of the node",
            ),
            (nets(&["10.6.0.2/32"]), "address of the node"),
        ] {
            let e = refuse(&ips, &node).unwrap_err();
            assert_eq!(e.code(), code::IP_CONFLICT);
            assert!(e.to_string().contains(what), "{e}");
        }
    }
}
