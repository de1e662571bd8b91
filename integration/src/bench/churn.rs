//! Churn: pods (macvlan + coordinator-ipam + coordinator) attached and
//! detached by `concurrency` chains at a time, with a `kill -9` of one
//! plugin mid-call in about half the ADDs and DELs, each followed by the runtime's DEL retried until it succeeds.
//! Then nothing of any pod may be left on the node (veths, routes, rules,
//! neighbours, IPAM records) and no address may have been held by two live
//! pods at once.
//!
//! The kill picks one of the three plugins, waits until that plugin of the
//! call runs, lets it run a random 0-8 ms and sends SIGKILL. It finds its
//! victim by its environment (`CNI_CONTAINERID` is unique
//! to the pod and the run), so it can never hit a process this harness did
//! not start; the IPAM plugin, exec'd by macvlan, is found the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::confs::{Ipam, HOST_RULE_TABLE};
use super::Options;
use crate::chain::{Attachment, Chain};
use crate::lab::{state, Lab};

#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    pub pods: usize,
    pub concurrency: usize,
    pub seconds: f64,
    /// Calls whose plugin was killed, by plugin and verb ("macvlan ADD").
    pub kills: BTreeMap<String, usize>,
    /// Kill attempts whose plugin had finished (or never ran: a DEL after
    /// a failed ADD stops at no plugin, an ADD may fail before it).
    pub kills_missed: usize,
    pub add_ok: usize,
    pub add_failed: usize,
    /// DELs that failed and were retried (killed or not).
    pub del_retries: usize,
    /// Pods whose DEL never succeeded (after 10 tries).
    pub del_gave_up: usize,
    /// An address held by two live pods at once.
    pub duplicate_ips: Vec<String>,
    /// What is on the node after the last DEL and was not before.
    pub leaked: Vec<String>,
    pub errors: Vec<String>,
}

/// The node's state a pod could leave behind, one line per object; the
/// coordinator's `from all lookup <hostRuleTable>` rule stays by design.
fn node_objects(lab: &Lab) -> io::Result<BTreeSet<String>> {
    let ns = lab.node();
    let mut out = BTreeSet::new();
    for l in state::link_names(ns)? {
        out.insert(format!("link {l}"));
    }
    for r in state::rules(ns)?.as_array().into_iter().flatten() {
        let line = state::rule_line(r);
        if !line.contains(&format!("lookup {HOST_RULE_TABLE}")) {
            out.insert(format!("rule {line}"));
        }
    }
    for r in state::routes(ns, "all")?.as_array().into_iter().flatten() {
        if r["table"] != "local" && r["dst"] != "multicast" {
            out.insert(format!("route {}", state::route_line(r)));
        }
    }
    for n in state::neighbours(ns)?.as_array().into_iter().flatten() {
        let permanent = n["state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"));
        if permanent {
            out.insert(format!("neighbour {}", state::neigh_line(n)));
        }
    }
    Ok(out)
}

/// The plugins of a call, by the name the kernel keeps (15 bytes of it).
const PLUGINS: [(&str, &str); 3] = [
    ("macvlan", "macvlan"),
    ("coordinator-ipa", "coordinator-ipam"),
    ("coordinator", "coordinator"),
];

/// The pid of the running `comm` process of the call whose
/// `CNI_CONTAINERID` is `id`, if any.
fn find_plugin(comm: &str, id: &str) -> Option<i32> {
    let needle = format!("CNI_CONTAINERID={id}\0");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(c) if c.trim() == comm => {}
            _ => continue,
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Wait until plugin `which` of the call `id` runs, let it run `delay`, then
/// SIGKILL it; false when the call was over (`done`) before it was seen.
fn kill_plugin(id: &str, which: usize, delay: Duration, done: &AtomicBool) -> bool {
    let comm = PLUGINS[which].0;
    while !done.load(Ordering::Acquire) {
        if let Some(pid) = find_plugin(comm, id) {
            std::thread::sleep(delay);
            // Still the same call's plugin (not a recycled pid)?
            if find_plugin(comm, id) == Some(pid) {
                // SAFETY: a plain kill(2) of a process whose environment names this run's pod.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return true;
            }
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

/// xorshift64*, seeded per pod: a reproducible schedule of kills.
fn rand(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

struct Tally {
    kills: BTreeMap<String, usize>,
    kills_missed: usize,
    add_ok: usize,
    add_failed: usize,
    del_retries: usize,
    del_gave_up: usize,
    duplicates: Vec<String>,
    errors: Vec<String>,
    /// Live pods' addresses -> the pod.
    live: HashMap<String, usize>,
}

/// A kill: which plugin of the call (index into [`PLUGINS`]), and how long
/// after it was seen running.
type Kill = (usize, Duration);

/// Run `op`, killing one of its plugins mid-call when `kill` says so.
fn maybe_killed<T: Send>(
    id: &str,
    kill: Option<Kill>,
    verb: &str,
    tally: &Mutex<Tally>,
    op: impl FnOnce() -> T + Send,
) -> T {
    let Some((which, delay)) = kill else {
        return op();
    };
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let killer = s.spawn(|| kill_plugin(id, which, delay, &done));
        let out = op();
        done.store(true, Ordering::Release);
        let hit = killer.join().unwrap_or(false);
        if let Ok(mut t) = tally.lock() {
            match hit {
                true => {
                    *t.kills
                        .entry(format!("{} {verb}", PLUGINS[which].1))
                        .or_insert(0) += 1
                }
                false => t.kills_missed += 1,
            }
        }
        out
    })
}

fn ips_of(result: Option<&Value>) -> Vec<String> {
    result
        .and_then(|r| r["ips"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect()
}

/// One pod's life: ADD (maybe killed), the runtime's DEL retries on failure,
/// else the pod lives until its DEL (maybe killed), retried until it works.
fn lifecycle(lab: &Lab, chain: &Chain, i: usize, tally: &Mutex<Tally>) -> io::Result<()> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64).wrapping_mul(0x1000_0000_01b3);
    let pod = lab.pod(&format!("c{i}"))?;
    let id = format!("churn-{}-{i}", std::process::id());
    let att = Attachment::new(&id, &pod.path, "eth0");
    // A chain ADD takes ~10-30 ms under load: kill within the first 25.
    // Half the calls lose one plugin, any of the three, 0-8 ms into its run
    // (each runs ~2-10 ms, longer under load).
    let kill = |seed: &mut u64| -> Option<Kill> {
        rand(seed).is_multiple_of(2).then(|| {
            let which = (rand(seed) % 3) as usize;
            (which, Duration::from_micros(rand(seed) % 8_000))
        })
    };
    let k = kill(&mut seed);
    let added = maybe_killed(&id, k, "ADD", tally, || chain.add(&att));
    let mut held = Vec::new();
    match &added {
        Ok(out) => {
            held = ips_of(out.result.as_ref());
            let mut t = tally.lock().map_err(|_| io::Error::other("tally"))?;
            t.add_ok += 1;
            for ip in &held {
                if let Some(other) = t.live.insert(ip.clone(), i) {
                    t.duplicates.push(format!("{ip}: pods {other} and {i}"));
                }
            }
        }
        Err(_) => {
            if let Ok(mut t) = tally.lock() {
                t.add_failed += 1;
            }
        }
    }
    // A live pod's DEL may be killed; a failed ADD's DEL is the retry itself.
    let mut k = if added.is_ok() { kill(&mut seed) } else { None };
    let mut tries = 0;
    loop {
        let r = maybe_killed(&id, k.take(), "DEL", tally, || chain.del(&att));
        match r {
            Ok(_) => break,
            Err(e) => {
                tries += 1;
                let mut t = tally.lock().map_err(|_| io::Error::other("tally"))?;
                t.del_retries += 1;
                if tries >= 10 {
                    t.del_gave_up += 1;
                    if t.errors.len() < 5 {
                        t.errors.push(format!("pod {i} DEL: {e}"));
                    }
                    break;
                }
            }
        }
    }
    if let Ok(mut t) = tally.lock() {
        for ip in &held {
            t.live.remove(ip);
        }
    }
    lab.remove_netns(&pod.name)
}

pub fn run(opts: &Options, pods: usize, concurrency: usize) -> io::Result<ChurnReport> {
    let lab = Lab::builder().subnets(1).ipv6(false).build()?;
    let store = lab.dir().join("ipam-store");
    let ipam = Ipam::Coordinator {
        v6: false,
        data_dir: store.display().to_string(),
        quarantine: lab.dir().join("quarantine.json").display().to_string(),
    };
    let chain = super::burst::pod_chain(&lab, "bench-churn", &ipam, opts)?;
    let before = node_objects(&lab)?;
    let tally = Mutex::new(Tally {
        kills: BTreeMap::new(),
        kills_missed: 0,
        add_ok: 0,
        add_failed: 0,
        del_retries: 0,
        del_gave_up: 0,
        duplicates: Vec::new(),
        errors: Vec::new(),
        live: HashMap::new(),
    });
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..concurrency.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pods {
                    break;
                }
                if let Err(e) = lifecycle(&lab, &chain, i, &tally) {
                    if let Ok(mut f) = failures.lock() {
                        f.push(format!("pod {i}: {e}"));
                    }
                }
            });
        }
    });
    let seconds = t.elapsed().as_secs_f64();
    let after = node_objects(&lab)?;
    let mut leaked: Vec<String> = after.difference(&before).cloned().collect();
    leaked.extend(super::burst::ipam_records(&store, opts)?);
    let t = tally.into_inner().map_err(|_| io::Error::other("tally"))?;
    let mut errors = t.errors;
    errors.extend(failures.into_inner().unwrap_or_default());
    Ok(ChurnReport {
        pods,
        concurrency,
        seconds,
        kills: t.kills,
        kills_missed: t.kills_missed,
        add_ok: t.add_ok,
        add_failed: t.add_failed,
        del_retries: t.del_retries,
        del_gave_up: t.del_gave_up,
        duplicate_ips: t.duplicates,
        leaked,
        errors,
    })
}
