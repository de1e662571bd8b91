//! CHECK: read what the applied plan names from the kernel and compare it
//! attribute by attribute ([`crate::plan::verify`]); then compare the plan
//! ADD applied (its record) with the plan today's pod would get
//! ([`crate::plan::drift`]). An attachment without a record (an older
//! release's) is checked against today's plan.

use std::path::Path;

use cni::error::code;
use cni::netlink::{Family, Netlink};
use cni::netns::{sysctl_get, NetNs};
use cni::plugin::Call;
use cni::{Error, Result};

use crate::config::{Config, Mode};
use crate::context::{context, open_pod_ns};
use crate::nftables::ReplyMark;
use crate::observe::pod_view;
use crate::plan::{drift, plan_add, verify, Observed, Plan, PodView, Side, REPLY_MARK};
use crate::record::{self, Attachments};

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
    let ifname = call.env.ifname.as_str();
    let records = Attachments::open(Path::new(record::ROOT), &call.env.container_id, false)?;
    let inode = pod_ns.inode();
    let (rec, mut known) = match &records {
        Some(a) => (
            a.read(ifname)?.filter(|r| r.of_netns(inode)),
            a.siblings(ifname, inode),
        ),
        None => (None, Vec::new()),
    };
    known.extend(rec.clone());
    let Some(ctx) = context(cfg, call, &prev, &host, view, &known)? else {
        return Ok(());
    };
    let fresh = plan_add(cfg, &ctx.inputs);
    let failed = |what: String| Error::plugin(code::CHECK_FAILED, format!("CHECK: {what}"));
    let applied = rec.as_ref().map_or(&fresh, |r| &r.plan);
    let seen = observe(&host, &pod, &pod_ns, applied, ctx.kernel_view)?;
    verify(applied, &seen).map_err(failed)?;
    if let Some(r) = &rec {
        drift(&r.plan, &fresh)
            .map_err(|what| failed(format!("{ifname} changed since its ADD: {what}")))?;
    }
    Ok(())
}

/// The host links, rules and tables the plan names, its neighbours and
/// sysctls, the nftables table, and the pod as read.
fn observe(
    host: &Netlink,
    pod_nl: &Netlink,
    pod_ns: &NetNs,
    plan: &Plan,
    pod: PodView,
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
        .chain(
            plan.neighbours
                .iter()
                .filter(|n| n.side == Side::Host)
                .map(|n| n.dev.clone()),
        )
        .chain(plan.veth.iter().map(|v| v.host.clone()));
    for dev in host_devs {
        if seen.host_links.iter().any(|l| l.name == dev) {
            continue;
        }
        if let Some(l) = host.link(&dev)? {
            seen.host_links.push(l);
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
    for n in &plan.neighbours {
        let Some(index) = seen.index_of(n.side, &n.dev) else {
            seen.neighbours.push((n.side, n.dev.clone(), n.ip, None));
            continue;
        };
        let nl = match n.side {
            Side::Host => host,
            Side::Pod => pod_nl,
        };
        let entry = nl.neighbour(index, n.ip)?;
        seen.neighbours.push((n.side, n.dev.clone(), n.ip, entry));
    }
    let read = |keys: Vec<String>| -> Vec<Option<String>> {
        keys.iter().map(|k| sysctl_get(k).ok()).collect()
    };
    for side in [Side::Pod, Side::Host] {
        let keys: Vec<String> = plan
            .sysctls
            .iter()
            .filter(|s| s.side == side)
            .map(|s| s.key.clone())
            .collect();
        if keys.is_empty() {
            continue;
        }
        let values = match side {
            Side::Pod => pod_ns
                .run(|| read(keys.clone()))
                .map_err(|e| Error::kernel("pod sysctl", e))?,
            Side::Host => read(keys.clone()),
        };
        seen.sysctls
            .extend(keys.into_iter().zip(values).map(|(k, v)| (side, k, v)));
    }
    if plan.reply_mark {
        let spec = ReplyMark {
            iif: crate::names::POD_VETH.into(),
            mark: REPLY_MARK,
        };
        seen.reply_mark = crate::nftables::verify(pod_ns, &spec)?;
    }
    Ok(seen)
}
