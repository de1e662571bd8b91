//! CHECK: the layout ADD made is still there. The expected pieces come from
//! the same planner as ADD, so CHECK cannot drift from what ADD installs.

use cni::error::code;
use cni::netlink::{Family, Netlink, Route};
use cni::plugin::Call;
use cni::{Error, Result};

use crate::add::{context, open_pod_ns};
use crate::config::{Config, Mode};
use crate::observe::pod_view;
use crate::plan::{plan_add, Layout, RouteSpec, Side};

fn missing(what: String) -> Error {
    Error::plugin(code::CHECK_FAILED, format!("CHECK: {what}"))
}

pub fn check(call: &Call, cfg: &Config) -> Result<()> {
    let prev = call
        .prev_result()?
        .ok_or_else(|| Error::config("prevResult", "is required for CHECK"))?;
    if cfg.mode == Mode::Disabled {
        return Ok(());
    }
    let pod_ns = open_pod_ns(call)?;
    let host = Netlink::open()?;
    let pod = Netlink::open_in(&pod_ns)?;
    let view = pod_view(&pod)?;
    let Some(ctx) = context(cfg, call, &prev, &host, view.clone())? else {
        return Ok(());
    };
    if matches!(ctx.layout, Layout::UnderlayFirst | Layout::UnderlayLater) {
        if let Some(v) = ctx.inputs.veth.as_ref().filter(|v| v.create) {
            return Err(missing(format!("host veth {} is missing", v.host)));
        }
    }
    let plan = plan_add(cfg, &ctx.inputs);
    for (side, rule) in &plan.rules {
        let present = match side {
            Side::Pod => view.rules.iter().any(|r| r == rule),
            Side::Host => host.rules(rule.family)?.iter().any(|r| r == rule),
        };
        if !present {
            return Err(missing(format!(
                "{} rule priority {} lookup {}{} is missing",
                if *side == Side::Pod { "pod" } else { "host" },
                rule.priority,
                rule.table,
                rule.src.map(|s| format!(" from {s}")).unwrap_or_default()
            )));
        }
    }
    let mut host_tables: Vec<(Family, u32, Vec<Route>)> = Vec::new();
    for r in plan.routes.iter().chain(&plan.policy) {
        let found = match r.side {
            Side::Pod => route_present(&pod, &view.routes, r)?,
            Side::Host => {
                let f = Family::of_net(&r.dst);
                if !host_tables
                    .iter()
                    .any(|(hf, t, _)| *hf == f && *t == r.table)
                {
                    host_tables.push((f, r.table, host.routes(f, Some(r.table))?));
                }
                let routes = host_tables
                    .iter()
                    .find(|(hf, t, _)| *hf == f && *t == r.table)
                    .map(|(_, _, v)| v.as_slice())
                    .unwrap_or_default();
                route_present(&host, routes, r)?
            }
        };
        if !found {
            let via = r.via.map(|v| format!(" via {v}")).unwrap_or_default();
            return Err(missing(format!(
                "{} route {}{} dev {} table {} is missing",
                if r.side == Side::Pod { "pod" } else { "host" },
                r.dst,
                via,
                r.dev,
                r.table
            )));
        }
    }
    if plan.reply_mark && !crate::nftables::present(&pod_ns)? {
        return Err(missing(
            "the nftables reply-mark table in the pod is missing".into(),
        ));
    }
    Ok(())
}

fn route_present(nl: &Netlink, routes: &[Route], r: &RouteSpec) -> Result<bool> {
    let Some(dev) = nl.link(&r.dev)? else {
        return Ok(false);
    };
    Ok(routes.iter().any(|x| {
        x.dst == r.dst && x.table == r.table && x.oif == Some(dev.index) && x.gateway == r.via
    }))
}
