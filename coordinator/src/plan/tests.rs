use super::*;
use crate::config::Config;
use crate::names::POD_VETH;
use cni::netlink::{Link, RTPROT_BOOT, TABLE_MAIN};
use serde_json::json;

// The default ids, as literals: a config that sets none plans exactly what
// every release before the ids became config fields did.
const TABLE_REPLY: u32 = 100;
const TABLE_FIRST_NIC: u32 = 101;
const PRIO_FWMARK: u32 = 900;
const PRIO_FROM: u32 = 1000;

pub(super) fn cfg(extra: serde_json::Value) -> Config {
    let mut v = extra;
    v["defaultsFile"] = json!("/nonexistent");
    Config::from_raw(&v).unwrap()
}

pub(super) fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
    Link {
        index,
        name: name.into(),
        kind: kind.map(str::to_string),
        mac: Some([2, 0, 0, 0, 0, index as u8]),
        mtu: 1500,
        up: true,
        link: None,
        link_netnsid: None,
        txqlen: 1000,
        ipvlan_mode: None,
    }
}

pub(super) fn route(
    dst: &str,
    table: u32,
    oif: u32,
    gw: Option<&str>,
    proto: u8,
    scope: Scope,
) -> Route {
    let mut r = Route::new(dst.parse().unwrap(), table);
    r.oif = Some(oif);
    r.gateway = gw.map(|g| g.parse().unwrap());
    r.scope = scope;
    r.protocol = proto;
    r
}

fn veth() -> VethPlan {
    VethPlan {
        host: "vethabc".into(),
        host_mac: [2, 1, 1, 1, 1, 1],
        pod: POD_VETH.into(),
        pod_mac: [2, 2, 2, 2, 2, 2],
        mtu: 1500,
        create: true,
    }
}

/// An underlay pod: macvlan eth0 (10.6.0.5/16, fd00:6::5/64) and, when
/// `net1`, a macvlan net1 (10.7.0.5/16) with its default in main.
fn pod(net1: bool) -> PodView {
    let mut p = PodView {
        links: vec![link(1, "lo", None), link(2, "eth0", Some("macvlan"))],
        routes: vec![
            route(
                "10.6.0.0/16",
                TABLE_MAIN,
                2,
                None,
                RTPROT_KERNEL,
                Scope::Link,
            ),
            route(
                "0.0.0.0/0",
                TABLE_MAIN,
                2,
                Some("10.6.0.1"),
                RTPROT_BOOT,
                Scope::Universe,
            ),
            route(
                "fd00:6::/64",
                TABLE_MAIN,
                2,
                None,
                RTPROT_KERNEL,
                Scope::Universe,
            ),
            route(
                "fe80::/64",
                TABLE_MAIN,
                2,
                None,
                RTPROT_KERNEL,
                Scope::Universe,
            ),
        ],
        rules: vec![],
        addrs: vec![
            (2, "10.6.0.5/16".parse().unwrap()),
            (2, "fd00:6::5/64".parse().unwrap()),
        ],
        slaac: vec![],
    };
    if net1 {
        p.links.push(link(3, "net1", Some("macvlan")));
        p.links.push(link(4, "veth0", Some("veth")));
        // What eth0's underlay ADD put in main through veth0.
        for (dst, gw, scope) in [
            ("10.6.0.2/32", None, Scope::Link),
            ("10.233.0.0/18", Some("10.6.0.2"), Scope::Universe),
        ] {
            let mut r = route(dst, TABLE_MAIN, 4, gw, RTPROT_BOOT, scope);
            r.prefsrc = Some("10.6.0.5".parse().unwrap());
            p.routes.push(r);
        }
        p.routes.push(route(
            "10.7.0.0/16",
            TABLE_MAIN,
            3,
            None,
            RTPROT_KERNEL,
            Scope::Link,
        ));
        p.routes.push(route(
            "172.16.0.0/12",
            TABLE_MAIN,
            3,
            Some("10.7.0.1"),
            RTPROT_BOOT,
            Scope::Universe,
        ));
        p.addrs.push((3, "10.7.0.5/16".parse().unwrap()));
    }
    p
}

pub(super) fn first_inputs() -> Inputs {
    Inputs {
        layout: Layout::UnderlayFirst,
        ifname: "eth0".into(),
        ips: vec![
            "10.6.0.5/16".parse().unwrap(),
            "fd00:6::5/64".parse().unwrap(),
        ],
        gateways: vec!["10.6.0.1".parse().unwrap()],
        pod: pod(false),
        node_ips: vec![
            "10.6.0.2".parse().unwrap(),
            "fd00:6::2".parse().unwrap(),
            "192.168.50.1".parse().unwrap(),
        ],
        veth: Some(veth()),
        overlay_peer: None,
    }
}

fn has_route(p: &Plan, side: Side, dst: &str, table: u32, dev: &str, via: Option<&str>) -> bool {
    p.routes.iter().chain(&p.policy).any(|r| {
        r.side == side
            && r.dst == dst.parse::<IpNet>().unwrap()
            && r.table == table
            && r.dev == dev
            && r.via == via.map(|v| v.parse().unwrap())
    })
}

#[test]
fn underlay_first_nic_layout() {
    let c = cfg(
        json!({"serviceCIDR": ["10.233.0.0/18", "fd00:233::/110"], "hijackCIDR": ["169.254.25.10/32"]}),
    );
    let p = plan_add(&c, &first_inputs());
    // node IPs on-link through veth0, in main and in the reply table.
    for t in [TABLE_MAIN, TABLE_REPLY] {
        assert!(has_route(&p, Side::Pod, "10.6.0.2/32", t, "veth0", None));
        assert!(has_route(
            &p,
            Side::Pod,
            "192.168.50.1/32",
            t,
            "veth0",
            None
        ));
        assert!(has_route(&p, Side::Pod, "fd00:6::2/128", t, "veth0", None));
    }
    // hijack via the first node IP of each family.
    assert!(has_route(
        &p,
        Side::Pod,
        "10.233.0.0/18",
        TABLE_MAIN,
        "veth0",
        Some("10.6.0.2")
    ));
    assert!(has_route(
        &p,
        Side::Pod,
        "fd00:233::/110",
        TABLE_MAIN,
        "veth0",
        Some("fd00:6::2")
    ));
    assert!(has_route(
        &p,
        Side::Pod,
        "169.254.25.10/32",
        TABLE_MAIN,
        "veth0",
        Some("10.6.0.2")
    ));
    assert!(has_route(
        &p,
        Side::Pod,
        "0.0.0.0/0",
        TABLE_REPLY,
        "veth0",
        Some("10.6.0.2")
    ));
    assert!(has_route(
        &p,
        Side::Pod,
        "::/0",
        TABLE_REPLY,
        "veth0",
        Some("fd00:6::2")
    ));
    // fwmark rule per family, host rule per family.
    let fw: Vec<_> = p
        .rules
        .iter()
        .filter(|(s, r)| *s == Side::Pod && r.fwmark == Some(REPLY_MARK))
        .collect();
    assert_eq!(fw.len(), 2);
    assert!(fw
        .iter()
        .all(|(_, r)| r.table == TABLE_REPLY && r.priority == PRIO_FWMARK));
    let host: Vec<_> = p.rules.iter().filter(|(s, _)| *s == Side::Host).collect();
    assert_eq!(host.len(), 2);
    assert!(host.iter().all(|(_, r)| r.table == 500 && r.src.is_none()));
    // host routes and neighbours for both pod addresses.
    assert!(has_route(
        &p,
        Side::Host,
        "10.6.0.5/32",
        500,
        "vethabc",
        None
    ));
    assert!(has_route(
        &p,
        Side::Host,
        "fd00:6::5/128",
        500,
        "vethabc",
        None
    ));
    assert_eq!(
        p.neighbours.iter().filter(|n| n.side == Side::Host).count(),
        2
    );
    assert!(p
        .neighbours
        .iter()
        .filter(|n| n.side == Side::Pod)
        .all(|n| n.mac == [2, 1, 1, 1, 1, 1] && n.dev == "veth0"));
    assert!(p.reply_mark);
    assert_eq!(p.stale_neighbours.len(), 2);
    // no route leaves main for the first NIC.
    assert!(p.moves.is_empty());
    // v4 routes to node IPs carry the pod's source address.
    let r = p
        .routes
        .iter()
        .find(|r| r.dst == "10.6.0.2/32".parse::<IpNet>().unwrap())
        .unwrap();
    assert_eq!(r.src, Some("10.6.0.5".parse().unwrap()));
    // So do hijack routes: a link-local vethLinkAddress on veth0 must not
    // become the source of Service traffic.
    for (dst, src) in [
        ("10.233.0.0/18", "10.6.0.5"),
        ("fd00:233::/110", "fd00:6::5"),
    ] {
        let r = p
            .routes
            .iter()
            .find(|r| r.dst == dst.parse::<IpNet>().unwrap() && r.table == TABLE_MAIN)
            .unwrap();
        assert_eq!(r.src, Some(src.parse().unwrap()), "{dst}");
    }
}

#[test]
fn ipv4_only_pod_gets_no_ipv6_routes() {
    let mut i = first_inputs();
    i.ips.truncate(1);
    let p = plan_add(&cfg(json!({"serviceCIDR": ["fd00:233::/110"]})), &i);
    assert!(p.routes.iter().all(|r| r.dst.addr().is_ipv4()));
    assert!(p.rules.iter().all(|(_, r)| r.family == Family::V4));
}

/// `tcp_fwmark_accept` goes with the reply mark: the underlay first NIC
/// only (later NICs and overlay pods have no mark to carry), required
/// (an IPv4 key: never missing), once.
#[test]
fn tcp_fwmark_accept_comes_with_the_reply_mark() {
    let c = cfg(json!({"podRPFilter": 1}));
    let mut overlay_first = overlay_inputs();
    overlay_first.layout = Layout::OverlayFirst;
    overlay_first.ifname = "eth0".into();
    let mut ipv6_only = first_inputs();
    ipv6_only.ips.remove(0);
    for (what, inp) in [
        ("underlay first", first_inputs()),
        ("underlay first, IPv6 only", ipv6_only),
        ("underlay later", later_inputs(Layout::UnderlayLater)),
        ("overlay later", overlay_inputs()),
        ("overlay first", overlay_first),
    ] {
        let p = plan_add(&c, &inp);
        let keys: Vec<&SysctlSpec> = p
            .sysctls
            .iter()
            .filter(|s| s.key == "net/ipv4/tcp_fwmark_accept")
            .collect();
        let want = SysctlSpec::new(Side::Pod, TCP_FWMARK_ACCEPT.into(), "1");
        match p.reply_mark {
            true => assert_eq!(keys, [&want], "{what}"),
            false => assert!(keys.is_empty(), "{what}: {keys:?}"),
        }
        assert_eq!(p.reply_mark, what.starts_with("underlay first"), "{what}");
        assert!(!want.optional);
    }
}

pub(super) fn later_inputs(layout: Layout) -> Inputs {
    Inputs {
        layout,
        ifname: "net1".into(),
        ips: vec!["10.7.0.5/16".parse().unwrap()],
        gateways: vec!["10.7.0.1".parse().unwrap()],
        pod: pod(true),
        node_ips: vec!["10.6.0.2".parse().unwrap()],
        veth: Some(veth()),
        overlay_peer: None,
    }
}

#[test]
fn later_nic_gets_its_own_table() {
    let c = cfg(
        json!({"serviceCIDR": ["10.233.0.0/18"], "policyRoutes": [{"dst": "192.168.0.0/16", "gw": "10.7.0.254"}]}),
    );
    let p = plan_add(&c, &later_inputs(Layout::UnderlayLater));
    let t = TABLE_FIRST_NIC;
    assert!(has_route(&p, Side::Pod, "10.7.0.0/16", t, "net1", None));
    assert!(has_route(
        &p,
        Side::Pod,
        "172.16.0.0/12",
        t,
        "net1",
        Some("10.7.0.1")
    ));
    // main had no default for net1; prevResult's gateway gives the table one.
    assert!(has_route(
        &p,
        Side::Pod,
        "0.0.0.0/0",
        t,
        "net1",
        Some("10.7.0.1")
    ));
    assert!(!has_route(
        &p,
        Side::Pod,
        "0.0.0.0/0",
        TABLE_MAIN,
        "net1",
        Some("10.7.0.1")
    ));
    assert!(has_route(&p, Side::Pod, "10.6.0.2/32", t, "veth0", None));
    assert!(has_route(
        &p,
        Side::Pod,
        "10.233.0.0/18",
        t,
        "veth0",
        Some("10.6.0.2")
    ));
    // policyRoutes are planned apart, applied last.
    assert!(p
        .policy
        .iter()
        .any(|r| r.dst == "192.168.0.0/16".parse::<IpNet>().unwrap()
            && r.table == t
            && r.dev == "net1"
            && r.via == Some("10.7.0.254".parse().unwrap())));
    // The static route is copied and stays in main (no other NIC routes
    // that prefix), as the connected one does: nothing moves.
    assert!(p.moves.is_empty(), "{:?}", p.moves);
    let from: Vec<_> = p
        .rules
        .iter()
        .filter(|(s, r)| *s == Side::Pod && r.priority == PRIO_FROM && r.table == t)
        .collect();
    assert_eq!(from.len(), 1);
    assert_eq!(from[0].1.src, Some("10.7.0.5/32".parse().unwrap()));
    // The first NIC gets a table of its own: replies from its addresses
    // leave through it even toward net1's subnet. Its default stays in main.
    let eth0_rules: Vec<_> = p
        .rules
        .iter()
        .filter(|(s, r)| *s == Side::Pod && r.priority == PRIO_FROM && r.table != t)
        .collect();
    assert_eq!(eth0_rules.len(), 2, "{eth0_rules:?}");
    let t0 = eth0_rules[0].1.table;
    assert!(eth0_rules
        .iter()
        .all(|(_, r)| r.table == t0 && t0 != TABLE_REPLY));
    assert!(has_route(
        &p,
        Side::Pod,
        "0.0.0.0/0",
        t0,
        "eth0",
        Some("10.6.0.1")
    ));
    assert!(has_route(&p, Side::Pod, "10.6.0.0/16", t0, "eth0", None));
    assert!(has_route(&p, Side::Pod, "10.6.0.2/32", t0, "veth0", None));
    assert!(!p.moves.iter().any(|m| m.route.oif == Some(2)));
    // the node reaches net1's address through the veth.
    assert!(has_route(
        &p,
        Side::Host,
        "10.7.0.5/32",
        500,
        "vethabc",
        None
    ));
}

#[test]
fn table_ids_skip_used_ones_and_are_reused_on_repeat() {
    let mut i = later_inputs(Layout::UnderlayLater);
    i.pod.rules.push(Rule::new(Family::V4, 5, 101));
    i.pod
        .routes
        .push(route("1.2.3.0/24", 102, 2, None, RTPROT_BOOT, Scope::Link));
    let p = plan_add(&cfg(json!({})), &i);
    assert!(p.routes.iter().any(|r| r.table == 103));
    let mut again = i.clone();
    let mut r = Rule::new(Family::V4, PRIO_FROM, 107);
    r.src = Some("10.7.0.5/32".parse().unwrap());
    again.pod.rules.push(r);
    let p = plan_add(&cfg(json!({})), &again);
    let net1_src = Some("10.7.0.5/32".parse().unwrap());
    assert!(p
        .rules
        .iter()
        .filter(|(s, r)| *s == Side::Pod && r.src == net1_src)
        .all(|(_, r)| r.table == 107));
    // eth0's table is reused on a repeat as well.
    let mut r0 = Rule::new(Family::V4, PRIO_FROM, 109);
    r0.src = Some("10.6.0.5/32".parse().unwrap());
    again.pod.rules.push(r0);
    let p = plan_add(&cfg(json!({})), &again);
    assert!(p
        .rules
        .iter()
        .filter(|(s, r)| *s == Side::Pod && r.priority == PRIO_FROM && r.src != net1_src)
        .all(|(_, r)| r.table == 109));
}

#[test]
fn default_route_nic_moves_the_first_nics_default() {
    let c = cfg(json!({"podDefaultRouteNic": "net1"}));
    let mut i = later_inputs(Layout::UnderlayLater);
    i.pod.routes.push(route(
        "0.0.0.0/0",
        TABLE_MAIN,
        3,
        Some("10.7.0.1"),
        RTPROT_BOOT,
        Scope::Universe,
    ));
    let p = plan_add(&c, &i);
    // net1's default stays in main (not moved), eth0's default moves to eth0's table.
    assert!(!p
        .moves
        .iter()
        .any(|m| m.route.oif == Some(3) && m.route.dst.prefix_len() == 0));
    assert!(p
        .moves
        .iter()
        .any(|m| m.route.oif == Some(2) && m.route.dst.prefix_len() == 0));
    let eth0_table = TABLE_FIRST_NIC + 1;
    assert!(has_route(
        &p,
        Side::Pod,
        "0.0.0.0/0",
        eth0_table,
        "eth0",
        Some("10.6.0.1")
    ));
    assert!(has_route(
        &p,
        Side::Pod,
        "10.6.0.0/16",
        eth0_table,
        "eth0",
        None
    ));
    assert!(p
        .rules
        .iter()
        .any(|(_, r)| r.table == eth0_table && r.src == Some("10.6.0.5/32".parse().unwrap())));
    // Traffic from eth0's address still reaches the node and Services
    // through veth0, with eth0's address as source.
    let c = cfg(json!({"podDefaultRouteNic": "net1", "serviceCIDR": ["10.233.0.0/18"]}));
    let p = plan_add(&c, &i);
    for (dst, via) in [("10.6.0.2/32", None), ("10.233.0.0/18", Some("10.6.0.2"))] {
        assert!(
            has_route(&p, Side::Pod, dst, eth0_table, "veth0", via),
            "{dst} in eth0's table"
        );
        let r = p
            .routes
            .iter()
            .find(|r| r.table == eth0_table && r.dst == dst.parse::<IpNet>().unwrap())
            .unwrap();
        assert_eq!(r.src, Some("10.6.0.5".parse().unwrap()));
    }
    // naming a NIC not attached yet is fine: net1's call with net2 as default moves nothing of eth0.
    let c = cfg(json!({"podDefaultRouteNic": "net2"}));
    let p = plan_add(&c, &i);
    assert!(!p.moves.iter().any(|r| r.route.oif == Some(2)));
}

#[test]
fn overlay_later_nic_goes_through_eth0() {
    let c = cfg(json!({"serviceCIDR": ["10.233.0.0/18"]}));
    let mut i = later_inputs(Layout::OverlayLater);
    // ptp-style eth0: /32 address, gateway 10.244.0.1 on-link.
    i.pod.links[1].kind = Some("veth".into());
    i.pod.links.retain(|l| l.name != "veth0");
    i.pod.routes.retain(|r| r.oif != Some(2));
    i.pod.routes.push(route(
        "10.244.0.1/32",
        TABLE_MAIN,
        2,
        None,
        RTPROT_BOOT,
        Scope::Link,
    ));
    i.pod.routes.push(route(
        "0.0.0.0/0",
        TABLE_MAIN,
        2,
        Some("10.244.0.1"),
        RTPROT_BOOT,
        Scope::Universe,
    ));
    i.veth = None;
    i.overlay_peer = Some(("vethpeer".into(), [2, 9, 9, 9, 9, 9]));
    let p = plan_add(&c, &i);
    let t = TABLE_FIRST_NIC;
    assert!(has_route(&p, Side::Pod, "10.244.0.1/32", t, "eth0", None));
    assert!(has_route(
        &p,
        Side::Pod,
        "10.6.0.2/32",
        t,
        "eth0",
        Some("10.244.0.1")
    ));
    assert!(has_route(
        &p,
        Side::Pod,
        "10.233.0.0/18",
        t,
        "eth0",
        Some("10.244.0.1")
    ));
    assert!(!p.reply_mark);
    assert!(has_route(
        &p,
        Side::Host,
        "10.7.0.5/32",
        500,
        "vethpeer",
        None
    ));
    assert!(p
        .neighbours
        .iter()
        .any(|n| n.side == Side::Host && n.mac == [2, 9, 9, 9, 9, 9]));
    // podDefaultRouteNic=net1 in overlay: eth0's default goes to table 100.
    let c = cfg(json!({"podDefaultRouteNic": "net1"}));
    let p = plan_add(&c, &i);
    assert!(has_route(
        &p,
        Side::Pod,
        "0.0.0.0/0",
        TABLE_REPLY,
        "eth0",
        Some("10.244.0.1")
    ));
    assert!(has_route(
        &p,
        Side::Pod,
        "10.244.0.1/32",
        TABLE_REPLY,
        "eth0",
        None
    ));
    assert!(has_route(
        &p,
        Side::Pod,
        "0.0.0.0/0",
        TABLE_MAIN,
        "net1",
        Some("10.7.0.1")
    ));
}

/// Overlay pod: ptp-style eth0 (10.244.0.5/32 via 10.244.0.1), net1 macvlan.
pub(super) fn overlay_inputs() -> Inputs {
    let mut i = later_inputs(Layout::OverlayLater);
    i.pod.links[1].kind = Some("veth".into());
    i.pod.links.retain(|l| l.name != "veth0");
    i.pod.routes.retain(|r| r.oif != Some(2));
    i.pod.addrs.retain(|(idx, _)| *idx != 2);
    i.pod.addrs.push((2, "10.244.0.5/32".parse().unwrap()));
    for (dst, gw) in [("10.244.0.1/32", None), ("0.0.0.0/0", Some("10.244.0.1"))] {
        let scope = if gw.is_some() {
            Scope::Universe
        } else {
            Scope::Link
        };
        i.pod
            .routes
            .push(route(dst, TABLE_MAIN, 2, gw, RTPROT_BOOT, scope));
    }
    i.veth = None;
    i.overlay_peer = Some(("vethpeer".into(), [2, 9, 9, 9, 9, 9]));
    i
}

/// Bug found by the overlay lab: the node address 10.6.0.2 sits in net1's
/// subnet 10.6.0.0/16, so unsourced traffic to it left through net1 (a
/// macvlan cannot reach its parent's address); and with
/// podDefaultRouteNic=net1, Services left through net1's gateway.
#[test]
fn overlay_later_nic_puts_cluster_routes_in_main_too() {
    let c = cfg(json!({"serviceCIDR": ["10.233.0.0/18"], "overlayPodCIDR": ["10.244.0.0/16"]}));
    let mut i = overlay_inputs();
    i.ips = vec!["10.6.0.5/16".parse().unwrap()];
    i.gateways = vec!["10.6.0.1".parse().unwrap()];
    i.pod.routes.push(route(
        "10.6.0.0/16",
        TABLE_MAIN,
        3,
        None,
        RTPROT_KERNEL,
        Scope::Link,
    ));
    for p in [
        plan_add(&c, &i),
        plan_add(
            &cfg(
                json!({"serviceCIDR": ["10.233.0.0/18"], "overlayPodCIDR": ["10.244.0.0/16"], "podDefaultRouteNic": "net1"}),
            ),
            &i,
        ),
    ] {
        for dst in ["10.6.0.2/32", "10.233.0.0/18", "10.244.0.0/16"] {
            assert!(
                has_route(&p, Side::Pod, dst, TABLE_MAIN, "eth0", Some("10.244.0.1")),
                "{dst} in main: {:#?}",
                p.routes
            );
        }
        // main keeps the overlay CNI's own gateway route (and its src).
        assert!(!has_route(
            &p,
            Side::Pod,
            "10.244.0.1/32",
            TABLE_MAIN,
            "eth0",
            None
        ));
        assert!(has_route(
            &p,
            Side::Pod,
            "10.244.0.1/32",
            TABLE_FIRST_NIC,
            "eth0",
            None
        ));
    }
}

/// A third NIC after podDefaultRouteNic moved eth0's default to table 100
/// still gets cluster routes through eth0's gateway.
#[test]
fn overlay_third_nic_finds_eth0_gateway_in_table_100() {
    let c = cfg(json!({"serviceCIDR": ["10.233.0.0/18"]}));
    let mut i = overlay_inputs();
    for r in i.pod.routes.iter_mut() {
        if r.oif == Some(2) && r.dst.prefix_len() == 0 {
            r.table = TABLE_REPLY;
        }
    }
    let p = plan_add(&c, &i);
    let t = TABLE_FIRST_NIC;
    assert!(has_route(
        &p,
        Side::Pod,
        "10.233.0.0/18",
        t,
        "eth0",
        Some("10.244.0.1")
    ));
    assert!(has_route(
        &p,
        Side::Pod,
        "10.6.0.2/32",
        t,
        "eth0",
        Some("10.244.0.1")
    ));
}

#[test]
fn tune_pod_routes_off_leaves_pod_routes() {
    let p = plan_add(
        &cfg(json!({"tunePodRoutes": false})),
        &later_inputs(Layout::UnderlayLater),
    );
    assert!(p.routes.iter().all(|r| r.side == Side::Host));
    assert!(p.moves.is_empty());
}

#[test]
fn tuning_applies_to_every_layout() {
    let c = cfg(json!({"podRPFilter": 2, "txQueueLen": 3000}));
    let p = plan_add(&c, &later_inputs(Layout::OverlayLater));
    assert!(p
        .sysctls
        .iter()
        .any(|s| s.key == "net/ipv4/conf/all/rp_filter" && s.value == "2"));
    assert!(p
        .sysctls
        .iter()
        .any(|s| s.key == "net/ipv4/conf/net1/rp_filter"));
    assert_eq!(p.txqlen, Some(("net1".into(), 3000)));
    let p = plan_add(
        &cfg(json!({"podRPFilter": -1})),
        &later_inputs(Layout::OverlayLater),
    );
    // Left alone; only the router-advertisement default stays out of main.
    let keys: Vec<&str> = p.sysctls.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["net/ipv6/conf/net1/accept_ra_defrtr"]);
}
