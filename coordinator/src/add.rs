//! ADD: observe the pod and the host, plan, apply.

use std::net::IpAddr;
use std::path::Path;

use cni::netlink::{Link, Mac, Netlink};
use cni::netns::{sysctl_get, sysctl_set, NetNs};
use cni::plugin::Call;
use cni::quarantine;
use cni::result::CniResult;
use cni::{Error, Result};

use crate::announce::announce;
use crate::apply::{apply, Journal, Kernel};
use crate::config::{Config, Mode};
use crate::context::{context, lock_pod, open_pod_ns};
use crate::detect::{detect, KernelDad, Master, NicProbe};
use crate::names::format_mac;
use crate::observe::pod_view;
use crate::plan::{plan_add, Plan, Side};
use crate::record::{self, Attachments};
use crate::undo::Undo;

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
    let ifname = call.env.ifname.as_str();
    let root = Path::new(record::ROOT);
    let found = Attachments::open(root, &call.env.container_id, false)?;
    let inode = pod_ns.inode();
    let existing = match &found {
        Some(a) => match a.read(ifname) {
            Ok(Some(r)) if !r.of_netns(inode) => {
                // An earlier pod of this container ID whose DEL never came:
                // its pod is gone, and what it made on the node is named
                // like ours. Nothing of it is undone.
                tracing::warn!(
                    "{}: left by an earlier pod, replaced",
                    a.path(ifname).display()
                );
                None
            }
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}: starting a new record");
                None
            }
        },
        None => None,
    };
    let mut known = found
        .as_ref()
        .map(|a| a.siblings(ifname, inode))
        .unwrap_or_default();
    known.extend(existing.clone());
    let Some(ctx) = context(cfg, call, &prev, &host, view, &known)? else {
        return Ok(prev);
    };
    crate::guard::check(&host, &ctx, cfg)?;
    let nic = ctx
        .kernel_view
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
    let plan: Plan = plan_add(cfg, &ctx.inputs);
    tracing::debug!(?ctx.layout, ?plan, "plan");

    let k = Kernel {
        host: &host,
        pod: &pod,
        pod_ns: &pod_ns,
    };
    // From here every change is recorded before it is made: an error or a
    // panic before the commit takes them all back, last first.
    let records = match found {
        Some(a) => a,
        None => Attachments::open(root, &call.env.container_id, true)?
            .ok_or_else(|| Error::Io("the attachment record directory vanished".into()))?,
    };
    let origin = record::Origin {
        network: Some(call.conf.name.clone()),
        netns: call.env.netns.as_ref().map(|p| p.display().to_string()),
        netns_inode: inode,
    };
    let writer = records.begin(ifname, origin, ctx.layout, &plan, existing)?;
    let mut journal = Journal::new(&k, &records, writer);
    let detecting = cfg.detect_ip_conflict || cfg.detect_gateway;
    // With arp_notify on (the reference macvlan plugin turns it on) the
    // kernel announces a MAC change at once. Without detection that is the
    // announcement we want, and it spares us a packet socket whose close
    // waits out an RCU grace period. With detection nothing may be announced
    // before the probes (RFC 5227): it is held off for the change (and for a
    // conflict's MAC restore), and the check's own socket announces once the
    // address is known to be free.
    let notify_key = format!("net/ipv4/conf/{}/arp_notify", nic.name);
    let notify = match plan.mac.is_some() && ctx.inputs.ips.iter().any(|n| n.addr().is_ipv4()) {
        true => set_arp_notify(
            &pod_ns,
            &notify_key,
            if detecting { "0" } else { "1" },
            &mut journal,
        )?,
        false => None,
    };
    let kernel_garp = !detecting && notify.is_some();
    // The MAC first: probes must go out with the address the pod will keep.
    let mac_change = set_mac(&pod, &nic, plan.mac.as_ref(), &mut journal)?;
    if let Some(new) = mac_change {
        if let Some(i) = prev.interface_index(ifname) {
            prev.interfaces[i].mac = format_mac(&new);
        }
    }
    let mac = mac_change.or(nic.mac).unwrap_or_default();
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
        if let Some(Some(seq)) = notify {
            journal.undo_now(seq)?;
        }
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

    apply(
        &k,
        &plan,
        &ctx.kernel_view,
        &ctx.host_view.uplinks,
        &mut journal,
    )?;
    journal.commit()?;
    tracing::info!(
        container = call.env.container_id,
        ifname,
        layout = ?ctx.layout,
        "ADD done"
    );
    match cfg.result_routes {
        true => Ok(crate::result_routes::extend(prev, &plan, call.version())),
        false => Ok(prev),
    }
}

/// `podMACPrefix`: the new MAC when the NIC's changed.
fn set_mac(
    pod: &Netlink,
    nic: &Link,
    planned: Option<&(String, Mac)>,
    journal: &mut Journal,
) -> Result<Option<Mac>> {
    let Some((_, mac)) = planned else {
        return Ok(None);
    };
    let old = nic.mac.unwrap_or_default();
    if old == *mac {
        return Ok(None);
    }
    journal.push(Undo::SetMac {
        dev: nic.name.clone(),
        index: nic.index,
        mac: old,
    })?;
    pod.set_link_mac(nic.index, *mac).map_err(|e| {
        Error::from(e).context(format!(
            "podMACPrefix: setting the MAC of {} to {}",
            nic.name,
            format_mac(mac)
        ))
    })?;
    Ok(Some(*mac))
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

/// Set `key` (a NIC's `arp_notify`) in the pod, its old value recorded
/// first. None when it could not be read or set (we announce ourselves
/// then); Some(Some(seq)) when it changed, with the step that restores it.
fn set_arp_notify(
    pod_ns: &NetNs,
    key: &str,
    value: &str,
    journal: &mut Journal,
) -> Result<Option<Option<u64>>> {
    let old = match pod_ns.run(|| sysctl_get(key)).and_then(|r| r) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("{key}: {e}");
            return Ok(None);
        }
    };
    if old == value {
        return Ok(Some(None));
    }
    let seq = journal.push(Undo::Sysctl {
        side: Side::Pod,
        key: key.to_string(),
        old,
    })?;
    match pod_ns.run(|| sysctl_set(key, value)).and_then(|r| r) {
        Ok(()) => Ok(Some(Some(seq))),
        Err(e) => {
            tracing::warn!("{key}={value}: {e}");
            journal.forget(seq)?;
            Ok(None)
        }
    }
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
