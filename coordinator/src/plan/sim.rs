//! A plan applied to a pod view the way the kernel would store it: the
//! state CHECK would read after ADD, for tests that plan again from it
//! (the fixpoint) or compare it with the plan.

use cni::netlink::{Link, Neighbour, Route, NUD_PERMANENT, TABLE_MAIN};

use super::{Plan, PodView, Side};
use crate::plan::verify::Observed;

/// Index of a veth pod end the plan creates; host links count from 100.
const POD_END: u32 = 50;

fn new_link(index: u32, name: &str, mac: cni::netlink::Mac, mtu: u32) -> Link {
    Link {
        index,
        name: name.into(),
        kind: Some("veth".into()),
        mac: Some(mac),
        mtu,
        up: true,
        link: None,
        link_netnsid: None,
        txqlen: 1000,
        ipvlan_mode: None,
    }
}

/// Is `x` the route of main that `m` moved (one nexthop of it)?
fn is_moved(x: &Route, m: &Route) -> bool {
    x.table == TABLE_MAIN
        && x.dst == m.dst
        && x.oif == m.oif
        && x.gateway == m.gateway
        && x.metric == m.metric
}

/// The kernel after `plan` is applied to `pod`.
pub fn applied(plan: &Plan, pod: &PodView) -> Observed {
    let mut seen = Observed {
        pod: pod.clone(),
        ..Observed::default()
    };
    if let Some(v) = &plan.veth {
        if seen.pod.link(&v.pod).is_none() {
            seen.pod
                .links
                .push(new_link(POD_END, &v.pod, v.pod_mac, v.mtu));
        }
        seen.host_links
            .push(new_link(100, &v.host, v.host_mac, v.mtu));
    }
    if let Some((dev, mac)) = &plan.mac {
        if let Some(l) = seen.pod.links.iter_mut().find(|l| l.name == *dev) {
            l.mac = Some(*mac);
        }
    }
    if let Some((dev, q)) = &plan.txqlen {
        if let Some(l) = seen.pod.links.iter_mut().find(|l| l.name == *dev) {
            l.txqlen = *q;
        }
    }
    for (dev, addr) in &plan.addresses {
        if let Some(i) = seen.pod.link(dev).map(|l| l.index) {
            seen.pod.addrs.push((i, *addr));
        }
    }
    for m in &plan.moves {
        seen.pod.routes.retain(|x| !is_moved(x, &m.route));
        // The other nexthops stay, now without the moved one.
        if m.others.len() == 1 {
            for x in seen.pod.routes.iter_mut() {
                if is_moved(x, &m.others[0]) {
                    x.multipath = false;
                }
            }
        }
    }
    for r in plan.routes.iter().chain(&plan.policy) {
        if r.side == Side::Host && seen.link(Side::Host, &r.dev).is_none() {
            let index = 100 + seen.host_links.len() as u32;
            seen.host_links
                .push(new_link(index, &r.dev, [2, 0, 0, 0, 0, 9], 1500));
        }
        let index = seen.index_of(r.side, &r.dev).expect("the plan's device");
        let k = crate::apply::route_spec(r, index);
        let routes = match r.side {
            Side::Pod => &mut seen.pod.routes,
            Side::Host => &mut seen.host_routes,
        };
        if !routes.contains(&k) {
            routes.push(k);
        }
    }
    for (side, rule) in &plan.rules {
        let rules = match side {
            Side::Pod => &mut seen.pod.rules,
            Side::Host => &mut seen.host_rules,
        };
        if !rules.contains(rule) {
            rules.push(rule.clone());
        }
    }
    for n in &plan.neighbours {
        let index = seen.index_of(n.side, &n.dev).unwrap_or(0);
        let entry = Neighbour {
            index,
            ip: n.ip,
            mac: Some(n.mac),
            state: NUD_PERMANENT,
        };
        seen.neighbours
            .push((n.side, n.dev.clone(), n.ip, Some(entry)));
    }
    for s in &plan.sysctls {
        seen.sysctls
            .push((s.side, s.key.clone(), Some(s.value.clone())));
    }
    seen
}
