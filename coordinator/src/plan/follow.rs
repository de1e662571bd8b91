//! DEL and CHECK follow the plan: whole teardowns per layout, compared
//! exactly, and a piece added to the plan is required by CHECK and removed by
//! DEL with no change to either.

use cni::netlink::{Rule, Scope, RTPROT_BOOT, TABLE_MAIN};
use ipnet::IpNet;
use serde_json::json;

use super::tests::{cfg, first_inputs, later_inputs, link, overlay_inputs, route};
use super::*;

// The default ids, as literals: a config that sets none plans exactly what
// every release before the ids became config fields did.
const TABLE_REPLY: u32 = 100;
const PRIO_FWMARK: u32 = 900;
const PRIO_FROM: u32 = 1000;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn from_rule(src: &str, table: u32) -> Rule {
    let mut r = Rule::new(Family::of_net(&net(src)), PRIO_FROM, table);
    r.src = Some(net(src));
    r
}

fn fwmark_rule(f: Family) -> Rule {
    let mut r = Rule::new(f, PRIO_FWMARK, TABLE_REPLY);
    r.fwmark = Some(REPLY_MARK);
    r.fwmask = Some(0xffff_ffff);
    r
}

fn host_route(dst: &str, dev: &str) -> RouteSpec {
    RouteSpec {
        side: Side::Host,
        scope: Scope::Link,
        ..RouteSpec::pod(net(dst), 500, dev)
    }
}

fn host_neigh(ip: &str, dev: &str, mac: cni::netlink::Mac) -> NeighSpec {
    NeighSpec {
        side: Side::Host,
        dev: dev.into(),
        ip: ip.parse().unwrap(),
        mac,
    }
}

fn applied(plan: &Plan, inp: &Inputs) -> Observed {
    super::sim::applied(plan, &inp.pod)
}

/// The Done-when of issue 11: a route and a rule added to any layout's plan
/// are required by CHECK and removed by DEL.
#[test]
fn what_the_plan_adds_check_requires_and_del_removes() {
    let c = cfg(json!({"serviceCIDR": ["10.233.0.0/18"]}));
    for inp in [
        first_inputs(),
        later_inputs(Layout::UnderlayLater),
        overlay_inputs(),
    ] {
        let plan = plan_add(&c, &inp);
        assert_eq!(
            verify(&plan, &applied(&plan, &inp)),
            Ok(()),
            "{:?}",
            inp.layout
        );

        let mut grown = plan.clone();
        let extra = RouteSpec {
            via: Some(inp.gateways[0]),
            ..RouteSpec::pod(net("198.51.100.0/24"), TABLE_MAIN, &inp.ifname)
        };
        let extra_host = host_route("198.51.100.9/32", "uplink9");
        let extra_rule = from_rule(&format!("{}/32", inp.ips[0].addr()), 150);
        grown.routes.push(extra.clone());
        grown.routes.push(extra_host.clone());
        grown.rules.push((Side::Pod, extra_rule.clone()));

        // CHECK: the old state lacks each new piece; the grown state passes.
        let err = verify(&grown, &applied(&plan, &inp)).unwrap_err();
        assert!(err.contains("rule priority 1000 lookup 150"), "{err}");
        let mut without_route = applied(&grown, &inp);
        without_route.pod.routes.retain(|r| r.dst != extra.dst);
        let err = verify(&grown, &without_route).unwrap_err();
        assert!(err.contains("pod route 198.51.100.0/24"), "{err}");
        assert_eq!(verify(&grown, &applied(&grown, &inp)), Ok(()));

        // DEL: the route, the host route and the rule (with its table) go.
        let td = teardown(&c, &grown, &inp);
        assert!(td.routes.contains(&extra), "{:?}: {td:?}", inp.layout);
        assert!(td.routes.contains(&extra_host), "{:?}: {td:?}", inp.layout);
        assert!(td.rules.contains(&extra_rule), "{:?}: {td:?}", inp.layout);
        assert!(td.tables.contains(&150), "{:?}: {td:?}", inp.layout);
        let old = teardown(&c, &plan, &inp);
        assert!(!old.routes.contains(&extra) && !old.tables.contains(&150));
    }
}

#[test]
fn underlay_first_nic_teardown() {
    let c = cfg(json!({"serviceCIDR": ["10.233.0.0/18"],
        "policyRoutes": [{"dst": "192.168.0.0/16", "gw": "10.6.0.254"}]}));
    let inp = first_inputs();
    let td = teardown(&c, &plan_add(&c, &inp), &inp);
    // Routes and neighbours on the veth pair go with it; the policy route
    // in main through eth0 does not.
    let expected = Teardown {
        rules: vec![fwmark_rule(Family::V4), fwmark_rule(Family::V6)],
        tables: [TABLE_REPLY].into(),
        routes: vec![RouteSpec {
            via: Some("10.6.0.254".parse().unwrap()),
            ..RouteSpec::pod(net("192.168.0.0/16"), TABLE_MAIN, "eth0")
        }],
        reply_mark: true,
        veth: Some(("vethabc".into(), "veth0".into())),
        ..Teardown::default()
    };
    assert_eq!(td, expected);
}

#[test]
fn the_last_later_nic_takes_the_first_nics_table_along() {
    let c = cfg(json!({}));
    let inp = later_inputs(Layout::UnderlayLater);
    let td = teardown(&c, &plan_add(&c, &inp), &inp);
    let expected = Teardown {
        rules: vec![
            from_rule("10.7.0.5/32", 101),
            from_rule("10.6.0.5/32", 102),
            from_rule("fd00:6::5/128", 102),
        ],
        tables: [101, 102].into(),
        routes: vec![host_route("10.7.0.5/32", "vethabc")],
        neighbours: vec![host_neigh("10.7.0.5", "vethabc", [2, 2, 2, 2, 2, 2])],
        sysctl_defaults: vec![(
            "net/ipv6/conf/net1/accept_ra_defrtr".into(),
            "net/ipv6/conf/default/accept_ra_defrtr".into(),
        )],
        ..Teardown::default()
    };
    assert_eq!(td, expected);

    // A second later NIC still attached keeps eth0's table and rules; a
    // rule of an address the pod no longer holds is no NIC.
    for (addr, keeps) in [(true, true), (false, false)] {
        let mut i = inp.clone();
        i.pod.rules.push(from_rule("10.8.0.5/32", 103));
        if addr {
            i.pod.links.push(link(5, "net2", Some("macvlan")));
            i.pod.addrs.push((5, net("10.8.0.5/16")));
        }
        let td = teardown(&c, &plan_add(&c, &i), &i);
        assert_eq!(td.tables.contains(&102), !keeps, "net2 address {addr}");
        assert_eq!(td.rules.len(), if keeps { 1 } else { 3 });
    }
}

#[test]
fn the_default_route_nic_gives_the_first_nic_its_default_back() {
    let c = cfg(json!({"podDefaultRouteNic": "net1"}));
    let mut inp = later_inputs(Layout::UnderlayLater);
    // After net1's ADD: eth0's default lives in eth0's table 102 only.
    let eth0_default = |table| {
        route(
            "0.0.0.0/0",
            table,
            2,
            Some("10.6.0.1"),
            RTPROT_BOOT,
            Scope::Universe,
        )
    };
    inp.pod.routes.retain(|r| *r != eth0_default(TABLE_MAIN));
    inp.pod.routes.push(eth0_default(102));
    inp.pod.rules.push(from_rule("10.6.0.5/32", 102));
    inp.pod.rules.push(from_rule("10.7.0.5/32", 101));
    let td = teardown(&c, &plan_add(&c, &inp), &inp);
    assert_eq!(td.restores, vec![eth0_default(TABLE_MAIN)]);
    // Any other later NIC leaves main's default where it is.
    let other = cfg(json!({"podDefaultRouteNic": "net2"}));
    assert!(teardown(&other, &plan_add(&other, &inp), &inp)
        .restores
        .is_empty());
}

#[test]
fn overlay_cluster_routes_in_main_go_with_the_last_later_nic() {
    let c = cfg(json!({"serviceCIDR": ["10.233.0.0/18"]}));
    let inp = overlay_inputs();
    let plan = plan_add(&c, &inp);
    let in_main: Vec<RouteSpec> = plan
        .routes
        .iter()
        .filter(|r| r.side == Side::Pod && r.table == TABLE_MAIN && r.dev == "eth0")
        .cloned()
        .collect();
    assert!(!in_main.is_empty());
    let td = teardown(&c, &plan, &inp);
    assert!(in_main.iter().all(|r| td.routes.contains(r)), "{td:?}");
    // The overlay's own table for eth0 is 100; the peer routes stay with it.
    assert!(td.tables.contains(&TABLE_REPLY));
    assert!(td.veth.is_none() && !td.reply_mark);

    let mut two = inp.clone();
    two.pod.links.push(link(5, "net2", Some("macvlan")));
    two.pod.addrs.push((5, net("10.8.0.5/16")));
    two.pod.rules.push(from_rule("10.8.0.5/32", 103));
    let td = teardown(&c, &plan_add(&c, &two), &two);
    assert!(in_main.iter().all(|r| !td.routes.contains(r)), "{td:?}");
    assert!(!td.tables.contains(&TABLE_REPLY));
}

#[test]
fn the_sweep_finds_what_any_release_left() {
    let c = cfg(json!({}));
    let mut pod = overlay_inputs().pod;
    let ours = |dst, table, oif| route(dst, table, oif, None, ROUTE_PROTOCOL, Scope::Link);
    // A `from` rule of an address gone, a table no rule leads to, and a
    // cluster route in main through eth0 with no later NIC left.
    pod.rules.push(from_rule("10.9.9.9/32", 120));
    pod.routes.push(ours("10.9.0.0/16", 120, 3));
    pod.routes.push(ours("10.10.0.0/16", 130, 3));
    pod.routes.push(ours("10.6.0.2/32", TABLE_MAIN, 2));
    // The main plugin's own route in a table of its own is not ours.
    pod.routes.push(route(
        "10.11.0.0/16",
        140,
        3,
        None,
        RTPROT_BOOT,
        Scope::Link,
    ));
    let left = sweep(&c, &pod, &Teardown::default());
    let expected = Teardown {
        rules: vec![from_rule("10.9.9.9/32", 120)],
        tables: [120, 130].into(),
        stale_routes: vec![ours("10.6.0.2/32", TABLE_MAIN, 2)],
        ..Teardown::default()
    };
    assert_eq!(left, expected);

    // An underlay pod's routes of ours in main through eth0 are its first
    // NIC's policyRoutes: kept.
    pod.links.push(link(4, "veth0", Some("veth")));
    assert!(sweep(&c, &pod, &Teardown::default())
        .stale_routes
        .is_empty());
}

/// A SLAAC address that appears after ADD (the router answered once the
/// link was up, after the chain had run) has no `from` rule: CHECK plans
/// one for every address the NIC holds and reports it as missing, naming
/// the address. Its DEL removes the rule with net1's own, even while
/// another later NIC keeps eth0's table.
#[test]
fn a_slaac_address_after_add_is_drift_for_check_and_del_removes_its_rule() {
    let c = cfg(json!({}));
    let inp = later_inputs(Layout::UnderlayLater);
    let plan = plan_add(&c, &inp);
    let mut seen = applied(&plan, &inp);
    assert_eq!(verify(&plan, &seen), Ok(()));

    let slaac = net("fd00:7::a8c1:abff:fe00:705/64");
    let mut later = inp.clone();
    later.pod = seen.pod.clone();
    later.pod.addrs.push((3, slaac));
    later.pod.slaac.push((3, slaac));
    seen.pod = later.pod.clone();
    let err = verify(&plan_add(&c, &later), &seen).unwrap_err();
    assert!(
        err.contains("rule priority 1000 lookup 101 from fd00:7::a8c1:abff:fe00:705/128"),
        "{err}"
    );

    // Once the rule is there (a repeated ADD), CHECK passes again.
    let again = plan_add(&c, &later);
    assert!(again
        .rules
        .contains(&(Side::Pod, from_rule("fd00:7::a8c1:abff:fe00:705/128", 101))));
    let fixed = applied(&again, &later);
    assert_eq!(verify(&again, &fixed), Ok(()));

    // DEL with net2 still attached: eth0's table stays, net1's rules go,
    // the SLAAC one included.
    let mut del = later.clone();
    del.pod = fixed.pod.clone();
    del.pod.links.push(link(5, "net2", Some("macvlan")));
    del.pod.addrs.push((5, net("10.8.0.5/16")));
    del.pod.rules.push(from_rule("10.8.0.5/32", 103));
    let td = teardown(&c, &plan_add(&c, &del), &del);
    assert_eq!(
        td.rules,
        vec![
            from_rule("10.7.0.5/32", 101),
            from_rule("fd00:7::a8c1:abff:fe00:705/128", 101)
        ]
    );
    assert!(!td.tables.contains(&102));
}

/// DEL with moved ids: the NIC's rules at podRulePriority and its tables
/// from podRuleTableFirst go; the fallback without a plan takes the reply
/// rule at podReplyRulePriority, the reply table and the host route in
/// hostRuleTable.
#[test]
fn teardown_follows_moved_ids() {
    let c = cfg(json!({"podReplyTable": 2000, "podRuleTableFirst": 2001,
        "podReplyRulePriority": 2900, "podRulePriority": 3000, "hostRuleTable": 600}));
    let inp = later_inputs(Layout::UnderlayLater);
    let td = teardown(&c, &plan_add(&c, &inp), &inp);
    let at = |src: &str, table: u32| Rule {
        priority: 3000,
        ..from_rule(src, table)
    };
    assert_eq!(
        td.rules,
        vec![
            at("10.7.0.5/32", 2001),
            at("10.6.0.5/32", 2002),
            at("fd00:6::5/128", 2002)
        ]
    );
    assert_eq!(td.tables, [2001, 2002].into());
    assert_eq!(
        td.routes,
        vec![RouteSpec {
            table: 600,
            ..host_route("10.7.0.5/32", "vethabc")
        }]
    );

    let ips = [net("10.6.0.5/16")];
    let td = teardown_without_plan(&c, "eth0", &ips, Some("vethabc"), None);
    let mark = |f| Rule {
        priority: 2900,
        table: 2000,
        ..fwmark_rule(f)
    };
    assert_eq!(td.rules, vec![mark(Family::V4), mark(Family::V6)]);
    assert_eq!(td.tables, [2000].into());
    assert_eq!(td.routes[0].table, 600);
}

/// The sweep finds leftover `from` rules by the configured priority and our
/// rules' shape: with podRulePriority moved, a rule at the old 1000 is
/// another owner's and stays; at our priority, a rule of another shape (a
/// prefix, a second selector, a table outside ours) stays too.
#[test]
fn the_sweep_takes_only_rules_of_ours() {
    let pod = overlay_inputs().pod;
    let moved = cfg(json!({"podRulePriority": 3000}));
    let mut left = pod.clone();
    let ours = Rule {
        priority: 3000,
        ..from_rule("10.9.9.9/32", 120)
    };
    let old_priority = from_rule("10.9.9.8/32", 121);
    left.rules.extend([ours.clone(), old_priority]);
    assert_eq!(
        sweep(&moved, &left, &Teardown::default()).rules,
        vec![ours.clone()]
    );

    let c = cfg(json!({}));
    let mut others = pod.clone();
    let prefix = from_rule("10.8.0.0/16", 101);
    let mut to = from_rule("10.9.9.7/32", 122);
    to.dst = Some(net("192.0.2.0/24"));
    let below = from_rule("10.9.9.6/32", 50);
    let mut marked = from_rule("10.9.9.5/32", 123);
    marked.fwmark = Some(7);
    others.rules.extend([prefix, to, below, marked]);
    assert_eq!(sweep(&c, &others, &Teardown::default()).rules, vec![]);
    // The same with our shape is a leftover of ours.
    others.rules.push(from_rule("10.9.9.4/32", 124));
    assert_eq!(
        sweep(&c, &others, &Teardown::default()).rules,
        vec![from_rule("10.9.9.4/32", 124)]
    );
}
