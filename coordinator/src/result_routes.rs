//! The routes an ADD's result lists (cniVersion 1.1.0 and later).
//!
//! CNI 1.1.0 gives a result's routes a `table`, a `scope` and a `priority`,
//! so a cached result can describe a pod whose routes are not all in `main`.
//! For such a version the result is the prevResult plus every pod route the
//! plan installs:
//!
//! - `table` is the route's table, left out for `main` (254): libcni and the
//!   reference plugins read a route without a table as one of `main`, so the
//!   entries of `main` look like those every main plugin prints;
//! - `scope` is given when it is not global (link 253, host 254: the spec's
//!   numbers, the kernel's RT_SCOPE_*), for IPv4 only: Linux keeps no scope
//!   on an IPv6 route (it reports every one as global); `priority` is the route's metric,
//!   when the plan sets one; `gw` the gateway (none for a route over a
//!   nexthop object, whose gateway the result cannot name);
//! - host-side routes are left out (the result describes the pod), and so
//!   are routes that expire (copies of what a router advertisement gave):
//!   the result has no lifetime, and a runtime would read them as permanent;
//! - a route the prevResult already lists (same dst, gateway and table) is
//!   not listed twice;
//! - a prevResult route of `main` that the plan moves out of `main` (into the
//!   NIC's table, listed with it) is dropped: it is no longer in `main`.
//!
//! The spec's route object has no interface (the kernel's device of each
//! route is not part of the result). Older versions cannot carry a table:
//! their result is the prevResult unchanged.

use std::net::IpAddr;

use cni::netlink::{Scope, TABLE_MAIN};
use cni::result::{CniResult, RouteEntry};
use cni::version::Version;
use ipnet::IpNet;

use crate::plan::{Plan, RouteSpec, Side};

/// `prev` with the pod routes of `plan` for `version` (see the module doc).
pub fn extend(mut prev: CniResult, plan: &Plan, version: Version) -> CniResult {
    if !version.has_1_1_fields() {
        return prev;
    }
    prev.routes.retain(|r| {
        !(table_of(r.table).is_none()
            && plan.moves.iter().any(|m| {
                m.route.table == TABLE_MAIN && m.route.dst == r.dst && m.route.gateway == r.gw
            }))
    });
    for spec in plan.routes.iter().chain(&plan.policy) {
        if spec.side != Side::Pod || spec.expires.is_some() {
            continue;
        }
        let entry = entry(spec);
        if !prev
            .routes
            .iter()
            .any(|r| same(r, entry.dst, entry.gw, entry.table))
        {
            prev.routes.push(entry);
        }
    }
    prev
}

fn entry(spec: &RouteSpec) -> RouteEntry {
    let mut e = RouteEntry::new(spec.dst, spec.via);
    e.table = (spec.table != TABLE_MAIN).then_some(spec.table);
    e.scope = match spec.dst {
        IpNet::V4(_) => scope_number(spec.scope),
        IpNet::V6(_) => None,
    };
    e.priority = spec.metric;
    e
}

/// The spec's scope numbers (RT_SCOPE_*); None for global, the default.
fn scope_number(s: Scope) -> Option<u32> {
    match s {
        Scope::Universe => None,
        Scope::Link => Some(253),
        Scope::Host => Some(254),
    }
}

/// A result route's table, None for `main` however it is spelled.
fn table_of(table: Option<u32>) -> Option<u32> {
    table.filter(|t| *t != TABLE_MAIN)
}

fn same(r: &RouteEntry, dst: IpNet, gw: Option<IpAddr>, table: Option<u32>) -> bool {
    r.dst == dst && r.gw == gw && table_of(r.table) == table_of(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Move;
    use cni::netlink::Route;
    use serde_json::{json, Value};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn prev() -> CniResult {
        CniResult::parse(&json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.7.0.5/24", "gateway": "10.7.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.7.0.1"},
                       {"dst": "192.168.9.0/24", "gw": "10.7.0.1"}],
            "dns": {}
        }))
        .unwrap()
    }

    fn spec(dst: &str, table: u32) -> RouteSpec {
        RouteSpec::pod(net(dst), table, "net1")
    }

    fn plan() -> Plan {
        let mut via = spec("0.0.0.0/0", 100);
        via.via = Some("10.7.0.1".parse().unwrap());
        let mut link = spec("10.7.0.0/24", 100);
        link.scope = Scope::Link;
        link.src = Some("10.7.0.5".parse().unwrap());
        let mut link6 = spec("fd00:7::/64", 100);
        link6.scope = Scope::Link;
        let mut hijack = spec("10.96.0.0/12", TABLE_MAIN);
        hijack.via = Some("169.254.1.1".parse().unwrap());
        hijack.metric = Some(50);
        let mut host = spec("10.7.0.5/32", TABLE_MAIN);
        host.side = Side::Host;
        host.dev = "veth1234".into();
        let mut expiring = spec("2001:db8::/64", 100);
        expiring.expires = Some(1800);
        // Already in the prevResult, in main.
        let mut known = spec("192.168.9.0/24", TABLE_MAIN);
        known.via = Some("10.7.0.1".parse().unwrap());
        let mut policy = spec("172.16.0.0/16", 100);
        policy.via = Some("10.7.0.254".parse().unwrap());
        let mut moved = Route::new(net("0.0.0.0/0"), TABLE_MAIN);
        moved.gateway = Some("10.7.0.1".parse().unwrap());
        Plan {
            routes: vec![
                via,
                link,
                link6,
                hijack,
                host,
                expiring,
                known.clone(),
                known,
            ],
            policy: vec![policy],
            moves: vec![Move {
                route: moved,
                others: vec![],
            }],
            ..Plan::default()
        }
    }

    #[test]
    fn lists_pod_routes_with_their_table_scope_and_priority() {
        let got = extend(prev(), &plan(), Version::V110).to_json(Version::V110);
        assert_eq!(
            got["routes"],
            json!([
                {"dst": "192.168.9.0/24", "gw": "10.7.0.1"},
                {"dst": "0.0.0.0/0", "gw": "10.7.0.1", "table": 100},
                {"dst": "10.7.0.0/24", "table": 100, "scope": 253},
                {"dst": "fd00:7::/64", "table": 100},
                {"dst": "10.96.0.0/12", "gw": "169.254.1.1", "priority": 50},
                {"dst": "172.16.0.0/16", "gw": "10.7.0.254", "table": 100},
            ])
        );
        // Nothing else of the prevResult changes.
        let mut want = prev().to_json(Version::V110);
        want["routes"] = got["routes"].clone();
        assert_eq!(got, want);
    }

    #[test]
    fn older_versions_are_the_prev_result_byte_for_byte() {
        for v in [Version::V030, Version::V031, Version::V040, Version::V100] {
            let got = extend(prev(), &plan(), v);
            assert_eq!(got, prev());
            assert_eq!(
                serde_json::to_string(&got.to_json(v)).unwrap(),
                serde_json::to_string(&prev().to_json(v)).unwrap()
            );
        }
    }

    #[test]
    fn a_route_in_a_table_is_not_the_same_as_one_in_main() {
        let mut p = prev();
        p.routes = vec![RouteEntry::new(net("10.8.0.0/16"), None)];
        let mut plan = Plan::default();
        plan.routes.push(spec("10.8.0.0/16", 101));
        plan.routes.push(spec("10.8.0.0/16", TABLE_MAIN));
        let got = extend(p.clone(), &plan, Version::V110);
        let v: Value = got.to_json(Version::V110)["routes"].clone();
        assert_eq!(
            v,
            json!([{"dst": "10.8.0.0/16"}, {"dst": "10.8.0.0/16", "table": 101}])
        );
        // Main spelled 254 in the prevResult is main.
        p.routes[0].table = Some(TABLE_MAIN);
        let got = extend(p, &plan, Version::V110);
        assert_eq!(got.routes.len(), 2);
    }

    #[test]
    fn an_empty_plan_changes_nothing() {
        let got = extend(prev(), &Plan::default(), Version::V110);
        assert_eq!(got, prev());
    }
}
