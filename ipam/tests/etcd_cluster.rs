//! A three-member etcd cluster on loopback under load, with its leader
//! killed mid-run (issue 13's proof): 1000 ADDs from 10 simulated nodes at
//! 100-way concurrency, each a real exec of the plugin.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use integration::etcd::Cluster;
use serde_json::{json, Value};

const ADDS: usize = 1000;
const WORKERS: usize = 100;
const NODES: usize = 10;

fn conf(endpoints: &[String], node: usize, dir: &std::path::Path) -> Value {
    json!({"cniVersion": "1.1.0", "name": "net1", "type": "macvlan", "ipam": {
        "type": "coordinator-ipam", "nodeName": format!("node{node}"),
        "quarantineFile": dir.join("quarantine.json"),
        "store": {"kind": "etcd", "endpoints": endpoints, "timeout": "2s"},
        "pools": [{"name": "v4", "subnet": "10.20.0.0/20"}, {"name": "v6", "subnet": "fd00:20::/64"}]}})
}

#[test]
fn thousand_adds_from_ten_nodes_while_the_leader_dies() {
    let mut cluster = Cluster::start(3, None);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = cluster.endpoints();
    let confs: Vec<Value> = (0..NODES)
        .map(|n| conf(&endpoints, n, dir.path()))
        .collect();
    let confs = Arc::new(confs);
    let done = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let start = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (confs, done, retries, results) = (
                confs.clone(),
                done.clone(),
                retries.clone(),
                results.clone(),
            );
            std::thread::spawn(move || {
                for i in (w..ADDS).step_by(WORKERS) {
                    let cid = format!("c{i}");
                    let conf = &confs[i % NODES];
                    let mut tries = 0;
                    let ips = loop {
                        let (exit, v) = Call::new("ADD", &cid).run(conf);
                        if exit == 0 {
                            break result_ips(&v);
                        }
                        // Only "try again later" is allowed, and only a few times.
                        assert_eq!(v["code"], 11, "ADD {cid} failed with another code: {v}");
                        tries += 1;
                        assert!(tries < 40, "ADD {cid} kept failing with 11: {v}");
                        retries.fetch_add(1, Ordering::Relaxed);
                        if std::env::var_os("ETCD_TEST_VERBOSE").is_some() {
                            eprintln!("retry {cid}: {}", v["msg"]);
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    };
                    assert_eq!(ips.len(), 2, "dual-stack ADD {cid}: {ips:?}");
                    results.lock().unwrap().insert(cid, ips);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Kill the leader once a third of the ADDs are done.
    while done.load(Ordering::Relaxed) < ADDS / 3 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let leader = cluster.leader().expect("a leader");
    cluster.kill(leader);
    let killed_at = done.load(Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    let elapsed = start.elapsed();
    let retries = retries.load(Ordering::Relaxed);
    eprintln!("{ADDS} ADDs in {elapsed:?}; leader m{leader} killed after {killed_at}; {retries} retried after code 11");
    assert!(killed_at < ADDS, "the leader died before the run ended");

    let results = results.lock().unwrap();
    assert_eq!(results.len(), ADDS);
    let mut all: Vec<&String> = results.values().flatten().collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "an address was handed out twice");

    // The store holds exactly what the ADDs returned, every record owned.
    let list_conf = dir.path().join("list.json");
    std::fs::write(&list_conf, confs[0].to_string()).unwrap();
    let (code, out, err) = cli(&["list", "--config", list_conf.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut stored: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &rows {
        let owner = r["containerId"]
            .as_str()
            .unwrap_or_else(|| panic!("record without owner: {r}"));
        stored
            .entry(owner.to_string())
            .or_default()
            .insert(r["ip"].as_str().unwrap().to_string());
    }
    assert_eq!(
        rows.len(),
        2 * ADDS,
        "records beyond what the ADDs returned"
    );
    for (cid, ips) in results.iter() {
        let want: BTreeSet<String> = ips.iter().cloned().collect();
        assert_eq!(stored.get(cid), Some(&want), "{cid}");
    }
}
