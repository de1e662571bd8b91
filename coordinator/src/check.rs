//! CHECK: read what the plan names from the kernel and compare
//! ([`crate::plan::verify`]); the plan is the one ADD applies.

use cni::error::code;
use cni::netlink::{Family, Netlink};
use cni::plugin::Call;
use cni::{Error, Result};

use crate::add::{context, open_pod_ns};
use crate::config::{Config, Mode};
use crate::observe::pod_view;
use crate::plan::{plan_add, verify, Observed, Plan, Side};

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
    let Some(ctx) = context(cfg, call, &prev, &host, view)? else {
        return Ok(());
    };
    let plan = plan_add(cfg, &ctx.inputs);
    let seen = observe(&host, &pod_ns, &plan, ctx.inputs.pod)?;
    verify(&plan, &seen).map_err(|what| Error::plugin(code::CHECK_FAILED, format!("CHECK: {what}")))
}

/// The host links, rules and tables the plan names, and the pod as read.
fn observe(
    host: &Netlink,
    pod_ns: &cni::netns::NetNs,
    plan: &Plan,
    pod: crate::plan::PodView,
) -> Result<Observed> {
    let mut seen = Observed {
        pod,
        ..Observed::default()
    };
    let host_devs = plan
        .routes
        .iter()
        .chain(&plan.policy)
        .filter(|r| r.side == Side::Host)
        .map(|r| r.dev.clone())
        .chain(plan.veth.iter().map(|v| v.host.clone()));
    for dev in host_devs {
        if seen.host_links.iter().any(|(n, _)| *n == dev) {
            continue;
        }
        if let Some(l) = host.link(&dev)? {
            seen.host_links.push((dev, l.index));
        }
    }
    let mut families: Vec<Family> = Vec::new();
    let mut tables: Vec<(Family, u32)> = Vec::new();
    for (side, rule) in &plan.rules {
        if *side == Side::Host && !families.contains(&rule.family) {
            families.push(rule.family);
            seen.host_rules.extend(host.rules(rule.family)?);
        }
    }
    for r in plan.routes.iter().chain(&plan.policy) {
        let key = (Family::of_net(&r.dst), r.table);
        if r.side == Side::Host && !tables.contains(&key) {
            tables.push(key);
            seen.host_routes.extend(host.routes(key.0, Some(key.1))?);
        }
    }
    seen.reply_mark = plan.reply_mark && crate::nftables::present(pod_ns)?;
    Ok(seen)
}
