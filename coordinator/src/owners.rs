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
//! - a table: routes ADD puts there would mix with the other owner's, and
//!   DEL empties a table of ours whole.
//!
//! Ours is what a plan of ours makes: rules of our shape
//! ([`crate::plan::is_our_rule`]), routes of our protocol (every route the
//! coordinator installs carries it, the copies in the first NIC's table
//! too). So a repeated ADD, and a later NIC finding the tables and rules an
//! earlier NIC's ADD made, pass.
//!
//! Refused with code 7 naming the field that moves our id: the id is a
//! config value (set or defaulted), and changing that field is the fix on
//! our side. It is no kernel failure (100), no address conflict (101), and
//! retrying (11) would meet the same rule.

use std::collections::BTreeSet;

use cni::netlink::{Family, Route, Rule, TABLE_MAIN};
use cni::{Error, Result};

use crate::add::Context;
use crate::config::{is_reserved_table, Config, Ids};
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
    pub fn error(&self) -> Error {
        Error::config(
            self.field,
            format!(
                "{} is already used in the pod by {}, which the coordinator did not make \
                 (another policy-routing owner); set {} to a {} no other owner uses in the pod",
                self.ours, self.theirs, self.field, self.kind
            ),
        )
    }
}

/// Refuse the call when its plan would share an id with another owner.
pub fn check(cfg: &Config, ctx: &Context) -> Result<()> {
    let plan = plan_add(cfg, &ctx.inputs);
    match conflicts(&cfg.ids, &plan, &ctx.inputs.pod, &ctx.inputs.ifname).first() {
        Some(c) => Err(c.error()),
        None => Ok(()),
    }
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
    let mut out = Vec::new();
    let mut seen: BTreeSet<(u8, u32)> = BTreeSet::new();
    for rule in &ours {
        if !seen.insert((family_number(rule.family), rule.priority)) {
            continue;
        }
        let other = pod.rules.iter().find(|r| {
            r.family == rule.family && r.priority == rule.priority && !is_our_rule(ids, r)
        });
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
        let rule = pod
            .rules
            .iter()
            .find(|r| r.table == table && !is_our_rule(ids, r));
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
