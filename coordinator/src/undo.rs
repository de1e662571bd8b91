//! How to take back one change of an ADD, as data, and the code that does it.
//!
//! Every change ADD makes is preceded by its [`Undo`], holding the pre-image
//! of what it changes (the route it replaced, the sysctl's old value, the
//! neighbour entry that was there). Undone last first, the steps of an ADD
//! give back exactly the pod and node it found: that is ADD's undo on
//! failure and DEL's teardown (see [`crate::record`]).

use std::collections::HashMap;
use std::net::IpAddr;

use cni::netlink::{Family, Mac, Netlink, NlError, Route, Rule};
use cni::netns::{sysctl_set, NetNs};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::plan::{Move, Side};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Undo {
    /// Delete host link `name` (the veth pair ADD created: its pod end,
    /// and every route, neighbour and sysctl on either end, go with it).
    DelLink {
        name: String,
    },
    DelRoute {
        side: Side,
        dev: String,
        route: Route,
    },
    /// Put back, as it was, a route ADD replaced.
    RestoreRoute {
        side: Side,
        dev: String,
        route: Route,
    },
    /// Put a route moved out of `main` back (a nexthop back into its
    /// multipath route).
    UnMove {
        moved: Move,
    },
    DelRule {
        side: Side,
        rule: Rule,
    },
    DelNeigh {
        side: Side,
        dev: String,
        index: u32,
        ip: IpAddr,
    },
    /// Put back the permanent entry ADD replaced.
    RestoreNeigh {
        side: Side,
        dev: String,
        index: u32,
        ip: IpAddr,
        mac: Mac,
    },
    DelAddr {
        dev: String,
        index: u32,
        addr: IpNet,
    },
    RemoveReplyMark,
    /// Give a pod link its MAC back (`podMACPrefix`).
    SetMac {
        dev: String,
        index: u32,
        mac: Mac,
    },
    SetTxqlen {
        dev: String,
        index: u32,
        qlen: u32,
    },
    /// Write a sysctl's old value back.
    Sysctl {
        side: Side,
        key: String,
        old: String,
    },
}

/// The device a sysctl key of `net/ipv{4,6}/conf/<dev>/<name>` is about.
fn sysctl_dev(key: &str) -> Option<&str> {
    let rest = key
        .strip_prefix("net/ipv4/conf/")
        .or_else(|| key.strip_prefix("net/ipv6/conf/"))?;
    rest.split('/').next()
}

impl Undo {
    /// The side and device this step acts on, if it is about one device.
    pub fn device(&self) -> Option<(Side, &str)> {
        match self {
            Undo::DelRoute { side, dev, .. }
            | Undo::RestoreRoute { side, dev, .. }
            | Undo::DelNeigh { side, dev, .. }
            | Undo::RestoreNeigh { side, dev, .. } => Some((*side, dev)),
            Undo::DelAddr { dev, .. } | Undo::SetMac { dev, .. } | Undo::SetTxqlen { dev, .. } => {
                Some((Side::Pod, dev))
            }
            Undo::Sysctl { side, key, .. } => sysctl_dev(key).map(|d| (*side, d)),
            Undo::DelLink { .. }
            | Undo::UnMove { .. }
            | Undo::DelRule { .. }
            | Undo::RemoveReplyMark => None,
        }
    }

    /// What the step puts right, for messages.
    pub fn describe(&self) -> String {
        let side = |s: &Side| match s {
            Side::Pod => "pod",
            Side::Host => "host",
        };
        match self {
            Undo::DelLink { name } => format!("delete link {name}"),
            Undo::DelRoute {
                side: s,
                dev,
                route,
            } => format!(
                "delete {} route {} dev {dev} table {}",
                side(s),
                route.dst,
                route.table
            ),
            Undo::RestoreRoute {
                side: s,
                dev,
                route,
            } => format!(
                "restore {} route {} dev {dev} table {}",
                side(s),
                route.dst,
                route.table
            ),
            Undo::UnMove { moved } => format!("put route {} back into main", moved.route.dst),
            Undo::DelRule { side: s, rule } => format!(
                "delete {} rule priority {} lookup {}",
                side(s),
                rule.priority,
                rule.table
            ),
            Undo::DelNeigh {
                side: s, dev, ip, ..
            } => {
                format!("delete {} neighbour {ip} dev {dev}", side(s))
            }
            Undo::RestoreNeigh {
                side: s, dev, ip, ..
            } => {
                format!("restore {} neighbour {ip} dev {dev}", side(s))
            }
            Undo::DelAddr { dev, addr, .. } => format!("delete address {addr} dev {dev}"),
            Undo::RemoveReplyMark => "remove the nftables reply-mark table".into(),
            Undo::SetMac { dev, .. } => format!("restore the MAC of {dev}"),
            Undo::SetTxqlen { dev, qlen, .. } => format!("restore txqueuelen {qlen} of {dev}"),
            Undo::Sysctl { side: s, key, old } => format!("restore {} {key}={old}", side(s)),
        }
    }
}

/// One step that could not be undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: String,
    pub error: NlError,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

/// The namespaces a replay acts in: the pod's may be gone (DEL after the
/// pod's netns was removed), and its steps are then done already.
pub struct Sides<'a> {
    pub host: &'a Netlink,
    pub pod: Option<(&'a Netlink, &'a NetNs)>,
}

/// Undo `steps` (in the order given: the caller passes them last first).
/// A step whose object is already gone is done; every other failure is
/// collected and the remaining steps still run.
pub fn replay<'s>(sides: &Sides, steps: impl IntoIterator<Item = &'s Undo>) -> Vec<Failure> {
    let mut steps: Vec<&Undo> = steps.into_iter().collect();
    // The reply-mark table first, whenever ADD made it: it matches only
    // packets entering through veth0, so the order does not matter to the
    // pod, and the RCU grace period its removal leaves behind (see
    // nftables::in_netns) then elapses while the rest is undone, not after.
    steps.sort_by_key(|s| !matches!(s, Undo::RemoveReplyMark));
    // A deleted veth takes everything on either end with it: those steps
    // would only find nothing (or, for a host index reused since, the wrong
    // link).
    let doomed: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Undo::DelLink { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut host_names: HashMap<u32, Option<String>> = HashMap::new();
    let mut failures = Vec::new();
    for step in steps {
        let gone_with_veth = match step.device() {
            Some((Side::Host, dev)) => doomed.contains(&dev),
            Some((Side::Pod, dev)) => !doomed.is_empty() && dev == crate::names::POD_VETH,
            None => false,
        };
        if gone_with_veth {
            continue;
        }
        if let Some(index) = host_index(step) {
            let dev = step.device().map(|(_, d)| d).unwrap_or_default();
            let name = host_names.entry(index).or_insert_with(|| {
                sides
                    .host
                    .link_by_index(index)
                    .ok()
                    .flatten()
                    .map(|l| l.name)
            });
            // The link is gone, or its index now names another link.
            if name.as_deref() != Some(dev) {
                continue;
            }
        }
        match run(sides, step) {
            Ok(()) | Err(NlError::NotFound) => {}
            Err(error) => failures.push(Failure {
                step: step.describe(),
                error,
            }),
        }
    }
    failures
}

/// The host ifindex a step names, checked against its device name first.
fn host_index(step: &Undo) -> Option<u32> {
    match step {
        Undo::DelNeigh {
            side: Side::Host,
            index,
            ..
        }
        | Undo::RestoreNeigh {
            side: Side::Host,
            index,
            ..
        } => Some(*index),
        Undo::DelRoute {
            side: Side::Host,
            route,
            ..
        }
        | Undo::RestoreRoute {
            side: Side::Host,
            route,
            ..
        } => route.oif,
        _ => None,
    }
}

/// Carry out one step.
pub fn run(sides: &Sides, step: &Undo) -> Result<(), NlError> {
    let nl = |side: Side| -> Option<&Netlink> {
        match side {
            Side::Host => Some(sides.host),
            Side::Pod => sides.pod.map(|(p, _)| p),
        }
    };
    let pod = sides.pod.map(|(p, _)| p);
    let skip = Ok(());
    match step {
        Undo::DelLink { name } => match sides.host.link(name)? {
            Some(l) => sides.host.del_link(l.index),
            None => Ok(()),
        },
        Undo::DelRoute { side, route, .. } => nl(*side).map_or(skip, |n| n.del_route(route)),
        Undo::RestoreRoute { side, route, .. } => {
            nl(*side).map_or(skip, |n| n.replace_route(route))
        }
        Undo::UnMove { moved } => pod.map_or(skip, |p| undo_move(p, moved)),
        Undo::DelRule { side, rule } => nl(*side).map_or(skip, |n| n.del_rule(rule)),
        Undo::DelNeigh {
            side, index, ip, ..
        } => nl(*side).map_or(skip, |n| n.del_neighbour(*index, *ip)),
        Undo::RestoreNeigh {
            side,
            index,
            ip,
            mac,
            ..
        } => nl(*side).map_or(skip, |n| n.set_permanent_neighbour(*index, *ip, *mac)),
        Undo::DelAddr { index, addr, .. } => pod.map_or(skip, |p| p.del_address(*index, *addr)),
        Undo::RemoveReplyMark => match sides.pod {
            Some((_, ns)) => crate::nftables::remove(ns).map_err(|e| NlError::Io(e.to_string())),
            None => skip,
        },
        Undo::SetMac { index, mac, .. } => pod.map_or(skip, |p| p.set_link_mac(*index, *mac)),
        Undo::SetTxqlen { index, qlen, .. } => {
            pod.map_or(skip, |p| p.set_link_txqlen(*index, *qlen))
        }
        Undo::Sysctl { side, key, old } => {
            let res = match (side, sides.pod) {
                (Side::Host, _) => Ok(sysctl_set(key, old)),
                (Side::Pod, Some((_, ns))) => ns.run(|| sysctl_set(key, old)),
                (Side::Pod, None) => return skip,
            };
            match res.and_then(|r| r) {
                Ok(()) => Ok(()),
                // The device (or IPv6) is gone: nothing to restore.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(NlError::NotFound),
                Err(e) => Err(NlError::Io(format!("{key}={old}: {e}"))),
            }
        }
    }
}

/// Put `m.route` back into `main` as it was.
fn undo_move(pod: &Netlink, m: &Move) -> Result<(), NlError> {
    let r = &m.route;
    if !r.multipath || m.others.is_empty() {
        return match pod.add_route(r) {
            // Already back (the main plugin, or a repeated DEL).
            Err(NlError::Exists) => Ok(()),
            other => other,
        };
    }
    if r.nh_id.is_some() {
        let mut group = r.clone();
        group.multipath = false;
        return pod.replace_route(&group);
    }
    match r.family() {
        Family::V6 => match pod.append_route(r) {
            Err(NlError::Exists) => Ok(()),
            other => other,
        },
        Family::V4 => {
            let mut all = m.others.clone();
            all.push(r.clone());
            pod.replace_nexthops(&all)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_name_the_device_they_act_on() {
        let s = Undo::Sysctl {
            side: Side::Host,
            key: "net/ipv6/conf/vethab12/accept_dad".into(),
            old: "1".into(),
        };
        assert_eq!(s.device(), Some((Side::Host, "vethab12")));
        let all = Undo::Sysctl {
            side: Side::Pod,
            key: "net/ipv4/conf/all/rp_filter".into(),
            old: "1".into(),
        };
        assert_eq!(all.device(), Some((Side::Pod, "all")));
        assert_eq!(Undo::RemoveReplyMark.device(), None);
    }

    #[test]
    fn steps_survive_a_round_trip_through_json() {
        let mut r = Route::new("10.6.0.0/16".parse().unwrap(), 101);
        r.oif = Some(3);
        r.metric = Some(100);
        let steps = vec![
            Undo::DelRoute {
                side: Side::Pod,
                dev: "net1".into(),
                route: r.clone(),
            },
            Undo::UnMove {
                moved: Move {
                    route: r,
                    others: vec![],
                },
            },
            Undo::SetMac {
                dev: "eth0".into(),
                index: 2,
                mac: [0x0a, 0xbb, 1, 2, 3, 4],
            },
        ];
        let text = serde_json::to_string(&steps).unwrap();
        let back: Vec<Undo> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, steps);
    }
}
