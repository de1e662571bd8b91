//! CHECK's comparison, as data: every piece of the plan ADD applied against
//! what the kernel holds, attribute by attribute, and the applied plan
//! against the plan today's pod would get.

use cni::netlink::{Link, Neighbour, Route, Rule, NUD_PERMANENT, TABLE_MAIN};

use super::{Plan, PodView, RouteSpec, Side, ROUTE_PROTOCOL};
use crate::names::format_mac;

/// What CHECK read from the kernel.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The pod as the kernel holds it.
    pub pod: PodView,
    /// Host links the plan names.
    pub host_links: Vec<Link>,
    pub host_rules: Vec<Rule>,
    /// Routes of the host tables the plan names.
    pub host_routes: Vec<Route>,
    /// Each neighbour of the plan as read: (side, dev, ip, entry).
    pub neighbours: Vec<(Side, String, std::net::IpAddr, Option<Neighbour>)>,
    /// Each sysctl of the plan as read (None: absent).
    pub sysctls: Vec<(Side, String, Option<String>)>,
    /// How the pod's nftables reply-mark table differs from ours, if it does.
    pub reply_mark: Option<String>,
}

impl Observed {
    /// The index of `dev` on `side`, as read.
    pub fn index_of(&self, side: Side, dev: &str) -> Option<u32> {
        self.link(side, dev).map(|l| l.index)
    }

    pub fn link(&self, side: Side, dev: &str) -> Option<&Link> {
        match side {
            Side::Pod => self.pod.link(dev),
            Side::Host => self.host_links.iter().find(|l| l.name == dev),
        }
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Pod => "pod",
        Side::Host => "host",
    }
}

/// The kernel's metric for a route given none.
pub fn metric_of(r: &Route) -> u32 {
    match (r.metric, r.family()) {
        (Some(m), _) => m,
        (None, cni::netlink::Family::V4) => 0,
        (None, cni::netlink::Family::V6) => 1024,
    }
}

fn describe(r: &RouteSpec) -> String {
    let via = r.via.map(|v| format!(" via {v}")).unwrap_or_default();
    format!(
        "{} route {}{} dev {} table {}",
        side_name(r.side),
        r.dst,
        via,
        r.dev,
        r.table
    )
}

/// How the route the plan names differs from the kernel's, if it does.
fn route_differs(seen: &Observed, r: &RouteSpec) -> Option<String> {
    let Some(index) = seen.index_of(r.side, &r.dev) else {
        return Some(format!("{} is missing (no {})", describe(r), r.dev));
    };
    let routes = match r.side {
        Side::Pod => &seen.pod.routes,
        Side::Host => &seen.host_routes,
    };
    let want = crate::apply::route_spec(r, index);
    let candidates: Vec<&Route> = routes
        .iter()
        .filter(|x| {
            x.dst == r.dst && x.table == r.table && x.oif == Some(index) && x.gateway == r.via
        })
        .collect();
    if candidates.is_empty() {
        // A copy of a router advertisement's route lives as long as the
        // router said: gone, it has expired, as it would have in `main`.
        if r.expires.is_some() {
            return None;
        }
        return Some(format!("{} is missing", describe(r)));
    }
    // The kernel keeps no scope for IPv6 routes.
    let v6 = want.family() == cni::netlink::Family::V6;
    let exact = |x: &&&Route| {
        metric_of(x) == metric_of(&want)
            && x.prefsrc == want.prefsrc
            && (x.scope == want.scope || v6)
            && x.onlink == want.onlink
            && x.protocol == ROUTE_PROTOCOL
            && (want.nh_id.is_none() || x.nh_id == want.nh_id)
    };
    if candidates.iter().any(|x| exact(&x)) {
        return None;
    }
    let x = candidates[0];
    let what = if metric_of(x) != metric_of(&want) {
        format!("metric {} (want {})", metric_of(x), metric_of(&want))
    } else if x.prefsrc != want.prefsrc {
        format!("src {:?} (want {:?})", x.prefsrc, want.prefsrc)
    } else if x.scope != want.scope && !v6 {
        format!("scope {:?} (want {:?})", x.scope, want.scope)
    } else if x.onlink != want.onlink {
        format!("onlink {} (want {})", x.onlink, want.onlink)
    } else if x.protocol != ROUTE_PROTOCOL {
        format!("protocol {} (want {ROUTE_PROTOCOL})", x.protocol)
    } else {
        format!("nexthop id {:?} (want {:?})", x.nh_id, want.nh_id)
    };
    Some(format!("{} has {what}", describe(r)))
}

/// The first piece of `plan` the kernel lacks or holds otherwise,
/// described for the operator.
pub fn verify(plan: &Plan, seen: &Observed) -> Result<(), String> {
    if let Some(v) = &plan.veth {
        let (Some(h), Some(p)) = (seen.link(Side::Host, &v.host), seen.pod.link(&v.pod)) else {
            return Err(format!("veth pair {}/{} is missing", v.host, v.pod));
        };
        for (l, mac) in [(h, v.host_mac), (p, v.pod_mac)] {
            if l.mtu != v.mtu {
                return Err(format!("{} has MTU {} (want {})", l.name, l.mtu, v.mtu));
            }
            if l.mac != Some(mac) {
                return Err(format!(
                    "{} has MAC {} (want {})",
                    l.name,
                    l.mac.map(|m| format_mac(&m)).unwrap_or_default(),
                    format_mac(&mac)
                ));
            }
            if !l.up {
                return Err(format!("{} is down", l.name));
            }
        }
    }
    if let Some((dev, mac)) = &plan.mac {
        let now = seen.pod.link(dev).and_then(|l| l.mac);
        if now != Some(*mac) {
            return Err(format!(
                "{dev} has MAC {} (podMACPrefix wants {})",
                now.map(|m| format_mac(&m)).unwrap_or_default(),
                format_mac(mac)
            ));
        }
    }
    if let Some((dev, qlen)) = &plan.txqlen {
        let now = seen.pod.link(dev).map(|l| l.txqlen);
        if now != Some(*qlen) {
            return Err(format!("{dev} has txqueuelen {now:?} (want {qlen})"));
        }
    }
    for s in &plan.sysctls {
        let now = seen
            .sysctls
            .iter()
            .find(|(side, k, _)| *side == s.side && *k == s.key)
            .and_then(|(_, _, v)| v.clone());
        match now {
            Some(v) if v == s.value => {}
            None if s.optional => {}
            other => {
                return Err(format!(
                    "{} sysctl {} is {} (want {})",
                    side_name(s.side),
                    s.key,
                    other.as_deref().unwrap_or("absent"),
                    s.value
                ))
            }
        }
    }
    for (dev, addr) in &plan.addresses {
        let index = seen.pod.link(dev).map(|l| l.index);
        if !seen
            .pod
            .addrs
            .iter()
            .any(|(i, a)| Some(*i) == index && a == addr)
        {
            return Err(format!("address {addr} on {dev} is missing"));
        }
    }
    for (side, rule) in &plan.rules {
        let rules = match side {
            Side::Pod => &seen.pod.rules,
            Side::Host => &seen.host_rules,
        };
        if !rules.iter().any(|r| r == rule) {
            return Err(format!(
                "{} rule priority {} lookup {}{}{} is missing",
                side_name(*side),
                rule.priority,
                rule.table,
                rule.src.map(|s| format!(" from {s}")).unwrap_or_default(),
                rule.fwmark
                    .map(|m| format!(" fwmark {m:#x}"))
                    .unwrap_or_default()
            ));
        }
    }
    for r in plan.routes.iter().chain(&plan.policy) {
        if let Some(why) = route_differs(seen, r) {
            return Err(why);
        }
    }
    for m in &plan.moves {
        let r = &m.route;
        let back = seen.pod.routes.iter().any(|x| {
            x.table == TABLE_MAIN
                && x.dst == r.dst
                && x.oif == r.oif
                && x.gateway == r.gateway
                && metric_of(x) == metric_of(r)
        });
        if back {
            let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(format!(
                "route {}{via} is back in main: its NIC's table holds it",
                r.dst
            ));
        }
    }
    for n in &plan.neighbours {
        let now = seen
            .neighbours
            .iter()
            .find(|(s, d, ip, _)| *s == n.side && *d == n.dev && *ip == n.ip)
            .and_then(|(.., e)| e.as_ref());
        let ok = now.is_some_and(|e| e.state & NUD_PERMANENT != 0 && e.mac == Some(n.mac));
        if !ok {
            return Err(format!(
                "{} neighbour {} lladdr {} dev {} is {}",
                side_name(n.side),
                n.ip,
                format_mac(&n.mac),
                n.dev,
                match now {
                    None => "missing".to_string(),
                    Some(e) => format!(
                        "{} with {}",
                        if e.state & NUD_PERMANENT != 0 {
                            "permanent"
                        } else {
                            "not permanent"
                        },
                        e.mac.map(|m| format_mac(&m)).unwrap_or_default()
                    ),
                }
            ));
        }
    }
    if let (true, Some(why)) = (plan.reply_mark, &seen.reply_mark) {
        return Err(why.clone());
    }
    Ok(())
}

/// How an item of a plan reads in CHECK's message.
trait Describe {
    fn describe(&self) -> String;
}

impl Describe for RouteSpec {
    fn describe(&self) -> String {
        describe(self)
    }
}

impl Describe for (Side, Rule) {
    fn describe(&self) -> String {
        let (side, r) = self;
        format!(
            "{} rule priority {} lookup {}{}{}",
            side_name(*side),
            r.priority,
            r.table,
            r.src.map(|s| format!(" from {s}")).unwrap_or_default(),
            r.fwmark
                .map(|m| format!(" fwmark {m:#x}"))
                .unwrap_or_default()
        )
    }
}

impl Describe for Route {
    fn describe(&self) -> String {
        let via = self
            .gateway
            .map(|g| format!(" via {g}"))
            .unwrap_or_default();
        format!("the move of {}{via} out of main", self.dst)
    }
}

impl Describe for super::NeighSpec {
    fn describe(&self) -> String {
        format!(
            "{} neighbour {} lladdr {} dev {}",
            side_name(self.side),
            self.ip,
            format_mac(&self.mac),
            self.dev
        )
    }
}

impl Describe for super::SysctlSpec {
    fn describe(&self) -> String {
        format!(
            "{} sysctl {}={}",
            side_name(self.side),
            self.key,
            self.value
        )
    }
}

impl Describe for (String, ipnet::IpNet) {
    fn describe(&self) -> String {
        format!("address {} on {}", self.1, self.0)
    }
}

fn one_way<T: PartialEq + Describe>(applied: &[T], now: &[T]) -> Result<(), String> {
    if let Some(x) = now.iter().find(|x| !applied.contains(x)) {
        return Err(format!(
            "today's pod needs {} that its ADD did not make",
            x.describe()
        ));
    }
    if let Some(x) = applied.iter().find(|x| !now.contains(x)) {
        return Err(format!(
            "its ADD made {} that today's pod no longer needs",
            x.describe()
        ));
    }
    Ok(())
}

/// How the plan ADD applied differs from the plan of today's pod (an
/// address added or gone, a NIC gone, the config changed).
pub fn drift(applied: &Plan, now: &Plan) -> Result<(), String> {
    let mut now = now.clone();
    let mut applied = applied.clone();
    // A router advertisement's routes count down: their lifetime left is
    // not a difference.
    for p in [&mut now, &mut applied] {
        for r in p.routes.iter_mut().chain(p.policy.iter_mut()) {
            r.expires = r.expires.map(|_| 0);
        }
        for m in p.moves.iter_mut() {
            m.route.expires = m.route.expires.map(|_| 0);
        }
    }
    let applied = &applied;
    // Made by the first ADD, found by later ones: the same veth.
    if let (Some(n), Some(a)) = (now.veth.as_mut(), applied.veth.as_ref()) {
        n.create = a.create;
    }
    for (n, a) in now.moves.iter_mut().zip(&applied.moves) {
        if n.route == a.route {
            n.others.clone_from(&a.others);
        }
    }
    if now == *applied {
        return Ok(());
    }
    // Rules first: they name the addresses that came or went.
    one_way(&applied.rules, &now.rules)?;
    one_way(&applied.routes, &now.routes)?;
    one_way(&applied.policy, &now.policy)?;
    // What stayed in main beside a moved nexthop depends on the NICs
    // attached since, not on this one: the moved route is what counts.
    let routes = |p: &Plan| p.moves.iter().map(|m| m.route.clone()).collect::<Vec<_>>();
    one_way(&routes(applied), &routes(&now))?;
    one_way(&applied.neighbours, &now.neighbours)?;
    one_way(&applied.sysctls, &now.sysctls)?;
    one_way(&applied.addresses, &now.addresses)?;
    if applied.veth != now.veth {
        return Err(format!(
            "veth {:?}, planned now {:?}",
            applied.veth, now.veth
        ));
    }
    if applied.mac != now.mac || applied.txqlen != now.txqlen {
        return Err(format!(
            "MAC/txqueuelen {:?}/{:?}, planned now {:?}/{:?}",
            applied.mac, applied.txqlen, now.mac, now.txqlen
        ));
    }
    if applied.reply_mark != now.reply_mark {
        return Err("the reply mark is planned otherwise now".into());
    }
    // Same items in another order, or stale neighbours: no change to the pod.
    Ok(())
}
