//! Many pods at once: the node burst (full chains, N concurrent) and the
//! IPAM pre-fill (bare IPAM ADDs, concurrent). Both check for duplicates.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::confs::{self, Ipam, HOST_RULE_TABLE};
use super::stats::{micros, Summary};
use super::Options;
use crate::chain::{Attachment, Chain, Outcome};
use crate::lab::{state, Lab};

/// Run `f(0..n)` on `conc` threads; results in index order.
fn parallel<T: Send>(n: usize, conc: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..conc.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                if let Ok(mut o) = out.lock() {
                    o.push((i, r));
                }
            });
        }
    });
    let mut v = out.into_inner().unwrap_or_default();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

fn result_ips(result: Option<&Value>) -> Vec<String> {
    result
        .and_then(|r| r["ips"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect()
}

/// Addresses handed out to more than one attachment.
fn duplicates<'a>(all: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for ip in all {
        *seen.entry(ip.as_str()).or_default() += 1;
    }
    let mut d: Vec<String> = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(ip, n)| format!("{ip} x{n}"))
        .collect();
    d.sort();
    d
}

/// Bare IPAM ADDs that fill a pool before its "full" rows are measured.
#[derive(Clone, Debug, Serialize)]
pub struct Prefill {
    pub plugin: String,
    pub count: usize,
    pub concurrency: usize,
    pub failures: usize,
    pub duplicate_ips: Vec<String>,
    pub seconds: f64,
    pub errors: Vec<String>,
}

pub fn prefill(chain: &Chain, plugin: &str, netns: &Path, count: usize, conc: usize) -> Prefill {
    let t = Instant::now();
    // Keep only the addresses: thousands of outcomes would bloat the
    // harness (see `trim_heap`).
    let results = parallel(count, conc, |i| {
        chain
            .add(&Attachment::new(&format!("prefill-{i}"), netns, "eth0"))
            .map(|out| result_ips(out.result.as_ref()))
            .map_err(|e| e.to_string())
    });
    let seconds = t.elapsed().as_secs_f64();
    let mut errors = Vec::new();
    let mut ips = Vec::new();
    for r in &results {
        match r {
            Ok(addrs) => ips.extend(addrs.iter().cloned()),
            Err(e) if errors.len() < 3 => errors.push(e.clone()),
            Err(_) => {}
        }
    }
    Prefill {
        plugin: plugin.into(),
        count,
        concurrency: conc,
        failures: results.iter().filter(|r| r.is_err()).count(),
        duplicate_ips: duplicates(ips.iter()),
        seconds,
        errors,
    }
}

/// The node burst: `pods` pods (macvlan + IPAM + coordinator), `concurrency`
/// chains at a time, all ADDed, then all DELeted.
#[derive(Clone, Debug, Serialize)]
pub struct BurstReport {
    /// The IPAM plugin used.
    pub ipam: String,
    pub pods: usize,
    pub concurrency: usize,
    pub add_failures: usize,
    pub del_failures: usize,
    pub errors: Vec<String>,
    pub duplicate_ips: Vec<String>,
    /// What was left after DEL: host veths, host routes, IPAM records.
    pub leaked: Vec<String>,
    pub add_seconds: f64,
    pub del_seconds: f64,
    pub add_pods_per_s: f64,
    pub del_pods_per_s: f64,
    /// Whole chain ADD per pod, under the burst's contention.
    pub chain_add_ms: Option<Summary>,
    /// The coordinator's own exec, ADD and DEL.
    pub coordinator_add_ms: Option<Summary>,
    pub coordinator_del_ms: Option<Summary>,
}

fn coord_ms(outs: &[Result<Outcome, Box<crate::chain::ChainError>>]) -> Option<Summary> {
    let v: Vec<f64> = outs
        .iter()
        .flatten()
        .flat_map(|o| o.runs.iter())
        .filter(|r| r.plugin == "coordinator")
        .map(|r| micros(r.wall) as f64 / 1000.0)
        .collect();
    Summary::of(&v)
}

/// The burst's (and churn's) conflist: macvlan + `ipam` + coordinator.
pub(super) fn pod_chain(
    lab: &Lab,
    network: &str,
    ipam: &Ipam,
    opts: &Options,
) -> io::Result<Chain> {
    let mut list = confs::list(
        network,
        vec![confs::macvlan(1, 1, ipam), confs::coordinator(false, false)],
    )?;
    lab.localize(&mut list);
    Ok(lab
        .chain(list)
        .cni_path(vec!["/usr/lib/cni".into(), opts.bin_dir.clone()]))
}

pub fn run(opts: &Options, ipam_ok: bool) -> io::Result<BurstReport> {
    super::cases::trim_heap();
    let lab = Lab::builder().subnets(1).build()?;
    let store = lab.dir().join("ipam-store");
    let ipam = if ipam_ok {
        Ipam::Coordinator {
            v6: false,
            data_dir: store.display().to_string(),
            quarantine: lab.dir().join("quarantine.json").display().to_string(),
        }
    } else {
        Ipam::HostLocal { v6: false }
    };
    let network = "bench-burst";
    let chain = pod_chain(&lab, network, &ipam, opts)?;
    let n = opts.burst_pods;
    let mut pods = Vec::with_capacity(n);
    for i in 0..n {
        pods.push(lab.pod(&format!("b{i}"))?);
    }
    let att = |i: usize| Attachment::new(&format!("burst-{i}"), &pods[i].path, "eth0");

    let t = Instant::now();
    let adds = parallel(n, opts.burst_concurrency, |i| {
        let t = Instant::now();
        (chain.add(&att(i)), t.elapsed())
    });
    let add_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let dels = parallel(n, opts.burst_concurrency, |i| chain.del(&att(i)));
    let del_seconds = t.elapsed().as_secs_f64();

    let mut errors = Vec::new();
    let mut ips = Vec::new();
    for (r, _) in &adds {
        match r {
            Ok(out) => ips.extend(result_ips(out.result.as_ref())),
            Err(e) if errors.len() < 5 => errors.push(format!("ADD: {e}")),
            Err(_) => {}
        }
    }
    for e in dels.iter().filter_map(|r| r.as_ref().err()).take(5) {
        errors.push(format!("DEL: {e}"));
    }
    let leaked = leftovers(&lab, network, &store, ipam_ok, opts)?;
    let add_results: Vec<_> = adds.iter().map(|(r, _)| r.clone()).collect();
    let chain_ms: Vec<f64> = adds
        .iter()
        .filter(|(r, _)| r.is_ok())
        .map(|(_, d)| micros(*d) as f64 / 1000.0)
        .collect();
    let add_failures = add_results.iter().filter(|r| r.is_err()).count();
    let del_failures = dels.iter().filter(|r| r.is_err()).count();
    Ok(BurstReport {
        ipam: if ipam_ok {
            "coordinator-ipam"
        } else {
            "host-local"
        }
        .into(),
        pods: n,
        concurrency: opts.burst_concurrency,
        add_failures,
        del_failures,
        errors,
        duplicate_ips: duplicates(ips.iter()),
        leaked,
        add_seconds,
        del_seconds,
        add_pods_per_s: rate(n, add_seconds),
        del_pods_per_s: rate(n, del_seconds),
        chain_add_ms: Summary::of(&chain_ms),
        coordinator_add_ms: coord_ms(&add_results),
        coordinator_del_ms: coord_ms(&dels),
    })
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Host veths, host-table routes and IPAM records still there after DEL.
fn leftovers(
    lab: &Lab,
    network: &str,
    store: &Path,
    ipam_ok: bool,
    opts: &Options,
) -> io::Result<Vec<String>> {
    let mut left: Vec<String> = state::link_names(lab.node())?
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .map(|l| format!("host link {l}"))
        .collect();
    let table = HOST_RULE_TABLE.to_string();
    for fam in ["-4", "-6"] {
        // A table nobody ever put a route in "does not exist": nothing left.
        let out = match state::ip(lab.node(), &[fam, "route", "show", "table", &table]) {
            Ok(o) => o,
            Err(e) if e.to_string().contains("does not exist") => String::new(),
            Err(e) => return Err(e),
        };
        left.extend(out.lines().map(|l| format!("route table {table}: {l}")));
    }
    if ipam_ok {
        left.extend(ipam_records(store, opts)?);
    } else {
        let dir = lab.host_local_dir(network);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.parse::<std::net::IpAddr>().is_ok() {
                    left.push(format!("host-local record {name}"));
                }
            }
        }
    }
    Ok(left)
}

/// The records coordinator-ipam still holds in `store`, one line each.
pub(super) fn ipam_records(store: &Path, opts: &Options) -> io::Result<Vec<String>> {
    let out = std::process::Command::new(opts.bin_dir.join("coordinator-ipam"))
        .env_remove("CNI_COMMAND")
        .args(["list", "--json", "--data-dir"])
        .arg(store)
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        io::Error::other(format!(
            "coordinator-ipam list --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    let records = match &v {
        Value::Array(a) => a.clone(),
        Value::Object(o) => o
            .values()
            .filter_map(Value::as_array)
            .flatten()
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    Ok(records.iter().map(|r| format!("IPAM record {r}")).collect())
}
