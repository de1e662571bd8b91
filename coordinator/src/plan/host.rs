//! The node's side of a pod address: host rule, table routes, neighbours.

use cni::netlink::{Mac, Rule, Scope};
use ipnet::IpNet;

use super::{families, host_net, is_link_local, NeighSpec, Plan, RouteSpec, Side};
use crate::config::Config;

/// Host: `from all lookup hostRuleTable`, pod address routes and neighbours on `dev`.
pub(super) fn host_side(cfg: &Config, ips: &[IpNet], dev: &str, mac: Mac, plan: &mut Plan) {
    for f in families(ips) {
        let mut r = Rule::new(f, cfg.ids.host_priority, cfg.ids.host_table);
        r.src = None;
        if !plan.rules.iter().any(|(s, x)| *s == Side::Host && *x == r) {
            plan.rules.push((Side::Host, r));
        }
    }
    for ip in ips.iter().filter(|ip| !is_link_local(&ip.addr())) {
        plan.routes.push(RouteSpec {
            side: Side::Host,
            dst: host_net(ip.addr()),
            table: cfg.ids.host_table,
            dev: dev.to_string(),
            via: None,
            src: None,
            scope: Scope::Link,
            metric: None,
            expires: None,
            onlink: false,
            nh_id: None,
        });
        plan.neighbours.push(NeighSpec {
            side: Side::Host,
            dev: dev.to_string(),
            ip: ip.addr(),
            mac,
        });
        plan.stale_neighbours.push(ip.addr());
    }
}
