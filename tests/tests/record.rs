//! Issue 22: what ADD did is recorded per attachment, and DEL, CHECK and a
//! failed ADD's undo work from that record. Real chains behind the reference
//! plugins in a netns lab, with traffic; needs root and the built binaries.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cni_tests::kstate::Snapshot;
use cni_tests::{bin_dir, cni_path};
use integration::chain::{Attachment, Chain, NetConfList};
use integration::lab::{state, Lab, LabBuilder, Pod};
use integration::traffic::{reply_peer, tcp_request, TcpServer};
use serde_json::{json, Value};

const RECORDS: &str = "/run/coordinator/attachments";

fn lab(subnets: usize) -> Lab {
    assert!(
        bin_dir().join("coordinator").is_file(),
        "coordinator binary missing (scripts/build.sh)"
    );
    LabBuilder::default()
        .subnets(subnets)
        .build()
        .expect("build lab (needs root)")
}

/// Everything ADD or DEL may touch in `ns` (the kit's snapshot: links and
/// their MTU, MAC, txqueuelen and state, rules, routes of every table,
/// permanent neighbours, the nftables ruleset, the sysctls we write), as
/// lines; the node's `from all lookup 500` rule, shared by every pod, left
/// out, and so are the kernel's own `fe80::/64` routes.
fn snapshot(ns: &str) -> Vec<String> {
    Snapshot::capture(ns)
        .expect("snapshot")
        .filter(|i| !(i.key.contains("from all") && i.key.contains("lookup 500")))
        // The kernel's own link-local route on a link it brings up comes on
        // its own time (here on veth0, whose link-local address addrconf
        // may add after the ADD that set the link up returned).
        .filter(|i| !(i.key.contains("fe80::/64") && i.key.contains("proto kernel")))
        .lines()
}

/// The pod's and the node's snapshots once the kernel has finished with a
/// new link on its own time (a link-local address and its `fe80::/64`
/// route come a moment after the link is up).
fn settled(lab: &Lab, pod: &str) -> (Vec<String>, Vec<String>) {
    let mut last = (snapshot(pod), snapshot(lab.node()));
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(200));
        let now = (snapshot(pod), snapshot(lab.node()));
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Equal snapshots, or a failure naming only the lines that differ.
fn assert_same(now: (Vec<String>, Vec<String>), before: &(Vec<String>, Vec<String>), what: &str) {
    let diff = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|l| !b.contains(l)).cloned().collect()
    };
    let (pod, node) = (&now.0, &now.1);
    assert!(
        *pod == before.0 && *node == before.1,
        "{what}: pod gained {:?} lost {:?}; node gained {:?} lost {:?}",
        diff(pod, &before.0),
        diff(&before.0, pod),
        diff(node, &before.1),
        diff(&before.1, node)
    );
}

fn records_of(id: &str) -> PathBuf {
    Path::new(RECORDS).join(id)
}

/// macvlan on subnet `s` (ens<s+1>) with static addresses `.1.<host>` in
/// both families, the gateway's defaults from IPAM, then the coordinator.
fn nic_chain(lab: &Lab, s: u8, host: u8, coordinator: Value) -> Chain {
    let n = 6 + s;
    let mut c = coordinator;
    c["type"] = json!("coordinator");
    c["defaultsFile"] = json!(lab.dir().join("no-defaults.json"));
    c["quarantineFile"] = json!(lab.dir().join("quarantine.json"));
    let v = json!({
        "cniVersion": "1.0.0", "name": format!("rec{s}"),
        "plugins": [
            {"type": "macvlan", "master": format!("ens{}", s + 1), "mode": "bridge",
             "ipam": {"type": "static",
                "addresses": [
                    {"address": format!("10.{n}.1.{host}/16"), "gateway": format!("10.{n}.0.1")},
                    {"address": format!("fd00:{n}::1:{host}/64"), "gateway": format!("fd00:{n}::1")}],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
            c
        ]
    });
    let mut list = NetConfList::from_value(v).expect("conflist");
    lab.localize(&mut list);
    lab.chain(list).cni_path(cni_path())
}

/// The chain's coordinator alone, behind a plugin that prints `result` (the
/// main plugin's earlier ADD result): a runtime's repeated ADD.
fn replay(lab: &Lab, chain: &Chain, result: &Value, coordinator: Value, tag: &str) -> Chain {
    let dir = lab.dir().join(format!("replay-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("result.json");
    std::fs::write(&saved, result.to_string()).unwrap();
    let script = format!(
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && cat '{}'\nexit 0\n",
        saved.display()
    );
    let plugin = dir.join("record-replay");
    std::fs::write(&plugin, script).unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = coordinator;
    c["type"] = json!("coordinator");
    c["defaultsFile"] = json!(lab.dir().join("no-defaults.json"));
    c["quarantineFile"] = json!(lab.dir().join("quarantine.json"));
    let list = NetConfList::from_value(json!({
        "cniVersion": "1.0.0", "name": chain.list().name,
        "plugins": [{"type": "record-replay"}, c],
    }))
    .unwrap();
    let mut path = vec![dir];
    path.extend(cni_path());
    lab.chain(list).cni_path(path)
}

/// The node reaches the pod's `ip`:8080 through the host veth (a probe).
fn node_reaches(lab: &Lab, ip: IpAddr, what: &str) {
    let reply = tcp_request(
        lab.node(),
        None,
        SocketAddr::new(ip, 8080),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{what}: node -> {ip}:8080: {e}"));
    assert!(reply_peer(&reply).is_some(), "{what}: {reply}");
}

/// A client on the fabric reaches `ip`:8080 and gets its reply.
fn fabric_reaches(lab: &Lab, ip: IpAddr, what: &str) {
    let reply = tcp_request(
        lab.fabric(),
        None,
        SocketAddr::new(ip, 8080),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{what}: fabric -> {ip}:8080: {e}"));
    assert!(reply_peer(&reply).is_some(), "{what}: {reply}");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Attached {
    pod: Pod,
    id: String,
    nics: Vec<(Chain, Attachment, Value)>,
    _srv: Vec<TcpServer>,
}

/// A pod with one macvlan NIC per subnet (`eth0`, `net1`, ...), host
/// addresses `.1.<host>`, each with the coordinator config `coordinator`.
fn attach(lab: &Lab, name: &str, host: u8, nics: u8, coordinator: Value) -> Attached {
    let pod = lab.pod(name).expect("pod netns");
    let id = format!("rec-{}-{name}", lab.prefix());
    let mut out = Vec::new();
    for s in 0..nics {
        let ifname = match s {
            0 => "eth0".to_string(),
            n => format!("net{n}"),
        };
        let chain = nic_chain(lab, s, host, coordinator.clone());
        let att = Attachment::new(&id, &pod.path, &ifname);
        let res = chain
            .add(&att)
            .unwrap_or_else(|e| panic!("ADD {ifname}: {e}"));
        out.push((chain, att, res.result.clone().unwrap_or(Value::Null)));
    }
    // One dual-stack listener answers both families.
    let srv = vec![TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap()];
    Attached {
        pod,
        id,
        nics: out,
        _srv: srv,
    }
}

/// The main plugin's part of a chain's ADD result: what a replayed main
/// plugin prints (the coordinator returns prevResult with at most the MAC
/// changed, which is what the main plugin reported).
fn main_result(result: &Value) -> Value {
    result.clone()
}

/// Issue 22: a failed repeated ADD used to delete the working pod's
/// reply-mark table and host neighbours. Now it undoes only its own changes:
/// the pod, the node and the record are exactly as before it, and the pod
/// still answers.
#[test]
fn a_failed_repeated_add_leaves_the_working_pod_as_it_was() {
    let lab = lab(1);
    let cfg = json!({"mode": "underlay", "podRPFilter": 0, "txQueueLen": 3000});
    let p = attach(&lab, "rep", 61, 1, cfg.clone());
    let (chain, att, result) = &p.nics[0];
    node_reaches(&lab, ip("10.6.1.61"), "attached");
    let before = settled(&lab, &p.pod.name);
    let record = std::fs::read(records_of(&p.id).join("nic-eth0")).expect("record");

    // The operator adds a policy route whose gateway is nowhere: the
    // runtime's repeated ADD fails at the last step.
    let mut bad = cfg.clone();
    bad["policyRoutes"] = json!([{"dst": "192.0.2.0/24", "gw": "203.0.113.1"}]);
    let again = replay(&lab, chain, &main_result(result), bad, "bad");
    let err = again.add(att).expect_err("the repeated ADD must fail");
    assert!(err.msg.contains("192.0.2.0/24"), "{err}");
    assert_same(
        (snapshot(&p.pod.name), snapshot(lab.node())),
        &before,
        "the failed repeated ADD changed the pod or the node",
    );
    let after = std::fs::read(records_of(&p.id).join("nic-eth0")).expect("record kept");
    assert_eq!(
        String::from_utf8_lossy(&after),
        String::from_utf8_lossy(&record)
    );
    node_reaches(&lab, ip("10.6.1.61"), "after the failed repeated ADD");
    chain
        .check(att)
        .expect("CHECK after the failed repeated ADD");

    // A repeated ADD that succeeds changes nothing either.
    let same = replay(&lab, chain, &main_result(result), cfg, "same");
    same.add(att).expect("repeated ADD");
    assert_same(
        (snapshot(&p.pod.name), snapshot(lab.node())),
        &before,
        "a repeated ADD",
    );
    chain.check(att).expect("CHECK after the repeated ADD");

    chain.del(att).expect("DEL");
    assert!(!records_of(&p.id).exists(), "the record outlived DEL");
}

/// Issue 22: DEL put a moved default back with protocol `boot`, losing its
/// protocol and metric. The record keeps the route exactly as it was.
#[test]
fn del_puts_moved_defaults_back_exactly_as_they_were() {
    let lab = lab(2);
    let cfg = json!({"mode": "underlay", "podDefaultRouteNic": "net1"});
    let pod = lab.pod("mv").expect("pod");
    let id = format!("rec-{}-mv", lab.prefix());
    let eth0 = nic_chain(&lab, 0, 62, cfg.clone());
    let a0 = Attachment::new(&id, &pod.path, "eth0");
    eth0.add(&a0).expect("ADD eth0");
    // eth0's defaults as a router advertisement and a routing daemon would
    // leave them: protocol ra / static, metrics of their own.
    state::ip_batch(
        &pod.name,
        &[
            "route del ::/0 dev eth0".into(),
            "route add ::/0 via fd00:6::1 dev eth0 proto ra metric 1100".into(),
            "route del 0.0.0.0/0 dev eth0".into(),
            "route add 0.0.0.0/0 via 10.6.0.1 dev eth0 proto static metric 50".into(),
        ],
    )
    .expect("eth0's defaults");
    let before = snapshot(&pod.name);
    let defaults = before_defaults;
    let eth0_defaults = defaults(&pod.name);
    assert_eq!(eth0_defaults.len(), 2, "{eth0_defaults:?}");

    let net1 = nic_chain(&lab, 1, 62, cfg);
    let a1 = Attachment::new(&id, &pod.path, "net1");
    net1.add(&a1).expect("ADD net1");
    let now = defaults(&pod.name);
    assert!(
        now.iter().all(|d| d.contains("net1")),
        "eth0's defaults must leave main: {now:?}"
    );
    net1.check(&a1).expect("CHECK net1");
    // Put one back by hand: CHECK sees it (issue 22: it never did).
    state::ip(
        &pod.name,
        &[
            "-4", "route", "add", "default", "via", "10.6.0.1", "dev", "eth0", "proto", "static",
            "metric", "50",
        ],
    )
    .unwrap();
    let err = net1
        .check(&a1)
        .expect_err("CHECK must see the default back in main");
    assert!(err.msg.contains("back in main"), "{err}");
    state::ip(&pod.name, &["-4", "route", "del", "default", "dev", "eth0"]).unwrap();
    net1.check(&a1).expect("CHECK once repaired");

    net1.del(&a1).expect("DEL net1");
    assert_eq!(defaults(&pod.name), eth0_defaults);
    assert_eq!(
        snapshot(&pod.name),
        before,
        "DEL of net1 did not give the pod back"
    );
    eth0.del(&a0).expect("DEL eth0");
    assert!(!records_of(&id).exists());
}

/// Default routes of `ns`'s main, with device, protocol and metric.
fn before_defaults(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let text = state::ip(ns, &[fam, "-j", "route", "show", "default"]).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        for r in v.as_array().cloned().unwrap_or_default() {
            out.push(format!(
                "{fam} via {} dev {} proto {} metric {}",
                r["gateway"], r["dev"], r["protocol"], r["metric"]
            ));
        }
    }
    out.sort();
    out
}

/// Without a record (an attachment of an older release, or a record lost)
/// DEL falls back to the planner and the sweep, and leaves nothing.
#[test]
fn del_without_a_record_falls_back_to_the_planner() {
    let lab = lab(2);
    let pod = lab.pod("fb").expect("pod");
    let before = (snapshot(&pod.name), snapshot(lab.node()));
    let id = format!("rec-{}-fb", lab.prefix());
    let cfg = json!({"mode": "underlay"});
    let chains: Vec<(Chain, Attachment)> = (0..2u8)
        .map(|s| {
            let c = nic_chain(&lab, s, 63, cfg.clone());
            let a = Attachment::new(&id, &pod.path, if s == 0 { "eth0" } else { "net1" });
            c.add(&a).expect("ADD");
            (c, a)
        })
        .collect();
    for f in ["nic-eth0", "nic-net1"] {
        std::fs::remove_file(records_of(&id).join(f)).expect("remove record");
    }
    // CHECK without a record compares with today's plan.
    chains[1]
        .0
        .check(&chains[1].1)
        .expect("CHECK without a record");
    for (c, a) in chains.iter().rev() {
        c.del(a).expect("DEL without a record");
    }
    assert_same(
        (snapshot(&pod.name), snapshot(lab.node())),
        &before,
        "DEL without a record",
    );
    assert!(!records_of(&id).exists());
}

/// CHECK reports drift between the record and today's pod: an address
/// added to eth0 after net1's ADD has no `from` rule.
#[test]
fn check_reports_an_address_added_after_add() {
    let lab = lab(2);
    let p = attach(&lab, "dr", 64, 2, json!({"mode": "underlay"}));
    let (net1, a1, _) = &p.nics[1];
    net1.check(a1).expect("CHECK net1");
    state::ip(
        &p.pod.name,
        &["addr", "add", "10.6.1.164/16", "dev", "eth0"],
    )
    .unwrap();
    let err = net1
        .check(a1)
        .expect_err("CHECK must report the new address");
    assert_eq!(err.code, 103, "{err}");
    assert!(
        err.msg.contains("changed since its ADD") && err.msg.contains("10.6.1.164"),
        "{err}"
    );
    state::ip(
        &p.pod.name,
        &["addr", "del", "10.6.1.164/16", "dev", "eth0"],
    )
    .unwrap();
    net1.check(a1).expect("CHECK once the address is gone");
    for (c, a, _) in p.nics.iter().rev() {
        c.del(a).expect("DEL");
    }
}

/// NICs deleted in any order: what a later NIC shares with another (the
/// first NIC's table, its `from` rules, pod-wide sysctls) stays while one
/// of them needs it, and goes with the last. The pod keeps answering on
/// the NICs that remain, and ends as it began.
#[test]
fn nics_deleted_in_any_order_leave_nothing_and_keep_the_rest_working() {
    let lab = lab(3);
    let cfg = json!({"mode": "underlay", "podRPFilter": 0});
    for (name, order) in [("o1", [1usize, 0, 2]), ("o2", [0, 2, 1]), ("o3", [2, 1, 0])] {
        let host = 70 + order[0] as u8 * 3 + order[1] as u8;
        let empty = lab.pod(&format!("{name}e")).expect("pod");
        let before = (snapshot(&empty.name), snapshot(lab.node()));
        let p = attach(&lab, name, host, 3, cfg.clone());
        let addr = |s: usize| ip(&format!("10.{}.1.{host}", 6 + s));
        for s in 0..3 {
            fabric_reaches(&lab, addr(s), &format!("{name}: NIC {s} attached"));
        }
        node_reaches(&lab, addr(0), &format!("{name}: attached"));
        let mut gone = Vec::new();
        for i in order {
            let (c, a, _) = &p.nics[i];
            c.del(a).unwrap_or_else(|e| panic!("{name}: DEL {i}: {e}"));
            gone.push(i);
            // With eth0 (and its veth) gone the pod is being torn down:
            // only while it stays must the others keep working.
            if gone.contains(&0) {
                continue;
            }
            for s in (0..3).filter(|s| !gone.contains(s)) {
                let (c, a, _) = &p.nics[s];
                c.check(a)
                    .unwrap_or_else(|e| panic!("{name}: CHECK {s} after DEL {gone:?}: {e}"));
                fabric_reaches(
                    &lab,
                    addr(s),
                    &format!("{name}: NIC {s} after DEL {gone:?}"),
                );
            }
            node_reaches(&lab, addr(0), &format!("{name}: after DEL {gone:?}"));
        }
        assert_same(
            (snapshot(&p.pod.name), snapshot(lab.node())),
            &before,
            &format!("{name}: DELs in order {order:?}"),
        );
        assert!(!records_of(&p.id).exists(), "{name}: records left");
    }
}

/// Records are private (0700 directories, 0600 files) and gone after DEL.
#[test]
fn records_are_private() {
    let lab = lab(1);
    let p = attach(&lab, "pv", 65, 1, json!({"mode": "underlay"}));
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&records_of(&p.id)), 0o700);
    assert_eq!(mode(&records_of(&p.id).join("nic-eth0")), 0o600);
    let (c, a, _) = &p.nics[0];
    c.del(a).expect("DEL");
    c.del(a).expect("second DEL");
    assert!(!records_of(&p.id).exists());
}

/// GC (spec 1.1.0): the runtime lost a pod's DEL. GC with the list of the
/// attachments it still has undoes what the lost pod's ADD made on the node
/// (host veth, host routes and neighbours) and removes its record; the pod
/// it still lists keeps working; a record of another network stays.
#[test]
fn gc_undoes_attachments_the_runtime_no_longer_lists() {
    let lab = lab(1);
    let cfg = json!({"mode": "underlay"});
    let node_before = snapshot(lab.node());
    let lost = attach(&lab, "gl", 67, 1, cfg.clone());
    let kept = attach(&lab, "gk", 68, 1, cfg.clone());
    let network = lost.nics[0].0.list().name.clone();
    let hveth = |id: &str| coordinator::names::host_veth_name(id);
    assert!(state::link_names(lab.node())
        .unwrap()
        .contains(&hveth(&lost.id)));
    // The lost pod's netns goes without a DEL (the runtime crashed); its
    // server thread still holds it, so the veth pair stays: GC must act.
    lab.remove_netns(&lost.pod.name).unwrap();
    assert!(state::link_names(lab.node())
        .unwrap()
        .contains(&hveth(&lost.id)));

    // The coordinator alone, at 1.1.0, for the same network.
    let mut c = json!({"type": "coordinator", "mode": "underlay"});
    c["defaultsFile"] = json!(lab.dir().join("no-defaults.json"));
    let mut list = NetConfList::from_value(json!({
        "cniVersion": "1.1.0", "name": network, "plugins": [c],
    }))
    .unwrap();
    lab.localize(&mut list);
    let gc = lab.chain(list).cni_path(cni_path());
    let other = format!("{network}-other");
    let mut elsewhere = json!({"type": "coordinator"});
    elsewhere["defaultsFile"] = json!(lab.dir().join("no-defaults.json"));

    gc.gc(&[(kept.id.clone(), "eth0".to_string())])
        .unwrap_or_else(|e| panic!("GC: {e}"));
    assert!(
        !records_of(&lost.id).exists(),
        "the lost pod's record outlived GC"
    );
    assert!(records_of(&kept.id).join("nic-eth0").exists());
    let links = state::link_names(lab.node()).unwrap();
    assert!(!links.contains(&hveth(&lost.id)), "{links:?}");
    assert!(links.contains(&hveth(&kept.id)), "{links:?}");
    node_reaches(&lab, ip("10.6.1.68"), "the pod GC kept");
    kept.nics[0]
        .0
        .check(&kept.nics[0].1)
        .expect("CHECK of the kept pod");

    // GC of another network leaves this network's records alone.
    let mut list = NetConfList::from_value(json!({
        "cniVersion": "1.1.0", "name": other, "plugins": [elsewhere],
    }))
    .unwrap();
    lab.localize(&mut list);
    lab.chain(list)
        .cni_path(cni_path())
        .gc(&[])
        .unwrap_or_else(|e| panic!("GC of another network: {e}"));
    assert!(records_of(&kept.id).join("nic-eth0").exists());

    let (c, a, _) = &kept.nics[0];
    c.del(a).expect("DEL of the kept pod");
    assert!(!records_of(&kept.id).exists());
    // The node is as it was before both pods (the shared rule aside).
    let now = snapshot(lab.node());
    assert_eq!(now, node_before, "GC and DEL left something on the node");
}
