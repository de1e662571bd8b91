//! From what the kernel answered for one flow to a verdict: symmetric, or
//! which rule or route is missing and which config field fixes it. Plain
//! data in, plain data out.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::plan::REPLY_MARK;

/// Which conversation a flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    /// A client on the NIC's own subnet talks to the NIC's address.
    Subnet,
    /// A client behind the NIC's gateway talks to the NIC's address.
    Routed,
    /// The node (kubelet probe) talks to the NIC's address.
    Node,
    /// The pod, from the NIC's address, talks to a Service clusterIP.
    Service,
    /// A client reaches the NIC's address through a NodePort DNAT on the node.
    NodePort,
}

impl FlowKind {
    pub fn name(self) -> &'static str {
        match self {
            FlowKind::Subnet => "subnet",
            FlowKind::Routed => "routed",
            FlowKind::Node => "node",
            FlowKind::Service => "service",
            FlowKind::NodePort => "nodeport",
        }
    }
}

/// Where one reply probe went: the pod interface, or None when unroutable.
pub type ReplyNic = Option<String>;

/// What was observed for one flow, plus the pod facts the fix text needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub kind: FlowKind,
    pub nic: String,
    /// The NIC's address (the pod end of the flow).
    pub addr: IpAddr,
    /// The other end: client, node address or clusterIP.
    pub peer: IpAddr,
    /// The pod interface facing the node (`veth0`, or an overlay `eth0`).
    pub host_iface: Option<String>,
    /// Where the request enters the pod (leaves it, for `service`); None when
    /// it never reaches the pod through a pod interface.
    pub request_nic: Option<String>,
    /// Why the pod's input path refuses the request, when it does.
    pub refused: Option<String>,
    /// Where the reply (or replies, one per probed client) goes.
    pub replies: Vec<ReplyNic>,
    /// The pod's policy table holding this NIC's routes, if any.
    pub nic_table: Option<u32>,
    /// A `from <addr>` rule exists in the pod.
    pub from_rule: bool,
    /// The reply mark is in place (nftables table and `fwmark` rule).
    pub reply_mark: bool,
    /// The pod's reply table: where its `fwmark` rule leads, else
    /// `podReplyTable` of the node defaults.
    pub reply_table: u32,
    /// The node's host rule table (for the fix text).
    pub host_rule_table: u32,
    /// serviceCIDR entries of the explained config (the service flow).
    pub service_cidr: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub symmetric: bool,
    pub fix: Option<String>,
}

fn ok() -> Verdict {
    Verdict {
        symmetric: true,
        fix: None,
    }
}

fn broken(fix: String) -> Verdict {
    Verdict {
        symmetric: false,
        fix: Some(fix),
    }
}

/// The distinct reply interfaces, in first-seen order.
pub fn distinct(replies: &[ReplyNic]) -> Vec<ReplyNic> {
    let mut v: Vec<ReplyNic> = Vec::new();
    for r in replies {
        if !v.contains(r) {
            v.push(r.clone());
        }
    }
    v
}

pub fn decide(f: &Facts) -> Verdict {
    let Some(req) = &f.request_nic else {
        return broken(no_request_path(f));
    };
    if f.kind == FlowKind::Service && Some(req) != f.host_iface.as_ref() {
        return broken(service_fix(f, req));
    }
    let spread = distinct(&f.replies);
    if spread.len() > 1 {
        let names: Vec<&str> = spread.iter().map(|r| r.as_deref().unwrap_or("-")).collect();
        return broken(format!(
            "replies from {} leave by several interfaces ({}): a multipath route (IPv6 merges \
             default routes of equal metric into one) spreads them; keep one default per \
             table: give only one NIC a default route, or set podDefaultRouteNic",
            f.addr,
            names.join(", ")
        ));
    }
    let reply = spread.into_iter().next().flatten();
    if reply.as_ref() != Some(req) {
        return broken(reply_fix(f, req, reply.as_deref()));
    }
    if let Some(why) = &f.refused {
        return broken(format!(
            "the pod drops the request from {} on {req}: {why}; podRPFilter: 0 (or 2) \
             relaxes the check",
            f.peer
        ));
    }
    ok()
}

fn no_request_path(f: &Facts) -> String {
    match f.kind {
        FlowKind::Node | FlowKind::NodePort => format!(
            "the node does not route {} into the pod: table {} (hostRuleTable) needs {} \
             through the pod's host veth and the node needs `from all lookup {}`; re-run ADD \
             with the hostRuleTable the node uses",
            f.addr,
            f.host_rule_table,
            host_prefix(f.addr),
            f.host_rule_table
        ),
        FlowKind::Service => format!(
            "the pod has no route from {} to the Service {}: add its CIDR to serviceCIDR",
            f.addr, f.peer
        ),
        FlowKind::Subnet | FlowKind::Routed => format!("{} is not usable on {}", f.addr, f.nic),
    }
}

fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn service_fix(f: &Facts, req: &str) -> String {
    let Some(host) = &f.host_iface else {
        return "the pod has no interface to the node (no veth0, no overlay eth0): Services \
                are reached through the node; mode underlay adds veth0"
            .to_string();
    };
    if f.service_cidr.iter().any(|n| n.contains(&f.peer)) {
        format!(
            "the request to {} leaves by {req}, not {host}: the pod lacks the serviceCIDR \
             route through {host}; re-run ADD",
            f.peer
        )
    } else {
        format!(
            "the request to {} leaves by {req} toward the underlay gateway, which knows no \
             Services: add the Service range to serviceCIDR (in the node defaults file)",
            f.peer
        )
    }
}

fn reply_fix(f: &Facts, req: &str, reply: Option<&str>) -> String {
    let went = match reply {
        Some(r) => format!("leaves by {r}"),
        None => "has no route".to_string(),
    };
    let what = format!("the reply from {} to {} {went}, not {req}", f.addr, f.peer);
    match f.kind {
        FlowKind::Node | FlowKind::NodePort if Some(req) == f.host_iface.as_deref() => {
            if f.reply_mark {
                format!(
                    "{what}: table {} needs a default via the node through {req}; \
                     re-run ADD",
                    f.reply_table
                )
            } else {
                format!(
                    "{what}: the reply mark is missing (nftables table inet coordinator, rule \
                     `fwmark {REPLY_MARK:#x} lookup {}`); re-run ADD in mode underlay",
                    f.reply_table
                )
            }
        }
        _ if !f.from_rule => match f.nic_table {
            Some(t) => format!(
                "{what}: rule `from {} lookup {t}` is missing; re-run ADD for {} \
                 (tunePodRoutes: true)",
                f.addr, f.nic
            ),
            None => format!(
                "{what}: {} has no policy table; attach it with tunePodRoutes: true",
                f.nic
            ),
        },
        _ => match f.nic_table {
            Some(t) => format!(
                "{what}: table {t} has no route toward {}; give {}'s IPAM a gateway or add \
                 it to policyRoutes",
                f.peer, f.nic
            ),
            None => format!(
                "{what}: the `from {}` rule leads to no table of {}",
                f.addr, f.nic
            ),
        },
    }
}

/// A client address on `net` that is none of `avoid`: from the top of the
/// range down (the bottom holds gateways and nodes). None for /32 and /128.
pub fn subnet_client(net: &IpNet, avoid: &[IpAddr]) -> Option<IpAddr> {
    if net.prefix_len() >= net.max_prefix_len() - 1 {
        return None;
    }
    let top: u128 = match net.broadcast() {
        IpAddr::V4(b) => u32::from(b) as u128,
        IpAddr::V6(b) => u128::from(b),
    };
    (1..16u128).find_map(|k| {
        let ip = match net {
            IpNet::V4(_) => IpAddr::V4(((top - k) as u32).into()),
            IpNet::V6(_) => IpAddr::V6((top - k).into()),
        };
        (net.contains(&ip) && ip != net.network() && !avoid.contains(&ip)).then_some(ip)
    })
}

/// Clients behind a gateway (documentation ranges, RFC 5737 / RFC 3849),
/// outside `local`: several, so a multipath route shows by spreading them.
pub fn routed_clients(v6: bool, local: &[IpNet]) -> Vec<IpAddr> {
    (1..=16u16)
        .map(|i| -> IpAddr {
            if v6 {
                IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i))
            } else {
                IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i as u8))
            }
        })
        .filter(|ip| !local.iter().any(|n| n.contains(ip)))
        .collect()
}

/// A Service address to probe: the first host of the family's first serviceCIDR.
pub fn service_ip(cidrs: &[IpNet], v6: bool) -> Option<IpAddr> {
    let net = cidrs.iter().find(|n| matches!(n, IpNet::V6(_)) == v6)?;
    let first = match net.network() {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).checked_add(1)?.into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).checked_add(1)?.into()),
    };
    net.contains(&first).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn facts(kind: FlowKind) -> Facts {
        Facts {
            kind,
            nic: "net1".into(),
            addr: ip("10.7.1.1"),
            peer: ip("192.0.2.1"),
            host_iface: Some("veth0".into()),
            request_nic: Some("net1".into()),
            refused: None,
            replies: vec![Some("net1".into())],
            nic_table: Some(101),
            from_rule: true,
            reply_mark: true,
            reply_table: 100,
            host_rule_table: 500,
            service_cidr: vec!["10.233.0.0/18".parse().unwrap()],
        }
    }

    #[test]
    fn symmetric_when_the_reply_leaves_where_the_request_came_in() {
        assert_eq!(decide(&facts(FlowKind::Routed)), ok());
        let mut f = facts(FlowKind::Node);
        f.request_nic = Some("veth0".into());
        f.replies = vec![Some("veth0".into())];
        assert_eq!(decide(&f), ok());
    }

    #[test]
    fn removed_rule_names_the_rule_and_the_field() {
        let mut f = facts(FlowKind::Routed);
        f.from_rule = false;
        f.replies = vec![Some("eth0".into())];
        let v = decide(&f);
        assert!(!v.symmetric);
        let fix = v.fix.unwrap();
        assert!(fix.contains("leaves by eth0, not net1"), "{fix}");
        assert!(
            fix.contains("`from 10.7.1.1 lookup 101` is missing"),
            "{fix}"
        );
        assert!(fix.contains("tunePodRoutes"), "{fix}");
    }

    #[test]
    fn multipath_spread_is_named() {
        let mut f = facts(FlowKind::Routed);
        f.replies = vec![
            Some("net1".into()),
            Some("eth0".into()),
            Some("net1".into()),
        ];
        let fix = decide(&f).fix.unwrap();
        assert!(fix.contains("several interfaces (net1, eth0)"), "{fix}");
        assert!(fix.contains("multipath"), "{fix}");
    }

    #[test]
    fn service_outside_service_cidr_asks_for_service_cidr() {
        let mut f = facts(FlowKind::Service);
        f.peer = ip("10.96.0.1");
        f.request_nic = Some("eth0".into());
        f.replies = vec![Some("veth0".into())];
        let fix = decide(&f).fix.unwrap();
        assert!(
            fix.contains("add the Service range to serviceCIDR"),
            "{fix}"
        );
        f.peer = ip("10.233.0.1");
        assert!(decide(&f).fix.unwrap().contains("re-run ADD"));
        f.request_nic = Some("veth0".into());
        assert_eq!(decide(&f), ok());
    }

    #[test]
    fn node_flows_without_route_or_mark() {
        let mut f = facts(FlowKind::Node);
        f.request_nic = None;
        let fix = decide(&f).fix.unwrap();
        assert!(
            fix.contains("table 500 (hostRuleTable) needs 10.7.1.1/32"),
            "{fix}"
        );
        let mut f = facts(FlowKind::NodePort);
        f.request_nic = Some("veth0".into());
        f.replies = vec![Some("net1".into())];
        f.reply_mark = false;
        let fix = decide(&f).fix.unwrap();
        assert!(fix.contains("fwmark 0xc0de lookup 100"), "{fix}");
        // A moved reply table is the one named.
        f.reply_table = 2000;
        let fix = decide(&f).fix.unwrap();
        assert!(fix.contains("fwmark 0xc0de lookup 2000"), "{fix}");
        f.reply_mark = true;
        let fix = decide(&f).fix.unwrap();
        assert!(
            fix.contains("table 2000 needs a default via the node"),
            "{fix}"
        );
    }

    #[test]
    fn refused_request_is_not_symmetric() {
        let mut f = facts(FlowKind::Subnet);
        f.refused = Some("reverse-path filter (rp_filter)".into());
        let fix = decide(&f).fix.unwrap();
        assert!(fix.contains("podRPFilter"), "{fix}");
        let mut f = facts(FlowKind::Routed);
        f.replies = vec![None];
        let fix = decide(&f).fix.unwrap();
        assert!(fix.contains("has no route"), "{fix}");
        assert!(fix.contains("policyRoutes"), "{fix}");
    }

    #[test]
    fn client_addresses() {
        let net: IpNet = "10.6.0.0/16".parse().unwrap();
        assert_eq!(subnet_client(&net, &[]), Some(ip("10.6.255.254")));
        assert_eq!(
            subnet_client(&net, &[ip("10.6.255.254")]),
            Some(ip("10.6.255.253"))
        );
        let v6: IpNet = "fd00:6::5/64".parse().unwrap();
        assert_eq!(
            subnet_client(&v6, &[]),
            Some(ip("fd00:6::ffff:ffff:ffff:fffe"))
        );
        assert_eq!(subnet_client(&"10.6.0.5/32".parse().unwrap(), &[]), None);
        assert_eq!(subnet_client(&"10.6.0.4/31".parse().unwrap(), &[]), None);
        assert_eq!(
            subnet_client(&"10.6.0.4/30".parse().unwrap(), &[ip("10.6.0.6")]),
            Some(ip("10.6.0.5"))
        );

        let r = routed_clients(false, &["192.0.2.0/29".parse().unwrap()]);
        assert_eq!(r.first(), Some(&ip("192.0.2.8")));
        assert_eq!(r.len(), 9);
        assert_eq!(routed_clients(true, &[]).len(), 16);

        let svc: Vec<IpNet> = vec![
            "10.233.0.0/18".parse().unwrap(),
            "fd00:233::/108".parse().unwrap(),
        ];
        assert_eq!(service_ip(&svc, false), Some(ip("10.233.0.1")));
        assert_eq!(service_ip(&svc, true), Some(ip("fd00:233::1")));
        assert_eq!(service_ip(&svc[..1], true), None);
    }
}
