//! DEL: take back what ADD did. Never blocks pod deletion: the netns, the
//! links and the routes may already be gone, and every step goes on past the
//! failure of another (errors are logged, not returned).

use std::net::IpAddr;

use cni::netlink::{Family, Netlink, NlError, Route, Rule, RTPROT_BOOT, TABLE_MAIN};
use cni::netns::NetNs;
use cni::plugin::Call;
use cni::Result;
use ipnet::IpNet;

use crate::add::nic_addresses;
use crate::config::{Config, Mode};
use crate::names::{host_veth_name, POD_VETH};
use crate::plan::{is_ours, PRIO_FROM, PRIO_FWMARK, REPLY_MARK, TABLE_REPLY};

fn log_err<T>(what: &str, r: std::result::Result<T, NlError>) {
    match r {
        Ok(_) | Err(NlError::NotFound) => {}
        Err(e) => tracing::warn!("DEL: {what}: {e}"),
    }
}

pub fn del(call: &Call, cfg: &Config) -> Result<()> {
    if cfg.mode == Mode::Disabled {
        return Ok(());
    }
    let ifname = call.env.ifname.as_str();
    let is_first = ifname == cfg.pod_default_cni_nic;
    let host = Netlink::open()?;
    // The plugin's own netns is no pod's: DEL leaves it alone (open_pod refuses it).
    let pod_ns = call
        .env
        .netns
        .as_ref()
        .and_then(|p| NetNs::open_pod(p).ok());
    let pod = pod_ns.as_ref().and_then(|ns| Netlink::open_in(ns).ok());

    // The NIC's addresses: prevResult when the runtime passed it, else what
    // the NIC still holds.
    let mut ips: Vec<IpNet> = match call.prev_result() {
        Ok(Some(prev)) => nic_addresses(&prev, ifname).0,
        _ => Vec::new(),
    };
    let mut eth0_peer: Option<u32> = None;
    if let Some(pod) = &pod {
        if ips.is_empty() {
            if let Ok(Some(l)) = pod.link(ifname) {
                if let Ok(addrs) = pod.addresses(Some(l.index)) {
                    ips = addrs
                        .into_iter()
                        .filter(|a| a.scope == 0)
                        .map(|a| a.addr)
                        .collect();
                }
            }
        }
        if let Ok(Some(eth0)) = pod.link(&cfg.pod_default_cni_nic) {
            if eth0.kind.as_deref() == Some("veth") && eth0.link_netnsid.is_some() {
                eth0_peer = eth0.link;
            }
        }
    }

    let hveth = host_veth_name(&call.env.container_id);
    let host_veth = host.link(&hveth).ok().flatten();

    // Host: routes and neighbours of this NIC's addresses. They point at our
    // veth (gone with it below) or at the overlay's host peer.
    let dev = host_veth.as_ref().map(|l| l.index).or(eth0_peer);
    for ip in &ips {
        let mut r = Route::new(IpNet::from(ip.addr()), cfg.host_rule_table);
        r.oif = dev;
        if dev.is_some() {
            log_err("host route", host.del_route(&r));
        }
        if let Some(d) = dev {
            log_err("host neighbour", host.del_neighbour(d, ip.addr()));
        }
    }

    if let Some(pod) = &pod {
        if is_first {
            remove_reply_path(pod, pod_ns.as_ref());
        } else {
            // Read once and kept up to date below: the pod's rules and the
            // first NIC's addresses (they name its `from` rules).
            let mut rules: Vec<Rule> = [Family::V4, Family::V6]
                .into_iter()
                .flat_map(|f| pod.rules(f).unwrap_or_default())
                .collect();
            remove_nic_tables(pod, &mut rules, &ips);
            let first = pod.link(&cfg.pod_default_cni_nic).ok().flatten();
            let first_ips = first
                .as_ref()
                .map(|l| first_nic_addresses(pod, l.index))
                .unwrap_or_default();
            let own: Vec<IpAddr> = first_ips.iter().map(|n| n.addr()).collect();
            if let (true, Some(eth0)) = (ifname == cfg.default_route_nic(), &first) {
                restore_first_nic_default(pod, &rules, eth0.index, &own);
            }
            // The first NIC's own table only serves while a later NIC is there,
            // and so do the cluster routes through eth0 later NICs of an
            // overlay pod put in main.
            if !later_nic_tables_remain(&rules, &own) {
                remove_nic_tables(pod, &mut rules, &first_ips);
                if let Some(eth0) = &first {
                    remove_ours_in_main(pod, eth0.index);
                }
            }
            sweep_orphans(pod, &mut rules);
        }
    }
    if is_first {
        if let Some(l) = host_veth {
            // Takes the pod end, and every host route and neighbour on it, along.
            log_err("host veth", host.del_link(l.index));
        }
    }
    tracing::info!(container = call.env.container_id, ifname, "DEL done");
    Ok(())
}

/// The fwmark rules, table 100 and the nftables table of the first NIC.
fn remove_reply_path(pod: &Netlink, ns: Option<&NetNs>) {
    for f in [Family::V4, Family::V6] {
        let mut r = Rule::new(f, PRIO_FWMARK, TABLE_REPLY);
        r.fwmark = Some(REPLY_MARK);
        r.fwmask = Some(0xffff_ffff);
        log_err("fwmark rule", pod.del_rule(&r));
        flush_table(pod, f, TABLE_REPLY);
    }
    if let Some(ns) = ns {
        if let Err(e) = crate::nftables::remove(ns) {
            tracing::warn!("DEL: nftables: {e}");
        }
    }
    if let Ok(Some(l)) = pod.link(POD_VETH) {
        log_err("pod veth", pod.del_link(l.index));
    }
}

/// podDefaultRouteNic named the NIC being removed: ADD moved the first NIC's
/// default into the first NIC's own table; put it back into `main`
/// (replacing the removed NIC's default), or a pod whose NIC is detached at
/// run time is left without a default route.
fn restore_first_nic_default(pod: &Netlink, rules: &[Rule], eth0: u32, own: &[IpAddr]) {
    for r in rules
        .iter()
        .filter(|r| r.priority == PRIO_FROM && r.src.is_some_and(|s| own.contains(&s.addr())))
    {
        let Ok(routes) = pod.routes(r.family, Some(r.table)) else {
            continue;
        };
        for d in routes
            .iter()
            .filter(|x| x.table == r.table && x.dst.prefix_len() == 0 && x.oif == Some(eth0))
        {
            let mut back = d.clone();
            back.table = TABLE_MAIN;
            // The main plugin's route again, not one of ours.
            back.protocol = RTPROT_BOOT;
            log_err("first NIC default back to main", pod.replace_route(&back));
        }
    }
}

/// Global addresses of the pod's first NIC.
fn first_nic_addresses(pod: &Netlink, index: u32) -> Vec<IpNet> {
    pod.addresses(Some(index))
        .map(|addrs| {
            addrs
                .into_iter()
                .filter(|a| a.scope == 0)
                .map(|a| a.addr)
                .collect()
        })
        .unwrap_or_default()
}

/// Does a `from` rule of some later NIC (not the first NIC) remain?
fn later_nic_tables_remain(rules: &[Rule], own: &[IpAddr]) -> bool {
    rules
        .iter()
        .any(|r| r.priority == PRIO_FROM && r.src.is_some_and(|s| !own.contains(&s.addr())))
}

/// `from <address> lookup T` rules of the NIC and the tables they point at;
/// the removed rules leave `rules` too.
fn remove_nic_tables(pod: &Netlink, rules: &mut Vec<Rule>, ips: &[IpNet]) {
    let addrs: Vec<IpAddr> = ips.iter().map(|n| n.addr()).collect();
    rules.retain(|r| {
        let ours = r.priority == PRIO_FROM && r.src.is_some_and(|s| addrs.contains(&s.addr()));
        if ours {
            log_err("from rule", pod.del_rule(r));
            // Both families: a NIC listed with fewer addresses than it has
            // still had the other family's routes copied by an older release.
            flush_table(pod, Family::V4, r.table);
            flush_table(pod, Family::V6, r.table);
        }
        !ours
    });
}

fn flush_table(pod: &Netlink, f: Family, table: u32) {
    if let Ok(routes) = pod.routes(f, Some(table)) {
        for r in routes.iter().filter(|r| r.table == table) {
            log_err("table route", pod.del_route(r));
        }
    }
}

/// Our routes in main through `oif` (an overlay pod's cluster routes via eth0).
fn remove_ours_in_main(pod: &Netlink, oif: u32) {
    for f in [Family::V4, Family::V6] {
        let Ok(routes) = pod.routes(f, Some(TABLE_MAIN)) else {
            continue;
        };
        for r in routes.iter().filter(|r| is_ours(r) && r.oif == Some(oif)) {
            log_err("cluster route in main", pod.del_route(r));
        }
    }
}

/// What an ADD or DEL killed between two netlink requests left: `from`
/// rules of addresses no longer in the pod (their tables flushed), and
/// tables holding routes of ours (route protocol) that no rule leads to.
/// The pod's own tables are small: one dump per family.
fn sweep_orphans(pod: &Netlink, rules: &mut Vec<Rule>) {
    let addrs: Vec<IpAddr> = match pod.addresses(None) {
        Ok(a) => a.into_iter().map(|a| a.addr.addr()).collect(),
        Err(e) => return tracing::warn!("DEL: pod addresses: {e}"),
    };
    rules.retain(|r| {
        let orphan = r.priority == PRIO_FROM && r.src.is_some_and(|s| !addrs.contains(&s.addr()));
        if orphan {
            log_err("orphan from rule", pod.del_rule(r));
        }
        !orphan
    });
    let led_to: Vec<u32> = rules.iter().map(|r| r.table).collect();
    for f in [Family::V4, Family::V6] {
        let Ok(routes) = pod.routes(f, None) else {
            continue;
        };
        for r in routes.iter().filter(|r| {
            // Table 100 too: eth0's table in overlay mode, reached by its
            // `from` rules; in underlay the fwmark rule leads to it.
            is_ours(r) && r.table != TABLE_MAIN && !led_to.contains(&r.table)
        }) {
            log_err("orphan table route", pod.del_route(r));
        }
    }
}
