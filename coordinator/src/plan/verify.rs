//! CHECK's comparison, as data: every piece of the plan against what the
//! kernel holds. Whatever the planner adds, CHECK requires.

use cni::netlink::{Route, Rule};

use super::{Plan, PodView, RouteSpec, Side};

/// What CHECK read from the kernel.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub pod: PodView,
    /// Host links the plan names: (name, index).
    pub host_links: Vec<(String, u32)>,
    pub host_rules: Vec<Rule>,
    /// Routes of the host tables the plan names.
    pub host_routes: Vec<Route>,
    /// The pod's nftables reply-mark table is there.
    pub reply_mark: bool,
}

impl Observed {
    /// The index of `dev` on `side`, as read.
    pub fn index_of(&self, side: Side, dev: &str) -> Option<u32> {
        match side {
            Side::Pod => self.pod.link(dev).map(|l| l.index),
            Side::Host => self
                .host_links
                .iter()
                .find(|(n, _)| n == dev)
                .map(|(_, i)| *i),
        }
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Pod => "pod",
        Side::Host => "host",
    }
}

fn route_present(seen: &Observed, r: &RouteSpec) -> bool {
    let Some(index) = seen.index_of(r.side, &r.dev) else {
        return false;
    };
    let routes = match r.side {
        Side::Pod => &seen.pod.routes,
        Side::Host => &seen.host_routes,
    };
    routes
        .iter()
        .any(|x| x.dst == r.dst && x.table == r.table && x.oif == Some(index) && x.gateway == r.via)
}

/// The first piece of `plan` the kernel lacks, described for the operator.
pub fn verify(plan: &Plan, seen: &Observed) -> Result<(), String> {
    if let Some(v) = &plan.veth {
        if seen.index_of(Side::Host, &v.host).is_none() || seen.pod.link(&v.pod).is_none() {
            return Err(format!("veth pair {}/{} is missing", v.host, v.pod));
        }
    }
    for (side, rule) in &plan.rules {
        let rules = match side {
            Side::Pod => &seen.pod.rules,
            Side::Host => &seen.host_rules,
        };
        if !rules.iter().any(|r| r == rule) {
            return Err(format!(
                "{} rule priority {} lookup {}{} is missing",
                side_name(*side),
                rule.priority,
                rule.table,
                rule.src.map(|s| format!(" from {s}")).unwrap_or_default()
            ));
        }
    }
    for r in plan.routes.iter().chain(&plan.policy) {
        if !route_present(seen, r) {
            let via = r.via.map(|v| format!(" via {v}")).unwrap_or_default();
            return Err(format!(
                "{} route {}{} dev {} table {} is missing",
                side_name(r.side),
                r.dst,
                via,
                r.dev,
                r.table
            ));
        }
    }
    if plan.reply_mark && !seen.reply_mark {
        return Err("the nftables reply-mark table in the pod is missing".into());
    }
    Ok(())
}
