//! Addresses no pod may be given: the node's own, and the gateways the node
//! routes through. ADD puts a `/32` `/128` host route for every pod address
//! into `hostRuleTable`, which the node looks up before `main`; for such an
//! address that route would send the node's own traffic (to its gateway, or
//! to itself) into the pod. So ADD refuses them before it changes anything.

use std::net::IpAddr;

use cni::error::code;
use cni::netlink::{Family, Netlink, TABLE_MAIN};
use cni::{Error, Result};
use ipnet::IpNet;

use crate::add::Context;
use crate::plan::Layout;

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

/// Read what the node owns and refuse the call's addresses that collide.
/// Only layouts that add host routes need it (an overlay first NIC adds none).
pub fn check(host: &Netlink, ctx: &Context) -> Result<()> {
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
    refuse(&ctx.inputs.ips, &node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
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
