//! The etcd store against real etcd: the same decisions as the file store,
//! faults (unreachable, frozen, leaderless) as code 11 with nothing written,
//! TLS with client certificates, credentials, and the operator commands.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use coordinator_ipam::allocator::{self, AddRequest, Attachment, PodRef};
use coordinator_ipam::config::Config;
use coordinator_ipam::store::{self, file::FileStore, Store};
use integration::etcd::{Cluster, TestPki};
use serde_json::{json, Value};

fn etcd_conf(lab: &Lab, endpoints: &[String], extra_store: Value) -> Value {
    let mut conf = lab.conf(
        "1.1.0",
        json!([{"name": "v4", "subnet": "10.30.0.0/24"}, {"name": "v6", "subnet": "fd00:30::/64"}]),
        json!({"sticky": [{"namespace": "db"}]}),
    );
    let mut store = json!({"kind": "etcd", "endpoints": endpoints, "timeout": "500ms"});
    for (k, v) in extra_store.as_object().unwrap() {
        store[k] = v.clone();
    }
    conf["ipam"]["store"] = store;
    conf
}

fn list(lab: &Lab, conf: &Value) -> Vec<Value> {
    let path = lab.dir.path().join("conf-for-cli.json");
    std::fs::write(&path, conf.to_string()).unwrap();
    let (code, out, err) = cli(&["list", "--config", path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn owners(rows: &[Value]) -> Vec<String> {
    let mut o: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}={}",
                r["ip"].as_str().unwrap(),
                r["containerId"].as_str().unwrap_or("parked")
            )
        })
        .collect();
    o.sort();
    o
}

/// ADD of `add` and DEL of `del` both fail with 11 ("try again later"),
/// the ADD ending by its deadline rather than waiting on the frozen member
/// (the bound allows for a loaded machine: it tells a deadline from a hang,
/// it measures nothing): DEL never claims a release it could not make.
fn both_try_again(conf: &Value, add: &str, del: &str) {
    let t = Instant::now();
    let (exit, v) = Call::new("ADD", add).run(conf);
    let took = t.elapsed();
    assert_eq!((exit, &v["code"]), (1, &json!(11)), "ADD: {v}");
    assert!(
        took < Duration::from_secs(10),
        "ADD took {took:?} with a 500ms timeout"
    );
    let (exit, v) = Call::new("DEL", del).run(conf);
    assert_eq!((exit, &v["code"]), (1, &json!(11)), "DEL: {v}");
}

// ---- the same decisions as the file store ----

/// A small deterministic generator, so a failure replays exactly.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn outcome<T: std::fmt::Debug>(r: cni::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("err {} {e}", e.code()),
    }
}

#[test]
fn etcd_store_decides_exactly_like_the_file_store() {
    let cluster = Cluster::single();
    let dir = tempfile::tempdir().unwrap();
    let pools = json!([{"name": "a", "subnet": "10.40.0.0/27", "gateway": "10.40.0.1", "exclude": ["10.40.0.8/30"]},
                       {"name": "b", "subnet": "10.41.0.0/28", "nodes": ["node2"]},
                       {"name": "v6", "subnet": "fd00:40::/124"}]);
    let cfg = |node: &str, store: Value| -> Config {
        Config::parse(
            &json!({"nodeName": node, "store": store, "pools": pools,
            "sticky": [{"namespace": "db", "pod": "m-*"}]}),
            || None,
        )
        .unwrap()
    };
    let file_store = json!({"kind": "file", "dataDir": dir.path()});
    let etcd_store = json!({"kind": "etcd", "endpoints": cluster.endpoints(), "prefix": "/eq"});
    let configs: Vec<(Config, Config)> = ["node1", "node2"]
        .iter()
        .map(|n| (cfg(n, file_store.clone()), cfg(n, etcd_store.clone())))
        .collect();
    let file: Box<dyn Store> = Box::new(FileStore::new(dir.path().to_path_buf()));
    let etcd = store::open(&configs[0].1.store).unwrap();
    let quarantined: Vec<IpAddr> = vec!["10.40.0.5".parse().unwrap()];
    let mut rng = Lcg(13);
    let mut seen = std::collections::BTreeSet::new();
    for step in 0..400 {
        let node = rng.next(2) as usize;
        let cid = format!("c{}", rng.next(60));
        let att = Attachment {
            container_id: cid.clone(),
            ifname: "net1".into(),
        };
        let op = rng.next(10);
        let run = |s: &dyn Store, c: &Config| -> String {
            match op {
                0..=6 => {
                    let pod = rng_pod(&cid).map(|(namespace, name)| PodRef { namespace, name });
                    let requested = if op == 6 {
                        vec![format!("10.40.0.{}", 2 + cid.len() * 3).parse().unwrap()]
                    } else {
                        vec![]
                    };
                    let req = AddRequest {
                        attachment: att.clone(),
                        pod,
                        requested,
                        requested_field: "runtimeConfig.ips".into(),
                    };
                    outcome(store::transact(s, "net1", |l| {
                        allocator::add(l, c, &req, &quarantined)
                    }))
                }
                7 | 8 => outcome(store::transact(s, "net1", |l| allocator::del(l, &att))),
                _ => {
                    let valid = vec![att.clone()];
                    outcome(store::update(s, "net1", |st| {
                        Ok(allocator::gc(st, &c.node_name, &valid))
                    }))
                }
            }
        };
        let (fc, ec) = &configs[node];
        let a = run(file.as_ref(), fc);
        let b = run(etcd.as_ref(), ec);
        assert_eq!(a, b, "step {step}: op {op} {cid} on node{}", node + 1);
        seen.insert(a.split(' ').take(2).collect::<Vec<_>>().join(" "));
        assert_eq!(
            file.load("net1").unwrap(),
            etcd.load("net1").unwrap(),
            "step {step}: states differ"
        );
    }
    // The run went through exhaustion, taken requested addresses and parking.
    for want in ["err 110", "err 111", "ok [Lease"] {
        assert!(
            seen.iter().any(|s| s.starts_with(want)),
            "{want} never happened: {seen:?}"
        );
    }
    let st = etcd.load("net1").unwrap();
    assert!(
        st.records.iter().any(|r| r.parked()),
        "the run should park sticky addresses"
    );
    assert_eq!(etcd.networks().unwrap(), vec!["net1".to_string()]);
}

/// Containers c0-c9 belong to sticky pods db/m-0..db/m-4 (two sandboxes
/// each), c10-c19 to plain pods, the rest to no pod.
fn rng_pod(cid: &str) -> Option<(String, String)> {
    let n: usize = cid[1..].parse().unwrap();
    match n {
        0..=9 => Some(("db".into(), format!("m-{}", n / 2))),
        10..=19 => Some(("web".into(), format!("w-{n}"))),
        _ => None,
    }
}

// ---- faults ----

#[test]
fn unreachable_etcd_is_code_11_within_the_timeout() {
    let lab = Lab::new();
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = etcd_conf(&lab, &[format!("http://127.0.0.1:{port}")], json!({}));
    both_try_again(&conf, "a", "a");
}

#[test]
fn frozen_etcd_is_code_11_and_the_next_call_after_recovery_succeeds() {
    let lab = Lab::new();
    let mut cluster = Cluster::single();
    let conf = etcd_conf(&lab, &cluster.endpoints(), json!({}));
    let held = result_ips(&Call::new("ADD", "a").ok(&conf));
    cluster.freeze(0, true);
    both_try_again(&conf, "b", "a");
    cluster.freeze(0, false);
    // Nothing half-written by the failed calls: a's addresses are still held.
    assert_eq!(
        owners(&list(&lab, &conf)),
        held.iter().map(|ip| format!("{ip}=a")).collect::<Vec<_>>()
    );
    Call::new("DEL", "a").ok(&conf);
    let b = result_ips(&Call::new("ADD", "b").ok(&conf));
    assert_eq!(b.len(), 2);
    let mut want: Vec<String> = b.iter().map(|ip| format!("{ip}=b")).collect();
    want.sort();
    assert_eq!(owners(&list(&lab, &conf)), want);
}

#[test]
fn leaderless_etcd_is_code_11_and_recovers_with_its_quorum() {
    let lab = Lab::new();
    let mut cluster = Cluster::start(3, None);
    let conf = etcd_conf(&lab, &cluster.endpoints(), json!({}));
    let held = result_ips(&Call::new("ADD", "a").ok(&conf));
    cluster.kill(1);
    cluster.kill(2);
    both_try_again(&conf, "b", "a");
    cluster.restart(1);
    // The quorum is back: calls succeed once a leader is elected (retried
    // like a runtime does on 11).
    let mut tries = 0;
    let b = loop {
        let (exit, v) = Call::new("ADD", "b").run(&conf);
        if exit == 0 {
            break result_ips(&v);
        }
        assert_eq!(v["code"], 11, "{v}");
        tries += 1;
        assert!(tries < 20, "no recovery: {v}");
        std::thread::sleep(Duration::from_millis(250));
    };
    Call::new("DEL", "a").ok(&conf);
    let mut want: Vec<String> = b.iter().map(|ip| format!("{ip}=b")).collect();
    want.sort();
    assert_eq!(owners(&list(&lab, &conf)), want);
    assert!(held.iter().all(|ip| !b.contains(ip)));
}

// ---- TLS and credentials ----

#[test]
fn tls_with_client_certificates_and_wrong_certificates_are_clear_errors() {
    let lab = Lab::new();
    let good = TestPki::make(lab.dir.path(), "good");
    let evil = TestPki::make(lab.dir.path(), "evil");
    let cluster = Cluster::start(1, Some(&good.server));
    let tls = |ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path| json!({"tls": {"ca": ca, "cert": cert, "key": key}});
    let tls = |ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path| {
        let mut t = tls(ca, cert, key);
        t["timeout"] = json!("3s");
        t
    };
    let conf = etcd_conf(
        &lab,
        &cluster.endpoints(),
        tls(&good.server.ca, &good.client_cert, &good.client_key),
    );
    let ips = result_ips(&Call::new("ADD", "a").ok(&conf));
    assert_eq!(ips.len(), 2);
    Call::new("DEL", "a").ok(&conf);

    // A server certificate from another CA.
    let wrong_ca = etcd_conf(
        &lab,
        &cluster.endpoints(),
        tls(&evil.server.ca, &good.client_cert, &good.client_key),
    );
    let msg = Call::new("ADD", "b").fails(&wrong_ca, 5);
    assert!(msg.contains("TLS") && msg.contains("certificate"), "{msg}");
    // A client certificate the server does not trust.
    let wrong_client = etcd_conf(
        &lab,
        &cluster.endpoints(),
        tls(&good.server.ca, &evil.client_cert, &evil.client_key),
    );
    let (exit, v) = Call::new("ADD", "b").run(&wrong_client);
    assert_eq!(exit, 1, "{v}");
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains("TLS") && msg.to_lowercase().contains("certificate"),
        "{v}"
    );
    // Missing or unusable files name their field.
    let missing = etcd_conf(
        &lab,
        &cluster.endpoints(),
        tls(
            &lab.dir.path().join("nope.pem"),
            &good.client_cert,
            &good.client_key,
        ),
    );
    assert!(Call::new("ADD", "b")
        .fails(&missing, 7)
        .contains("ipam.store.tls.ca"));
    let key_as_cert = etcd_conf(
        &lab,
        &cluster.endpoints(),
        tls(&good.server.ca, &good.client_key, &good.client_key),
    );
    assert!(Call::new("ADD", "b")
        .fails(&key_as_cert, 7)
        .contains("ipam.store.tls.cert"));
    assert!(list(&lab, &conf).is_empty());
}

#[test]
fn credentials_work_and_never_appear_in_errors() {
    let lab = Lab::new();
    let cluster = Cluster::single();
    for (path, body) in [
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"s3cret-root"}"#,
        ),
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let r = cluster.post(0, path, body);
        assert!(
            r.as_ref().is_some_and(|(s, _)| *s == 200) || path == "/v3/auth/role/add",
            "{path}: {r:?}"
        );
    }
    let pw = lab.dir.path().join("password");
    std::fs::write(&pw, "s3cret-root\n").unwrap();
    let conf = etcd_conf(
        &lab,
        &cluster.endpoints(),
        json!({"username": "root", "passwordFile": pw, "timeout": "3s"}),
    );
    assert_eq!(result_ips(&Call::new("ADD", "a").ok(&conf)).len(), 2);
    // Without credentials, etcd refuses.
    let anonymous = etcd_conf(&lab, &cluster.endpoints(), json!({}));
    let (exit, v) = Call::new("ADD", "b").run(&anonymous);
    assert_eq!(exit, 1, "{v}");
    // A wrong password is refused, and neither password shows.
    std::fs::write(&pw, "Wr0ng-pass\n").unwrap();
    let (exit, out) = {
        let out = Call::new("ADD", "b")
            .spawn(&conf)
            .wait_with_output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    assert_eq!(exit, Some(1), "{out}");
    assert!(out.contains("credentials"), "{out}");
    assert!(
        !out.contains("Wr0ng-pass") && !out.contains("s3cret-root"),
        "{out}"
    );
}

// ---- operator commands and DEL with a broken config ----

#[test]
fn reclaim_release_and_migrate_on_etcd() {
    let lab = Lab::etcd();
    let file_lab = Lab::new();
    let node1 = lab.conf(
        "1.1.0",
        json!([{"name": "p", "subnet": "10.31.0.0/24"}]),
        json!({"sticky": [{"namespace": "db"}]}),
    );
    let mut node2 = node1.clone();
    node2["ipam"]["nodeName"] = json!("node2");
    let plain = result_ips(&Call::new("ADD", "plain").ok(&node1));
    let sticky = result_ips(
        &Call::new("ADD", "sticky")
            .args("K8S_POD_NAMESPACE=db;K8S_POD_NAME=x")
            .ok(&node1),
    );
    let other = result_ips(&Call::new("ADD", "other").ok(&node2));
    let path = lab.dir.path().join("node1.json");
    std::fs::write(&path, node1.to_string()).unwrap();
    let p = path.to_str().unwrap();

    let (code, out, err) = cli(&["reclaim", "--node", "node1", "--config", p, "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.contains(&json!({"network": "net1", "ip": plain[0], "state": "freed"})),
        "{out}"
    );
    assert!(
        rows.contains(&json!({"network": "net1", "ip": sticky[0], "state": "parked"})),
        "{out}"
    );
    let mut want = vec![
        format!("{}=other", other[0]),
        format!("{}=parked", sticky[0]),
    ];
    want.sort();
    assert_eq!(owners(&list(&lab, &node1)), want);
    assert_eq!(cli(&["reclaim", "--config", p]).0, 2, "--node is required");

    let (code, _, err) = cli(&["release", &other[0], "--config", p]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        owners(&list(&lab, &node1)),
        vec![format!("{}=parked", sticky[0])]
    );
    let (code, out, _) = cli(&["usage", "--config", p, "--json"]);
    assert_eq!(code, 0);
    let usage: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (usage[0]["inUse"].clone(), usage[0]["parked"].clone()),
        (json!(0), json!(1)),
        "{usage}"
    );

    // A node's file store copied into etcd: the same attachments get the same addresses.
    let fconf = file_lab.conf(
        "1.1.0",
        json!([{"name": "p", "subnet": "10.31.0.0/24", "ranges": ["10.31.0.100-10.31.0.120"]}]),
        json!({}),
    );
    let f1 = result_ips(&Call::new("ADD", "f1").ok(&fconf));
    let f2 = result_ips(&Call::new("ADD", "f2").ok(&fconf));
    let data_dir = file_lab.data_dir();
    let (code, out, err) = cli(&[
        "migrate",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--config",
        p,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("copied 2 of 2"), "{out}");
    assert_eq!(result_ips(&Call::new("ADD", "f1").ok(&node1)), f1);
    assert_eq!(result_ips(&Call::new("ADD", "f2").ok(&node1)), f2);
    let (_, out, _) = cli(&[
        "migrate",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--config",
        p,
    ]);
    assert!(
        out.contains("copied 0 of 2"),
        "a second run copies nothing: {out}"
    );
    // An address recorded differently stops the copy of that network.
    Call::new("DEL", "f1").ok(&node1);
    Call::new("ADD", "thief")
        .args(&format!("IP={}", f1[0]))
        .ok(&node1);
    let (code, _, err) = cli(&[
        "migrate",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--config",
        p,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&f1[0]) && err.contains("recorded differently"),
        "{err}"
    );
}

#[test]
fn del_with_an_invalid_ipam_config_still_releases_from_etcd() {
    let lab = Lab::etcd();
    let conf = lab.conf(
        "1.0.0",
        json!([{"name": "p", "subnet": "10.32.0.0/24"}]),
        json!({}),
    );
    let held = result_ips(&Call::new("ADD", "bad-conf").ok(&conf));
    let other = result_ips(&Call::new("ADD", "bystander").ok(&conf));
    let mut broken = conf.clone();
    broken["ipam"]["pools"] = json!([{"subnet": "10.32.0.0/33"}]);
    Call::new("DEL", "bad-conf").ok(&broken);
    let left = lab.recorded_ips("net1");
    assert!(held.iter().all(|ip| !left.contains(ip)), "{left:?}");
    assert!(other.iter().all(|ip| left.contains(ip)), "{left:?}");
}
