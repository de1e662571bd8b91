//! The CNI verbs: read the call, run one allocator decision inside one store
//! update, print the result. All policy lives in `allocator`.

use std::net::IpAddr;
use std::path::PathBuf;

use cni::plugin::{Call, Plugin};
use cni::result::{CniResult, IpConfig, RouteEntry};
use cni::{quarantine, Error, Result};
use ipnet::IpNet;
use serde_json::Value;

use crate::allocator::{self, AddRequest, Attachment, Lease, PodRef};
use crate::config::{self, Config};
use crate::store::{self, file::FileStore, Store};

pub struct IpamPlugin;

/// Everything a verb needs besides the call itself.
struct Ctx {
    cfg: Config,
    network: String,
    store: Box<dyn Store>,
}

fn ctx(call: &Call) -> Result<Ctx> {
    let ipam = call
        .conf
        .ipam
        .as_ref()
        .ok_or_else(|| Error::config("ipam", "is required"))?;
    let cfg = Config::from_ipam(ipam)?;
    config::check_network_name(&call.conf.name)?;
    let store = store::open(&cfg.store)?;
    Ok(Ctx {
        cfg,
        network: call.conf.name.clone(),
        store,
    })
}

/// The store of a DEL whose ipam config does not validate: the etcd store
/// when `ipam.store` alone is a valid etcd block, else the file store in the
/// raw `ipam.store.dataDir` when it is a non-empty string, else the default.
/// `None` when the network name is not a store directory or the store is of
/// another kind: then nothing of this attachment can be found.
fn fallback_store(call: &Call) -> Option<(Box<dyn Store>, String, PathBuf)> {
    config::check_network_name(&call.conf.name).ok()?;
    let raw = call.conf.ipam.as_ref().and_then(|i| i.get("store"));
    let kind = raw.and_then(|s| s.get("kind")).filter(|k| !k.is_null());
    if kind.is_some_and(|k| k.as_str() == Some("etcd")) {
        let cfg = config::parse_store(raw).ok()?;
        let store = store::open(&cfg).ok()?;
        return Some((store, call.conf.name.clone(), PathBuf::from("(etcd)")));
    }
    if kind.is_some_and(|k| k.as_str() != Some("file")) {
        return None;
    }
    let dir = raw
        .and_then(|s| s.get("dataDir"))
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .unwrap_or(config::DEFAULT_DATA_DIR);
    let dir = PathBuf::from(dir);
    let store: Box<dyn Store> = Box::new(FileStore::new(dir.clone()));
    Some((store, call.conf.name.clone(), dir))
}

fn attachment(call: &Call) -> Attachment {
    Attachment {
        container_id: call.env.container_id.clone(),
        ifname: call.env.ifname.clone(),
    }
}

fn pod(call: &Call) -> Option<PodRef> {
    Some(PodRef {
        namespace: call.env.args.pod_namespace()?.to_string(),
        name: call.env.args.pod_name()?.to_string(),
    })
}

/// `"10.0.0.5"` or `"10.0.0.5/24"` (the `ips` capability uses CIDR notation;
/// the prefix comes from the pool either way).
fn parse_requested(s: &str, field: &str) -> Result<IpAddr> {
    let s = s.trim();
    let ip = match s.split_once('/') {
        Some(_) => s.parse::<IpNet>().map(|n| n.addr()).ok(),
        None => s.parse::<IpAddr>().ok(),
    };
    ip.ok_or_else(|| Error::config(field, format!("{s:?} is not an IP address")))
}

fn requested_list(v: Option<&Value>, field: &str) -> Result<Vec<IpAddr>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let f = format!("{field}[{i}]");
                let s = x
                    .as_str()
                    .ok_or_else(|| Error::config(&f, "must be a string"))?;
                parse_requested(s, &f)
            })
            .collect(),
        Some(_) => Err(Error::config(field, "must be a list of addresses")),
    }
}

/// Exact addresses from the first source that has any: `runtimeConfig.ips`,
/// `args.cni.ips`, then `CNI_ARGS` `IP=a,b`.
fn requested(call: &Call) -> Result<(Vec<IpAddr>, String)> {
    let rc = requested_list(call.conf.runtime_config.get("ips"), "runtimeConfig.ips")?;
    if !rc.is_empty() {
        return Ok((rc, "runtimeConfig.ips".into()));
    }
    let args_ips = call
        .conf
        .args
        .as_ref()
        .and_then(|a| a.get("cni")?.get("ips"));
    let args = requested_list(args_ips, "args.cni.ips")?;
    if !args.is_empty() {
        return Ok((args, "args.cni.ips".into()));
    }
    let env: Vec<IpAddr> = match call.env.args.get("IP") {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                parse_requested(s, "CNI_ARGS IP").map_err(|_| {
                    Error::InvalidEnv(format!("CNI_ARGS IP: {:?} is not an IP address", s.trim()))
                })
            })
            .collect::<Result<_>>()?,
    };
    Ok((env, "CNI_ARGS IP".into()))
}

/// The result: each address with its pool's prefix and gateway, and the
/// routes of the pools used (each once).
pub fn build_result(cfg: &Config, leases: &[Lease]) -> CniResult {
    let mut res = CniResult::default();
    for l in leases {
        // A record made under an older config may name a pool that is gone;
        // the pool that now holds the address, else a host prefix, is the best we know.
        let pool = cfg
            .pool(&l.pool)
            .filter(|p| p.subnet.contains(&l.ip))
            .or_else(|| cfg.pool_of(&l.ip));
        let (prefix, gw) = match pool {
            Some(p) => (p.subnet.prefix_len(), p.gateway),
            None => (if l.ip.is_ipv4() { 32 } else { 128 }, None),
        };
        let addr = IpNet::new(l.ip, prefix).unwrap_or_else(|_| IpNet::from(l.ip));
        res.ips.push(IpConfig::new(addr, gw, None));
        for r in pool.map(|p| p.routes.as_slice()).unwrap_or(&[]) {
            if !res.routes.iter().any(|x| x.dst == r.dst && x.gw == r.gw) {
                res.routes.push(RouteEntry::new(r.dst, r.gw));
            }
        }
    }
    res
}

impl Plugin for IpamPlugin {
    fn known_args(&self) -> &[&str] {
        &["IP"]
    }

    fn add(&self, call: &Call) -> Result<CniResult> {
        let c = ctx(call)?;
        let (requested, requested_field) = requested(call)?;
        let req = AddRequest {
            attachment: attachment(call),
            pod: pod(call),
            requested,
            requested_field,
        };
        let quarantined = quarantine::load_active(&c.cfg.quarantine_file)?;
        let leases = store::transact(c.store.as_ref(), &c.network, |l| {
            allocator::add(l, &c.cfg, &req, &quarantined)
        })?;
        tracing::info!(network = %c.network, container = %req.attachment.container_id,
            ifname = %req.attachment.ifname, ips = ?leases.iter().map(|l| l.ip).collect::<Vec<_>>(), "ADD");
        Ok(build_result(&c.cfg, &leases))
    }

    fn del(&self, call: &Call) -> Result<()> {
        let a = attachment(call);
        // DEL must not block a pod's deletion over a config that no longer
        // validates (edited, or written for a newer plugin): release what
        // the attachment holds wherever the store can still be told.
        let (store, network) = match ctx(call) {
            Ok(c) => (c.store, c.network),
            Err(e) => match fallback_store(call) {
                Some((store, network, dir)) => {
                    tracing::warn!(error = %e, data_dir = %dir.display(),
                        "DEL: ipam config invalid; releasing this attachment's addresses from the data dir it names (or the default)");
                    (store, network)
                }
                None => {
                    tracing::warn!(error = %e,
                        "DEL: ipam config invalid and its store cannot be told; nothing released");
                    return Ok(());
                }
            },
        };
        // Nothing recorded (DEL repeated, or for an ADD that never happened)
        // writes nothing and creates nothing.
        let released = store::transact(store.as_ref(), &network, |l| allocator::del(l, &a))?;
        if !released.is_empty() {
            tracing::info!(network = %network, container = %a.container_id, ifname = %a.ifname,
                ips = ?released, "DEL");
        }
        Ok(())
    }

    fn check(&self, call: &Call) -> Result<()> {
        let c = ctx(call)?;
        let prev: Option<Vec<IpAddr>> = call
            .prev_result()?
            .map(|r| r.ips.iter().map(|i| i.address.addr()).collect());
        let a = attachment(call);
        c.store.inspect(&c.network, &mut |l| {
            allocator::check(l, &a, prev.as_deref())
        })
    }

    fn gc(&self, call: &Call) -> Result<()> {
        let c = ctx(call)?;
        let valid: Vec<Attachment> = call
            .conf
            .valid_attachments()?
            .into_iter()
            .map(|a| Attachment {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect();
        let node = c.cfg.node_name.clone();
        let released = store::update(c.store.as_ref(), &c.network, |s| {
            Ok(allocator::gc(s, &node, &valid))
        })?;
        if !released.is_empty() {
            tracing::info!(network = %c.network, ips = ?released, "GC released");
        }
        Ok(())
    }

    fn status(&self, call: &Call) -> Result<()> {
        let c = ctx(call)?;
        let quarantined = quarantine::load_active(&c.cfg.quarantine_file)?;
        let state = c.store.load(&c.network)?;
        allocator::status(&state, &c.cfg, &quarantined)
    }
}
