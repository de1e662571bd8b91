//! What a call knows before it changes anything: the pod's netns (locked),
//! the NIC's addresses, the layout, and the planner's inputs. Shared by the
//! verbs, so none of them imports another.

use std::net::IpAddr;

use cni::error::code;
use cni::netlink::{Link, Netlink, TABLE_MAIN};
use cni::netns::NetNs;
use cni::plugin::Call;
use cni::result::CniResult;
use cni::{Error, Result};
use ipnet::IpNet;

use crate::config::Config;
use crate::mode::{self, FirstNic};
use crate::names::{host_veth_name, random_mac, POD_VETH};
use crate::observe::{host_view, HostView};
use crate::plan::{Inputs, Layout, Move, PodView, VethPlan};
use crate::record::Record;

/// Everything one call knows before it changes anything.
pub struct Context {
    pub layout: Layout,
    /// The planner's inputs; its pod view is `main` as the main plugins left
    /// it (routes our records moved out of `main` are back in it).
    pub inputs: Inputs,
    /// The pod as the kernel holds it now.
    pub kernel_view: PodView,
    pub host_view: HostView,
    /// Host devices this call has already looked up, by name: DEL removes
    /// them without asking the kernel again.
    pub host_links: Vec<(String, u32)>,
}

pub fn open_pod_ns(call: &Call) -> Result<NetNs> {
    let path = call
        .env
        .netns
        .as_ref()
        .ok_or_else(|| Error::InvalidEnv("CNI_NETNS is required".into()))?;
    NetNs::open_pod(path)
}

/// An exclusive `flock` on the pod's netns file, waited for.
pub fn lock_pod(ns: &NetNs) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open fd; flock only takes the lock.
    let rc = unsafe { libc::flock(ns.file().as_raw_fd(), libc::LOCK_EX) };
    match rc {
        0 => Ok(()),
        _ => Err(Error::Io(format!(
            "locking the pod netns {}: {}",
            ns.path().display(),
            std::io::Error::last_os_error()
        ))),
    }
}

/// The NIC's addresses and gateways as the main plugin reported them.
pub fn nic_addresses(prev: &CniResult, ifname: &str) -> (Vec<IpNet>, Vec<std::net::IpAddr>) {
    let ips = prev.ips_of(prev.interface_index(ifname));
    let addrs = ips.iter().map(|i| i.address).collect();
    let mut gws = Vec::new();
    for g in ips.iter().filter_map(|i| i.gateway) {
        if !gws.contains(&g) {
            gws.push(g);
        }
    }
    (addrs, gws)
}

/// The host end of the pod's first NIC when that NIC is a veth whose peer
/// sits in the host's netns and pairs with it (an overlay CNI's link).
pub fn first_nic_host_peer(host: &Netlink, first: &Link) -> Result<Option<Link>> {
    let (true, Some(_), Some(peer)) = (
        first.kind.as_deref() == Some("veth"),
        first.link_netnsid,
        first.link,
    ) else {
        return Ok(None);
    };
    Ok(host
        .link_by_index(peer)?
        .filter(|p| p.kind.as_deref() == Some("veth") && p.link == Some(first.index)))
}

/// What the layout decision needs to know of the first NIC, and its host
/// peer (read once: the overlay layout routes through it).
fn first_nic_facts(host: &Netlink, first: Option<&Link>) -> Result<(FirstNic, Option<Link>)> {
    let Some(l) = first else {
        return Ok((FirstNic::default(), None));
    };
    let peer = first_nic_host_peer(host, l)?;
    let facts = FirstNic {
        is_veth: l.kind.as_deref() == Some("veth"),
        peer_in_host: peer.is_some(),
    };
    Ok((facts, peer))
}

/// Read the pod and the host and decide the layout. None: disabled.
pub fn context(
    cfg: &Config,
    call: &Call,
    prev: &CniResult,
    host: &Netlink,
    view: PodView,
    records: &[Record],
) -> Result<Option<Context>> {
    let (ips, gateways) = nic_addresses(prev, &call.env.ifname);
    context_of(cfg, call, ips, gateways, host, view, records)
}

/// [`context`] for the NIC's addresses and gateways however they were learnt
/// (DEL may have no prevResult and reads them from the NIC).
pub fn context_of(
    cfg: &Config,
    call: &Call,
    ips: Vec<IpNet>,
    gateways: Vec<IpAddr>,
    host: &Netlink,
    view: PodView,
    records: &[Record],
) -> Result<Option<Context>> {
    let ifname = call.env.ifname.as_str();
    let is_first = ifname == cfg.pod_default_cni_nic;
    let first = view.link(&cfg.pod_default_cni_nic).cloned();
    let (facts, peer) = first_nic_facts(host, first.as_ref())?;
    let Some(layout) = mode::resolve(cfg.mode, is_first, facts, view.link(POD_VETH).is_some())
    else {
        return Ok(None);
    };
    if view.link(ifname).is_none() {
        return Err(Error::plugin(
            code::KERNEL,
            format!(
                "interface {ifname} is not in the pod netns: the main plugin did not create it"
            ),
        ));
    }
    let host_view = match layout {
        Layout::OverlayFirst => HostView::default(),
        _ => host_view(host, &ips, &gateways)?,
    };
    let mut host_links = Vec::new();
    let veth = match layout {
        Layout::UnderlayFirst | Layout::UnderlayLater => {
            let (plan, existing) = veth_plan(cfg, call, host, &view, first.as_ref(), layout)?;
            host_links.extend(existing.map(|i| (plan.host.clone(), i)));
            Some(plan)
        }
        _ => None,
    };
    host_links.extend(peer.as_ref().map(|p| (p.name.clone(), p.index)));
    let overlay_peer = match (layout, &first, peer) {
        (Layout::OverlayLater, Some(eth0), Some(p)) if mode::host_peer(facts) => {
            eth0.mac.map(|mac| (p.name, mac))
        }
        _ => None,
    };
    let planned = moves_undone(&replaced_undone(&view, records), &moved(records));
    Ok(Some(Context {
        layout,
        kernel_view: view,
        inputs: Inputs {
            layout,
            ifname: ifname.to_string(),
            ips,
            gateways,
            pod: planned,
            node_ips: host_view.node_ips.clone(),
            veth,
            overlay_peer,
        },
        host_view,
        host_links,
    }))
}

fn veth_plan(
    cfg: &Config,
    call: &Call,
    host: &Netlink,
    view: &PodView,
    first: Option<&Link>,
    layout: Layout,
) -> Result<(VethPlan, Option<u32>)> {
    let name = host_veth_name(&call.env.container_id);
    let existing = host.link(&name)?;
    let pod_end = view.link(POD_VETH);
    match (existing, pod_end) {
        (Some(h), Some(p)) => Ok((
            VethPlan {
                host: name,
                host_mac: h.mac.unwrap_or_default(),
                pod: POD_VETH.into(),
                pod_mac: p.mac.unwrap_or_default(),
                mtu: h.mtu,
                create: false,
            },
            Some(h.index),
        )),
        _ if layout == Layout::UnderlayLater => Err(Error::plugin(
            code::KERNEL,
            format!(
                "{} is a later NIC of an underlay pod, but the pod has no {POD_VETH} \
                 (was {} attached with coordinator in underlay mode?)",
                call.env.ifname, cfg.pod_default_cni_nic
            ),
        )),
        (Some(h), None) => Err(Error::plugin(
            code::KERNEL,
            format!("host link {} exists but the pod has no {POD_VETH}", h.name),
        )),
        (None, _) => Ok((
            VethPlan {
                host: name,
                host_mac: random_mac(),
                pod: POD_VETH.into(),
                pod_mac: random_mac(),
                mtu: cfg
                    .veth_mtu
                    .or(first.map(|l| l.mtu).filter(|m| *m > 0))
                    .unwrap_or(1500),
                create: true,
            },
            None,
        )),
    }
}

/// `view` with each route of `main` our records replaced put back as it was
/// (a default NIC's default via its gateway that took the slot of the first
/// NIC's default, say): the pod as the main plugins left it.
pub fn replaced_undone(view: &PodView, records: &[Record]) -> PodView {
    let mut out = view.clone();
    for step in records.iter().flat_map(|r| &r.steps) {
        let crate::undo::Undo::RestoreRoute {
            side: crate::plan::Side::Pod,
            route: old,
            ..
        } = step
        else {
            continue;
        };
        if old.table != TABLE_MAIN || crate::plan::is_ours(old) {
            continue;
        }
        let metric = crate::plan::metric_of(old);
        out.routes.retain(|x| {
            !(x.table == old.table
                && x.dst == old.dst
                && crate::plan::metric_of(x) == metric
                && crate::plan::is_ours(x))
        });
        if !out.routes.contains(old) {
            out.routes.push(old.clone());
        }
    }
    out
}

/// The routes the records of this pod moved out of `main`, standing.
pub fn moved(records: &[Record]) -> Vec<&Move> {
    records
        .iter()
        .flat_map(|r| &r.steps)
        .filter_map(|s| match s {
            crate::undo::Undo::UnMove { moved } => Some(moved),
            _ => None,
        })
        .collect()
}

/// `view` with the routes our records moved out of `main` back in it: the
/// pod as the main plugins left it, which is what the planner plans from
/// (so a plan made after ADD is the plan ADD applied, moves included).
pub fn moves_undone(view: &PodView, moved: &[&Move]) -> PodView {
    let mut out = view.clone();
    for m in moved {
        let r = &m.route;
        let back = out.routes.iter().any(|x| {
            x.table == TABLE_MAIN
                && x.dst == r.dst
                && x.oif == r.oif
                && x.gateway == r.gateway
                && x.metric == r.metric
        });
        if !back {
            out.routes.push(r.clone());
        }
        // The nexthops that stayed were one multipath route with it.
        for o in &m.others {
            if let Some(x) = out.routes.iter_mut().find(|x| {
                x.table == o.table
                    && x.dst == o.dst
                    && x.oif == o.oif
                    && x.gateway == o.gateway
                    && x.metric == o.metric
            }) {
                x.multipath = o.multipath;
            }
        }
    }
    out
}
