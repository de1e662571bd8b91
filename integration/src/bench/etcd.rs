//! The etcd store's numbers (issue 13), run by `bench --etcd`: a
//! three-member etcd on loopback ([`crate::etcd`]), the plugin exec'd as a
//! runtime would, the file store side by side.
//!
//! - per exec: dual-stack ADDs one at a time, etcd and file interleaved
//!   (one of each per round, so load from elsewhere hits both alike): wall
//!   p50/p99, CPU, peak RSS;
//! - burst: 1000 ADDs from 10 simulated nodes at 100-way concurrency, the
//!   etcd leader killed after a third of them (as the proof test does); an
//!   ADD that fails with 11 is retried after 100 ms, like a runtime would;
//!   the file store runs the same burst on one node's data dir.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::etcd::Cluster;
use crate::exec::{self, Spawn};

#[derive(Clone, Debug)]
pub struct Options {
    /// The `coordinator-ipam` binary.
    pub binary: PathBuf,
    pub sequential: usize,
    pub adds: usize,
    pub nodes: usize,
    pub concurrency: usize,
}

impl Options {
    pub fn full(binary: PathBuf) -> Options {
        Options {
            binary,
            sequential: 200,
            adds: 1000,
            nodes: 10,
            concurrency: 100,
        }
    }
}

/// One store's ADDs one at a time.
#[derive(Debug, Serialize)]
pub struct PerExec {
    pub store: String,
    pub execs: usize,
    pub wall_p50_ms: f64,
    pub wall_p99_ms: f64,
    pub cpu_p50_ms: f64,
    pub rss_max_kib: u64,
}

/// One store's burst.
#[derive(Debug, Serialize)]
pub struct Burst {
    pub store: String,
    pub adds: usize,
    pub concurrency: usize,
    pub total_s: f64,
    pub wall_p50_ms: f64,
    pub wall_p99_ms: f64,
    /// ADD execs that failed with 11 and were retried.
    pub retried: usize,
    pub leader_killed_after: Option<usize>,
    pub duplicates: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub per_exec: Vec<PerExec>,
    pub burst: Vec<Burst>,
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn conf(store: &Value, network: &str, node: usize, dir: &Path) -> Value {
    json!({"cniVersion": "1.1.0", "name": network, "type": "macvlan", "ipam": {
        "type": "coordinator-ipam", "nodeName": format!("node{node}"), "store": store,
        "quarantineFile": dir.join("quarantine.json"),
        "pools": [{"name": "v4", "subnet": "10.50.0.0/16"}, {"name": "v6", "subnet": "fd00:50::/64"}]}})
}

/// One ADD exec: wall, CPU, peak RSS, and the result (or the error JSON).
fn add(binary: &Path, conf: &Value, container: &str) -> io::Result<(exec::RawRun, Value)> {
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", container),
        ("CNI_IFNAME", "net1"),
        ("CNI_NETNS", "/var/run/netns/bench"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let run = exec::run(Spawn {
        binary,
        args: Vec::new(),
        clear_env: false,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        stdin: conf.to_string().into_bytes(),
        netns: None,
        timeout: Duration::from_secs(30),
    })?;
    let v = serde_json::from_slice(&run.stdout).unwrap_or(Value::Null);
    Ok((run, v))
}

fn ips(v: &Value) -> Vec<String> {
    v["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn failed(what: &str, v: &Value) -> io::Error {
    io::Error::other(format!("{what}: {v}"))
}

fn per_exec(opts: &Options, stores: &[(String, Value)], dir: &Path) -> io::Result<Vec<PerExec>> {
    let mut runs: Vec<Vec<exec::RawRun>> = stores.iter().map(|_| Vec::new()).collect();
    for i in 0..opts.sequential {
        for (k, (name, store)) in stores.iter().enumerate() {
            let (run, v) = add(&opts.binary, &conf(store, "seq", 0, dir), &format!("s{i}"))?;
            if run.exit_code != Some(0) {
                return Err(failed(&format!("{name} ADD s{i}"), &v));
            }
            runs[k].push(run);
        }
    }
    Ok(stores
        .iter()
        .zip(runs)
        .map(|((name, _), runs)| {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            PerExec {
                store: name.clone(),
                execs: runs.len(),
                wall_p50_ms: percentile(
                    &mut runs.iter().map(|r| ms(r.wall)).collect::<Vec<_>>(),
                    0.5,
                ),
                wall_p99_ms: percentile(
                    &mut runs.iter().map(|r| ms(r.wall)).collect::<Vec<_>>(),
                    0.99,
                ),
                cpu_p50_ms: percentile(
                    &mut runs.iter().map(|r| ms(r.cpu)).collect::<Vec<_>>(),
                    0.5,
                ),
                rss_max_kib: runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0),
            }
        })
        .collect())
}

/// One successful ADD: its exec's wall time (ms) and addresses.
type WallAndIps = (f64, Vec<String>);

/// `opts.adds` ADDs from `opts.concurrency` threads; `kill` runs once a
/// third are done.
fn burst(
    opts: &Options,
    name: &str,
    store: &Value,
    dir: &Path,
    kill: Option<&mut dyn FnMut()>,
) -> io::Result<Burst> {
    let confs: Arc<Vec<Value>> = Arc::new(
        (0..opts.nodes)
            .map(|n| conf(store, "burst", n, dir))
            .collect(),
    );
    let done = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let out: Arc<Mutex<Vec<WallAndIps>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let start = Instant::now();
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|w| {
            let (confs, done, retried, out, errors) = (
                confs.clone(),
                done.clone(),
                retried.clone(),
                out.clone(),
                errors.clone(),
            );
            let (binary, adds, step) = (opts.binary.clone(), opts.adds, opts.concurrency);
            std::thread::spawn(move || {
                for i in (w..adds).step_by(step) {
                    let conf = &confs[i % confs.len()];
                    for _ in 0..20 {
                        match add(&binary, conf, &format!("b{i}")) {
                            Ok((run, v)) if run.exit_code == Some(0) => {
                                out.lock()
                                    .unwrap()
                                    .push((run.wall.as_secs_f64() * 1000.0, ips(&v)));
                                break;
                            }
                            Ok((_, v)) if v["code"] == 11 => {
                                retried.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            Ok((_, v)) => {
                                errors.lock().unwrap().push(format!("b{i}: {v}"));
                                break;
                            }
                            Err(e) => {
                                errors.lock().unwrap().push(format!("b{i}: {e}"));
                                break;
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut killed_after = None;
    if let Some(kill) = kill {
        while done.load(Ordering::Relaxed) < opts.adds / 3 {
            std::thread::sleep(Duration::from_millis(2));
        }
        kill();
        killed_after = Some(done.load(Ordering::Relaxed));
    }
    for w in workers {
        w.join()
            .map_err(|_| io::Error::other("burst worker panicked"))?;
    }
    let total = start.elapsed();
    if let Some(e) = errors.lock().unwrap().first() {
        return Err(io::Error::other(format!("{name} burst: {e}")));
    }
    let out = out.lock().unwrap();
    if out.len() != opts.adds {
        return Err(io::Error::other(format!(
            "{name} burst: {} of {} ADDs succeeded",
            out.len(),
            opts.adds
        )));
    }
    let mut all: Vec<&String> = out.iter().flat_map(|(_, ips)| ips).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    Ok(Burst {
        store: name.to_string(),
        adds: opts.adds,
        concurrency: opts.concurrency,
        total_s: total.as_secs_f64(),
        wall_p50_ms: percentile(&mut out.iter().map(|(w, _)| *w).collect::<Vec<_>>(), 0.5),
        wall_p99_ms: percentile(&mut out.iter().map(|(w, _)| *w).collect::<Vec<_>>(), 0.99),
        retried: retried.load(Ordering::Relaxed),
        leader_killed_after: killed_after,
        duplicates: n - all.len(),
    })
}

pub fn run(opts: &Options) -> io::Result<Report> {
    let dir = std::env::temp_dir().join(format!("cl-{}x-bench-etcd", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(opts, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(opts: &Options, dir: &Path) -> io::Result<Report> {
    let mut cluster = Cluster::start(3, None);
    let etcd = json!({"kind": "etcd", "endpoints": cluster.endpoints(), "timeout": "3s"});
    let file = json!({"kind": "file", "dataDir": dir.join("file-store")});
    let stores = [
        ("etcd (3 members)".to_string(), etcd.clone()),
        ("file".to_string(), file.clone()),
    ];
    let per_exec = per_exec(opts, &stores, dir)?;
    let mut kill_leader = || {
        if let Some(l) = cluster.leader() {
            cluster.kill(l);
        }
    };
    let etcd_burst = burst(
        opts,
        "etcd (3 members, leader killed)",
        &etcd,
        dir,
        Some(&mut kill_leader),
    )?;
    let file_burst = burst(opts, "file", &file, dir, None)?;
    Ok(Report {
        per_exec,
        burst: vec![etcd_burst, file_burst],
    })
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s =
            String::from("### etcd store vs file store (coordinator-ipam ADD, dual-stack)\n\n");
        s.push_str("| one ADD at a time | execs | wall p50 | wall p99 | CPU p50 | peak RSS |\n|---|---|---|---|---|---|\n");
        for p in &self.per_exec {
            s.push_str(&format!(
                "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} MiB |\n",
                p.store,
                p.execs,
                p.wall_p50_ms,
                p.wall_p99_ms,
                p.cpu_p50_ms,
                p.rss_max_kib as f64 / 1024.0
            ));
        }
        s.push_str("\n| burst | ADDs | concurrency | total | wall p50 | wall p99 | retried after 11 | duplicates |\n|---|---|---|---|---|---|---|---|\n");
        for b in &self.burst {
            s.push_str(&format!(
                "| {} | {} | {} | {:.2} s | {:.1} ms | {:.1} ms | {} | {} |\n",
                b.store,
                b.adds,
                b.concurrency,
                b.total_s,
                b.wall_p50_ms,
                b.wall_p99_ms,
                b.retried,
                b.duplicates
            ));
        }
        s
    }

    /// `etcd.json` and `etcd.md` in `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("etcd.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("etcd.md"), self.markdown())
    }
}
