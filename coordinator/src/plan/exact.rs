//! Exact plans: for each layout the planner's whole output is compared with
//! the full expected set of routes, rules, neighbours and sysctls (an extra
//! or a wrong route fails), the way the reference `sbr` tests compare whole
//! states. Pods are written as the kernel dumps them: IPv6 defaults of one
//! metric merged into one multipath route, read as one route per nexthop.

use std::collections::BTreeSet;
use std::net::IpAddr;

use cni::netlink::{Family, Link, Mac, Route, Rule, Scope, RTPROT_BOOT, RTPROT_KERNEL, TABLE_MAIN};
use ipnet::IpNet;
use serde_json::json;

use super::*;
use crate::config::Config;

const HOST_MAC: Mac = [2, 1, 1, 1, 1, 1];

// The default ids, as literals: a config that sets none plans exactly what
// every release before the ids became config fields did.
const TABLE_REPLY: u32 = 100;
const PRIO_FWMARK: u32 = 900;
const PRIO_FROM: u32 = 1000;
const PRIO_HOST: u32 = 1000;
const POD_MAC: Mac = [2, 2, 2, 2, 2, 2];
const PEER_MAC: Mac = [2, 9, 9, 9, 9, 9];

/// `podRPFilter` -1 (leave it) unless given: the tuning has its own test.
fn cfg(extra: serde_json::Value) -> Config {
    let mut v = extra;
    v["defaultsFile"] = json!("/nonexistent");
    if v.get("podRPFilter").is_none() {
        v["podRPFilter"] = json!(-1);
    }
    Config::from_raw(&v).unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn link(index: u32, name: &str, kind: &str) -> Link {
    super::tests::link(index, name, Some(kind))
}

/// A dumped route: `dst` [via `gw`] dev `oif` in `table`.
fn kr(dst: &str, gw: Option<&str>, oif: u32, table: u32) -> Route {
    let mut r = Route::new(net(dst), table);
    r.oif = Some(oif);
    r.gateway = gw.map(ip);
    r
}

fn connected(dst: &str, oif: u32) -> Route {
    let mut r = kr(dst, None, oif, TABLE_MAIN);
    r.protocol = RTPROT_KERNEL;
    r.scope = Scope::Link;
    if dst.contains(':') {
        r.metric = Some(256);
        r.scope = Scope::Universe;
    }
    r
}

/// One nexthop of main's merged IPv6 default.
fn hop(gw: &str, oif: u32) -> Route {
    let mut r = kr("::/0", Some(gw), oif, TABLE_MAIN);
    r.metric = Some(1024);
    r.multipath = true;
    r.protocol = RTPROT_BOOT;
    r
}

/// A route of ours already in the pod (the first NIC's ADD).
fn ours(mut r: Route, src: Option<&str>, scope: Scope) -> Route {
    r.protocol = ROUTE_PROTOCOL;
    r.prefsrc = src.map(ip);
    r.scope = scope;
    r
}

/// An expected pod route.
fn pr(dst: &str, table: u32, dev: &str) -> RouteSpec {
    RouteSpec::pod(net(dst), table, dev)
}

trait Spec {
    fn via(self, gw: &str) -> Self;
    fn src(self, s: &str) -> Self;
    fn link(self) -> Self;
    fn metric(self, m: u32) -> Self;
}

impl Spec for RouteSpec {
    fn via(mut self, gw: &str) -> Self {
        self.via = Some(ip(gw));
        self
    }
    fn src(mut self, s: &str) -> Self {
        self.src = Some(ip(s));
        self
    }
    fn link(mut self) -> Self {
        self.scope = Scope::Link;
        self
    }
    fn metric(mut self, m: u32) -> Self {
        self.metric = Some(m);
        self
    }
}

fn from_rule(src: &str, table: u32) -> (Side, Rule) {
    let n = net(src);
    let mut r = Rule::new(Family::of_net(&n), PRIO_FROM, table);
    r.src = Some(IpNet::from(n.addr()));
    (Side::Pod, r)
}

fn host_rule(f: Family) -> (Side, Rule) {
    (Side::Host, Rule::new(f, PRIO_HOST, 500))
}

fn fwmark_rule(f: Family) -> (Side, Rule) {
    let mut r = Rule::new(f, PRIO_FWMARK, TABLE_REPLY);
    r.fwmark = Some(REPLY_MARK);
    r.fwmask = Some(0xffff_ffff);
    (Side::Pod, r)
}

/// Host route and neighbour of a pod address on `dev`.
fn host_entry(plan: &mut Plan, addr: &str, dev: &str, mac: Mac) {
    plan.routes.push(RouteSpec {
        side: Side::Host,
        scope: Scope::Link,
        ..RouteSpec::pod(IpNet::from(ip(addr)), 500, dev)
    });
    plan.neighbours.push(NeighSpec {
        side: Side::Host,
        dev: dev.into(),
        ip: ip(addr),
        mac,
    });
    plan.stale_neighbours.push(ip(addr));
}

/// A later NIC that is not `podDefaultRouteNic` takes no default from
/// router advertisements into main.
fn ra_defrtr_off(nic: &str) -> SysctlSpec {
    let key = format!("net/ipv6/conf/{nic}/accept_ra_defrtr");
    SysctlSpec::new(Side::Pod, key, "0")
}

fn veth(create: bool) -> VethPlan {
    VethPlan {
        host: "vethabc".into(),
        host_mac: HOST_MAC,
        pod: "veth0".into(),
        pod_mac: POD_MAC,
        mtu: 1500,
        create,
    }
}

const SERVICES: &str = r#"{"serviceCIDR": ["10.233.0.0/18", "fd00:233::/110"]}"#;

/// Underlay pod, dual-stack: macvlan eth0 (index 2) on 10.6/16 and fd00:6::/64.
fn underlay_pod() -> PodView {
    PodView {
        links: vec![link(2, "eth0", "macvlan")],
        routes: vec![
            connected("10.6.0.0/16", 2),
            kr("0.0.0.0/0", Some("10.6.0.1"), 2, TABLE_MAIN),
            connected("fd00:6::/64", 2),
            {
                let mut d = kr("::/0", Some("fd00:6::1"), 2, TABLE_MAIN);
                d.metric = Some(1024);
                d
            },
        ],
        rules: vec![],
        addrs: vec![(2, net("10.6.1.1/16")), (2, net("fd00:6::1:1/64"))],
        slaac: vec![],
    }
}

fn underlay_first() -> Inputs {
    Inputs {
        layout: Layout::UnderlayFirst,
        ifname: "eth0".into(),
        ips: vec![net("10.6.1.1/16"), net("fd00:6::1:1/64")],
        gateways: vec![ip("10.6.0.1"), ip("fd00:6::1")],
        pod: underlay_pod(),
        node_ips: vec![ip("10.6.0.2"), ip("fd00:6::2")],
        veth: Some(veth(true)),
        overlay_peer: None,
    }
}

#[test]
fn underlay_first_nic() {
    let inp = underlay_first();
    let got = plan_add(&cfg(serde_json::from_str(SERVICES).unwrap()), &inp);
    let mut want = Plan {
        veth: Some(veth(true)),
        sysctls: vec![
            SysctlSpec::new(Side::Pod, "net/ipv6/conf/veth0/accept_dad".into(), "0"),
            SysctlSpec::new(Side::Host, "net/ipv6/conf/vethabc/accept_dad".into(), "0"),
            SysctlSpec::new(
                Side::Host,
                "net/ipv6/conf/vethabc/addr_gen_mode".into(),
                "1",
            ),
            SysctlSpec::new(Side::Pod, "net/ipv4/tcp_fwmark_accept".into(), "1"),
        ],
        routes: vec![
            pr("10.6.0.2/32", TABLE_MAIN, "veth0")
                .link()
                .src("10.6.1.1"),
            pr("fd00:6::2/128", TABLE_MAIN, "veth0")
                .link()
                .src("fd00:6::1:1"),
            pr("10.233.0.0/18", TABLE_MAIN, "veth0")
                .via("10.6.0.2")
                .src("10.6.1.1"),
            pr("fd00:233::/110", TABLE_MAIN, "veth0")
                .via("fd00:6::2")
                .src("fd00:6::1:1"),
            pr("10.6.0.2/32", TABLE_REPLY, "veth0")
                .link()
                .src("10.6.1.1"),
            pr("fd00:6::2/128", TABLE_REPLY, "veth0")
                .link()
                .src("fd00:6::1:1"),
            pr("0.0.0.0/0", TABLE_REPLY, "veth0").via("10.6.0.2"),
            pr("::/0", TABLE_REPLY, "veth0").via("fd00:6::2"),
        ],
        rules: vec![
            fwmark_rule(Family::V4),
            fwmark_rule(Family::V6),
            host_rule(Family::V4),
            host_rule(Family::V6),
        ],
        neighbours: ["10.6.0.2", "fd00:6::2"]
            .map(|a| NeighSpec {
                side: Side::Pod,
                dev: "veth0".into(),
                ip: ip(a),
                mac: HOST_MAC,
            })
            .to_vec(),
        reply_mark: true,
        ..Plan::default()
    };
    for a in ["10.6.1.1", "fd00:6::1:1"] {
        host_entry(&mut want, a, "vethabc", POD_MAC);
    }
    assert_eq!(got, want);
    // Every IPv6 key may be missing (a node booted with ipv6.disable=1).
    assert!(got
        .sysctls
        .iter()
        .all(|s| s.optional == s.key.starts_with("net/ipv6/")));
}

/// The issue's first reproduction: underlay, 2 NICs, dual-stack, a default
/// on each; the kernel merged the IPv6 defaults into one multipath route.
fn underlay_two_nics() -> Inputs {
    let mut pod = underlay_pod();
    pod.routes
        .retain(|r| !(r.dst.prefix_len() == 0 && r.dst.addr().is_ipv6()));
    pod.links.push(link(3, "net1", "macvlan"));
    pod.links.push(link(4, "veth0", "veth"));
    pod.routes.extend([
        connected("10.7.0.0/16", 3),
        kr("0.0.0.0/0", Some("10.7.0.1"), 3, TABLE_MAIN),
        connected("fd00:7::/64", 3),
        hop("fd00:6::1", 2),
        hop("fd00:7::1", 3),
        ours(
            kr("10.6.0.2/32", None, 4, TABLE_MAIN),
            Some("10.6.1.1"),
            Scope::Link,
        ),
        ours(
            kr("10.233.0.0/18", Some("10.6.0.2"), 4, TABLE_MAIN),
            Some("10.6.1.1"),
            Scope::Universe,
        ),
        ours(
            kr("0.0.0.0/0", Some("10.6.0.2"), 4, TABLE_REPLY),
            None,
            Scope::Universe,
        ),
    ]);
    pod.rules.push(fwmark_rule(Family::V4).1);
    pod.addrs
        .extend([(3, net("10.7.1.1/16")), (3, net("fd00:7::1:1/64"))]);
    Inputs {
        layout: Layout::UnderlayLater,
        ifname: "net1".into(),
        ips: vec![net("10.7.1.1/16"), net("fd00:7::1:1/64")],
        gateways: vec![ip("10.7.0.1"), ip("fd00:7::1")],
        pod,
        node_ips: vec![ip("10.6.0.2"), ip("fd00:6::2")],
        veth: Some(veth(false)),
        overlay_peer: None,
    }
}

#[test]
fn underlay_later_nic_takes_its_nexthop_out_of_mains_multipath_default() {
    let inp = underlay_two_nics();
    let got = plan_add(&cfg(json!({"serviceCIDR": ["10.233.0.0/18"]})), &inp);
    let pod = &inp.pod;
    let v4_default = pod.routes[4].clone();
    let (eth0_hop, net1_hop) = (pod.routes[6].clone(), pod.routes[7].clone());
    let mut want = Plan {
        sysctls: vec![ra_defrtr_off("net1")],
        routes: vec![
            // net1's table 101: its routes, and the node and Services through veth0.
            pr("10.7.0.0/16", 101, "net1").link(),
            pr("0.0.0.0/0", 101, "net1").via("10.7.0.1"),
            pr("fd00:7::/64", 101, "net1").metric(256),
            pr("::/0", 101, "net1").via("fd00:7::1").metric(1024),
            pr("10.6.0.2/32", 101, "veth0").link().src("10.7.1.1"),
            pr("fd00:6::2/128", 101, "veth0").link().src("fd00:7::1:1"),
            pr("10.233.0.0/18", 101, "veth0")
                .via("10.6.0.2")
                .src("10.7.1.1"),
            // eth0's table 102: its routes, its share of the IPv6 default,
            // and main's routes through veth0 as the first ADD made them.
            pr("10.6.0.0/16", 102, "eth0").link(),
            pr("0.0.0.0/0", 102, "eth0").via("10.6.0.1"),
            pr("fd00:6::/64", 102, "eth0").metric(256),
            pr("::/0", 102, "eth0").via("fd00:6::1").metric(1024),
            pr("10.6.0.2/32", 102, "veth0").link().src("10.6.1.1"),
            pr("10.233.0.0/18", 102, "veth0")
                .via("10.6.0.2")
                .src("10.6.1.1"),
        ],
        moves: vec![
            Move {
                route: v4_default,
                others: vec![],
            },
            Move {
                route: net1_hop,
                others: vec![eth0_hop],
            },
        ],
        rules: vec![
            from_rule("10.7.1.1/16", 101),
            from_rule("fd00:7::1:1/64", 101),
            from_rule("10.6.1.1/16", 102),
            from_rule("fd00:6::1:1/64", 102),
            host_rule(Family::V4),
            host_rule(Family::V6),
        ],
        ..Plan::default()
    };
    for a in ["10.7.1.1", "fd00:7::1:1"] {
        host_entry(&mut want, a, "vethabc", POD_MAC);
    }
    assert_eq!(got, want);
}

#[test]
fn default_route_nic_keeps_its_nexthop_and_moves_the_first_nics() {
    let inp = underlay_two_nics();
    let got = plan_add(&cfg(json!({"podDefaultRouteNic": "net1"})), &inp);
    let moved: Vec<&Route> = got.moves.iter().map(|m| &m.route).collect();
    let pod = &inp.pod;
    // eth0's IPv4 default and eth0's nexthop go; net1's stay in main.
    assert_eq!(moved, vec![&pod.routes[1], &pod.routes[6]]);
    assert_eq!(got.moves[1].others, vec![pod.routes[7].clone()]);
}

/// The issue's second reproduction: ptp eth0 (index 2, Calico-like) and
/// macvlan net1 (index 3), dual-stack, `::/0` from both IPAMs.
fn overlay_two_nics() -> Inputs {
    let mut eth0 = link(2, "eth0", "veth");
    eth0.link = Some(40);
    eth0.link_netnsid = Some(0);
    eth0.mac = Some(PEER_MAC);
    let mut gw4 = kr("10.244.1.1/32", None, 2, TABLE_MAIN);
    gw4.scope = Scope::Link;
    gw4.prefsrc = Some(ip("10.244.1.5"));
    let pod = PodView {
        links: vec![eth0, link(3, "net1", "macvlan")],
        routes: vec![
            gw4,
            kr("0.0.0.0/0", Some("10.244.1.1"), 2, TABLE_MAIN),
            connected("10.6.0.0/16", 3),
            connected("fd00:244:0:1::/64", 2),
            connected("fd00:6::/64", 3),
            hop("fd00:244:0:1::1", 2),
            hop("fd00:6::1", 3),
        ],
        rules: vec![],
        addrs: vec![
            (2, net("10.244.1.5/32")),
            (2, net("fd00:244:0:1::5/64")),
            (3, net("10.6.3.1/16")),
            (3, net("fd00:6::3:1/64")),
        ],
        slaac: vec![],
    };
    Inputs {
        layout: Layout::OverlayLater,
        ifname: "net1".into(),
        ips: vec![net("10.6.3.1/16"), net("fd00:6::3:1/64")],
        gateways: vec![ip("10.6.0.1"), ip("fd00:6::1")],
        pod,
        node_ips: vec![ip("10.6.0.2"), ip("fd00:6::2")],
        veth: None,
        overlay_peer: Some(("vethpeer".into(), PEER_MAC)),
    }
}

#[test]
fn overlay_later_nic_finds_eth0s_ipv6_gateway_in_the_multipath_default() {
    let inp = overlay_two_nics();
    let got = plan_add(&cfg(serde_json::from_str(SERVICES).unwrap()), &inp);
    let pod = &inp.pod;
    let (eth0_hop, net1_hop) = (pod.routes[5].clone(), pod.routes[6].clone());
    let cluster = |t: u32| {
        let mut v = Vec::new();
        if t != TABLE_MAIN {
            v.push(pr("10.244.1.1/32", t, "eth0").link());
        }
        v.push(pr("10.6.0.2/32", t, "eth0").via("10.244.1.1"));
        v.push(pr("10.233.0.0/18", t, "eth0").via("10.244.1.1"));
        // IPv6: no route of the CNI's own to the gateway in main either.
        v.push(pr("fd00:244:0:1::1/128", t, "eth0").link());
        v.push(pr("fd00:6::2/128", t, "eth0").via("fd00:244:0:1::1"));
        v.push(pr("fd00:233::/110", t, "eth0").via("fd00:244:0:1::1"));
        v
    };
    let mut routes = vec![
        pr("10.6.0.0/16", 101, "net1").link(),
        pr("fd00:6::/64", 101, "net1").metric(256),
        pr("::/0", 101, "net1").via("fd00:6::1").metric(1024),
        // No IPv4 default in main for net1: prevResult's gateway.
        pr("0.0.0.0/0", 101, "net1").via("10.6.0.1"),
    ];
    routes.extend(cluster(101));
    routes.extend(cluster(TABLE_MAIN));
    // eth0's own table is 100 in overlay mode.
    routes.extend([
        pr("0.0.0.0/0", TABLE_REPLY, "eth0").via("10.244.1.1"),
        pr("fd00:244:0:1::/64", TABLE_REPLY, "eth0").metric(256),
        pr("::/0", TABLE_REPLY, "eth0")
            .via("fd00:244:0:1::1")
            .metric(1024),
        pr("10.244.1.1/32", TABLE_REPLY, "eth0")
            .link()
            .src("10.244.1.5"),
    ]);
    let mut want = Plan {
        sysctls: vec![ra_defrtr_off("net1")],
        routes,
        moves: vec![Move {
            route: net1_hop,
            others: vec![eth0_hop],
        }],
        rules: vec![
            from_rule("10.6.3.1/16", 101),
            from_rule("fd00:6::3:1/64", 101),
            from_rule("10.244.1.5/32", TABLE_REPLY),
            from_rule("fd00:244:0:1::5/64", TABLE_REPLY),
            host_rule(Family::V4),
            host_rule(Family::V6),
        ],
        ..Plan::default()
    };
    for a in ["10.6.3.1", "fd00:6::3:1"] {
        host_entry(&mut want, a, "vethpeer", PEER_MAC);
    }
    assert_eq!(got, want);
}

/// Calico: `default via 169.254.1.1 dev eth0 onlink`, no route to the
/// gateway. Cluster routes are on-link too; nothing is added for the
/// gateway, so CHECK and a repeated ADD plan exactly what ADD did.
fn overlay_on_link_inputs() -> Inputs {
    let mut inp = overlay_two_nics();
    inp.ips.truncate(1);
    inp.gateways.truncate(1);
    inp.pod
        .routes
        .retain(|r| r.family() == Family::V4 && r.dst != net("10.244.1.1/32"));
    inp.pod.addrs.retain(|(_, a)| a.addr().is_ipv4());
    inp.pod.routes[0].gateway = Some(ip("169.254.1.1"));
    inp.pod.routes[0].onlink = true;
    inp
}

#[test]
fn overlay_on_link_gateway() {
    let inp = overlay_on_link_inputs();
    let c = cfg(json!({"serviceCIDR": ["10.233.0.0/18"]}));
    let got = plan_add(&c, &inp);
    let onlink = |t: u32, dst: &str| RouteSpec {
        onlink: true,
        ..pr(dst, t, "eth0").via("169.254.1.1")
    };
    let mut want = Plan {
        sysctls: vec![ra_defrtr_off("net1")],
        routes: vec![
            pr("10.6.0.0/16", 101, "net1").link(),
            pr("0.0.0.0/0", 101, "net1").via("10.6.0.1"),
            onlink(101, "10.6.0.2/32"),
            onlink(101, "10.233.0.0/18"),
            onlink(TABLE_MAIN, "10.6.0.2/32"),
            onlink(TABLE_MAIN, "10.233.0.0/18"),
            onlink(TABLE_REPLY, "0.0.0.0/0"),
        ],
        rules: vec![
            from_rule("10.6.3.1/16", 101),
            from_rule("10.244.1.5/32", TABLE_REPLY),
            host_rule(Family::V4),
        ],
        ..Plan::default()
    };
    host_entry(&mut want, "10.6.3.1", "vethpeer", PEER_MAC);
    assert_eq!(got, want);
    // What ADD installed is ours: planning again from the pod after ADD
    // gives the same plan.
    let mut after = inp.clone();
    after.pod.rules.extend(
        got.rules
            .iter()
            .filter(|(s, _)| *s == Side::Pod)
            .map(|(_, r)| r.clone()),
    );
    for r in &got.routes {
        let mut k = kr(
            &r.dst.to_string(),
            r.via.map(|v| v.to_string()).as_deref(),
            2,
            r.table,
        );
        k.onlink = r.onlink;
        k.protocol = ROUTE_PROTOCOL;
        if r.side == Side::Pod && r.dev == "eth0" {
            after.pod.routes.push(k);
        }
    }
    assert_eq!(plan_add(&c, &after).routes, got.routes);
}

/// A device-only default on eth0 (no gateway): the cluster is on the link.
fn overlay_device_only_inputs() -> Inputs {
    let mut inp = overlay_two_nics();
    inp.ips.truncate(1);
    inp.gateways.clear();
    inp.pod
        .routes
        .retain(|r| r.family() == Family::V4 && r.dst != net("10.244.1.1/32"));
    inp.pod.routes[0].gateway = None;
    inp.pod.routes[0].scope = Scope::Link;
    inp
}

#[test]
fn overlay_device_only_default() {
    let inp = overlay_device_only_inputs();
    let got = plan_add(&cfg(json!({"serviceCIDR": ["10.233.0.0/18"]})), &inp);
    let cluster: Vec<&RouteSpec> = got
        .routes
        .iter()
        .filter(|r| r.dst == net("10.233.0.0/18") || r.dst == net("10.6.0.2/32"))
        .collect();
    assert_eq!(
        cluster,
        vec![
            &pr("10.6.0.2/32", 101, "eth0").link(),
            &pr("10.233.0.0/18", 101, "eth0").link(),
            &pr("10.6.0.2/32", TABLE_MAIN, "eth0").link(),
            &pr("10.233.0.0/18", TABLE_MAIN, "eth0").link(),
        ]
    );
}

/// Two defaults of different metrics on net1 (IPAM's and a router
/// advertisement's): both move, each keeps its metric in the table.
fn ra_default() -> Route {
    let mut ra = kr("::/0", Some("fe80::1"), 3, TABLE_MAIN);
    ra.protocol = 9; // proto ra
    ra.metric = Some(1100);
    ra
}

#[test]
fn several_defaults_keep_their_metrics() {
    let mut inp = underlay_two_nics();
    let ra = ra_default();
    inp.pod.routes.push(ra.clone());
    let got = plan_add(&cfg(json!({})), &inp);
    assert!(got
        .routes
        .contains(&pr("::/0", 101, "net1").via("fe80::1").metric(1100)));
    assert!(got
        .moves
        .iter()
        .any(|m| m.route == ra && m.others.is_empty()));
}

/// An IPv4 multipath default (made by hand or a routing daemon) is one
/// kernel object: net1's nexthop leaves it with eth0's as the rest.
fn ipv4_multipath_inputs() -> (Inputs, Route, Route) {
    let mut inp = underlay_two_nics();
    inp.pod
        .routes
        .retain(|r| !(r.dst == net("0.0.0.0/0") && r.table == TABLE_MAIN));
    let mut a = kr("0.0.0.0/0", Some("10.6.0.1"), 2, TABLE_MAIN);
    a.multipath = true;
    let mut b = kr("0.0.0.0/0", Some("10.7.0.1"), 3, TABLE_MAIN);
    b.multipath = true;
    inp.pod.routes.extend([a.clone(), b.clone()]);
    (inp, a, b)
}

#[test]
fn ipv4_multipath_default() {
    let (inp, a, b) = ipv4_multipath_inputs();
    let got = plan_add(&cfg(json!({})), &inp);
    assert!(got.moves.contains(&Move {
        route: b,
        others: vec![a]
    }));
}

#[test]
fn overlay_first_nic_is_tuning_only() {
    let mut inp = overlay_two_nics();
    inp.layout = Layout::OverlayFirst;
    inp.ifname = "eth0".into();
    assert_eq!(plan_add(&cfg(json!({})), &inp), Plan::default());
    let got = plan_add(&cfg(json!({"podRPFilter": 1, "txQueueLen": 5000})), &inp);
    let want = Plan {
        sysctls: vec![
            SysctlSpec::new(Side::Pod, "net/ipv4/conf/all/rp_filter".into(), "1"),
            SysctlSpec::new(Side::Pod, "net/ipv4/conf/eth0/rp_filter".into(), "1"),
        ],
        txqlen: Some(("eth0".into(), 5000)),
        ..Plan::default()
    };
    assert_eq!(got, want);
}

// ------------------------------------------------------------- fixpoint
//
// Every whole-plan fixture above, applied the way the kernel stores it and
// planned again from the result (with the routes the plan moved out of
// `main` put back, as the attachment records tell): the same plan, moves
// included; CHECK passes on the result; and no drift is reported.

/// The fixtures, each with a config that turns every kind of step on.
fn fixtures() -> Vec<(&'static str, Config, Inputs)> {
    let services: serde_json::Value = serde_json::from_str(SERVICES).unwrap();
    let tuned = |mut v: serde_json::Value| {
        v["podRPFilter"] = json!(0);
        v["txQueueLen"] = json!(2000);
        v["podMACPrefix"] = json!("0a:bb");
        cfg(v)
    };
    let mut ra = underlay_two_nics();
    ra.pod.routes.push(ra_default());
    let mut overlay_first = overlay_two_nics();
    overlay_first.layout = Layout::OverlayFirst;
    overlay_first.ifname = "eth0".into();
    vec![
        (
            "underlay first NIC",
            tuned(services.clone()),
            underlay_first(),
        ),
        (
            "underlay later NIC",
            tuned(json!({"serviceCIDR": ["10.233.0.0/18"]})),
            underlay_two_nics(),
        ),
        (
            "underlay later NIC, podDefaultRouteNic",
            tuned(json!({"podDefaultRouteNic": "net1", "serviceCIDR": ["10.233.0.0/18"]})),
            underlay_two_nics(),
        ),
        (
            "overlay later NIC",
            tuned(services.clone()),
            overlay_two_nics(),
        ),
        (
            "overlay later NIC, podDefaultRouteNic",
            tuned(json!({"podDefaultRouteNic": "net1"})),
            overlay_two_nics(),
        ),
        (
            "overlay on-link gateway",
            tuned(json!({"serviceCIDR": ["10.233.0.0/18"]})),
            overlay_on_link_inputs(),
        ),
        (
            "overlay device-only default",
            tuned(json!({"serviceCIDR": ["10.233.0.0/18"]})),
            overlay_device_only_inputs(),
        ),
        ("several defaults (RA)", tuned(json!({})), ra),
        (
            "IPv4 multipath default",
            tuned(json!({})),
            ipv4_multipath_inputs().0,
        ),
        ("overlay first NIC", tuned(json!({})), overlay_first),
        (
            "SLAAC address and RA default",
            tuned(json!({"serviceCIDR": ["10.233.0.0/18"]})),
            underlay_net1_with_slaac(),
        ),
    ]
}

/// `p` with its lists in one order: the planner follows the order of the
/// kernel's dump, which a re-inserted route does not keep.
fn sorted(p: &Plan) -> Plan {
    let mut p = p.clone();
    let key = |x: &dyn std::fmt::Debug| format!("{x:?}");
    p.routes.sort_by_key(|r| key(r));
    p.rules.sort_by_key(|r| key(r));
    p.moves.sort_by_key(|m| key(m));
    p.neighbours.sort_by_key(|n| key(n));
    p.sysctls.sort_by_key(|s| key(s));
    p.policy.sort_by_key(|r| key(r));
    p.stale_neighbours.sort();
    p
}

#[test]
fn every_fixture_is_a_fixpoint_of_the_planner() {
    for (name, c, inp) in fixtures() {
        let plan = plan_add(&c, &inp);
        let seen = super::sim::applied(&plan, &inp.pod);
        assert_eq!(
            verify(&plan, &seen),
            Ok(()),
            "{name}: CHECK right after ADD"
        );
        let moved: Vec<&Move> = plan.moves.iter().collect();
        let mut again = inp.clone();
        again.pod = crate::context::moves_undone(&seen.pod, &moved);
        if let Some(v) = again.veth.as_mut() {
            v.create = false;
        }
        let replanned = plan_add(&c, &again);
        let mut want = plan.clone();
        if let Some(v) = want.veth.as_mut() {
            v.create = false;
        }
        assert_eq!(
            sorted(&replanned),
            sorted(&want),
            "{name}: planned again after ADD"
        );
        assert_eq!(drift(&plan, &replanned), Ok(()), "{name}");
        // Planned once more from the same state: still the same (a third ADD).
        assert_eq!(plan_add(&c, &again), replanned, "{name}: third plan");
    }
}

/// Without the record's moves the planner cannot see what ADD took out of
/// `main`: the issue's two reproductions, kept as the reason for the record.
#[test]
fn without_the_moves_a_replan_loses_them() {
    let c = cfg(json!({"podDefaultRouteNic": "net1"}));
    let inp = underlay_two_nics();
    let plan = plan_add(&c, &inp);
    let seen = super::sim::applied(&plan, &inp.pod);
    let mut again = inp.clone();
    again.pod = seen.pod.clone();
    let replanned = plan_add(&c, &again);
    assert_ne!(replanned.routes, plan.routes);
    assert!(drift(&plan, &replanned).is_err());
}

/// net1's SLAAC address, as the kernel formed it from its MAC (EUI-64).
const SLAAC: &str = "fd00:7::a8c1:abff:fe00:701/64";
const SLAAC_IP: &str = "fd00:7::a8c1:abff:fe00:701";

/// Underlay, 2 NICs; net1's IPAM gives IPv4 only and a router advertisement
/// on its subnet gave it the rest, as the kernel holds it: a SLAAC address
/// (no IFA_F_PERMANENT) that no prevResult lists, the on-link prefix
/// (`proto kernel`, expiring with the prefix's valid lifetime) and a default
/// via the router's link-local address (`proto ra`, expiring with the
/// router lifetime). RA routes are never merged into a multipath route.
fn underlay_net1_with_slaac() -> Inputs {
    let mut inp = underlay_two_nics();
    let pod = &mut inp.pod;
    // net1's IPv6 routes came from its IPAM; the merged default goes too.
    let from_ipam = |r: &Route| r.oif == Some(3) && r.family() == Family::V6;
    pod.routes.retain(|r| !r.multipath && !from_ipam(r));
    let mut eth0_v6 = kr("::/0", Some("fd00:6::1"), 2, TABLE_MAIN);
    eth0_v6.metric = Some(1024);
    let mut prefix = connected("fd00:7::/64", 3);
    prefix.expires = Some(86390);
    let mut ra_default = kr("::/0", Some("fe80::1"), 3, TABLE_MAIN);
    ra_default.metric = Some(1024);
    ra_default.protocol = cni::netlink::RTPROT_RA;
    ra_default.expires = Some(1790);
    let mut link_local = connected("fe80::/64", 3);
    link_local.protocol = RTPROT_KERNEL;
    pod.routes.extend([eth0_v6, prefix, ra_default, link_local]);
    pod.addrs.retain(|(i, a)| *i != 3 || a.addr().is_ipv4());
    pod.addrs.push((3, net(SLAAC)));
    pod.addrs.push((3, net("fe80::a8c1:abff:fe00:701/64")));
    pod.slaac.push((3, net(SLAAC)));
    inp.ips = vec![net("10.7.1.1/16")];
    inp.gateways = vec![ip("10.7.0.1")];
    inp
}

#[test]
fn slaac_address_gets_its_rule_and_the_ra_default_leaves_main_with_its_lifetime() {
    let inp = underlay_net1_with_slaac();
    let got = plan_add(&cfg(json!({"serviceCIDR": ["10.233.0.0/18"]})), &inp);
    let main_route = |dst: &str, oif: u32| {
        inp.pod
            .routes
            .iter()
            .find(|r| r.table == TABLE_MAIN && r.dst == net(dst) && r.oif == Some(oif))
            .unwrap()
            .clone()
    };
    let mut want = Plan {
        sysctls: vec![ra_defrtr_off("net1")],
        routes: vec![
            // net1's table: its IPAM routes, and the RA's routes with the
            // lifetime they have left, never as permanent copies.
            pr("10.7.0.0/16", 101, "net1").link(),
            pr("0.0.0.0/0", 101, "net1").via("10.7.0.1"),
            RouteSpec {
                expires: Some(86390),
                ..pr("fd00:7::/64", 101, "net1").metric(256)
            },
            RouteSpec {
                expires: Some(1790),
                ..pr("::/0", 101, "net1").via("fe80::1").metric(1024)
            },
            // The node and Services through veth0, sourced from the NIC's
            // addresses: the SLAAC one for IPv6.
            pr("10.6.0.2/32", 101, "veth0").link().src("10.7.1.1"),
            pr("fd00:6::2/128", 101, "veth0").link().src(SLAAC_IP),
            pr("10.233.0.0/18", 101, "veth0")
                .via("10.6.0.2")
                .src("10.7.1.1"),
            pr("10.6.0.0/16", 102, "eth0").link(),
            pr("0.0.0.0/0", 102, "eth0").via("10.6.0.1"),
            pr("fd00:6::/64", 102, "eth0").metric(256),
            pr("::/0", 102, "eth0").via("fd00:6::1").metric(1024),
            pr("10.6.0.2/32", 102, "veth0").link().src("10.6.1.1"),
            pr("10.233.0.0/18", 102, "veth0")
                .via("10.6.0.2")
                .src("10.6.1.1"),
        ],
        moves: [main_route("0.0.0.0/0", 3), main_route("::/0", 3)]
            .map(|route| Move {
                route,
                others: vec![],
            })
            .to_vec(),
        rules: vec![
            from_rule("10.7.1.1/16", 101),
            from_rule(SLAAC, 101),
            from_rule("10.6.1.1/16", 102),
            from_rule("fd00:6::1:1/64", 102),
            host_rule(Family::V4),
            host_rule(Family::V6),
        ],
        ..Plan::default()
    };
    // The node reaches the SLAAC address through veth0 like the IPAM one.
    host_entry(&mut want, "10.7.1.1", "vethabc", POD_MAC);
    host_entry(&mut want, SLAAC_IP, "vethabc", POD_MAC);
    assert_eq!(got, want);
    // The moved default keeps its lifetime: an undo puts it back expiring.
    assert_eq!(got.moves[1].route.expires, Some(1790));
    assert_eq!(got.moves[1].route.protocol, cni::netlink::RTPROT_RA);
}

/// `podDefaultRouteNic: net1`: its router's default stays in main (and the
/// kernel keeps refreshing it there); the table's copy still expires.
#[test]
fn the_default_route_nic_keeps_its_ra_default_in_main() {
    let inp = underlay_net1_with_slaac();
    let got = plan_add(&cfg(json!({"podDefaultRouteNic": "net1"})), &inp);
    assert!(got.sysctls.is_empty(), "{:?}", got.sysctls);
    assert!(got
        .moves
        .iter()
        .all(|m| m.route.oif == Some(2) && m.route.dst.prefix_len() == 0));
    let copy = got
        .routes
        .iter()
        .find(|r| r.table == 101 && r.dst == net("::/0"))
        .expect("RA default copied into net1's table");
    assert_eq!((copy.via, copy.expires), (Some(ip("fe80::1")), Some(1790)));
    assert!(got.rules.contains(&from_rule(SLAAC, 101)));
}

/// A route past its lifetime that the kernel has not collected yet is
/// neither copied nor moved.
#[test]
fn an_expired_ra_route_is_left_alone() {
    let mut inp = underlay_net1_with_slaac();
    for r in inp.pod.routes.iter_mut() {
        if r.protocol == cni::netlink::RTPROT_RA {
            r.expires = Some(0);
        }
    }
    let got = plan_add(&cfg(json!({})), &inp);
    assert!(!got.routes.iter().any(|r| r.via == Some(ip("fe80::1"))));
    assert!(!got
        .moves
        .iter()
        .any(|m| m.route.protocol == cni::netlink::RTPROT_RA));
}

/// An RA that gave net1 no address (no autonomous prefix: the addresses
/// come from elsewhere) still gave it a default in main: it leaves main all
/// the same, for net1's table.
#[test]
fn an_ra_default_without_a_slaac_address_leaves_main_too() {
    let mut inp = underlay_net1_with_slaac();
    inp.pod.addrs.retain(|(_, a)| a.addr() != net(SLAAC).addr());
    inp.pod.slaac.clear();
    inp.pod.routes.retain(|r| r.dst != net("fd00:7::/64"));
    let got = plan_add(&cfg(json!({})), &inp);
    let ra: Vec<&Route> = got
        .moves
        .iter()
        .map(|m| &m.route)
        .filter(|r| r.protocol == cni::netlink::RTPROT_RA)
        .collect();
    assert_eq!(ra.len(), 1, "{:?}", got.moves);
    assert_eq!(ra[0].gateway, Some(ip("fe80::1")));
    assert!(got.sysctls.contains(&ra_defrtr_off("net1")));
    assert!(!got
        .rules
        .iter()
        .any(|(_, r)| r.family == Family::V6 && r.table == 101));
}

// ------------------------------------------------------------ moved ids

/// Every id moved away from its default (issue 24, item 3).
const MOVED: &str = r#"{"podReplyTable": 2000, "podRuleTableFirst": 2001,
    "podReplyRulePriority": 2900, "podRulePriority": 3000,
    "hostRuleTable": 600, "hostRulePriority": 2500}"#;

fn moved(extra: serde_json::Value) -> Config {
    let mut v: serde_json::Value = serde_json::from_str(MOVED).unwrap();
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    cfg(v)
}

/// A default id to its moved value: tables of either netns, priorities by
/// side (the pod's `from` rules and the host rule share 1000 by default).
fn move_table(t: u32) -> u32 {
    match t {
        100 => 2000,
        101..=110 => t + 1900,
        500 => 600,
        t => t,
    }
}

fn move_rule(side: Side, r: &Rule) -> Rule {
    let mut m = r.clone();
    m.table = move_table(r.table);
    m.priority = match (side, r.priority) {
        (Side::Pod, 900) => 2900,
        (Side::Pod, 1000) => 3000,
        (Side::Host, 1000) => 2500,
        (_, p) => p,
    };
    m
}

fn move_route(r: &Route) -> Route {
    Route {
        table: move_table(r.table),
        ..r.clone()
    }
}

/// The pod after an ADD made with the moved ids instead of the defaults.
fn moved_inputs(inp: &Inputs) -> Inputs {
    let mut m = inp.clone();
    m.pod.routes = inp.pod.routes.iter().map(move_route).collect();
    m.pod.rules = inp
        .pod
        .rules
        .iter()
        .map(|r| move_rule(Side::Pod, r))
        .collect();
    m
}

/// The plan of the defaults with every id moved.
fn moved_plan(p: &Plan) -> Plan {
    let spec = |r: &RouteSpec| RouteSpec {
        table: move_table(r.table),
        ..r.clone()
    };
    Plan {
        routes: p.routes.iter().map(spec).collect(),
        policy: p.policy.iter().map(spec).collect(),
        rules: p
            .rules
            .iter()
            .map(|(s, r)| (*s, move_rule(*s, r)))
            .collect(),
        moves: p
            .moves
            .iter()
            .map(|m| Move {
                route: move_route(&m.route),
                others: m.others.iter().map(move_route).collect(),
            })
            .collect(),
        ..p.clone()
    }
}

/// The whole plan of a later NIC with every id moved, written out: the
/// tables from podRuleTableFirst up, the `from` rules at podRulePriority,
/// the host rule at hostRulePriority into hostRuleTable; nothing at a
/// default id.
#[test]
fn underlay_later_nic_with_moved_ids() {
    let inp = moved_inputs(&underlay_two_nics());
    // The first NIC's ADD with these ids made the reply path in 2000.
    assert!(inp.pod.rules.contains(&Rule {
        priority: 2900,
        table: 2000,
        ..fwmark_rule(Family::V4).1
    }));
    let got = plan_add(&moved(json!({"serviceCIDR": ["10.233.0.0/18"]})), &inp);
    let pod = &inp.pod;
    let at = |src: &str, table: u32| {
        let (side, mut r) = from_rule(src, table);
        r.priority = 3000;
        (side, r)
    };
    let host = |f: Family| (Side::Host, Rule::new(f, 2500, 600));
    let mut want = Plan {
        sysctls: vec![ra_defrtr_off("net1")],
        routes: vec![
            pr("10.7.0.0/16", 2001, "net1").link(),
            pr("0.0.0.0/0", 2001, "net1").via("10.7.0.1"),
            pr("fd00:7::/64", 2001, "net1").metric(256),
            pr("::/0", 2001, "net1").via("fd00:7::1").metric(1024),
            pr("10.6.0.2/32", 2001, "veth0").link().src("10.7.1.1"),
            pr("fd00:6::2/128", 2001, "veth0").link().src("fd00:7::1:1"),
            pr("10.233.0.0/18", 2001, "veth0")
                .via("10.6.0.2")
                .src("10.7.1.1"),
            pr("10.6.0.0/16", 2002, "eth0").link(),
            pr("0.0.0.0/0", 2002, "eth0").via("10.6.0.1"),
            pr("fd00:6::/64", 2002, "eth0").metric(256),
            pr("::/0", 2002, "eth0").via("fd00:6::1").metric(1024),
            pr("10.6.0.2/32", 2002, "veth0").link().src("10.6.1.1"),
            pr("10.233.0.0/18", 2002, "veth0")
                .via("10.6.0.2")
                .src("10.6.1.1"),
        ],
        moves: vec![
            Move {
                route: pod.routes[4].clone(),
                others: vec![],
            },
            Move {
                route: pod.routes[7].clone(),
                others: vec![pod.routes[6].clone()],
            },
        ],
        rules: vec![
            at("10.7.1.1/16", 2001),
            at("fd00:7::1:1/64", 2001),
            at("10.6.1.1/16", 2002),
            at("fd00:6::1:1/64", 2002),
            host(Family::V4),
            host(Family::V6),
        ],
        ..Plan::default()
    };
    for a in ["10.7.1.1", "fd00:7::1:1"] {
        host_entry(&mut want, a, "vethabc", POD_MAC);
    }
    for r in want.routes.iter_mut().filter(|r| r.side == Side::Host) {
        r.table = 600;
    }
    assert_eq!(got, want);
}

/// Every layout with every id moved plans what the defaults plan, each id
/// replaced: the ids are read from the config everywhere, none is left at a
/// constant.
#[test]
fn moved_ids_move_in_every_layout() {
    let services: serde_json::Value = serde_json::from_str(SERVICES).unwrap();
    for (name, inp) in [
        ("underlay first", underlay_first()),
        ("underlay later", underlay_two_nics()),
        ("overlay later", overlay_two_nics()),
    ] {
        for extra in [json!({}), json!({"podDefaultRouteNic": "net1"})] {
            let mut fields = services.clone();
            for (k, x) in extra.as_object().unwrap() {
                fields[k] = x.clone();
            }
            let default = plan_add(&cfg(fields.clone()), &inp);
            let got = plan_add(&moved(fields), &moved_inputs(&inp));
            assert_eq!(got, moved_plan(&default), "{name} {extra}");
            let uses = |t: u32| {
                got.routes.iter().any(|r| r.table == t)
                    || got.rules.iter().any(|(_, r)| r.table == t)
            };
            for old in [100, 101, 102, 500] {
                assert!(!uses(old), "{name}: table {old} in {got:?}");
            }
            assert!(got
                .rules
                .iter()
                .all(|(_, r)| ![900, 1000].contains(&r.priority)));
        }
    }
}

/// NIC tables skip the kernel's reserved ids: from podRuleTableFirst 252
/// the second NIC table is 256, never `default` (253).
#[test]
fn nic_tables_skip_reserved_ids() {
    let c = moved(json!({"podReplyTable": 250, "podRuleTableFirst": 252}));
    let mut inp = moved_inputs(&underlay_two_nics());
    for r in inp.pod.routes.iter_mut().filter(|r| r.table == 2000) {
        r.table = 250;
    }
    for r in inp.pod.rules.iter_mut() {
        r.table = 250;
    }
    let got = plan_add(&c, &inp);
    let tables: BTreeSet<u32> = got
        .rules
        .iter()
        .filter(|(s, _)| *s == Side::Pod)
        .map(|(_, r)| r.table)
        .collect();
    assert_eq!(tables, [252, 256].into());
}
