//! The `ipam` block of the network configuration: parsing and validation.
//!
//! Parsed by hand from the JSON value (not derived) so every error names the
//! exact field, e.g. `ipam.pools[1].ranges[0]`, with CNI code 7.
//!
//! ```json
//! "ipam": {
//!   "type": "coordinator-ipam",
//!   "nodeName": "node1",
//!   "store": {"kind": "file", "dataDir": "/var/lib/cni/coordinator-ipam"},
//!   "quarantineFile": "/var/lib/cni/coordinator/quarantine.json",
//!   "pools": [{"name": "dc1", "subnet": "172.20.1.0/24",
//!              "ranges": ["172.20.1.10-172.20.1.200"], "exclude": ["172.20.1.50", "172.20.1.64/28"],
//!              "gateway": "172.20.1.1", "routes": [{"dst": "10.0.0.0/8"}],
//!              "nodes": ["node1", "rack1-*"], "pods": ["db/mysql-*"]}],
//!   "sticky": [{"namespace": "db", "pod": "mysql-*"}]
//! }
//! ```
//! Subnet edges: the network address and the IPv4 broadcast are never handed
//! out, except in /31 and /127 subnets (both addresses are hosts, RFC 3021)
//! and /32 and /128 (the one address). Without `ranges` a pool spans its whole
//! subnet.

use std::net::IpAddr;
use std::path::PathBuf;

use cni::config::{absolute_path, MAX_NAME_LEN};
pub(crate) use cni::fields::{as_object, as_str, known_keys, opt_array, opt_str};
use cni::{Error, Result};
use glob::Pattern;
use ipnet::IpNet;
use serde_json::Value;

use crate::pool::{self, Family, Interval, Pool, Route};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/coordinator-ipam";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    File { data_dir: PathBuf },
    Etcd(crate::store::etcd::EtcdConfig),
}

/// Pods whose addresses follow their identity (namespace, name) across
/// sandboxes and nodes instead of being freed on DEL.
#[derive(Debug, Clone)]
pub struct StickyRule {
    pub namespace: Pattern,
    pub pod: Pattern,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub store: StoreConfig,
    pub pools: Vec<Pool>,
    pub sticky: Vec<StickyRule>,
    pub quarantine_file: PathBuf,
}

impl Config {
    /// Parse with the node name defaulting to `$NODE_NAME`, then the hostname.
    pub fn from_ipam(ipam: &Value) -> Result<Config> {
        Config::parse(ipam, default_node_name)
    }

    /// Parse and validate the `ipam` object; `default_node` is asked only
    /// when `nodeName` is absent or empty.
    pub fn parse(ipam: &Value, default_node: impl FnOnce() -> Option<String>) -> Result<Config> {
        let obj = ipam
            .as_object()
            .ok_or_else(|| Error::config("ipam", "must be an object"))?;
        let node_name = match opt_str(obj, "nodeName", "ipam.nodeName")? {
            Some(n) if n.len() > MAX_NAME_LEN => {
                return Err(too_long("ipam.nodeName", n));
            }
            Some(n) if !n.is_empty() => n.to_string(),
            _ => default_node().filter(|n| !n.is_empty()).ok_or_else(|| {
                Error::config(
                    "ipam.nodeName",
                    "empty, and neither $NODE_NAME nor the hostname is set",
                )
            })?,
        };
        let store = parse_store(obj.get("store"))?;
        let quarantine_file = match opt_str(obj, "quarantineFile", "ipam.quarantineFile")? {
            Some("") => return Err(Error::config("ipam.quarantineFile", "must not be empty")),
            Some(p) => absolute_path("ipam.quarantineFile", p)?,
            None => PathBuf::from(cni::quarantine::DEFAULT_PATH),
        };
        let pools = parse_pools(obj.get("pools"))?;
        let sticky = parse_sticky(obj.get("sticky"))?;
        Ok(Config {
            node_name,
            store,
            pools,
            sticky,
            quarantine_file,
        })
    }

    /// Does a sticky rule cover the pod `namespace/name`?
    pub fn is_sticky(&self, namespace: &str, pod: &str) -> bool {
        self.sticky
            .iter()
            .any(|r| r.namespace.matches(namespace) && r.pod.matches(pod))
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The configured pool (any node) that can hold `ip`.
    pub fn pool_of(&self, ip: &IpAddr) -> Option<&Pool> {
        self.pools.iter().find(|p| p.can_hold(ip))
    }
}

/// Names end up as strings in store records, which hold at most 65,535 bytes.
fn too_long(field: &str, s: &str) -> Error {
    Error::config(
        field,
        format!("is {} bytes long (at most {MAX_NAME_LEN})", s.len()),
    )
}

fn default_node_name() -> Option<String> {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
}

/// The network name becomes a directory name in the store.
pub fn check_network_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 200
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if bad {
        return Err(Error::config(
            "name",
            format!("{name:?} is not usable as a store directory (letters, digits, '-', '_', '.')"),
        ));
    }
    Ok(())
}

fn parse_ip(s: &str, field: &str) -> Result<IpAddr> {
    s.trim()
        .parse()
        .map_err(|_| Error::config(field, format!("{s:?} is not an IP address")))
}

/// A CIDR whose host bits are zero.
fn parse_net(s: &str, field: &str) -> Result<IpNet> {
    let net: IpNet = s
        .trim()
        .parse()
        .map_err(|_| Error::config(field, format!("{s:?} is not a CIDR (address/prefix)")))?;
    if net.trunc() != net {
        return Err(Error::config(
            field,
            format!("{s:?} has host bits set (did you mean {}?)", net.trunc()),
        ));
    }
    Ok(net)
}

fn parse_glob(s: &str, field: &str) -> Result<Pattern> {
    Pattern::new(s).map_err(|e| Error::config(field, format!("bad glob {s:?}: {e}")))
}

pub(crate) fn parse_store(v: Option<&Value>) -> Result<StoreConfig> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(StoreConfig::File {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        });
    };
    let obj = as_object(v, "ipam.store")?;
    let kind = opt_str(obj, "kind", "ipam.store.kind")?.unwrap_or("file");
    match kind {
        "file" => {
            known_keys(obj, &["kind", "dataDir"], "ipam.store")?;
            let data_dir = match opt_str(obj, "dataDir", "ipam.store.dataDir")? {
                Some("") => return Err(Error::config("ipam.store.dataDir", "must not be empty")),
                Some(d) => absolute_path("ipam.store.dataDir", d)?,
                None => PathBuf::from(DEFAULT_DATA_DIR),
            };
            Ok(StoreConfig::File { data_dir })
        }
        "etcd" => Ok(StoreConfig::Etcd(crate::store::etcd::config::parse(obj)?)),
        other => Err(Error::config(
            "ipam.store.kind",
            format!("unknown store kind {other:?} (supported: \"file\", \"etcd\")"),
        )),
    }
}

fn parse_pools(v: Option<&Value>) -> Result<Vec<Pool>> {
    let list = match v {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(Error::config("ipam.pools", "must be a list")),
    };
    if list.is_empty() {
        return Err(Error::config("ipam.pools", "at least one pool is required"));
    }
    let mut pools: Vec<Pool> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let field = format!("ipam.pools[{i}]");
        let p = parse_pool(v, &field)?;
        for (j, q) in pools.iter().enumerate() {
            if q.name == p.name {
                return Err(Error::config(
                    &format!("{field}.name"),
                    format!("{:?} is also the name of ipam.pools[{j}]", p.name),
                ));
            }
            if overlap(q, &p) {
                return Err(Error::config(
                    &field,
                    format!(
                        "pool {:?} ({}) overlaps ipam.pools[{j}] {:?} ({})",
                        p.name, p.subnet, q.name, q.subnet
                    ),
                ));
            }
        }
        pools.push(p);
    }
    Ok(pools)
}

/// Two pools overlap when they could hand out the same address, or when their
/// subnets overlap with different prefixes (the same address would get two
/// prefix lengths). Pools on the same subnet with disjoint ranges are fine.
fn overlap(a: &Pool, b: &Pool) -> bool {
    if a.family() != b.family() {
        return false;
    }
    let subnets_overlap =
        a.subnet.contains(&b.subnet.network()) || b.subnet.contains(&a.subnet.network());
    (subnets_overlap && a.subnet != b.subnet) || pool::intersects(&a.ranges, &b.ranges)
}

fn parse_pool(v: &Value, field: &str) -> Result<Pool> {
    let obj = as_object(v, field)?;
    known_keys(
        obj,
        &[
            "name", "subnet", "ranges", "exclude", "gateway", "routes", "nodes", "pods",
        ],
        field,
    )?;
    let subnet_field = format!("{field}.subnet");
    let subnet_str = opt_str(obj, "subnet", &subnet_field)?
        .ok_or_else(|| Error::config(&subnet_field, "required"))?;
    let subnet = parse_net(subnet_str, &subnet_field)?;
    let family = Family::of_net(&subnet);
    let min_prefix = if family == Family::V4 { 8 } else { 16 };
    if subnet.prefix_len() < min_prefix {
        return Err(Error::config(
            &subnet_field,
            format!(
                "/{} is wider than any underlay subnet (minimum /{min_prefix})",
                subnet.prefix_len()
            ),
        ));
    }
    let name = match opt_str(obj, "name", &format!("{field}.name"))? {
        Some("") => return Err(Error::config(&format!("{field}.name"), "must not be empty")),
        Some(n) if n.len() > MAX_NAME_LEN => return Err(too_long(&format!("{field}.name"), n)),
        Some(n) => n.to_string(),
        None => subnet.to_string(),
    };

    let same_family = |ip: &IpAddr, f: &str| -> Result<()> {
        if Family::of(ip) != family {
            return Err(Error::config(
                f,
                format!(
                    "{ip} is {} but the pool subnet {subnet} is {}",
                    Family::of(ip).name(),
                    family.name()
                ),
            ));
        }
        Ok(())
    };
    let inside = |ip: &IpAddr, f: &str| -> Result<()> {
        same_family(ip, f)?;
        if !subnet.contains(ip) {
            return Err(Error::config(
                f,
                format!("{ip} is outside the pool subnet {subnet}"),
            ));
        }
        Ok(())
    };

    let mut ranges: Vec<Interval> = Vec::new();
    for (k, r) in opt_array(obj, "ranges", &format!("{field}.ranges"))?
        .iter()
        .enumerate()
    {
        let f = format!("{field}.ranges[{k}]");
        let s = as_str(r, &f)?;
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (parse_ip(a, &f)?, parse_ip(b, &f)?),
            None => {
                let a = parse_ip(s, &f)?;
                (a, a)
            }
        };
        inside(&a, &f)?;
        inside(&b, &f)?;
        let (a, b) = (pool::to_u128(a), pool::to_u128(b));
        if a > b {
            return Err(Error::config(&f, format!("{s:?}: start is after end")));
        }
        ranges.push((a, b));
    }
    if ranges.is_empty() {
        ranges.push(pool::net_interval(&subnet));
    }
    let ranges = pool::merge(ranges);

    let mut exclude = Vec::new();
    for (k, x) in opt_array(obj, "exclude", &format!("{field}.exclude"))?
        .iter()
        .enumerate()
    {
        let f = format!("{field}.exclude[{k}]");
        let s = as_str(x, &f)?;
        let net = if s.contains('/') {
            parse_net(s, &f)?
        } else {
            IpNet::from(parse_ip(s, &f)?)
        };
        same_family(&net.addr(), &f)?;
        if !subnet.contains(&net) {
            return Err(Error::config(
                &f,
                format!("{net} is outside the pool subnet {subnet}"),
            ));
        }
        exclude.push(net);
    }

    let gateway = match opt_str(obj, "gateway", &format!("{field}.gateway"))? {
        None => None,
        Some(s) => {
            let f = format!("{field}.gateway");
            let gw = parse_ip(s, &f)?;
            // A /32 or /128 address reaches its gateway on-link, outside the subnet.
            if subnet.prefix_len() == subnet.max_prefix_len() {
                same_family(&gw, &f)?;
            } else {
                inside(&gw, &f)?;
                let point_to_point = subnet.max_prefix_len() - subnet.prefix_len() <= 1;
                let edge =
                    gw == subnet.network() || (family == Family::V4 && gw == subnet.broadcast());
                if edge && !point_to_point {
                    return Err(Error::config(
                        &f,
                        format!("{gw} is the network or broadcast address of {subnet}"),
                    ));
                }
            }
            Some(gw)
        }
    };

    let mut routes = Vec::new();
    for (k, r) in opt_array(obj, "routes", &format!("{field}.routes"))?
        .iter()
        .enumerate()
    {
        let f = format!("{field}.routes[{k}]");
        let ro = as_object(r, &f)?;
        known_keys(ro, &["dst", "gw"], &f)?;
        let df = format!("{f}.dst");
        let dst = parse_net(
            opt_str(ro, "dst", &df)?.ok_or_else(|| Error::config(&df, "required"))?,
            &df,
        )?;
        same_family(&dst.addr(), &df)?;
        let gw = match opt_str(ro, "gw", &format!("{f}.gw"))? {
            None => None,
            Some(s) => {
                let gw = parse_ip(s, &format!("{f}.gw"))?;
                same_family(&gw, &format!("{f}.gw"))?;
                Some(gw)
            }
        };
        routes.push(Route { dst, gw });
    }

    let globs = |key: &str| -> Result<Vec<Pattern>> {
        let mut out = Vec::new();
        for (k, g) in opt_array(obj, key, &format!("{field}.{key}"))?
            .iter()
            .enumerate()
        {
            let f = format!("{field}.{key}[{k}]");
            out.push(parse_glob(as_str(g, &f)?, &f)?);
        }
        Ok(out)
    };
    let nodes = globs("nodes")?;
    let pods = globs("pods")?;

    let pool = Pool {
        name,
        subnet,
        ranges,
        exclude,
        gateway,
        routes,
        nodes,
        pods,
    };
    if pool.capacity() == 0 {
        return Err(Error::config(
            field,
            "no address left to hand out after gateway, network/broadcast and exclude",
        ));
    }
    Ok(pool)
}

fn parse_sticky(v: Option<&Value>) -> Result<Vec<StickyRule>> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Error::config("ipam.sticky", "must be a list")),
    };
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let f = format!("ipam.sticky[{i}]");
        let o = as_object(r, &f)?;
        known_keys(o, &["namespace", "pod"], &f)?;
        let ns = opt_str(o, "namespace", &format!("{f}.namespace"))?;
        let pod = opt_str(o, "pod", &format!("{f}.pod"))?;
        if ns.is_none() && pod.is_none() {
            return Err(Error::config(&f, "needs \"namespace\" and/or \"pod\""));
        }
        out.push(StickyRule {
            namespace: parse_glob(ns.unwrap_or("*"), &format!("{f}.namespace"))?,
            pod: parse_glob(pod.unwrap_or("*"), &format!("{f}.pod"))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Config> {
        Config::parse(&v, || Some("node-from-env".into()))
    }

    fn err(v: Value) -> String {
        let e = parse(v).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        e.to_string()
    }

    fn one_pool(pool: Value) -> Value {
        json!({"type": "coordinator-ipam", "pools": [pool]})
    }

    #[test]
    fn full_example_parses() {
        let c = parse(json!({
            "type": "coordinator-ipam",
            "nodeName": "node1",
            "store": {"kind": "file", "dataDir": "/tmp/x"},
            "quarantineFile": "/tmp/q.json",
            "pools": [
                {"name": "dc1", "subnet": "172.20.1.0/24", "ranges": ["172.20.1.10-172.20.1.200"],
                 "exclude": ["172.20.1.50", "172.20.1.64/28"], "gateway": "172.20.1.1",
                 "routes": [{"dst": "10.0.0.0/8"}, {"dst": "0.0.0.0/0", "gw": "172.20.1.1"}],
                 "nodes": ["node1", "rack1-*"], "pods": ["db/mysql-*"]},
                {"name": "dc1-v6", "subnet": "fd00:20:1::/64", "nodes": ["node1"]}
            ],
            "sticky": [{"namespace": "db", "pod": "mysql-*"}]
        }))
        .unwrap();
        assert_eq!(c.node_name, "node1");
        assert_eq!(
            c.store,
            StoreConfig::File {
                data_dir: "/tmp/x".into()
            }
        );
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.pools[0].capacity(), 191 - 1 - 16);
        assert_eq!(c.pools[1].family(), Family::V6);
        assert!(c.is_sticky("db", "mysql-0"));
        assert!(!c.is_sticky("web", "mysql-0"));
    }

    #[test]
    fn defaults() {
        let c = parse(one_pool(json!({"subnet": "10.0.0.0/24"}))).unwrap();
        assert_eq!(c.node_name, "node-from-env");
        assert_eq!(
            c.store,
            StoreConfig::File {
                data_dir: DEFAULT_DATA_DIR.into()
            }
        );
        assert_eq!(
            c.quarantine_file,
            PathBuf::from("/var/lib/cni/coordinator/quarantine.json")
        );
        assert_eq!(c.pools[0].name, "10.0.0.0/24");
        assert_eq!(c.pools[0].capacity(), 254);
    }

    #[test]
    fn every_bad_value_names_its_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"pools": []}), "\"ipam.pools\""),
            (json!({}), "\"ipam.pools\""),
            (json!({"pools": {}}), "\"ipam.pools\""),
            (one_pool(json!({"subnet": "10.0.0.1/24"})), "host bits"),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "ranges": ["10.0.1.1-10.0.1.5"]})),
                "\"ipam.pools[0].ranges[0]\"",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "ranges": ["10.0.0.9-10.0.0.5"]})),
                "start is after end",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "ranges": ["10.0.0.1-fd00::5"]})),
                "IPv6",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "ranges": ["nope"]})),
                "\"ipam.pools[0].ranges[0]\"",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "gateway": "fd00::1"})),
                "\"ipam.pools[0].gateway\"",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "gateway": "10.0.0.255"})),
                "broadcast",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "exclude": ["10.0.0.0/16"]})),
                "\"ipam.pools[0].exclude[0]\"",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "fd00::/8"}]})),
                "\"ipam.pools[0].routes[0].dst\"",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "routes": [{"gw": "10.0.0.1"}]})),
                "\"ipam.pools[0].routes[0].dst\"",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "nodes": ["[a-"]})),
                "\"ipam.pools[0].nodes[0]\"",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "pods": [5]})),
                "\"ipam.pools[0].pods[0]\"",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "exlude": []})),
                "\"ipam.pools[0].exlude\"",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/30", "exclude": ["10.0.0.1", "10.0.0.2"]})),
                "no address left",
            ),
            (one_pool(json!({"subnet": "0.0.0.0/0"})), "minimum"),
            (one_pool(json!({})), "\"ipam.pools[0].subnet\""),
            (
                json!({"pools": [{"subnet": "10.0.0.0/24"}], "store": {"kind": "nfs"}}),
                "\"ipam.store.kind\"",
            ),
            (
                json!({"pools": [{"subnet": "10.0.0.0/24"}], "store": {"kind": "etcd"}}),
                "\"ipam.store.endpoints\"",
            ),
            (
                json!({"pools": [{"subnet": "10.0.0.0/24"}], "store": {"dataDir": 3}}),
                "\"ipam.store.dataDir\"",
            ),
            (
                json!({"pools": [{"subnet": "10.0.0.0/24"}], "sticky": [{"pod": "[x"}]}),
                "\"ipam.sticky[0].pod\"",
            ),
            (
                json!({"pools": [{"subnet": "10.0.0.0/24"}], "sticky": [{}]}),
                "\"ipam.sticky[0]\"",
            ),
            (
                json!({"pools": [{"subnet": "10.0.0.0/24"}], "nodeName": 1}),
                "\"ipam.nodeName\"",
            ),
            (
                json!({"pools": [{"subnet": "10.0.0.0/24"}], "nodeName": "n".repeat(70_000)}),
                "\"ipam.nodeName\"",
            ),
            (
                one_pool(json!({"subnet": "10.0.0.0/24", "name": "p".repeat(70_000)})),
                "\"ipam.pools[0].name\"",
            ),
            (
                json!({"pools": [{"subnet": "10.0.0.0/24"}], "store": {"dataDir": "ipam"}}),
                "\"ipam.store.dataDir\"",
            ),
            (
                json!({"pools": [{"subnet": "10.0.0.0/24"}], "quarantineFile": "q.json"}),
                "\"ipam.quarantineFile\"",
            ),
            (
                json!({"pools": [{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.128/25"}]}),
                "overlaps ipam.pools[0]",
            ),
            (
                json!({"pools": [{"name": "a", "subnet": "10.0.0.0/24"}, {"name": "a", "subnet": "10.0.1.0/24"}]}),
                "\"ipam.pools[1].name\"",
            ),
            (
                json!({"pools": [
                {"subnet": "10.0.0.0/24", "name": "a", "ranges": ["10.0.0.10-10.0.0.20"]},
                {"subnet": "10.0.0.0/24", "name": "b", "ranges": ["10.0.0.20-10.0.0.30"]}]}),
                "\"ipam.pools[1]\"",
            ),
        ];
        for (v, want) in cases {
            let msg = err(v.clone());
            assert!(msg.contains(want), "config {v} -> {msg:?}, want {want:?}");
        }
    }

    #[test]
    fn same_subnet_disjoint_ranges_is_fine() {
        let c = parse(json!({"pools": [
            {"subnet": "10.0.0.0/24", "name": "a", "ranges": ["10.0.0.10-10.0.0.20"], "nodes": ["n1"]},
            {"subnet": "10.0.0.0/24", "name": "b", "ranges": ["10.0.0.21-10.0.0.30"], "nodes": ["n2"]},
            {"subnet": "fd00::/64", "name": "v6"}]}))
        .unwrap();
        assert_eq!(c.pools.len(), 3);
    }

    #[test]
    fn point_to_point_and_single_address_subnets() {
        let c = parse(one_pool(json!({"subnet": "10.0.0.0/31"}))).unwrap();
        assert_eq!(c.pools[0].capacity(), 2);
        // /31 with the peer as gateway leaves one address.
        let c = parse(one_pool(
            json!({"subnet": "10.0.0.0/31", "gateway": "10.0.0.0"}),
        ))
        .unwrap();
        assert_eq!(c.pools[0].capacity(), 1);
        let c = parse(one_pool(
            json!({"subnet": "10.0.0.9/32", "gateway": "10.0.0.1"}),
        ))
        .unwrap();
        assert_eq!(c.pools[0].capacity(), 1);
        let c = parse(one_pool(json!({"subnet": "fd00::8/127"}))).unwrap();
        assert_eq!(c.pools[0].capacity(), 2);
        let c = parse(one_pool(json!({"subnet": "fd00::8/128"}))).unwrap();
        assert_eq!(c.pools[0].capacity(), 1);
    }

    proptest::proptest! {
        // Whatever the addresses, parsing never panics, and an accepted pool
        // keeps its ranges inside its subnet with something to hand out.
        #[test]
        fn random_pools_parse_or_fail_cleanly(
            a in proptest::prelude::any::<u32>(), prefix in 0u8..=33,
            s in proptest::prelude::any::<u32>(), e in proptest::prelude::any::<u32>(),
            gw in proptest::option::of(proptest::prelude::any::<u32>()),
            wild in proptest::prelude::any::<bool>(),
        ) {
            let v4 = |x: u32| std::net::Ipv4Addr::from(x).to_string();
            // Mostly well-formed input (host bits clear, range inside), so the
            // accepting path is exercised too; `wild` keeps raw values.
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            let (a, s, e) = if wild { (a, s, e) } else { (a & mask, (a & mask) | (s & !mask), (a & mask) | (e & !mask)) };
            let mut pool = json!({"subnet": format!("{}/{prefix}", v4(a)),
                                  "ranges": [format!("{}-{}", v4(s), v4(e))]});
            if let Some(g) = gw {
                pool["gateway"] = json!(v4(g));
            }
            match parse(one_pool(pool)) {
                Ok(c) => {
                    let p = &c.pools[0];
                    let (lo, hi) = crate::pool::net_interval(&p.subnet);
                    proptest::prop_assert!(p.ranges.iter().all(|&(x, y)| lo <= x && x <= y && y <= hi));
                    proptest::prop_assert!(p.capacity() > 0);
                }
                Err(e) => proptest::prop_assert_eq!(e.code(), 7),
            }
        }
    }

    #[test]
    fn network_names() {
        assert!(check_network_name("macvlan-net1.v2").is_ok());
        for bad in ["", "..", "a/b", "a b"] {
            assert_eq!(check_network_name(bad).unwrap_err().code(), 7);
        }
    }
}
