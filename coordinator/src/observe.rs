//! Reading the pod and the host before planning. Only small dumps: the pod's
//! own tables, and the host's addresses (host veths made by us carry none);
//! never the host's route tables, whose size grows with the number of pods.

use std::collections::HashMap;
use std::net::IpAddr;

use cni::netlink::{Address, Netlink, TABLE_LOCAL};
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
    // Both families in one dump each: two round trips fewer per call.
    let routes = pod
        .all_routes()?
        .into_iter()
        .filter(|r| r.table != TABLE_LOCAL)
        .collect();
    let rules = pod.all_rules()?;
    let dumped = pod.addresses(None)?;
    let slaac = dumped
        .iter()
        .filter(|a| is_autoconf(a))
        .map(|a| (a.index, a.addr))
        .collect();
    let addrs = dumped.into_iter().map(|a| (a.index, a.addr)).collect();
    Ok(PodView {
        links,
        routes,
        rules,
        addrs,
        slaac,
    })
}

/// A global IPv6 address the kernel configured itself from a router
/// advertisement (SLAAC, and its privacy addresses): it has a lifetime, so
/// no IFA_F_PERMANENT, which every address added by a plugin (no lifetime)
/// carries. `ip` prints the difference as `dynamic`.
pub fn is_autoconf(a: &Address) -> bool {
    a.addr.addr().is_ipv6()
        && a.scope == 0
        && !is_link_local(&a.addr.addr())
        && !a.flags.permanent
        && !a.flags.dadfailed
}

/// Node addresses and the host interfaces that own them.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    /// First of each family = hijack gateway.
    pub node_ips: Vec<IpAddr>,
    /// Indices of the non-plumbing interfaces holding node addresses: where a
    /// stale neighbour entry for a pod address can hide.
    pub uplinks: Vec<u32>,
    /// Every address the node holds (any device, link-local excepted): no pod
    /// may be given one (see `guard`). Read from the same dump.
    pub addrs: Vec<IpAddr>,
}

/// Node addresses in a fixed order, first of each family = hijack gateway:
/// for each pod address the node's own address on that subnet, else the
/// host's source toward the pod's gateway (or its network, never a host-only
/// prefix's own address) over a real uplink; then every global address of a
/// non-plumbing interface.
///
/// The order must not depend on what ADD itself installed: once the host has
/// `<pod IP> dev <our veth>` in its table, the kernel's source toward the pod
/// IP is just the first address of the netns, so a later CHECK or repeated
/// ADD would pick another hijack gateway than the first ADD did. Hence the
/// lookup goes toward the pod's gateway (or its subnet's network address),
/// never toward the pod IP itself.
pub fn host_view(host: &Netlink, pod_ips: &[IpNet], gateways: &[IpAddr]) -> Result<HostView> {
    let mut v = HostView::default();
    let addrs = host.addresses(None)?;
    // Only devices whose addresses are all IPv6 cost a lookup.
    let mut names: HashMap<u32, Option<String>> = names_from_labels(&addrs)
        .into_iter()
        .map(|(index, name)| (index, Some(name)))
        .collect();
    let mut plumbing = |index: u32, host: &Netlink| -> Result<bool> {
        let name = match names.get(&index) {
            Some(n) => n.clone(),
            None => {
                let n = host.link_by_index(index)?.map(|l| l.name);
                names.insert(index, n.clone());
                n
            }
        };
        Ok(name.is_none_or(|n| is_plumbing(&n)))
    };
    let mut uplink_addrs = Vec::new();
    for a in addrs {
        let ip = a.addr.addr();
        if !is_link_local(&ip) && !v.addrs.contains(&ip) {
            v.addrs.push(ip);
        }
        if a.scope != 0 || is_link_local(&ip) || ip.is_loopback() || a.flags.dadfailed {
            continue;
        }
        if plumbing(a.index, host)? {
            continue;
        }
        if !v.uplinks.contains(&a.index) {
            v.uplinks.push(a.index);
        }
        uplink_addrs.push(a.addr);
    }
    let mut routed = Vec::new();
    for ip in pod_ips {
        if uplink_addrs.iter().any(|a| a.contains(&ip.addr())) {
            continue;
        }
        let gateway = gateways
            .iter()
            .copied()
            .find(|g| g.is_ipv4() == ip.addr().is_ipv4());
        let toward = match gateway {
            Some(g) => g,
            // A /32 or /128's network is the pod IP itself, whose route ADD
            // replaces: no lookup, the uplink order decides.
            None if ip.prefix_len() == ip.max_prefix_len() => continue,
            None => ip.network(),
        };
        if let Some(l) = host.route_get(toward)? {
            let through_uplink = match l.oif {
                Some(oif) => !plumbing(oif, host)?,
                None => false,
            };
            if let (true, Some(src)) = (through_uplink, l.prefsrc) {
                routed.push(src);
            }
        }
    }
    v.node_ips = node_ip_order(pod_ips, &uplink_addrs, &routed);
    Ok(v)
}

/// The device names an address dump already tells: an IPv4 address's label
/// is its device's name, or `name:alias` (the kernel rewrites labels when a
/// device is renamed, and `ip` refuses a label that does not start with the
/// device's name). Saves a link lookup per device on the node.
fn names_from_labels(addrs: &[Address]) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for a in addrs {
        let name = a.label.as_deref().and_then(|l| l.split(':').next());
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            out.entry(a.index).or_insert_with(|| name.to_string());
        }
    }
    out
}

/// See [`host_view`]: `uplink_addrs` in the kernel's dump order, `routed` the
/// host's sources toward the networks of pod addresses on none of its subnets.
pub fn node_ip_order(pod_ips: &[IpNet], uplink_addrs: &[IpNet], routed: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |ip: IpAddr| {
        if !is_link_local(&ip) && !out.contains(&ip) {
            out.push(ip);
        }
    };
    for p in pod_ips {
        if let Some(a) = uplink_addrs.iter().find(|a| a.contains(&p.addr())) {
            push(a.addr());
        }
    }
    for ip in routed {
        push(*ip);
    }
    for a in uplink_addrs {
        push(a.addr());
    }
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = out.iter().partition(|ip| ip.is_ipv4());
    v4.into_iter().chain(v6).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ip_order_prefers_the_pods_subnet_then_dump_order() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let uplinks = [
            n("10.6.0.2/16"),
            n("fd00:6::2/64"),
            n("10.7.0.2/16"),
            n("fd00:7::2/64"),
        ];
        // A pod on the second subnet: the node's address there leads.
        assert_eq!(
            node_ip_order(&[n("10.7.1.1/16"), n("fd00:7::1:1/64")], &uplinks, &[]),
            vec![
                ip("10.7.0.2"),
                ip("10.6.0.2"),
                ip("fd00:7::2"),
                ip("fd00:6::2")
            ]
        );
        // A pod on no node subnet: the routed source, then dump order.
        assert_eq!(
            node_ip_order(&[n("10.9.1.1/24")], &uplinks, &[ip("10.7.0.2")]),
            vec![
                ip("10.7.0.2"),
                ip("10.6.0.2"),
                ip("fd00:6::2"),
                ip("fd00:7::2")
            ]
        );
        assert_eq!(
            node_ip_order(&[n("10.6.1.1/16")], &uplinks, &[]),
            vec![
                ip("10.6.0.2"),
                ip("10.7.0.2"),
                ip("fd00:6::2"),
                ip("fd00:7::2")
            ]
        );
    }

    #[test]
    fn device_names_come_from_ipv4_labels() {
        let a = |index: u32, addr: &str, label: Option<&str>| Address {
            index,
            addr: addr.parse().unwrap(),
            flags: Default::default(),
            scope: 0,
            label: label.map(str::to_string),
        };
        let names = names_from_labels(&[
            a(2, "10.6.0.2/16", Some("ens1")),
            a(2, "10.6.0.3/16", Some("ens1:vip")),
            a(3, "10.7.0.2/16", Some("veth12ab:x")),
            a(4, "fd00:6::2/64", None),
            a(5, "10.8.0.2/16", Some("")),
        ]);
        let mut got: Vec<_> = names.into_iter().collect();
        got.sort();
        assert_eq!(got, vec![(2, "ens1".into()), (3, "veth12ab".into())]);
    }

    /// What the kernel reports for a SLAAC address (`scope global dynamic`)
    /// against a plugin's address and the link-local one.
    #[test]
    fn autoconf_addresses_are_global_ipv6_without_permanent() {
        let a = |addr: &str, scope: u8, permanent: bool| Address {
            index: 3,
            addr: addr.parse().unwrap(),
            flags: cni::netlink::AddrFlags {
                permanent,
                ..Default::default()
            },
            scope,
            label: None,
        };
        assert!(is_autoconf(&a("fd00:7::a8c1:abff:fe12:3456/64", 0, false)));
        assert!(!is_autoconf(&a("fd00:7::1:1/64", 0, true)));
        assert!(!is_autoconf(&a("fe80::a8c1:abff:fe12:3456/64", 253, true)));
        assert!(!is_autoconf(&a("10.7.1.1/16", 0, false)));
        let mut failed = a("fd00:7::a8c1:abff:fe12:3456/64", 0, false);
        failed.flags.dadfailed = true;
        assert!(!is_autoconf(&failed));
    }

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
