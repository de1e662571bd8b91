//! ADD: observe the pod and the host, plan, apply.

use std::net::IpAddr;

use cni::error::code;
use cni::netlink::{Link, Mac, Netlink};
use cni::netns::{sysctl_get, sysctl_set, NetNs};
use cni::plugin::Call;
use cni::quarantine;
use cni::result::CniResult;
use cni::{Error, Result};
use ipnet::IpNet;

use crate::announce::announce;
use crate::apply::{apply, Journal, Kernel};
use crate::config::{Config, Mode};
use crate::detect::{detect, KernelDad, Master, NicProbe};
use crate::macprefix::mac_for;
use crate::mode::{self, FirstNic};
use crate::names::{format_mac, host_veth_name, random_mac, POD_VETH};
use crate::observe::{host_view, pod_view, HostView};
use crate::plan::{plan_add, Inputs, Layout, Plan, PodView, VethPlan};

/// Everything one call knows before it changes anything.
pub struct Context {
    pub layout: Layout,
    pub inputs: Inputs,
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
) -> Result<Option<Context>> {
    let (ips, gateways) = nic_addresses(prev, &call.env.ifname);
    context_of(cfg, call, ips, gateways, host, view)
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
    Ok(Some(Context {
        layout,
        inputs: Inputs {
            layout,
            ifname: ifname.to_string(),
            ips,
            gateways,
            pod: view,
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

pub fn add(call: &Call, cfg: &Config) -> Result<CniResult> {
    let mut prev = call.prev_result()?.ok_or_else(|| {
        Error::config(
            "prevResult",
            "is required: coordinator must be chained after a main CNI plugin",
        )
    })?;
    if cfg.mode == Mode::Disabled {
        return Ok(prev);
    }
    let pod_ns = open_pod_ns(call)?;
    // Like the reference sbr: one ADD per pod at a time, from reading the
    // pod to the last change, so two NICs attached at once cannot pick the
    // same table. Released when the netns file closes (process exit).
    lock_pod(&pod_ns)?;
    let host = Netlink::open()?;
    let pod = Netlink::open_in(&pod_ns)?;
    let view = pod_view(&pod)?;
    let Some(ctx) = context(cfg, call, &prev, &host, view)? else {
        return Ok(prev);
    };
    crate::guard::check(&host, &ctx, cfg)?;
    let ifname = call.env.ifname.as_str();
    let nic = ctx
        .inputs
        .pod
        .link(ifname)
        .cloned()
        .ok_or_else(|| Error::kernel(format!("pod link {ifname}"), "not found"))?;
    // An ipvlan slave has its master's MAC and cannot have another.
    if nic.ipvlan().is_some() && cfg.pod_mac_prefix.is_some() {
        return Err(Error::config(
            "podMACPrefix",
            format!(
                "{ifname} is an ipvlan slave: it shares its master's MAC, so no MAC \
                 of its own can be set; leave podMACPrefix out of ipvlan networks \
                 (\"\" there when the node defaults file sets one)"
            ),
        ));
    }
    // An L3/L3S slave is NOARP: nothing it would announce can leave it.
    let l3_slave = nic.ipvlan().is_some_and(|m| m.is_l3());

    let k = Kernel {
        host: &host,
        pod: &pod,
        pod_ns: &pod_ns,
    };
    // From here every change is journalled: an error or a panic before the
    // commit takes them all back, last first.
    let mut journal = Journal::new(&k);
    let detecting = cfg.detect_ip_conflict || cfg.detect_gateway;
    // With arp_notify on (the reference macvlan plugin turns it on) the
    // kernel announces a MAC change at once. Without detection that is the
    // announcement we want, and it spares us a packet socket whose close
    // waits out an RCU grace period. With detection nothing may be announced
    // before the probes (RFC 5227): it is held off for the change (and for a
    // conflict's MAC restore), and the check's own socket announces once the
    // address is known to be free.
    let notify_key = format!("net/ipv4/conf/{}/arp_notify", nic.name);
    let notify =
        match cfg.pod_mac_prefix.is_some() && ctx.inputs.ips.iter().any(|n| n.addr().is_ipv4()) {
            true => set_arp_notify(&pod_ns, &notify_key, if detecting { "0" } else { "1" }),
            false => None,
        };
    if let Some(Some(old)) = &notify {
        journal.pod_sysctl(notify_key.clone(), old.clone());
    }
    let kernel_garp = !detecting && notify.is_some();
    // The MAC first: probes must go out with the address the pod will keep.
    let mac_change = set_mac_prefix(cfg, &pod, &nic, &ctx.inputs.ips)?;
    if let Some((old, new)) = mac_change {
        journal.mac(nic.index, old);
        if let Some(i) = prev.interface_index(ifname) {
            prev.interfaces[i].mac = format_mac(&new);
        }
    }
    let mac = mac_change
        .map(|(_, new)| new)
        .or(nic.mac)
        .unwrap_or_default();
    let mut v4_announced = kernel_garp;
    if detecting {
        let announced = run_detection(
            cfg,
            &host,
            &pod,
            &pod_ns,
            &nic,
            mac,
            &ctx.inputs,
            mac_change.is_some() && !l3_slave,
        )?;
        v4_announced = announced;
        journal.restore_pod_sysctl(&notify_key);
    }

    // Announced before apply, once detection (if on) has cleared the
    // addresses. Neighbours that cached another MAC for these addresses learn
    // this one at once: the old MAC after a podMACPrefix change, or a previous
    // pod's MAC when an address comes back on a new link (a sticky address of
    // a re-created pod). Main plugins send a gratuitous ARP of their own but no
    // IPv6 advertisement, so IPv6 peers would otherwise keep a REACHABLE entry
    // for the old MAC and black-hole the pod for up to ~30 s. IPv4 is only
    // announced after our own MAC change, and only when neither the kernel
    // nor the detection socket did it: a packet socket of its own costs an
    // RCU grace period to close.
    if mac != [0; 6] && !l3_slave {
        let addrs: Vec<IpAddr> = ctx
            .inputs
            .ips
            .iter()
            .map(|n| n.addr())
            .filter(|a| a.is_ipv6() || (mac_change.is_some() && !v4_announced))
            .collect();
        if let Err(e) = announce(&pod_ns, nic.index, mac, &addrs) {
            tracing::warn!("announcing the MAC of {ifname}: {e}");
        }
    }

    let plan: Plan = plan_add(cfg, &ctx.inputs);
    tracing::debug!(?ctx.layout, ?plan, "plan");
    apply(&k, &plan, &ctx.host_view.uplinks, &mut journal)?;
    journal.commit();
    tracing::info!(
        container = call.env.container_id,
        ifname,
        layout = ?ctx.layout,
        "ADD done"
    );
    Ok(prev)
}

/// `podMACPrefix`: (old, new) when the NIC's MAC changed.
fn set_mac_prefix(
    cfg: &Config,
    pod: &Netlink,
    nic: &Link,
    ips: &[IpNet],
) -> Result<Option<(Mac, Mac)>> {
    let Some(prefix) = cfg.pod_mac_prefix else {
        return Ok(None);
    };
    let Some(mac) = mac_for(prefix, ips) else {
        return Ok(None);
    };
    let old = nic.mac.unwrap_or_default();
    if old == mac {
        return Ok(None);
    }
    pod.set_link_mac(nic.index, mac).map_err(|e| {
        Error::from(e).context(format!(
            "podMACPrefix: setting the MAC of {} to {}",
            nic.name,
            format_mac(&mac)
        ))
    })?;
    Ok(Some((old, mac)))
}

/// The kernel's own DAD verdict on an address, so a settled one is not
/// probed (and waited for) a second time.
fn kernel_dad(pod: &Netlink, ifindex: u32, ip: IpAddr, dad_enabled: bool) -> KernelDad {
    if ip.is_ipv4() {
        return KernelDad::NotRun;
    }
    let addrs = match pod.addresses(Some(ifindex)) {
        Ok(a) => a,
        Err(_) => return KernelDad::NotRun,
    };
    match addrs.iter().find(|a| a.addr.addr() == ip) {
        Some(a) if a.flags.dadfailed => KernelDad::Failed,
        Some(a) if a.flags.tentative => KernelDad::Tentative,
        Some(a) if a.flags.nodad || !dad_enabled => KernelDad::NotRun,
        Some(_) => KernelDad::Done,
        None => KernelDad::NotRun,
    }
}

/// Set `key` (a NIC's `arp_notify`) in the pod. None when it could not be
/// read or set (we announce ourselves then); Some(Some(old)) when it changed.
fn set_arp_notify(pod_ns: &NetNs, key: &str, value: &str) -> Option<Option<String>> {
    let res = pod_ns
        .run(|| -> std::io::Result<Option<String>> {
            let old = sysctl_get(key)?;
            if old == value {
                return Ok(None);
            }
            sysctl_set(key, value)?;
            Ok(Some(old))
        })
        .and_then(|r| r);
    res.map_err(|e| tracing::warn!("{key}={value}: {e}")).ok()
}

/// The master of ipvlan slave `nic` in the node's netns: IFLA_LINK names
/// it there, and it must carry the slave's MAC (an index of another netns
/// could name an unrelated link).
fn ipvlan_master(host: &Netlink, nic: &Link) -> Option<Link> {
    let index = nic.link?;
    let master = host.link_by_index(index).ok().flatten()?;
    (master.mac.is_some() && master.mac == nic.mac).then_some(master)
}

/// Runs the checks; Ok(true) when the IPv4 addresses were announced through
/// the check's socket (`announce_v4` asked for it and the check was clean).
#[allow(clippy::too_many_arguments)]
fn run_detection(
    cfg: &Config,
    host: &Netlink,
    pod: &Netlink,
    pod_ns: &NetNs,
    nic: &Link,
    mac: Mac,
    inp: &crate::plan::Inputs,
    announce_v4: bool,
) -> Result<bool> {
    let master = match nic.ipvlan() {
        Some(mode) => match ipvlan_master(host, nic) {
            Some(l) => Some(Master {
                ifname: l.name,
                ifindex: l.index,
                send: mode.is_l3(),
            }),
            // Without the master an L3/L3S slave cannot probe at all: say
            // so rather than pass a check that never ran.
            None if mode.is_l3() => {
                tracing::warn!(
                    ifname = nic.name,
                    "ipvlan {mode:?} slave whose master is not in this netns: \
                     detectIPConflict and detectGateway cannot run, skipped"
                );
                return Ok(false);
            }
            None => {
                tracing::warn!(
                    ifname = nic.name,
                    "ipvlan master not in this netns: a holder's reply to the probe \
                     (delivered to the master) cannot be seen"
                );
                None
            }
        },
        None => None,
    };
    let key = format!("net/ipv6/conf/{}/accept_dad", nic.name);
    // The kernel runs no DAD on a NOARP link (an L3/L3S slave): its "no
    // longer tentative" would be a verdict nobody reached.
    let dad_enabled = !master.as_ref().is_some_and(|m| m.send)
        && pod_ns
            .run(|| sysctl_get(&key))
            .ok()
            .and_then(|r| r.ok())
            .is_none_or(|v| v != "0");
    let addrs = inp
        .ips
        .iter()
        .map(|n| (n.addr(), kernel_dad(pod, nic.index, n.addr(), dad_enabled)))
        .collect();
    let probe = NicProbe {
        ifname: nic.name.clone(),
        ifindex: nic.index,
        mac,
        addrs,
        gateways: inp.gateways.clone(),
        check_conflict: cfg.detect_ip_conflict,
        check_gateway: cfg.detect_gateway,
        announce_v4,
        master,
    };
    let dad_state = |ip: IpAddr| kernel_dad(pod, nic.index, ip, dad_enabled);
    let report = detect(pod_ns, &probe, &cfg.detect_options, &dad_state)?;
    tracing::info!(
        ifname = nic.name,
        elapsed_ms = report.elapsed.as_secs_f64() * 1e3,
        conflicts = report.conflicts.len(),
        unreachable = report.unreachable_gateways.len(),
        "detection"
    );
    for c in &report.conflicts {
        let reason = format!("{} on {} is used by {}", c.ip, nic.name, format_mac(&c.mac));
        if let Err(e) = quarantine::record(&cfg.quarantine_file, c.ip, cfg.quarantine_ttl, &reason)
        {
            tracing::warn!("quarantine {}: {e}", c.ip);
        }
    }
    report.to_result(&nic.name)?;
    Ok(!report.announced.is_empty())
}
