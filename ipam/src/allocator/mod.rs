//! Allocation decisions on the state of one network.
//!
//! The decisions are pure with respect to the outside world: ADD, DEL and
//! CHECK read and write through a [`Ledger`] (the lookups they need), which
//! the in-memory [`State`] implements and a store can implement from an
//! index; GC, STATUS and usage work on a whole [`State`]. An ADD decides every
//! family before changing anything, which is what makes dual-stack all or
//! nothing; the store commits only when the whole call succeeded.

use std::collections::BTreeMap;
use std::net::IpAddr;

use cni::error::code;
use cni::{Error, Result};
use serde::Serialize;

use crate::config::Config;
use crate::pool::{self, Family, Pool};

mod state;

pub use state::{Attachment, Ledger, Record, State, StickyId, STATE_VERSION};

/// The pod, from CNI_ARGS K8S_POD_NAMESPACE / K8S_POD_NAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    /// `namespace/name`, what pool `pods` globs match.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone)]
pub struct AddRequest {
    pub attachment: Attachment,
    pub pod: Option<PodRef>,
    /// Exact addresses asked for (at most one per family).
    pub requested: Vec<IpAddr>,
    /// Where `requested` came from, for error messages.
    pub requested_field: String,
}

/// An address given to an attachment, with the pool it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub pool: String,
}

fn lease(r: &Record) -> Lease {
    Lease {
        ip: r.ip,
        pool: r.pool.clone(),
    }
}

fn unavailable(msg: String) -> Error {
    Error::plugin(code::ADDRESS_UNAVAILABLE, msg)
}

fn who(req: &AddRequest) -> String {
    match &req.pod {
        Some(p) => format!("pod {}", p.key()),
        None => format!("container {}", req.attachment.container_id),
    }
}

/// ADD: the addresses of this attachment, reserving them if it has none yet.
pub fn add(
    state: &mut dyn Ledger,
    cfg: &Config,
    req: &AddRequest,
    quarantined: &[IpAddr],
) -> Result<Vec<Lease>> {
    let held: Vec<Lease> = state.held_by(&req.attachment)?.iter().map(lease).collect();
    if !held.is_empty() {
        return Ok(held);
    }
    let pod_key = req.pod.as_ref().map(PodRef::key);
    let applicable: Vec<&Pool> = cfg
        .pools
        .iter()
        .filter(|p| p.applies(&cfg.node_name, pod_key.as_deref()))
        .collect();
    let mut families: Vec<Family> = applicable.iter().map(|p| p.family()).collect();
    families.sort();
    families.dedup();
    if families.is_empty() {
        return Err(Error::plugin(
            code::POOL_EXHAUSTED,
            format!("no pool applies to node {} and {}", cfg.node_name, who(req)),
        ));
    }
    let mut requested: BTreeMap<Family, IpAddr> = BTreeMap::new();
    for ip in &req.requested {
        let fam = Family::of(ip);
        if let Some(other) = requested.insert(fam, *ip) {
            return Err(Error::config(
                &req.requested_field,
                format!(
                    "more than one {} address requested ({other}, {ip})",
                    fam.name()
                ),
            ));
        }
        if !families.contains(&fam) {
            return Err(unavailable(format!(
                "requested address {ip}: no {} pool applies to node {} and {}",
                fam.name(),
                cfg.node_name,
                who(req)
            )));
        }
    }
    let sticky = req
        .pod
        .as_ref()
        .filter(|p| cfg.is_sticky(&p.namespace, &p.name))
        .map(|p| StickyId {
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            ifname: req.attachment.ifname.clone(),
        });

    // Families use disjoint pools, cursors and records, so each family's
    // choice can be made on the unchanged state and all applied at the end:
    // all or nothing without copying the state.
    let sticky_recs = match &sticky {
        Some(s) => state.sticky_records(s)?,
        None => Vec::new(),
    };
    let mut chosen = Vec::new();
    for fam in families {
        let pools: Vec<&Pool> = applicable
            .iter()
            .copied()
            .filter(|p| p.family() == fam)
            .collect();
        let (rec, cursor) = match requested.get(&fam) {
            Some(ip) => (
                take_requested(&*state, cfg, req, &pools, *ip, sticky.as_ref(), quarantined)?,
                None,
            ),
            None => match parked_for(&sticky_recs, fam) {
                Some(old) => (take_sticky(cfg, req, &pools, old)?, None),
                None => take_next_free(&*state, cfg, req, &pools, quarantined)?,
            },
        };
        // A sticky identity holds one address per family: moving it to a
        // requested address lets go of the old one.
        let stale: Vec<IpAddr> = sticky_recs
            .iter()
            .filter(|r| Family::of(&r.ip) == fam && r.ip != rec.ip)
            .map(|r| r.ip)
            .collect();
        let rec = Record {
            owner: Some(req.attachment.clone()),
            node: cfg.node_name.clone(),
            sticky: sticky.clone(),
            ..rec
        };
        chosen.push((rec, cursor, stale));
    }
    let mut leases = Vec::new();
    for (rec, cursor, stale) in chosen {
        for ip in stale {
            state.remove_record(&ip)?;
        }
        if let Some((pool, ip)) = cursor {
            state.set_cursor(&pool, ip)?;
        }
        leases.push(lease(&rec));
        state.put_record(rec)?;
    }
    Ok(leases)
}

/// The record of this sticky identity and family, parked or held by another
/// (older or newer) sandbox of the same pod.
fn parked_for(sticky_recs: &[Record], fam: Family) -> Option<&Record> {
    sticky_recs.iter().find(|r| Family::of(&r.ip) == fam)
}

/// A sticky identity reclaims its address, from the park or from an older
/// sandbox of the same pod (whose late DEL then finds nothing to free).
fn take_sticky(cfg: &Config, req: &AddRequest, pools: &[&Pool], old: &Record) -> Result<Record> {
    let pool = pools.iter().find(|p| p.can_hold(&old.ip)).ok_or_else(|| {
        unavailable(format!(
            "sticky address {} of {} is in no pool applicable to node {}",
            old.ip,
            who(req),
            cfg.node_name
        ))
    })?;
    Ok(Record {
        pool: pool.name.clone(),
        ..old.clone()
    })
}

fn take_requested(
    state: &dyn Ledger,
    cfg: &Config,
    req: &AddRequest,
    pools: &[&Pool],
    ip: IpAddr,
    sticky: Option<&StickyId>,
    quarantined: &[IpAddr],
) -> Result<Record> {
    let pool = pools.iter().find(|p| p.can_hold(&ip)).ok_or_else(|| {
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        unavailable(format!(
            "requested address {ip} is not usable in the pools applicable to node {} and {} ({}): outside their ranges, or a gateway, network, broadcast or excluded address",
            cfg.node_name,
            who(req),
            names.join(", ")
        ))
    })?;
    if let Some(r) = state.record(&ip)? {
        let ours = sticky.is_some() && r.sticky.as_ref() == sticky;
        if !ours {
            let holder = match &r.owner {
                Some(o) => format!("container {} interface {}", o.container_id, o.ifname),
                None => "a parked sticky pod".to_string(),
            };
            return Err(unavailable(format!(
                "requested address {ip} in pool {} is in use by {holder}",
                pool.name
            )));
        }
    }
    if quarantined.contains(&ip) {
        return Err(unavailable(format!(
            "requested address {ip} in pool {} is quarantined (in use outside the cluster, see {})",
            pool.name,
            cfg.quarantine_file.display()
        )));
    }
    Ok(Record {
        ip,
        pool: pool.name.clone(),
        node: cfg.node_name.clone(),
        owner: None,
        sticky: None,
    })
}

/// The next free address of the first pool with room, and the cursor to
/// record. Records are sorted, so a candidate is checked by binary search
/// instead of building the blocked set from every record: the cost depends on
/// the taken addresses right after the cursor, not on how many there are.
fn take_next_free(
    state: &dyn Ledger,
    cfg: &Config,
    req: &AddRequest,
    pools: &[&Pool],
    quarantined: &[IpAddr],
) -> Result<(Record, Option<(String, IpAddr)>)> {
    for pool in pools {
        let fam = pool.family();
        let blocked = pool.blocked(quarantined.iter());
        let free_from = |from: u128| -> Result<Option<u128>> {
            let mut from = from;
            loop {
                let Some(x) = pool::first_free_from(&pool.ranges, &blocked, from) else {
                    return Ok(None);
                };
                if !state.taken(&pool::from_u128(x, fam))? {
                    return Ok(Some(x));
                }
                match x.checked_add(1) {
                    Some(n) => from = n,
                    None => return Ok(None),
                }
            }
        };
        let cursor = state.cursor(&pool.name)?.map(pool::to_u128);
        let from = cursor.and_then(|c| c.checked_add(1)).unwrap_or(0);
        let found = match free_from(from)? {
            Some(x) => Some(x),
            None => free_from(0)?,
        };
        if let Some(x) = found {
            let ip = pool::from_u128(x, fam);
            return Ok((
                Record {
                    ip,
                    pool: pool.name.clone(),
                    node: cfg.node_name.clone(),
                    owner: None,
                    sticky: None,
                },
                Some((pool.name.clone(), ip)),
            ));
        }
    }
    let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    let fam = pools.first().map(|p| p.family().name()).unwrap_or("");
    Err(Error::plugin(
        code::POOL_EXHAUSTED,
        format!(
            "no free {fam} address for {} on node {} in pools {}",
            who(req),
            cfg.node_name,
            names.join(", ")
        ),
    ))
}

/// Let go of one record: sticky ones are parked for their identity, others freed.
fn let_go(state: &mut State, ip: &IpAddr) {
    if let Ok(i) = state.index(ip) {
        if state.records[i].sticky.is_some() {
            state.records[i].owner = None;
        } else {
            state.records.remove(i);
        }
    }
}

/// DEL: release what this attachment owns (nothing recorded is fine).
pub fn del(state: &mut dyn Ledger, a: &Attachment) -> Result<Vec<IpAddr>> {
    let held = state.held_by(a)?;
    for r in &held {
        if r.sticky.is_some() {
            state.put_record(Record {
                owner: None,
                ..r.clone()
            })?;
        } else {
            state.remove_record(&r.ip)?;
        }
    }
    Ok(held.iter().map(|r| r.ip).collect())
}

/// CHECK: the attachment's reservation exists and matches `prev` (the
/// addresses of prevResult, when there is one).
pub fn check(state: &dyn Ledger, a: &Attachment, prev: Option<&[IpAddr]>) -> Result<()> {
    let mut held: Vec<IpAddr> = state.held_by(a)?.iter().map(|r| r.ip).collect();
    if held.is_empty() {
        return Err(Error::plugin(
            code::CHECK_FAILED,
            format!(
                "no address is reserved for container {} interface {}",
                a.container_id, a.ifname
            ),
        ));
    }
    if let Some(prev) = prev {
        let mut prev = prev.to_vec();
        prev.sort();
        prev.dedup();
        held.sort();
        if prev != held {
            return Err(Error::plugin(
                code::CHECK_FAILED,
                format!(
                    "container {} interface {}: prevResult has {:?} but the store holds {:?}",
                    a.container_id, a.ifname, prev, held
                ),
            ));
        }
    }
    Ok(())
}

/// GC: release this node's attachments that are not in `valid`.
pub fn gc(state: &mut State, node: &str, valid: &[Attachment]) -> Vec<IpAddr> {
    let stale: Vec<IpAddr> = state
        .records
        .iter()
        .filter(|r| r.node == node && r.owner.as_ref().is_some_and(|o| !valid.contains(o)))
        .map(|r| r.ip)
        .collect();
    for ip in &stale {
        let_go(state, ip);
    }
    stale
}

/// Free addresses of one pool, counting records and quarantine.
pub fn free_in(state: &State, pool: &Pool, quarantined: &[IpAddr]) -> u128 {
    let taken = state
        .records
        .iter()
        .map(|r| &r.ip)
        .chain(quarantined.iter());
    pool::free_count(&pool.ranges, &pool.blocked(taken))
}

/// STATUS: every family served on this node has a pool with a free address
/// (an ADD needs one of each, so one exhausted family is enough to refuse).
pub fn status(state: &State, cfg: &Config, quarantined: &[IpAddr]) -> Result<()> {
    let pools: Vec<&Pool> = cfg
        .pools
        .iter()
        .filter(|p| p.applies_to_node(&cfg.node_name))
        .collect();
    if pools.is_empty() {
        return Err(Error::NotAvailable(format!(
            "no pool applies to node {}",
            cfg.node_name
        )));
    }
    for fam in [Family::V4, Family::V6] {
        let of_fam: Vec<&&Pool> = pools.iter().filter(|p| p.family() == fam).collect();
        if !of_fam.is_empty() && of_fam.iter().all(|p| free_in(state, p, quarantined) == 0) {
            let names: Vec<&str> = of_fam.iter().map(|p| p.name.as_str()).collect();
            return Err(Error::NotAvailable(format!(
                "no free {} address on node {} in pools {}",
                fam.name(),
                cfg.node_name,
                names.join(", ")
            )));
        }
    }
    Ok(())
}

/// Per-pool numbers for the operator CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolUsage {
    pub name: String,
    pub subnet: String,
    pub capacity: String,
    pub in_use: u64,
    pub parked: u64,
    pub quarantined: u64,
    pub free: String,
}

pub fn usage(state: &State, cfg: &Config, quarantined: &[IpAddr]) -> Vec<PoolUsage> {
    cfg.pools
        .iter()
        .map(|p| {
            let recs: Vec<&Record> = state.records.iter().filter(|r| p.can_hold(&r.ip)).collect();
            let q = quarantined
                .iter()
                .filter(|ip| p.can_hold(ip) && state.get(ip).is_none())
                .count();
            PoolUsage {
                name: p.name.clone(),
                subnet: p.subnet.to_string(),
                capacity: p.capacity().to_string(),
                in_use: recs.iter().filter(|r| !r.parked()).count() as u64,
                parked: recs.iter().filter(|r| r.parked()).count() as u64,
                quarantined: q as u64,
                free: free_in(state, p, quarantined).to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn cfg(v: serde_json::Value) -> Config {
        Config::parse(&v, || Some("node1".into())).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn att(c: &str) -> Attachment {
        Attachment {
            container_id: c.into(),
            ifname: "net1".into(),
        }
    }

    fn req(c: &str) -> AddRequest {
        AddRequest {
            attachment: att(c),
            pod: None,
            requested: vec![],
            requested_field: "runtimeConfig.ips".into(),
        }
    }

    fn pod_req(c: &str, ns: &str, name: &str) -> AddRequest {
        AddRequest {
            pod: Some(PodRef {
                namespace: ns.into(),
                name: name.into(),
            }),
            ..req(c)
        }
    }

    fn ips(l: &[Lease]) -> Vec<IpAddr> {
        l.iter().map(|l| l.ip).collect()
    }

    fn small() -> Config {
        cfg(
            json!({"pools": [{"name": "a", "subnet": "10.0.0.0/29", "gateway": "10.0.0.1",
                              "exclude": ["10.0.0.3"]}]}),
        )
    }

    #[test]
    fn rotates_and_skips_reserved() {
        let c = small();
        let mut s = State::default();
        // .0 network, .1 gateway, .3 excluded, .7 broadcast.
        let got: Vec<IpAddr> = (0..4)
            .map(|i| add(&mut s, &c, &req(&format!("c{i}")), &[]).unwrap()[0].ip)
            .collect();
        assert_eq!(
            got,
            vec![
                ip("10.0.0.2"),
                ip("10.0.0.4"),
                ip("10.0.0.5"),
                ip("10.0.0.6")
            ]
        );
        let e = add(&mut s, &c, &req("c9"), &[]).unwrap_err();
        assert_eq!(e.code(), code::POOL_EXHAUSTED);
        assert!(e.to_string().contains("pools a"), "{e}");
        // Freed .2 is not handed out again before the rotation comes back to it.
        del(&mut s, &att("c0")).unwrap();
        del(&mut s, &att("c2")).unwrap();
        assert_eq!(
            add(&mut s, &c, &req("n1"), &[]).unwrap()[0].ip,
            ip("10.0.0.2")
        );
        assert_eq!(
            add(&mut s, &c, &req("n2"), &[]).unwrap()[0].ip,
            ip("10.0.0.5")
        );
    }

    #[test]
    fn add_is_idempotent_and_del_releases_only_own() {
        let c = small();
        let mut s = State::default();
        let a = add(&mut s, &c, &req("c1"), &[]).unwrap();
        assert_eq!(add(&mut s, &c, &req("c1"), &[]).unwrap(), a);
        add(&mut s, &c, &req("c2"), &[]).unwrap();
        assert!(del(&mut s, &att("nope")).unwrap().is_empty());
        assert_eq!(del(&mut s, &att("c1")).unwrap(), ips(&a));
        assert_eq!(s.records.len(), 1);
        assert!(del(&mut s, &att("c1")).unwrap().is_empty());
    }

    #[test]
    fn quarantined_addresses_are_skipped() {
        let c = small();
        let mut s = State::default();
        let l = add(&mut s, &c, &req("c1"), &[ip("10.0.0.2"), ip("10.0.0.4")]).unwrap();
        assert_eq!(l[0].ip, ip("10.0.0.5"));
        let mut r = req("c2");
        r.requested = vec![ip("10.0.0.4")];
        let e = add(&mut s, &c, &r, &[ip("10.0.0.4")]).unwrap_err();
        assert!(e.to_string().contains("quarantined"), "{e}");
    }

    #[test]
    fn dual_stack_is_all_or_nothing() {
        let c = cfg(json!({"pools": [
            {"name": "v4", "subnet": "10.0.0.0/24"},
            {"name": "v6", "subnet": "fd00::/126"}]}));
        let mut s = State::default();
        for i in 0..3 {
            let l = add(&mut s, &c, &req(&format!("c{i}")), &[]).unwrap();
            assert_eq!(l.len(), 2);
            assert_eq!(Family::of(&l[0].ip), Family::V4);
            assert_eq!(Family::of(&l[1].ip), Family::V6);
        }
        let before = s.clone();
        let e = add(&mut s, &c, &req("c3"), &[]).unwrap_err();
        assert_eq!(e.code(), code::POOL_EXHAUSTED);
        assert!(e.to_string().contains("IPv6"), "{e}");
        assert_eq!(
            s, before,
            "a failed family must not leave the other one reserved"
        );
        assert_eq!(status(&s, &c, &[]).unwrap_err().code(), code::NOT_AVAILABLE);
    }

    #[test]
    fn first_applicable_pool_with_room() {
        let c = cfg(json!({"nodeName": "rack1-a", "pools": [
            {"name": "other-node", "subnet": "10.1.0.0/24", "nodes": ["rack2-*"]},
            {"name": "db-only", "subnet": "10.2.0.0/24", "pods": ["db/*"]},
            {"name": "tiny", "subnet": "10.3.0.0/30"},
            {"name": "big", "subnet": "10.4.0.0/16"}]}));
        let mut s = State::default();
        let pool_of = |s: &mut State, r: AddRequest| add(s, &c, &r, &[]).unwrap()[0].pool.clone();
        assert_eq!(pool_of(&mut s, pod_req("a", "db", "x")), "db-only");
        assert_eq!(pool_of(&mut s, pod_req("b", "web", "x")), "tiny");
        assert_eq!(pool_of(&mut s, req("c")), "tiny");
        assert_eq!(pool_of(&mut s, req("d")), "big");
    }

    #[test]
    fn requested_addresses() {
        let c = small();
        let mut s = State::default();
        let mut r = req("c1");
        r.requested = vec![ip("10.0.0.5")];
        assert_eq!(
            ips(&add(&mut s, &c, &r, &[]).unwrap()),
            vec![ip("10.0.0.5")]
        );
        // Taken by c1.
        let mut r2 = req("c2");
        r2.requested = vec![ip("10.0.0.5")];
        let e = add(&mut s, &c, &r2, &[]).unwrap_err();
        assert_eq!(e.code(), code::ADDRESS_UNAVAILABLE);
        assert!(e.to_string().contains("container c1"), "{e}");
        for bad in ["10.0.0.1", "10.0.0.3", "10.0.0.7", "10.0.9.9", "fd00::1"] {
            r2.requested = vec![ip(bad)];
            let e = add(&mut s, &c, &r2, &[]).unwrap_err();
            assert_eq!(e.code(), code::ADDRESS_UNAVAILABLE, "{bad}: {e}");
        }
        r2.requested = vec![ip("10.0.0.4"), ip("10.0.0.6")];
        assert_eq!(add(&mut s, &c, &r2, &[]).unwrap_err().code(), 7);
    }

    #[test]
    fn sticky_parks_and_returns_and_survives_late_del() {
        let c = cfg(
            json!({"pools": [{"name": "a", "subnet": "10.0.0.0/24"}, {"name": "b", "subnet": "fd00::/64"}],
                           "sticky": [{"namespace": "db", "pod": "mysql-*"}]}),
        );
        let mut s = State::default();
        let first = ips(&add(&mut s, &c, &pod_req("sb1", "db", "mysql-0"), &[]).unwrap());
        // Other pods move the cursor on.
        add(&mut s, &c, &pod_req("x1", "web", "w"), &[]).unwrap();
        del(&mut s, &att("sb1")).unwrap();
        assert!(s
            .records
            .iter()
            .filter(|r| first.contains(&r.ip))
            .all(Record::parked));
        // Parked addresses are not handed to others.
        let other = ips(&add(&mut s, &c, &pod_req("x2", "web", "w2"), &[]).unwrap());
        assert!(other.iter().all(|ip| !first.contains(ip)));
        // The same identity gets them back, on another node too.
        let mut c2 = c.clone();
        c2.node_name = "node2".into();
        assert_eq!(
            ips(&add(&mut s, &c2, &pod_req("sb2", "db", "mysql-0"), &[]).unwrap()),
            first
        );
        // A new sandbox takes over from a live old one; the old one's late
        // DEL then frees nothing.
        assert_eq!(
            ips(&add(&mut s, &c, &pod_req("sb3", "db", "mysql-0"), &[]).unwrap()),
            first
        );
        assert!(del(&mut s, &att("sb2")).unwrap().is_empty());
        assert!(check(&s, &att("sb3"), Some(&first)).is_ok());
        // Another interface of the same pod is another identity.
        let mut r = pod_req("sb3", "db", "mysql-0");
        r.attachment.ifname = "net2".into();
        assert_ne!(ips(&add(&mut s, &c, &r, &[]).unwrap()), first);
    }

    #[test]
    fn check_and_gc() {
        let c = cfg(json!({"pools": [{"name": "a", "subnet": "10.0.0.0/24"}],
                           "sticky": [{"namespace": "db"}]}));
        let mut s = State::default();
        let a = ips(&add(&mut s, &c, &req("c1"), &[]).unwrap());
        assert_eq!(
            check(&s, &att("c2"), None).unwrap_err().code(),
            code::CHECK_FAILED
        );
        assert!(check(&s, &att("c1"), None).is_ok());
        assert!(check(&s, &att("c1"), Some(&a)).is_ok());
        assert_eq!(
            check(&s, &att("c1"), Some(&[ip("10.0.0.99")]))
                .unwrap_err()
                .code(),
            code::CHECK_FAILED
        );

        add(&mut s, &c, &req("c2"), &[]).unwrap();
        add(&mut s, &c, &pod_req("c3", "db", "p"), &[]).unwrap();
        let mut c2 = c.clone();
        c2.node_name = "node2".into();
        add(&mut s, &c2, &req("other-node"), &[]).unwrap();
        let gone = gc(&mut s, "node1", &[att("c2")]);
        assert_eq!(gone.len(), 2);
        // c1 freed, c3 parked (sticky), c2 kept, node2's record untouched.
        assert_eq!(s.records.len(), 3);
        assert!(s.owned_by(&att("c2")).next().is_some());
        assert!(s.owned_by(&att("other-node")).next().is_some());
        assert_eq!(s.records.iter().filter(|r| r.parked()).count(), 1);
    }

    #[test]
    fn state_json_round_trip() {
        let c = small();
        let mut s = State::default();
        add(&mut s, &c, &pod_req("c1", "db", "p"), &[]).unwrap();
        let text = serde_json::to_string(&s).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn wide_pools_allocate_without_walking() {
        let c = cfg(
            json!({"pools": [{"name": "v4", "subnet": "10.0.0.0/16"}, {"name": "v6", "subnet": "fd00::/64"}]}),
        );
        let mut s = State::default();
        for i in 0..1000 {
            add(&mut s, &c, &req(&format!("c{i}")), &[]).unwrap();
        }
        assert_eq!(s.records.len(), 2000);
        let u = usage(&s, &c, &[]);
        assert_eq!(u[0].free, (65534 - 1000).to_string());
        assert_eq!(u[1].free, ((1u128 << 64) - 1 - 1000).to_string());
    }

    proptest! {
        // Any sequence of ADD/DEL keeps one owner per address, never hands out
        // a reserved address, and ADD fails only when the pool is really full.
        #[test]
        fn random_add_del_sequences(ops in proptest::collection::vec((any::<bool>(), 0u8..12), 1..80),
                                    quarantine in proptest::collection::vec(0u8..16, 0..3)) {
            let c = cfg(json!({"pools": [{"name": "a", "subnet": "10.0.0.0/28", "gateway": "10.0.0.1",
                                          "ranges": ["10.0.0.0-10.0.0.12"], "exclude": ["10.0.0.8/30"]}]}));
            let q: Vec<IpAddr> = quarantine.iter().map(|i| IpAddr::from([10, 0, 0, *i])).collect();
            let mut s = State::default();
            for (is_add, who) in ops {
                let name = format!("c{who}");
                if is_add {
                    let before = s.records.len();
                    match add(&mut s, &c, &req(&name), &q) {
                        Ok(l) => {
                            let p = &c.pools[0];
                            prop_assert!(p.can_hold(&l[0].ip));
                            prop_assert!(!q.contains(&l[0].ip));
                        }
                        Err(_) => {
                            prop_assert_eq!(before, s.records.len());
                            prop_assert_eq!(free_in(&s, &c.pools[0], &q), 0);
                        }
                    }
                } else {
                    del(&mut s, &att(&name)).unwrap();
                }
                let mut seen: Vec<IpAddr> = s.records.iter().map(|r| r.ip).collect();
                let n = seen.len();
                seen.dedup();
                prop_assert_eq!(n, seen.len());
                for w in s.records.windows(2) { prop_assert!(w[0].ip < w[1].ip); }
                let owners: Vec<_> = s.records.iter().filter_map(|r| r.owner.clone()).collect();
                let mut o2 = owners.clone();
                o2.sort();
                o2.dedup();
                prop_assert_eq!(owners.len(), o2.len());
            }
        }
    }
}
