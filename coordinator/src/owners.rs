//! Table ids and rule priorities are shared by everything that does policy
//! routing in a pod (a routing daemon, another meta-plugin, an operator's
//! own rules). Before ADD changes anything, the ids its plan is about to use
//! in the pod are checked against what the pod already holds; one another
//! owner uses is refused, naming both, so the operator can move ours
//! (`podReplyTable`, `podRuleTableFirst`, `podReplyRulePriority`,
//! `podRulePriority`) instead of finding two owners' routing mixed:
//! - a priority: rules of one priority are tried in insertion order, so the
//!   other owner's rule and ours would each hide the other depending on who
//!   came first; and DEL's sweep finds leftover `from` rules of ours by
//!   priority;
//! - a table: our routes and the other owner's would answer one lookup
//!   together (the most specific of either wins), whoever's rule led there.
//!
//! Ours is what a plan of ours makes: the rules of this call's plan, rules
//! of our shape ([`crate::plan::is_our_rule`]: another NIC's, a leftover),
//! routes of our protocol (every route the coordinator installs carries it,
//! the copies in the first NIC's table too). So a repeated ADD, and a later
//! NIC finding the tables and rules an earlier NIC's ADD made, pass.
//!
//! Refused with code 7 naming the field that moves our id: the id is a
//! config value (set or defaulted), and changing that field is the fix on
//! our side. It is no kernel failure (100), no address conflict (101), and
//! retrying (11) would meet the same rule.

use std::collections::BTreeSet;

use cni::netlink::{Family, Route, Rule, TABLE_MAIN};
use cni::{Error, Result};

use crate::config::{is_reserved_table, Config, Ids};
use crate::context::Context;
use crate::names::POD_VETH;
use crate::plan::{is_our_rule, is_ours, plan_add, Plan, PodView, Side};

/// One id of ours that another owner already uses in the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The config field that moves our id.
    pub field: &'static str,
    /// The id and what the coordinator is about to use it for.
    pub ours: String,
    /// What already uses it.
    pub theirs: String,
    /// "priority" or "table".
    pub kind: &'static str,
}

impl Conflict {
    fn why(&self) -> String {
        format!(
            "{} is already used in the pod by {}, which the coordinator did not make \
             (another policy-routing owner); set {} to a {} no other owner uses in the pod",
            self.ours, self.theirs, self.field, self.kind
        )
    }

    pub fn error(&self) -> Error {
        Error::config(self.field, self.why())
    }
}

/// Refuse the call when its plan would share an id with another owner.
pub fn check(cfg: &Config, ctx: &Context) -> Result<()> {
    let plan = plan_add(cfg, &ctx.inputs);
    refuse(&conflicts(
        &cfg.ids,
        &plan,
        &ctx.inputs.pod,
        &ctx.inputs.ifname,
    ))
}

/// The error of the first conflict, naming its field; the others follow in
/// the message, so one refusal names every id to move.
pub fn refuse(found: &[Conflict]) -> Result<()> {
    let Some(first) = found.first() else {
        return Ok(());
    };
    let mut why = first.why();
    for c in &found[1..] {
        why.push_str(&format!(
            "; also {} is already used by {} (set {})",
            c.ours, c.theirs, c.field
        ));
    }
    Err(Error::config(first.field, why))
}

/// Every id `plan` uses in the pod that something not ours in `pod` uses
/// too: rule priorities (per family, as the kernel keeps rules), then tables.
pub fn conflicts(ids: &Ids, plan: &Plan, pod: &PodView, ifname: &str) -> Vec<Conflict> {
    let ours: Vec<&Rule> = plan
        .rules
        .iter()
        .filter(|(side, _)| *side == Side::Pod)
        .map(|(_, r)| r)
        .collect();
    // A rule the plan itself makes is ours whatever its kind (a repeated ADD).
    let foreign = |r: &Rule| !is_our_rule(ids, r) && !ours.contains(&r);
    let mut out = Vec::new();
    let mut seen: BTreeSet<(u8, u32)> = BTreeSet::new();
    for rule in &ours {
        if !seen.insert((family_number(rule.family), rule.priority)) {
            continue;
        }
        let other = pod
            .rules
            .iter()
            .find(|r| r.family == rule.family && r.priority == rule.priority && foreign(r));
        if let Some(other) = other {
            out.push(Conflict {
                field: priority_field(ids, rule.priority),
                ours: format!(
                    "rule priority {} (the coordinator's `{}` for {ifname})",
                    rule.priority,
                    describe_rule(rule)
                ),
                theirs: format!("rule `{}`", describe_rule(other)),
                kind: "priority",
            });
        }
    }
    for table in pod_tables(plan) {
        let what = table_use(ids, plan, pod, table, ifname);
        let route = pod.routes.iter().find(|r| r.table == table && !is_ours(r));
        let rule = pod.rules.iter().find(|r| r.table == table && foreign(r));
        let theirs = match (route, rule) {
            (Some(r), _) => format!(
                "route `{}` (protocol {}; the coordinator's are 222)",
                describe_route(r, pod),
                protocol_name(r.protocol)
            ),
            (None, Some(r)) => format!("rule `{}`, which leads to it", describe_rule(r)),
            (None, None) => continue,
        };
        out.push(Conflict {
            field: table_field(ids, table),
            ours: format!("table {table} (the coordinator's, for {what})"),
            theirs,
            kind: "table",
        });
    }
    out
}

/// The pod tables (besides `main`) the plan puts routes in or leads rules to.
fn pod_tables(plan: &Plan) -> BTreeSet<u32> {
    let routes = plan
        .routes
        .iter()
        .chain(&plan.policy)
        .filter(|r| r.side == Side::Pod)
        .map(|r| r.table);
    let rules = plan
        .rules
        .iter()
        .filter(|(side, _)| *side == Side::Pod)
        .map(|(_, r)| r.table);
    routes
        .chain(rules)
        .filter(|t| *t != TABLE_MAIN && !is_reserved_table(*t))
        .collect()
}

/// What the plan uses `table` for, for the message.
fn table_use(ids: &Ids, plan: &Plan, pod: &PodView, table: u32, ifname: &str) -> String {
    let srcs: Vec<String> = plan
        .rules
        .iter()
        .filter(|(side, r)| *side == Side::Pod && r.table == table)
        .filter_map(|(_, r)| r.src)
        .map(|s| s.addr().to_string())
        .collect();
    let nic = plan
        .rules
        .iter()
        .filter(|(side, r)| *side == Side::Pod && r.table == table)
        .filter_map(|(_, r)| r.src)
        .find_map(|s| {
            let index = pod
                .addrs
                .iter()
                .find(|(_, a)| a.addr() == s.addr())
                .map(|(i, _)| *i)?;
            pod.links.iter().find(|l| l.index == index)
        })
        .map(|l| l.name.clone())
        .unwrap_or_else(|| ifname.to_string());
    match (srcs.is_empty(), table == ids.reply_table) {
        (true, true) => format!(
            "the way back through {POD_VETH} of connections that came in through the node, \
             at {ifname}'s ADD"
        ),
        (true, false) => format!("routes of {ifname}"),
        (false, _) if nic == ifname => {
            format!("the replies from {nic}'s {}", srcs.join(", "))
        }
        (false, _) => format!(
            "the replies from {nic}'s {}, at {ifname}'s ADD",
            srcs.join(", ")
        ),
    }
}

fn priority_field(ids: &Ids, priority: u32) -> &'static str {
    match priority == ids.reply_priority {
        true => "podReplyRulePriority",
        false => "podRulePriority",
    }
}

fn table_field(ids: &Ids, table: u32) -> &'static str {
    match table == ids.reply_table {
        true => "podReplyTable",
        false => "podRuleTableFirst",
    }
}

fn family_number(f: Family) -> u8 {
    match f {
        Family::V4 => 4,
        Family::V6 => 6,
    }
}

/// A rule as `ip rule` shows it.
pub fn describe_rule(r: &Rule) -> String {
    let mut s = format!("{}: from ", r.priority);
    match r.src {
        Some(n) if n.prefix_len() == n.max_prefix_len() => s.push_str(&n.addr().to_string()),
        Some(n) => s.push_str(&n.to_string()),
        None => s.push_str("all"),
    }
    if let Some(d) = r.dst {
        s.push_str(&format!(" to {d}"));
    }
    if let Some(m) = r.fwmark {
        s.push_str(&format!(" fwmark {m:#x}"));
        if let Some(mask) = r.fwmask.filter(|m| *m != u32::MAX) {
            s.push_str(&format!("/{mask:#x}"));
        }
    }
    if let Some(i) = &r.iif {
        s.push_str(&format!(" iif {i}"));
    }
    if let Some(o) = &r.oif {
        s.push_str(&format!(" oif {o}"));
    }
    s.push_str(&format!(" lookup {}", r.table));
    s
}

/// A route as `ip route` shows it, with its table.
fn describe_route(r: &Route, pod: &PodView) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        match pod.links.iter().find(|l| l.index == oif) {
            Some(l) => s.push_str(&format!(" dev {}", l.name)),
            None => s.push_str(&format!(" dev #{oif}")),
        }
    }
    s.push_str(&format!(" table {}", r.table));
    s
}

/// iproute2's names of the route protocols (`/etc/iproute2/rt_protos`):
/// they name the other owner when it set one.
fn protocol_name(p: u8) -> String {
    let name = match p {
        0 => "unspec",
        1 => "redirect",
        2 => "kernel",
        3 => "boot",
        4 => "static",
        8 => "gated",
        9 => "ra",
        10 => "mrt",
        11 => "zebra",
        12 => "bird",
        13 => "dnrouted",
        14 => "xorp",
        15 => "ntk",
        16 => "dhcp",
        18 => "keepalived",
        42 => "babel",
        186 => "bgp",
        187 => "isis",
        188 => "ospf",
        189 => "rip",
        192 => "eigrp",
        _ => return p.to_string(),
    };
    format!("{name} ({p})")
}

#[cfg(test)]
mod tests {
    use cni::netlink::{Link, Scope, RTPROT_BOOT, RTPROT_KERNEL};
    use ipnet::IpNet;
    use serde_json::json;

    use super::*;
    use crate::plan::{Inputs, Layout, VethPlan, REPLY_MARK, ROUTE_PROTOCOL};

    fn cfg(extra: serde_json::Value) -> Config {
        let mut v = extra;
        v["defaultsFile"] = json!("/nonexistent");
        Config::from_raw(&v).unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn link(index: u32, name: &str, kind: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some(kind.into()),
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            mtu: 1500,
            up: true,
            link: None,
            link_netnsid: None,
            txqlen: 1000,
            ipvlan_mode: None,
        }
    }

    fn route(dst: &str, gw: Option<&str>, oif: u32, table: u32, proto: u8) -> Route {
        let mut r = Route::new(net(dst), table);
        r.oif = Some(oif);
        r.gateway = gw.map(|g| g.parse().unwrap());
        r.protocol = proto;
        r.scope = match gw {
            Some(_) => Scope::Universe,
            None => Scope::Link,
        };
        r
    }

    fn rule(prio: u32, src: &str, table: u32) -> Rule {
        let n = net(src);
        let mut r = Rule::new(Family::of_net(&n), prio, table);
        r.src = Some(n);
        r
    }

    /// An underlay pod: macvlan eth0 on 10.6/16 and net1 on 10.7/16, as
    /// their main plugins left them.
    fn pod() -> PodView {
        PodView {
            links: vec![
                link(2, "eth0", "macvlan"),
                link(3, "net1", "macvlan"),
                link(4, "veth0", "veth"),
            ],
            routes: vec![
                route("10.6.0.0/16", None, 2, TABLE_MAIN, RTPROT_KERNEL),
                route("0.0.0.0/0", Some("10.6.0.1"), 2, TABLE_MAIN, RTPROT_BOOT),
                route("10.7.0.0/16", None, 3, TABLE_MAIN, RTPROT_KERNEL),
                route("0.0.0.0/0", Some("10.7.0.1"), 3, TABLE_MAIN, RTPROT_BOOT),
            ],
            rules: vec![],
            addrs: vec![(2, net("10.6.0.5/16")), (3, net("10.7.0.5/16"))],
            slaac: vec![],
        }
    }

    fn inputs(pod: &PodView, ifname: &str) -> Inputs {
        let first = ifname == "eth0";
        let (ip, gw) = match first {
            true => ("10.6.0.5/16", "10.6.0.1"),
            false => ("10.7.0.5/16", "10.7.0.1"),
        };
        Inputs {
            layout: match first {
                true => Layout::UnderlayFirst,
                false => Layout::UnderlayLater,
            },
            ifname: ifname.into(),
            ips: vec![net(ip)],
            gateways: vec![gw.parse().unwrap()],
            pod: pod.clone(),
            node_ips: vec!["10.6.0.2".parse().unwrap()],
            veth: Some(VethPlan {
                host: "vethabc".into(),
                host_mac: [2, 1, 1, 1, 1, 1],
                pod: "veth0".into(),
                pod_mac: [2, 2, 2, 2, 2, 2],
                mtu: 1500,
                create: first,
            }),
            overlay_peer: None,
        }
    }

    /// The conflicts of `ifname`'s ADD into `pod`.
    fn of(c: &Config, pod: &PodView, ifname: &str) -> Vec<Conflict> {
        let plan = plan_add(c, &inputs(pod, ifname));
        conflicts(&c.ids, &plan, pod, ifname)
    }

    /// `pod` after `ifname`'s ADD: the plan's pod rules and routes, ours.
    fn after(c: &Config, pod: &PodView, ifname: &str) -> PodView {
        let plan = plan_add(c, &inputs(pod, ifname));
        let mut p = pod.clone();
        for (_, r) in plan.rules.iter().filter(|(s, _)| *s == Side::Pod) {
            if !p.rules.contains(r) {
                p.rules.push(r.clone());
            }
        }
        for r in plan.routes.iter().filter(|r| r.side == Side::Pod) {
            let oif = p.link(&r.dev).map(|l| l.index).unwrap();
            let mut k = Route::new(r.dst, r.table);
            k.oif = Some(oif);
            k.gateway = r.via;
            k.protocol = ROUTE_PROTOCOL;
            p.routes.push(k);
        }
        p
    }

    #[test]
    fn what_our_adds_made_is_ours() {
        for c in [
            cfg(json!({})),
            cfg(json!({"podReplyTable": 2000, "podRuleTableFirst": 2001,
                "podReplyRulePriority": 2900, "podRulePriority": 3000})),
        ] {
            let clean = pod();
            assert_eq!(of(&c, &clean, "eth0"), vec![]);
            let one = after(&c, &clean, "eth0");
            // A repeated ADD of eth0; net1 finding the reply table, its rule
            // and eth0's routes of ours.
            assert_eq!(of(&c, &one, "eth0"), vec![]);
            assert_eq!(of(&c, &one, "net1"), vec![]);
            let two = after(&c, &one, "net1");
            assert!(two.rules.len() == 3, "{:?}", two.rules);
            // Both NIC tables made: repeated ADDs of either NIC.
            assert_eq!(of(&c, &two, "net1"), vec![]);
            assert_eq!(of(&c, &two, "eth0"), vec![]);
            // A leftover `from` rule of ours (its address gone) is ours.
            let mut left = two.clone();
            left.rules
                .push(rule(c.ids.from_priority, "10.9.9.9/32", 2500));
            assert_eq!(of(&c, &left, "net1"), vec![]);
        }
    }

    #[test]
    fn another_owners_priority_is_refused_naming_both() {
        let c = cfg(json!({}));
        let mut p = after(&c, &pod(), "eth0");
        p.rules.push(rule(1000, "10.8.0.0/16", 101));
        p.routes
            .push(route("10.8.0.0/16", Some("10.7.0.1"), 3, 101, 4));
        // eth0 uses neither 1000 nor 101.
        assert_eq!(of(&c, &p, "eth0"), vec![]);
        let found = of(&c, &p, "net1");
        assert_eq!(found.len(), 1, "{found:?}");
        let e = found[0].error();
        assert_eq!(e.code(), 7);
        let msg = e.to_string();
        for want in [
            "\"podRulePriority\"",
            "rule priority 1000 (the coordinator's `1000: from 10.7.0.5 lookup 102` for net1)",
            "rule `1000: from 10.8.0.0/16 lookup 101`, which the coordinator did not make",
        ] {
            assert!(msg.contains(want), "{want} not in {msg}");
        }
        // Moved away from it: no conflict, and table 101 is left alone.
        let moved = cfg(json!({"podRulePriority": 3000, "podRuleTableFirst": 2001,
            "podReplyTable": 100}));
        assert_eq!(of(&moved, &p, "net1"), vec![]);
        // Rules of the other family are another list: no conflict.
        let mut v6 = after(&c, &pod(), "eth0");
        v6.rules.push(rule(1000, "fd00:8::/64", 101));
        assert_eq!(of(&c, &v6, "net1"), vec![]);
    }

    #[test]
    fn another_owners_reply_priority_and_table() {
        let c = cfg(json!({}));
        // A rule at the reply-mark rule's priority.
        let mut p = pod();
        let mut other = Rule::new(Family::V4, 900, 300);
        other.fwmark = Some(0x1);
        p.rules.push(other);
        let found = of(&c, &p, "eth0");
        assert_eq!(found[0].field, "podReplyRulePriority", "{found:?}");
        assert!(found[0]
            .error()
            .to_string()
            .contains("rule `900: from all fwmark 0x1 lookup 300`"));

        // A route of a routing daemon in the reply table.
        let mut p = pod();
        p.routes
            .push(route("10.9.0.0/16", Some("10.6.0.1"), 2, 100, 12));
        let found = of(&c, &p, "eth0");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "podReplyTable");
        let msg = found[0].error().to_string();
        for want in [
            "table 100 (the coordinator's, for the way back through veth0",
            "route `10.9.0.0/16 via 10.6.0.1 dev eth0 table 100` (protocol bird (12)",
        ] {
            assert!(msg.contains(want), "{want} not in {msg}");
        }

        // A rule of another owner leading into the reply table.
        let mut p = pod();
        let mut other = Rule::new(Family::V4, 500, 100);
        other.fwmark = Some(REPLY_MARK);
        p.rules.push(other);
        let found = of(&c, &p, "eth0");
        assert_eq!(found[0].field, "podReplyTable", "{found:?}");
        assert!(found[0].error().to_string().contains("which leads to it"));
    }

    #[test]
    fn a_nic_table_of_another_owner() {
        // eth0's `from` rule of ours leads to 101, which another owner's
        // route shares: net1's ADD would put eth0's routes there.
        let c = cfg(json!({}));
        let mut p = after(&c, &pod(), "eth0");
        p.rules.push(rule(1000, "10.6.0.5/32", 101));
        p.routes.push(route("192.0.2.0/24", None, 2, 101, 4));
        let found = of(&c, &p, "net1");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "podRuleTableFirst");
        let msg = found[0].error().to_string();
        assert!(
            msg.contains("table 101 (the coordinator's, for the replies from eth0's 10.6.0.5, at net1's ADD)"),
            "{msg}"
        );
        assert!(msg.contains("static (4)"), "{msg}");
    }

    #[test]
    fn one_refusal_names_every_id_to_move() {
        let c = cfg(json!({}));
        let mut p = pod();
        p.rules.push(Rule::new(Family::V4, 900, 300));
        p.routes.push(route("10.9.0.0/16", None, 2, 100, 4));
        let found = of(&c, &p, "eth0");
        assert_eq!(found.len(), 2, "{found:?}");
        let e = refuse(&found).unwrap_err();
        assert_eq!(e.code(), 7);
        let msg = e.to_string();
        assert!(
            msg.starts_with("invalid config field \"podReplyRulePriority\""),
            "{msg}"
        );
        assert!(
            msg.contains("; also table 100 (the coordinator's")
                && msg.contains("(set podReplyTable)"),
            "{msg}"
        );
        assert!(refuse(&[]).is_ok());
    }

    #[test]
    fn rules_and_routes_read_as_ip_shows_them() {
        let mut r = rule(1000, "10.8.0.0/16", 101);
        r.dst = Some(net("192.0.2.0/24"));
        r.fwmark = Some(0x10);
        r.fwmask = Some(0xff);
        r.iif = Some("eth0".into());
        assert_eq!(
            describe_rule(&r),
            "1000: from 10.8.0.0/16 to 192.0.2.0/24 fwmark 0x10/0xff iif eth0 lookup 101"
        );
        assert_eq!(protocol_name(222), "222");
        assert_eq!(protocol_name(186), "bgp (186)");
    }
}
