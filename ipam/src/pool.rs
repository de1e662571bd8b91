//! Address pools and the arithmetic on them.
//!
//! Addresses of both families are handled as `u128` (IPv4 in the low 32 bits)
//! and sets of addresses as sorted, merged, inclusive intervals. Finding the
//! next free address then costs a binary search over the blocked intervals
//! (reserved + excluded + quarantined + allocated), never a walk over the range:
//! a /64 pool is as cheap as a /29.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use glob::Pattern;
use ipnet::IpNet;

/// An inclusive interval of addresses of one family.
pub type Interval = (u128, u128);

/// IP family of a pool or address (the one type the whole project uses).
pub use cni::netlink::Family;

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family` with numeric value `v` (truncated to 32 bits for IPv4).
pub fn from_u128(v: u128, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// First and last address of `net`.
pub fn net_interval(net: &IpNet) -> Interval {
    (to_u128(net.network()), to_u128(net.broadcast()))
}

/// Sort and merge overlapping or adjacent intervals.
pub fn merge(mut v: Vec<Interval>) -> Vec<Interval> {
    v.sort_unstable();
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for (s, e) in v {
        if let Some(last) = out.last_mut() {
            if s <= last.1.saturating_add(1) {
                last.1 = last.1.max(e);
                continue;
            }
        }
        out.push((s, e));
    }
    out
}

/// Number of addresses in an interval, saturating at `u128::MAX` (only a whole
/// IPv6 /0 would overflow).
pub fn interval_len((s, e): Interval) -> u128 {
    (e - s).saturating_add(1)
}

/// Do two sets of merged intervals share an address?
pub fn intersects(a: &[Interval], b: &[Interval]) -> bool {
    a.iter()
        .any(|&(s1, e1)| b.iter().any(|&(s2, e2)| s1 <= e2 && s2 <= e1))
}

/// The merged interval of `blocked` containing `x`, if any.
fn blocking(blocked: &[Interval], x: u128) -> Option<Interval> {
    let i = blocked.partition_point(|&(s, _)| s <= x);
    let &(s, e) = blocked.get(i.checked_sub(1)?)?;
    (s <= x && x <= e).then_some((s, e))
}

/// The lowest address >= `from` inside `ranges` and outside `blocked` (both
/// merged and sorted).
pub fn first_free_from(ranges: &[Interval], blocked: &[Interval], from: u128) -> Option<u128> {
    for &(s, e) in ranges {
        if e < from {
            continue;
        }
        let mut x = s.max(from);
        loop {
            match blocking(blocked, x) {
                None => return Some(x),
                Some((_, be)) if be >= e => break,
                Some((_, be)) => x = be + 1,
            }
        }
    }
    None
}

/// The next free address after `cursor` (the last one handed out), wrapping
/// around to the start of the ranges.
pub fn next_free(ranges: &[Interval], blocked: &[Interval], cursor: Option<u128>) -> Option<u128> {
    let from = cursor.and_then(|c| c.checked_add(1)).unwrap_or(0);
    first_free_from(ranges, blocked, from).or_else(|| first_free_from(ranges, blocked, 0))
}

/// How many addresses of `ranges` are outside `blocked` (saturating).
pub fn free_count(ranges: &[Interval], blocked: &[Interval]) -> u128 {
    let mut total: u128 = 0;
    for &(s, e) in ranges {
        let mut n = interval_len((s, e));
        for &(bs, be) in blocked {
            let (os, oe) = (bs.max(s), be.min(e));
            if os <= oe {
                n = n.saturating_sub(interval_len((os, oe)));
            }
        }
        total = total.saturating_add(n);
    }
    total
}

/// A route handed to the pod with every address of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// One validated pool (see `config` for how it is built and checked).
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub subnet: IpNet,
    /// Merged, sorted, inside `subnet`.
    pub ranges: Vec<Interval>,
    pub exclude: Vec<IpNet>,
    pub gateway: Option<IpAddr>,
    pub routes: Vec<Route>,
    /// Node name globs; empty = every node.
    pub nodes: Vec<Pattern>,
    /// `namespace/name` globs; empty = every pod.
    pub pods: Vec<Pattern>,
}

impl Pool {
    pub fn family(&self) -> Family {
        Family::of_net(&self.subnet)
    }

    /// Addresses of the subnet that are never handed out whatever the ranges
    /// say: the network address (IPv4 and IPv6 subnet-router anycast) and the
    /// IPv4 broadcast, except on /31 and /127 (both addresses usable, RFC 3021)
    /// and /32 and /128 (the single address), plus the gateway and `exclude`.
    pub fn reserved(&self) -> Vec<Interval> {
        let (net, bcast) = net_interval(&self.subnet);
        let mut v = Vec::new();
        let point_to_point = self.subnet.max_prefix_len() - self.subnet.prefix_len() <= 1;
        if !point_to_point {
            v.push((net, net));
            if self.family() == Family::V4 {
                v.push((bcast, bcast));
            }
        }
        if let Some(gw) = self.gateway {
            let g = to_u128(gw);
            v.push((g, g));
        }
        v.extend(self.exclude.iter().map(net_interval));
        merge(v)
    }

    /// Blocked intervals for this pool: reserved plus the given addresses
    /// (allocated, quarantined) of this pool's family.
    pub fn blocked<'a>(&self, taken: impl IntoIterator<Item = &'a IpAddr>) -> Vec<Interval> {
        let fam = self.family();
        let mut v = self.reserved();
        v.extend(
            taken
                .into_iter()
                .filter(|ip| Family::of(ip) == fam)
                .map(|ip| (to_u128(*ip), to_u128(*ip))),
        );
        merge(v)
    }

    /// Inside the ranges and not reserved (allocation state aside).
    pub fn can_hold(&self, ip: &IpAddr) -> bool {
        if Family::of(ip) != self.family() {
            return false;
        }
        let x = to_u128(*ip);
        self.ranges.iter().any(|&(s, e)| s <= x && x <= e)
            && blocking(&self.reserved(), x).is_none()
    }

    /// Does this pool serve `node`, and the pod `namespace/name` (if known)?
    /// A pool restricted to some pods never serves a call without pod identity.
    pub fn applies(&self, node: &str, pod: Option<&str>) -> bool {
        let node_ok = self.nodes.is_empty() || self.nodes.iter().any(|p| p.matches(node));
        let pod_ok =
            self.pods.is_empty() || pod.is_some_and(|pod| self.pods.iter().any(|p| p.matches(pod)));
        node_ok && pod_ok
    }

    pub fn applies_to_node(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|p| p.matches(node))
    }

    /// Total addresses the pool can hand out (ranges minus reserved).
    pub fn capacity(&self) -> u128 {
        free_count(&self.ranges, &self.reserved())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pool(subnet: &str) -> Pool {
        let subnet: IpNet = subnet.parse().unwrap();
        Pool {
            name: "p".into(),
            subnet,
            ranges: vec![net_interval(&subnet)],
            exclude: vec![],
            gateway: None,
            routes: vec![],
            nodes: vec![],
            pods: vec![],
        }
    }

    #[test]
    fn edges_of_small_subnets() {
        let p = pool("10.0.0.0/30");
        assert!(!p.can_hold(&ip("10.0.0.0")));
        assert!(p.can_hold(&ip("10.0.0.1")));
        assert!(!p.can_hold(&ip("10.0.0.3")));
        assert_eq!(p.capacity(), 2);
        assert_eq!(pool("10.0.0.0/31").capacity(), 2);
        assert_eq!(pool("10.0.0.7/32").capacity(), 1);
        assert_eq!(pool("fd00::/127").capacity(), 2);
        assert_eq!(pool("fd00::5/128").capacity(), 1);
        // IPv6 has no broadcast: only the subnet-router anycast is skipped.
        assert_eq!(pool("fd00::/126").capacity(), 3);
        assert!(pool("fd00::/126").can_hold(&ip("fd00::3")));
    }

    #[test]
    fn wide_ipv6_is_cheap_and_wraps() {
        let mut p = pool("fd00:1::/64");
        p.exclude = vec!["fd00:1::/120".parse().unwrap()];
        let taken = [ip("fd00:1::100"), ip("fd00:1::101")];
        let b = p.blocked(taken.iter());
        let first = next_free(&p.ranges, &b, None).unwrap();
        assert_eq!(from_u128(first, Family::V6), ip("fd00:1::102"));
        // From the very last address, wrap to the first free one.
        let last = to_u128(ip("fd00:1::ffff:ffff:ffff:ffff"));
        assert_eq!(next_free(&p.ranges, &b, Some(last)), Some(first));
        assert_eq!(free_count(&p.ranges, &b), (1u128 << 64) - 256 - 2);
    }

    #[test]
    fn half_of_a_64_excluded_is_skipped_in_one_step() {
        // Walking address by address would take 2^63 steps here.
        let mut p = pool("fd00:2::/64");
        p.exclude = vec!["fd00:2::/65".parse().unwrap()];
        let b = p.blocked([].iter());
        let x = next_free(&p.ranges, &b, None).unwrap();
        assert_eq!(from_u128(x, Family::V6), ip("fd00:2::8000:0:0:0"));
        assert_eq!(free_count(&p.ranges, &b), 1u128 << 63);
        let v4 = pool("10.0.0.0/16");
        let taken: Vec<IpAddr> = (1..=60000u32)
            .map(|i| IpAddr::from((10u32 << 24 | i).to_be_bytes()))
            .collect();
        let b = v4.blocked(taken.iter());
        assert_eq!(
            next_free(&v4.ranges, &b, None).map(|x| from_u128(x, Family::V4)),
            Some(ip("10.0.234.97"))
        );
    }

    #[test]
    fn applies_by_globs() {
        let mut p = pool("10.0.0.0/24");
        p.nodes = vec![Pattern::new("rack1-*").unwrap()];
        p.pods = vec![Pattern::new("db/mysql-*").unwrap()];
        assert!(p.applies("rack1-a", Some("db/mysql-0")));
        assert!(!p.applies("rack2-a", Some("db/mysql-0")));
        assert!(!p.applies("rack1-a", Some("web/x")));
        assert!(!p.applies("rack1-a", None));
        assert!(p.applies_to_node("rack1-a"));
    }

    proptest! {
        // next_free agrees with a brute-force scan on small random layouts.
        #[test]
        fn next_free_matches_brute_force(
            ranges in proptest::collection::vec((0u128..200, 0u128..20), 1..4),
            blocked in proptest::collection::vec((0u128..220, 0u128..10), 0..12),
            cursor in proptest::option::of(0u128..230),
        ) {
            let ranges = merge(ranges.into_iter().map(|(s, l)| (s, s + l)).collect());
            let blocked = merge(blocked.into_iter().map(|(s, l)| (s, s + l)).collect());
            let free = |x: u128| ranges.iter().any(|&(s, e)| s <= x && x <= e)
                && !blocked.iter().any(|&(s, e)| s <= x && x <= e);
            let start = cursor.map(|c| c + 1).unwrap_or(0);
            let want = (start..=230).chain(0..start).find(|&x| free(x));
            prop_assert_eq!(next_free(&ranges, &blocked, cursor), want);
            let count = (0..=230u128).filter(|&x| free(x)).count() as u128;
            prop_assert_eq!(free_count(&ranges, &blocked), count);
        }

        #[test]
        fn u128_round_trip(v4 in any::<u32>(), v6 in any::<u128>()) {
            let a = IpAddr::V4(Ipv4Addr::from(v4));
            prop_assert_eq!(from_u128(to_u128(a), Family::V4), a);
            let b = IpAddr::V6(Ipv6Addr::from(v6));
            prop_assert_eq!(from_u128(to_u128(b), Family::V6), b);
        }

        #[test]
        fn merge_is_disjoint_sorted_and_covers(v in proptest::collection::vec((0u128..100, 0u128..10), 0..10)) {
            let iv: Vec<Interval> = v.iter().map(|&(s, l)| (s, s + l)).collect();
            let m = merge(iv.clone());
            for w in m.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0);
            }
            for x in 0..120u128 {
                let a = iv.iter().any(|&(s, e)| s <= x && x <= e);
                let b = m.iter().any(|&(s, e)| s <= x && x <= e);
                prop_assert_eq!(a, b);
            }
        }
    }
}
