//! Root tests of the netlink layer, against the real kernel.
//!
//! Every test makes its own scratch namespaces (`ip netns add`, deleted by a
//! Drop guard) and talks to them through `Netlink::open_in` from a thread that
//! never leaves the root netns. `ip` is used only to observe.

use std::net::IpAddr;
use std::process::Command;

use cni::netlink::{
    Family, Link, Mac, Netlink, NlError, Route, RouteKind, Rule, Scope, VethSpec, NUD_PERMANENT,
    TABLE_MAIN,
};
use cni::netns::{sysctl_get, sysctl_set, NetNs};
use integration::lab::Netns;
use ipnet::IpNet;
use serde_json::Value;

/// A scratch netns of the test kit, with `ip` to observe it.
struct Scratch {
    netns: Netns,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            netns: Netns::scratch("nl"),
        }
    }

    fn nl(&self) -> Netlink {
        Netlink::open_in(self.netns.ns()).expect("open_in")
    }

    /// `ip -n <ns> <args>`, must succeed.
    fn ip(&self, args: &[&str]) -> String {
        self.netns
            .ip(args)
            .unwrap_or_else(|e| panic!("{e} (these tests need root)"))
    }

    fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.ip(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {out}"))
    }

    fn exec(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", self.netns.name()])
            .args(cmd)
            .output()
            .expect("ip netns exec")
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac_str(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link(nl: &Netlink, name: &str) -> Link {
    nl.link(name)
        .unwrap()
        .unwrap_or_else(|| panic!("link {name} missing"))
}

/// A veth pair `a0`/`a1` inside one namespace, both up, with 10.9.0.1/24 and
/// fd00:9::1/64 (no DAD) on `a0`. Returns the index of `a0`.
fn lab_link(nl: &Netlink) -> u32 {
    nl.add_veth(&VethSpec {
        name: "a0".into(),
        mac: None,
        peer_name: "a1".into(),
        peer_mac: None,
        mtu: None,
        peer_netns: None,
    })
    .unwrap();
    let a0 = link(nl, "a0").index;
    let a1 = link(nl, "a1").index;
    nl.set_link_up(a0).unwrap();
    nl.set_link_up(a1).unwrap();
    nl.set_link_up(link(nl, "lo").index).unwrap();
    nl.add_address(a0, net("10.9.0.1/24"), false).unwrap();
    nl.add_address(a0, net("fd00:9::1/64"), true).unwrap();
    a0
}

#[test]
fn veth_pair_across_namespaces() {
    let (a, b) = (Scratch::new(), Scratch::new());
    let root = NetNs::current().unwrap();
    let (na, nb) = (a.nl(), b.nl());
    assert!(
        NetNs::current().unwrap().same_as(&root),
        "open_in leaked the netns"
    );

    let (mac_a, mac_b) = ([0x02, 0, 0, 0, 0xaa, 1], [0x02, 0, 0, 0, 0xbb, 2]);
    let spec = VethSpec {
        name: "host0".into(),
        mac: Some(mac_a),
        peer_name: "pod0".into(),
        peer_mac: Some(mac_b),
        mtu: Some(1400),
        peer_netns: Some(b.netns.ns()),
    };
    na.add_veth(&spec).unwrap();
    assert_eq!(na.add_veth(&spec), Err(NlError::Exists));

    let host = link(&na, "host0");
    let pod = link(&nb, "pod0");
    assert_eq!(
        na.link("pod0").unwrap(),
        None,
        "peer must never appear in this netns"
    );
    assert_eq!(host.kind.as_deref(), Some("veth"));
    assert_eq!(pod.kind.as_deref(), Some("veth"));
    assert_eq!((host.mac, pod.mac), (Some(mac_a), Some(mac_b)));
    assert_eq!((host.mtu, pod.mtu), (1400, 1400));
    assert_eq!(host.link, Some(pod.index));
    assert_eq!(pod.link, Some(host.index));
    assert!(host.link_netnsid.is_some() && pod.link_netnsid.is_some());
    assert!(!host.up);
    assert_eq!(na.link_by_index(host.index).unwrap(), Some(host.clone()));
    let names: Vec<String> = na.links().unwrap().into_iter().map(|l| l.name).collect();
    assert!(
        names.contains(&"lo".into()) && names.contains(&"host0".into()),
        "{names:?}"
    );

    // What `ip` sees agrees.
    let j = b.ip_json(&["link", "show", "pod0"]);
    assert_eq!(j[0]["address"], mac_str(&mac_b));
    assert_eq!(j[0]["mtu"], 1400);

    // Attribute changes read back.
    na.set_link_mtu(host.index, 1300).unwrap();
    na.set_link_mac(host.index, [0x02, 0, 0, 0, 0xaa, 9])
        .unwrap();
    na.set_link_txqlen(host.index, 321).unwrap();
    na.set_link_up(host.index).unwrap();
    let host2 = link(&na, "host0");
    assert_eq!(host2.mtu, 1300);
    assert_eq!(host2.mac, Some([0x02, 0, 0, 0, 0xaa, 9]));
    assert_eq!(host2.txqlen, 321);
    assert!(host2.up);
    na.set_link_down(host.index).unwrap();
    assert!(!link(&na, "host0").up);

    // Traffic crosses the pair.
    na.set_link_up(host.index).unwrap();
    nb.set_link_up(pod.index).unwrap();
    na.add_address(host.index, net("10.10.0.1/24"), false)
        .unwrap();
    nb.add_address(pod.index, net("10.10.0.2/24"), false)
        .unwrap();
    let out = a.exec(&["ping", "-c", "1", "-w", "10", "10.10.0.2"]);
    assert!(
        out.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // move_link: a local pair, one end moved to b.
    na.add_veth(&VethSpec {
        name: "m0".into(),
        mac: None,
        peer_name: "m1".into(),
        peer_mac: None,
        mtu: None,
        peer_netns: None,
    })
    .unwrap();
    let m1 = link(&na, "m1");
    na.move_link(m1.index, b.netns.ns()).unwrap();
    assert_eq!(na.link("m1").unwrap(), None);
    let moved = link(&nb, "m1");
    assert_eq!(moved.link, Some(link(&na, "m0").index));
    assert!(moved.link_netnsid.is_some());
    assert_eq!(na.move_link(m1.index, b.netns.ns()), Err(NlError::NotFound));

    // Delete, then NotFound.
    nb.del_link(moved.index).unwrap();
    assert_eq!(
        na.link("m0").unwrap(),
        None,
        "deleting one end removes the pair"
    );
    assert_eq!(nb.del_link(moved.index), Err(NlError::NotFound));
    assert_eq!(na.link_by_index(999_999).unwrap(), None);
    assert_eq!(na.set_link_up(999_999), Err(NlError::NotFound));
    assert!(NetNs::current().unwrap().same_as(&root));
}

#[test]
fn addresses_with_nodad() {
    let s = Scratch::new();
    let nl = s.nl();
    let idx = lab_link(&nl);
    let other = link(&nl, "a1").index;
    nl.add_address(idx, net("fd00:8::1/64"), false).unwrap();
    nl.add_address(idx, net("fe80::5/64"), true).unwrap();
    nl.add_address(other, net("10.8.0.2/24"), false).unwrap();

    assert_eq!(
        nl.add_address(idx, net("10.9.0.1/24"), false),
        Err(NlError::Exists)
    );

    let mine = nl.addresses(Some(idx)).unwrap();
    assert!(mine.iter().all(|a| a.index == idx), "{mine:?}");
    let find = |n: &str| {
        mine.iter()
            .find(|a| a.addr == net(n))
            .unwrap_or_else(|| panic!("{n} missing in {mine:?}"))
            .clone()
    };
    let v4 = find("10.9.0.1/24");
    let nodad = find("fd00:9::1/64");
    let dad = find("fd00:8::1/64");
    assert_eq!(v4.scope, 0);
    assert!(v4.flags.permanent && !v4.flags.nodad);
    assert!(nodad.flags.nodad && nodad.flags.permanent && !nodad.flags.tentative);
    assert!(!dad.flags.nodad && !dad.flags.dadfailed);
    assert_eq!(find("fe80::5/64").scope, 253);
    let all = nl.addresses(None).unwrap();
    assert!(all
        .iter()
        .any(|a| a.index == other && a.addr == net("10.8.0.2/24")));
    assert!(all
        .iter()
        .any(|a| a.addr == net("127.0.0.1/8") && a.scope == 254));

    // Kernel view through ip: nodad flag present on the right address only.
    let j = s.ip_json(&["-6", "addr", "show", "dev", "a0"]);
    let infos = j[0]["addr_info"].as_array().unwrap();
    let info = |l: &str| infos.iter().find(|i| i["local"] == l).unwrap().clone();
    assert_eq!(info("fd00:9::1")["nodad"], true);
    assert!(info("fd00:8::1").get("nodad").is_none());

    nl.del_address(idx, net("10.9.0.1/24")).unwrap();
    assert_eq!(
        nl.del_address(idx, net("10.9.0.1/24")),
        Err(NlError::NotFound)
    );
    nl.del_address(idx, net("fd00:9::1/64")).unwrap();
    assert_eq!(
        nl.del_address(idx, net("fd00:9::1/64")),
        Err(NlError::NotFound)
    );
    let left = nl.addresses(Some(idx)).unwrap();
    assert!(!left
        .iter()
        .any(|a| a.addr == net("10.9.0.1/24") || a.addr == net("fd00:9::1/64")));
    assert_eq!(nl.addresses(Some(999_999)), Err(NlError::NotFound));
}

fn route_roundtrip(s: &Scratch, nl: &Netlink, idx: u32, table: u32, family: Family) {
    let (dst, gw, gw2, other_dst) = match family {
        Family::V4 => ("10.99.0.0/24", "10.9.0.2", "10.9.0.3", "10.98.0.0/24"),
        Family::V6 => ("fd99::/64", "fd00:9::2", "fd00:9::3", "fd98::/64"),
    };
    let mut r = Route::new(net(dst), table);
    r.oif = Some(idx);
    r.gateway = Some(ip(gw));
    r.metric = Some(50);
    nl.add_route(&r).unwrap();
    assert_eq!(nl.add_route(&r), Err(NlError::Exists), "table {table}");

    // A route elsewhere that a filtered dump must not return.
    let elsewhere = if table == TABLE_MAIN { 77 } else { TABLE_MAIN };
    let mut o = Route::new(net(other_dst), elsewhere);
    o.oif = Some(idx);
    o.scope = if family == Family::V4 {
        Scope::Link
    } else {
        Scope::Universe
    };
    nl.add_route(&o).unwrap();

    let got = nl.routes(family, Some(table)).unwrap();
    assert!(got.iter().all(|x| x.table == table), "{got:?}");
    assert!(!got.iter().any(|x| x.dst == o.dst), "{got:?}");
    let mine = got.iter().find(|x| x.dst == r.dst).expect("added route");
    assert_eq!(mine, &r, "parsed back");
    let all = nl.routes(family, None).unwrap();
    assert!(all.iter().any(|x| x.dst == o.dst && x.table == elsewhere));

    // ip agrees on table and gateway.
    let fam = if family == Family::V4 { "-4" } else { "-6" };
    let t = table.to_string();
    let j = s.ip_json(&[fam, "route", "show", "table", &t, dst]);
    assert_eq!(j[0]["gateway"], gw, "{j}");

    let mut r2 = r.clone();
    r2.gateway = Some(ip(gw2));
    nl.replace_route(&r2).unwrap();
    let got = nl.routes(family, Some(table)).unwrap();
    let now: Vec<_> = got.iter().filter(|x| x.dst == r.dst).collect();
    assert_eq!(now, vec![&r2], "replaced in place");

    nl.del_route(&r2).unwrap();
    assert_eq!(nl.del_route(&r2), Err(NlError::NotFound));
    assert!(!nl
        .routes(family, Some(table))
        .unwrap()
        .iter()
        .any(|x| x.dst == r.dst));
    nl.del_route(&o).unwrap();
}

#[test]
fn routes_in_main_and_numbered_tables() {
    let s = Scratch::new();
    let nl = s.nl();
    let idx = lab_link(&nl);
    for family in [Family::V4, Family::V6] {
        for table in [TABLE_MAIN, 100, 1000] {
            route_roundtrip(&s, &nl, idx, table, family);
        }
        assert_eq!(nl.routes(family, Some(4242)).unwrap(), vec![]);
    }

    // Kernel refusals keep their errno and the kernel's own explanation.
    let mut bad = Route::new(net("10.96.0.0/24"), 100);
    bad.gateway = Some(ip("192.0.2.1"));
    match nl.add_route(&bad) {
        Err(NlError::Kernel { errno, msg }) => {
            assert_eq!(errno, libc::ENETUNREACH, "{msg}");
            assert!(
                msg.to_lowercase().contains("gateway"),
                "no extended ack: {msg}"
            );
        }
        other => panic!("{other:?}"),
    }

    // A scoped route with a preferred source in a big table.
    let mut r = Route::new(net("10.97.0.0/24"), 1000);
    r.oif = Some(idx);
    r.scope = Scope::Link;
    r.prefsrc = Some(ip("10.9.0.1"));
    r.protocol = 4;
    nl.add_route(&r).unwrap();
    let got = nl.routes(Family::V4, Some(1000)).unwrap();
    assert_eq!(got.iter().find(|x| x.dst == r.dst), Some(&r));
    let j = s.ip_json(&["route", "show", "table", "1000"]);
    let e = j
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["dst"] == "10.97.0.0/24")
        .unwrap();
    assert_eq!(e["scope"], "link");
    assert_eq!(e["prefsrc"], "10.9.0.1");
    assert_eq!(e["protocol"], "static");

    // Kernel routes in main: connected prefix, protocol kernel, scope link.
    let main = nl.routes(Family::V4, Some(TABLE_MAIN)).unwrap();
    let conn = main.iter().find(|x| x.dst == net("10.9.0.0/24")).unwrap();
    assert_eq!(
        (conn.protocol, conn.scope, conn.oif),
        (2, Scope::Link, Some(idx))
    );
    let local = nl.routes(Family::V4, Some(255)).unwrap();
    assert!(local
        .iter()
        .any(|x| x.kind == RouteKind::Local && x.dst == net("10.9.0.1/32")));

    // Default routes parse as 0.0.0.0/0 and ::/0.
    let mut d = Route::new(net("0.0.0.0/0"), 1000);
    d.gateway = Some(ip("10.9.0.254"));
    nl.add_route(&d).unwrap();
    let mut d6 = Route::new(net("::/0"), 1000);
    d6.gateway = Some(ip("fd00:9::fe"));
    d6.oif = Some(idx);
    nl.add_route(&d6).unwrap();
    let got = nl.routes(Family::V4, Some(1000)).unwrap();
    let back = got.iter().find(|x| x.dst.prefix_len() == 0).unwrap();
    assert_eq!(back.gateway, d.gateway);
    assert_eq!(back.oif, Some(idx));
    let got6 = nl.routes(Family::V6, Some(1000)).unwrap();
    assert!(got6
        .iter()
        .any(|x| x.dst == net("::/0") && x.gateway == d6.gateway));
}

/// An IPv6 route installed with a lifetime (RTA_EXPIRES) reads back with
/// what it has left (RTA_CACHEINFO), as `ip` shows it; a permanent one with
/// none; and the lifetime is no part of its identity (a delete by the route
/// as read finds it).
#[test]
fn ipv6_route_lifetime_roundtrip() {
    let s = Scratch::new();
    let nl = s.nl();
    let idx = lab_link(&nl);
    let mut r = Route::new(net("fd97::/64"), 101);
    r.oif = Some(idx);
    r.gateway = Some(ip("fe80::1"));
    r.metric = Some(1024);
    r.expires = Some(600);
    nl.add_route(&r).unwrap();
    let mut permanent = Route::new(net("fd96::/64"), 101);
    permanent.oif = Some(idx);
    nl.add_route(&permanent).unwrap();

    let got = nl.routes(Family::V6, Some(101)).unwrap();
    let back = got.iter().find(|x| x.dst == r.dst).expect("expiring route");
    let left = back.expires.expect("a lifetime read back");
    assert!((590..=600).contains(&left), "{back:?}");
    assert_eq!(back, &r, "same route whatever it has left");
    let plain = got.iter().find(|x| x.dst == permanent.dst).unwrap();
    assert_eq!(plain.expires, None, "{plain:?}");
    let j = s.ip_json(&["-6", "route", "show", "table", "101", "fd97::/64"]);
    assert!(j[0]["expires"].as_u64().is_some_and(|e| e > 0), "{j}");

    nl.del_route(back).unwrap();
    nl.del_route(plain).unwrap();
    assert!(nl.routes(Family::V6, Some(101)).unwrap().is_empty());
}

fn rule_json_for(s: &Scratch, fam: &str, prio: u32) -> Value {
    let j = s.ip_json(&[fam, "rule", "show"]);
    j.as_array()
        .unwrap()
        .iter()
        .find(|r| r["priority"] == prio)
        .unwrap_or_else(|| panic!("rule {prio} not in {j}"))
        .clone()
}

#[test]
fn rules_fwmark_and_src_both_families() {
    let s = Scratch::new();
    let nl = s.nl();
    let idx = lab_link(&nl);
    for (family, fam, src, dst, gw, local) in [
        (
            Family::V4,
            "-4",
            "10.9.0.0/24",
            "10.77.0.5",
            "10.9.0.2",
            "10.9.0.1",
        ),
        (
            Family::V6,
            "-6",
            "fd00:9::/64",
            "fd77::5",
            "fd00:9::2",
            "fd00:9::1",
        ),
    ] {
        let mut by_mark = Rule::new(family, 1000, 500);
        by_mark.fwmark = Some(0x10);
        by_mark.fwmask = Some(0xff);
        let mut by_src = Rule::new(family, 1001, 500);
        by_src.src = Some(net(src));
        by_src.iif = Some("lo".into());
        nl.add_rule(&by_mark).unwrap();
        nl.add_rule(&by_src).unwrap();
        assert_eq!(nl.add_rule(&by_mark), Err(NlError::Exists));

        let rules = nl.rules(family).unwrap();
        assert!(rules.iter().all(|r| r.family == family));
        assert!(rules.contains(&by_mark), "{rules:?}");
        assert!(rules.contains(&by_src), "{rules:?}");
        // The kernel's own rules come back too (main lookup at 32766).
        assert!(rules
            .iter()
            .any(|r| r.priority == 32766 && r.table == TABLE_MAIN));

        for prio in [1000, 1001] {
            let j = rule_json_for(&s, fam, prio);
            assert_eq!(j["table"], "500", "{j}");
            assert!(j.get("action").is_none() && j.get("nop").is_none(), "{j}");
        }
        assert_eq!(rule_json_for(&s, fam, 1000)["fwmark"], "0x10");
        assert_eq!(rule_json_for(&s, fam, 1000)["fwmask"], "0xff");

        // The rules steer real lookups into table 500.
        let dst_net = IpNet::new(ip(dst), if family == Family::V4 { 24 } else { 64 })
            .unwrap()
            .trunc();
        let mut r = Route::new(dst_net, 500);
        r.gateway = Some(ip(gw));
        r.oif = Some(idx);
        nl.add_route(&r).unwrap();
        let hit = s.ip_json(&[fam, "route", "get", dst, "mark", "0x10"]);
        assert_eq!(hit[0]["gateway"], gw, "{hit}");
        let hit = s.ip_json(&[fam, "route", "get", dst, "from", local]);
        assert_eq!(hit[0]["gateway"], gw, "{hit}");
        assert_eq!(nl.route_get(ip(dst)).unwrap(), None, "no rule, no route");

        // Exact deletes: a rule that only contains ours is not touched.
        let mut wider = Rule::new(family, 1000, 500);
        wider.fwmark = Some(0x10);
        assert_eq!(nl.del_rule(&wider), Err(NlError::NotFound));
        assert!(nl.rules(family).unwrap().contains(&by_mark));
        nl.del_rule(&by_mark).unwrap();
        assert_eq!(nl.del_rule(&by_mark), Err(NlError::NotFound));
        nl.del_rule(&by_src).unwrap();
        let rules = nl.rules(family).unwrap();
        assert!(!rules.contains(&by_mark) && !rules.contains(&by_src));
    }

    // A mark without a mask reads back with the kernel's full mask and still
    // counts as the same rule for deletion.
    let mut m = Rule::new(Family::V4, 1500, 70000);
    m.fwmark = Some(0x3);
    nl.add_rule(&m).unwrap();
    let back = nl
        .rules(Family::V4)
        .unwrap()
        .into_iter()
        .find(|r| r.priority == 1500)
        .unwrap();
    assert_eq!(
        (back.table, back.fwmark, back.fwmask),
        (70000, Some(3), Some(u32::MAX))
    );
    nl.del_rule(&m).unwrap();
}

/// One dump of both families returns exactly what the two per-family dumps
/// do (rules and routes of every table, multipath nexthops included).
#[test]
fn both_families_in_one_dump() {
    let s = Scratch::new();
    let nl = s.nl();
    let idx = lab_link(&nl);
    for (family, dst, gw, table) in [
        (Family::V4, "10.78.0.0/16", "10.9.0.2", 600),
        (Family::V6, "fd78::/48", "fd00:9::2", 601),
    ] {
        let mut r = Route::new(net(dst), table);
        r.gateway = Some(ip(gw));
        r.oif = Some(idx);
        nl.add_route(&r).unwrap();
        let mut rule = Rule::new(family, 1200, table);
        rule.fwmark = Some(0x7);
        nl.add_rule(&rule).unwrap();
    }
    let per_family = |f: fn(&Netlink, Family) -> Vec<Route>| -> Vec<Route> {
        [Family::V4, Family::V6]
            .into_iter()
            .flat_map(|fam| f(&nl, fam))
            .collect()
    };
    // The kernel adds a link's fe80::/64 and ff00::/8 routes on its own
    // time after the link comes up: compare one dump with per-family dumps
    // taken before and after it that agree, so nothing changed in between.
    let mut routes = Vec::new();
    for _ in 0..50 {
        let before = per_family(|nl, f| nl.routes(f, None).unwrap());
        let all = nl.all_routes().unwrap();
        let after = per_family(|nl, f| nl.routes(f, None).unwrap());
        if before == after {
            assert_eq!(all, before);
            routes = before;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(routes.iter().any(|r| r.table == 600) && routes.iter().any(|r| r.table == 601));
    let mut rules: Vec<Rule> = [Family::V4, Family::V6]
        .into_iter()
        .flat_map(|f| nl.rules(f).unwrap())
        .collect();
    let mut all = nl.all_rules().unwrap();
    let key = |r: &Rule| (r.family, r.priority, r.table);
    rules.sort_by_key(key);
    all.sort_by_key(key);
    assert_eq!(all, rules);
    assert!(all
        .iter()
        .any(|r| r.priority == 1200 && r.family == Family::V6));
}

#[test]
fn neighbours_permanent_get_del() {
    let s = Scratch::new();
    let nl = s.nl();
    let idx = lab_link(&nl);
    let other = link(&nl, "a1").index;
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    for (family, addr) in [(Family::V4, "10.9.0.7"), (Family::V6, "fd00:9::7")] {
        let a = ip(addr);
        assert_eq!(nl.neighbour(idx, a).unwrap(), None);
        nl.set_permanent_neighbour(idx, a, mac).unwrap();
        let n = nl.neighbour(idx, a).unwrap().expect("entry");
        assert_eq!((n.index, n.ip, n.mac), (idx, a, Some(mac)));
        assert_ne!(n.state & NUD_PERMANENT, 0);

        // Replace in place.
        let mac2 = [0x02, 0x11, 0x22, 0x33, 0x44, 0x66];
        nl.set_permanent_neighbour(idx, a, mac2).unwrap();
        assert_eq!(nl.neighbour(idx, a).unwrap().unwrap().mac, Some(mac2));
        let j = s.ip_json(&["neigh", "show", "dev", "a0", "to", addr]);
        assert_eq!(j[0]["lladdr"], mac_str(&mac2), "{j}");
        assert_eq!(j[0]["state"][0], "PERMANENT", "{j}");

        let on_link = nl.neighbours(family, Some(idx)).unwrap();
        assert!(on_link.iter().all(|n| n.index == idx));
        assert!(on_link.iter().any(|n| n.ip == a));
        assert!(!nl
            .neighbours(family, Some(other))
            .unwrap()
            .iter()
            .any(|n| n.ip == a));
        assert!(nl
            .neighbours(family, None)
            .unwrap()
            .iter()
            .any(|n| n.ip == a));

        nl.del_neighbour(idx, a).unwrap();
        assert_eq!(nl.del_neighbour(idx, a), Err(NlError::NotFound));
        assert_eq!(nl.neighbour(idx, a).unwrap(), None);
    }
}

#[test]
fn route_get_lookups() {
    let s = Scratch::new();
    let nl = s.nl();
    let idx = lab_link(&nl);

    let on_link = nl.route_get(ip("10.9.0.2")).unwrap().expect("connected");
    assert_eq!(on_link.oif, Some(idx));
    assert_eq!(on_link.prefsrc, Some(ip("10.9.0.1")));
    assert_eq!(on_link.gateway, None);
    assert_eq!(on_link.table, TABLE_MAIN);

    assert_eq!(nl.route_get(ip("192.0.2.1")).unwrap(), None);
    assert_eq!(nl.route_get(ip("2001:db8::1")).unwrap(), None);

    let mut d = Route::new(net("0.0.0.0/0"), TABLE_MAIN);
    d.gateway = Some(ip("10.9.0.254"));
    nl.add_route(&d).unwrap();
    let via = nl.route_get(ip("192.0.2.1")).unwrap().expect("default");
    assert_eq!(via.gateway, Some(ip("10.9.0.254")));
    assert_eq!(via.oif, Some(idx));

    let mut d6 = Route::new(net("::/0"), TABLE_MAIN);
    d6.gateway = Some(ip("fd00:9::fe"));
    d6.oif = Some(idx);
    nl.add_route(&d6).unwrap();
    let via6 = nl
        .route_get(ip("2001:db8::1"))
        .unwrap()
        .expect("default v6");
    assert_eq!(via6.gateway, Some(ip("fd00:9::fe")));
    assert_eq!(via6.oif, Some(idx));
    assert_eq!(via6.table, TABLE_MAIN);

    // A lookup answered from a numbered table reports it.
    let mut r = Rule::new(Family::V4, 100, 3000);
    r.dst = Some(net("198.51.100.0/24"));
    nl.add_rule(&r).unwrap();
    let mut t = Route::new(net("198.51.100.0/24"), 3000);
    t.gateway = Some(ip("10.9.0.3"));
    nl.add_route(&t).unwrap();
    let hit = nl.route_get(ip("198.51.100.9")).unwrap().unwrap();
    assert_eq!((hit.table, hit.gateway), (3000, Some(ip("10.9.0.3"))));
}

#[test]
fn sysctl_inside_a_namespace() {
    let s = Scratch::new();
    let key = "net.ipv4.conf.all.forwarding";
    let root_before = sysctl_get(key).unwrap();
    let inside = s
        .netns
        .ns()
        .run(|| {
            let before = sysctl_get(key).unwrap();
            let target = if before == "1" { "0" } else { "1" };
            sysctl_set(key, target).unwrap();
            (target.to_string(), sysctl_get(key).unwrap())
        })
        .unwrap();
    assert_eq!(inside.0, inside.1);
    let seen = s.exec(&["cat", "/proc/sys/net/ipv4/conf/all/forwarding"]);
    assert_eq!(String::from_utf8_lossy(&seen.stdout).trim(), inside.0);
    assert_eq!(
        sysctl_get(key).unwrap(),
        root_before,
        "root netns untouched"
    );
}

#[test]
fn netns_open_errors() {
    let f = tempfile::NamedTempFile::new().unwrap();
    assert_eq!(
        NetNs::open(f.path()).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    assert_eq!(
        NetNs::open("/var/run/netns/does-not-exist-here")
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::NotFound
    );
    // open() in the calling thread works too and sees the root namespace's lo.
    let nl = Netlink::open().unwrap();
    assert!(nl.link("lo").unwrap().is_some());
    assert_eq!(nl.link("").unwrap(), None);
    assert_eq!(nl.link("a-name-longer-than-ifnamsiz").unwrap(), None);
}

/// nf_tables tables of family inet named `names`, as `nft` lists them.
fn nft_tables(s: &Scratch) -> Vec<String> {
    let out = s.exec(&["nft", "-j", "list", "tables"]);
    assert!(out.status.success(), "nft: {:?}", out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["table"]["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

#[test]
fn nftables_batches_commit_whole_or_name_the_refused_message() {
    use cni::netlink::nftables::{Attrs, NfMessage, NftMsg, Nftables, NLM_F_CREATE, NLM_F_EXCL};
    const NFTA_TABLE_NAME: u16 = 1;
    const NFTA_TABLE_FLAGS: u16 = 2;
    let table = |name: &str, flags: u32| {
        let attrs = Attrs::new()
            .string(NFTA_TABLE_NAME, name)
            .be32(NFTA_TABLE_FLAGS, flags);
        (
            NfMessage::nft(NftMsg::NewTable, attrs),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("table {name}"),
        )
    };
    let s = Scratch::new();
    let nft = Nftables::open_in(s.netns.ns()).unwrap();

    // The second change is refused (unknown table flags); it has the same
    // header as the first, so only the whole echo can name it. Nothing of
    // the batch is committed.
    let refused = nft.batch(&[table("da", 0), table("db", 0xff00), table("dc", 0)]);
    match refused {
        Err(NlError::Kernel { errno, msg }) => {
            assert_eq!(errno, libc::EOPNOTSUPP, "{msg}");
            assert!(msg.starts_with("table db: "), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(nft_tables(&s).is_empty());

    // The same socket right after: the refused batch's late answers (its
    // third message's) are not taken for this one's.
    nft.batch(&[table("da", 0), table("db", 0)]).unwrap();
    assert_eq!(nft_tables(&s), ["da", "db"]);

    // The first message fails (it exists): EEXIST, and dc is not created.
    assert_eq!(
        nft.batch(&[table("da", 0), table("dc", 0)]),
        Err(NlError::Exists)
    );
    assert_eq!(nft_tables(&s), ["da", "db"]);
}
