//! Reading the pod and the host before planning. Only small dumps: the pod's
//! own tables, and the host's addresses (host veths made by us carry none);
//! never the host's route tables, whose size grows with the number of pods.

use std::collections::HashMap;
use std::net::IpAddr;

use cni::netlink::{Family, Link, Netlink, TABLE_LOCAL};
use cni::Result;
use ipnet::IpNet;

use crate::plan::{is_link_local, PodView};

/// Interface name prefixes of container plumbing: their addresses are not
/// the node's.
const PLUMBING: &[&str] = &[
    "veth",
    "cali",
    "cilium",
    "lxc",
    "docker",
    "cni",
    "flannel",
    "kube-ipvs",
    "vxlan",
    "tunl",
    "genev",
    "nodelocaldns",
    "weave",
    "vxlan",
    "br-",
    "virbr",
    "tap",
    "tun",
];

pub fn is_plumbing(name: &str) -> bool {
    name == "lo" || PLUMBING.iter().any(|p| name.starts_with(p))
}

pub fn pod_view(pod: &Netlink) -> Result<PodView> {
    let links = pod.links()?;
    let mut routes = Vec::new();
    let mut rules = Vec::new();
    for f in [Family::V4, Family::V6] {
        routes.extend(
            pod.routes(f, None)?
                .into_iter()
                .filter(|r| r.table != TABLE_LOCAL),
        );
        rules.extend(pod.rules(f)?);
    }
    let addrs = pod
        .addresses(None)?
        .into_iter()
        .map(|a| (a.index, a.addr))
        .collect();
    Ok(PodView {
        links,
        routes,
        rules,
        addrs,
    })
}

/// Node addresses and the host interfaces that own them.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    /// First of each family = hijack gateway.
    pub node_ips: Vec<IpAddr>,
    /// Indices of the non-plumbing interfaces holding node addresses: where a
    /// stale neighbour entry for a pod address can hide.
    pub uplinks: Vec<u32>,
}

/// The host's source address toward each pod address first, then every
/// global address of a non-plumbing interface.
pub fn host_view(host: &Netlink, pod_ips: &[IpNet]) -> Result<HostView> {
    let mut v = HostView::default();
    let push = |ip: IpAddr, v: &mut HostView| {
        if !v.node_ips.contains(&ip) {
            v.node_ips.push(ip);
        }
    };
    let mut names: HashMap<u32, Option<Link>> = HashMap::new();
    for ip in pod_ips {
        if let Some(l) = host.route_get(ip.addr())? {
            if let Some(src) = l.prefsrc.filter(|s| !is_link_local(s)) {
                push(src, &mut v);
            }
        }
    }
    for a in host.addresses(None)? {
        let ip = a.addr.addr();
        if a.scope != 0 || is_link_local(&ip) || ip.is_loopback() || a.flags.dadfailed {
            continue;
        }
        let link = match names.get(&a.index) {
            Some(l) => l.clone(),
            None => {
                let l = host.link_by_index(a.index)?;
                names.insert(a.index, l.clone());
                l
            }
        };
        let Some(link) = link else { continue };
        if is_plumbing(&link.name) {
            continue;
        }
        if !v.uplinks.contains(&a.index) {
            v.uplinks.push(a.index);
        }
        push(ip, &mut v);
    }
    // Keep the route-derived source first within each family.
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = v.node_ips.iter().partition(|ip| ip.is_ipv4());
    v.node_ips = v4.into_iter().chain(v6).collect();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plumbing_names() {
        for n in [
            "veth1a2b",
            "cali123",
            "cilium_host",
            "lxc12",
            "docker0",
            "cni0",
            "kube-ipvs0",
            "lo",
        ] {
            assert!(is_plumbing(n), "{n}");
        }
        for n in ["eth0", "ens1", "bond0", "enp3s0f1"] {
            assert!(!is_plumbing(n), "{n}");
        }
    }
}
