//! coordinator-ipam in the lab (issue 6 item 5): the reference `macvlan`
//! with our IPAM, chained with the coordinator in underlay mode, loaded from
//! conf-examples/, proven with real traffic between pods, gateways and
//! fabric clients. Needs root; never skips.
//!
//! Every lab keeps the IPAM store and the quarantine file in its own
//! directory, so parallel tests never share records.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use cni_tests::{bin_dir, cni_path, conf_example, mac_of};
use integration::chain::{Attachment, Chain, NetConfList, Outcome};
use integration::exec::Exec;
use integration::lab::{self, Lab, Pod};
use integration::traffic::{ping, reply_peer, tcp_request, TcpServer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
/// Each check gets its own server port: a closed listener's connections
/// linger in TIME_WAIT, and the next bind on the same port may be refused.
static PORT: AtomicU16 = AtomicU16::new(8080);

/// Load `file`, keep its IPAM store and both quarantine files in the lab.
fn load(lab: &Lab, file: &str) -> NetConfList {
    let mut list = NetConfList::from_file(conf_example(file)).unwrap();
    assert_eq!(list.types(), vec!["macvlan", "coordinator"], "{file}");
    lab.localize(&mut list);
    let quarantine = lab.dir().join("quarantine.json");
    let ipam = list
        .plugin_mut("macvlan")
        .and_then(|m| m.get_mut("ipam"))
        .and_then(Value::as_object_mut)
        .expect("macvlan has an ipam block");
    assert_eq!(ipam["type"], "coordinator-ipam", "{file}");
    ipam.insert(
        "store".into(),
        json!({"kind": "file", "dataDir": store_dir(lab)}),
    );
    ipam.insert("quarantineFile".into(), json!(quarantine));
    list.plugin_mut("coordinator")
        .unwrap()
        .insert("quarantineFile".into(), json!(quarantine));
    for bin in ["coordinator", "coordinator-ipam"] {
        assert!(
            bin_dir().join(bin).is_file(),
            "{bin} binary missing in {} (cargo build --workspace --bins)",
            bin_dir().display()
        );
    }
    list
}

fn store_dir(lab: &Lab) -> std::path::PathBuf {
    lab.dir().join("ipam")
}

fn chain(lab: &Lab, file: &str) -> Chain {
    lab.chain(load(lab, file)).cni_path(cni_path())
}

/// The ipam block of the macvlan plugin, for a test's own tweaks.
fn ipam_mut(list: &mut NetConfList) -> &mut serde_json::Map<String, Value> {
    list.plugin_mut("macvlan")
        .and_then(|m| m.get_mut("ipam"))
        .and_then(Value::as_object_mut)
        .unwrap()
}

/// A Kubernetes pod's attachment (CNI_ARGS as the kubelet passes them).
fn pod_att(cid: &str, pod: &Pod, ifname: &str, namespace: &str, name: &str) -> Attachment {
    Attachment::new(cid, &pod.path, ifname)
        .arg("IgnoreUnknown", "1")
        .arg("K8S_POD_NAMESPACE", namespace)
        .arg("K8S_POD_NAME", name)
}

fn add(chain: &Chain, att: &Attachment) -> Value {
    let out: Outcome = chain
        .add(att)
        .unwrap_or_else(|e| panic!("ADD {}/{}: {e}", att.container_id, att.ifname));
    out.result.expect("ADD result")
}

/// The result's addresses of one family (the IPAM gives one per family).
fn ip_of(result: &Value, v4: bool) -> IpAddr {
    let ips: Vec<IpAddr> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .filter(|ip: &IpAddr| ip.is_ipv4() == v4)
        .collect();
    assert_eq!(ips.len(), 1, "one address per family in {result}");
    ips[0]
}

fn both(result: &Value) -> [IpAddr; 2] {
    [ip_of(result, true), ip_of(result, false)]
}

/// `coordinator-ipam list --data-dir D --json`: the operator's view of the store.
fn cli_list(lab: &Lab) -> Vec<Value> {
    let dir = store_dir(lab);
    let out = Exec::new(bin_dir().join("coordinator-ipam"))
        .args(&["list", "--data-dir", &dir.display().to_string(), "--json"])
        .run();
    let v = out.ok_json();
    v.as_array().cloned().expect("list --json is an array")
}

/// `(ip, containerId)` of every record, sorted.
fn records(lab: &Lab) -> Vec<(String, Option<String>)> {
    let mut r: Vec<_> = cli_list(lab)
        .iter()
        .map(|r| {
            (
                r["ip"].as_str().unwrap_or_default().to_string(),
                r["containerId"].as_str().map(str::to_string),
            )
        })
        .collect();
    r.sort();
    r
}

fn record_of<'a>(list: &'a [Value], ip: &IpAddr) -> &'a Value {
    let ip = ip.to_string();
    list.iter()
        .find(|r| r["ip"] == ip.as_str())
        .unwrap_or_else(|| panic!("no record for {ip} in {list:?}"))
}

/// A fabric client on `subnet` TCP-connects to `dst` in the pod and the pod's
/// server saw the client's own address (so the reply made it back too: the
/// fabric drops asymmetric replies).
fn client_reaches(client: &lab::Client, pod: &Pod, dst: IpAddr) {
    let port = PORT.fetch_add(1, Ordering::Relaxed);
    let srv = TcpServer::start(&pod.name, SocketAddr::new(unspecified(dst), port)).unwrap();
    let src: IpAddr = if dst.is_ipv4() {
        client.ipv4.unwrap().into()
    } else {
        client.ipv6.unwrap().into()
    };
    let reply =
        tcp_request(&client.name, None, SocketAddr::new(dst, port), T).unwrap_or_else(|e| {
            panic!(
                "client {src} -> pod {dst}: {e}; client neighbours: {}",
                lab::neighbours(&client.name).unwrap_or_default()
            )
        });
    assert_eq!(reply_peer(&reply).map(|p| p.ip()), Some(src), "{reply}");
    assert_eq!(srv.peers().len(), 1, "{:?}", srv.peers());
}

fn unspecified(like: IpAddr) -> IpAddr {
    if like.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    }
}

fn assert_in(ip: IpAddr, nets: &[&str]) {
    let ok = nets
        .iter()
        .any(|n| n.parse::<ipnet::IpNet>().unwrap().contains(&ip));
    assert!(ok, "{ip} not in {nets:?}");
}

/// Nothing of the pod is left on `node` or in `pod`: no pod NIC or veth, no
/// host veth, no host route to its addresses.
fn assert_detached(node: &str, pod: &Pod, ifname: &str, ips: &[IpAddr]) {
    let in_pod = lab::state::link_names(&pod.name).unwrap();
    assert!(
        !in_pod.iter().any(|l| l == ifname || l.starts_with("veth")),
        "pod links left: {in_pod:?}"
    );
    let node_links = lab::state::link_names(node).unwrap();
    assert!(
        !node_links.iter().any(|l| l.starts_with("veth")),
        "host veth left: {node_links:?}"
    );
    let routes = lab::routes(node, "all").unwrap().to_string();
    for ip in ips {
        assert!(
            !routes.contains(&format!("\"{ip}\"")),
            "host route to {ip} left: {routes}"
        );
    }
}

// 1. One dual-stack pod: addresses, gateways, fabric client, CHECK, DEL.
#[test]
fn dual_stack_pod_from_conf_example() {
    let lab = Lab::new().expect("build lab (needs root)");
    let chain = chain(&lab, "macvlan-coordinator-ipam.conflist");
    let pod = lab.pod("a").unwrap();
    let att = pod_att("ctr-ipam-ds", &pod, "eth0", "default", "web-0");
    let result = add(&chain, &att);
    let [v4, v6] = both(&result);
    assert_in(v4, &["10.6.1.0/24"]);
    assert_in(v6, &["fd00:6::1:0/120"]);
    let on_eth0 = lab::state::addresses_of(&pod.name, "eth0").unwrap();
    assert!(on_eth0.contains(&format!("{v4}/16")), "{on_eth0:?}");
    assert!(on_eth0.contains(&format!("{v6}/64")), "{on_eth0:?}");
    // The pool's gateways came back with the addresses.
    let gws: Vec<&str> = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["gateway"].as_str())
        .collect();
    assert_eq!(gws.len(), 2, "{result}");
    assert!(
        gws.contains(&"10.6.0.1") && gws.contains(&"fd00:6::1"),
        "{result}"
    );

    // The store holds exactly this attachment's two addresses.
    let list = cli_list(&lab);
    assert_eq!(list.len(), 2, "{list:?}");
    for ip in [v4, v6] {
        let r = record_of(&list, &ip);
        assert_eq!(r["containerId"], "ctr-ipam-ds", "{r}");
        assert_eq!(r["ifname"], "eth0", "{r}");
        assert_eq!(r["network"], "macvlan-coordinator-ipam", "{r}");
        assert_eq!(r["parked"], false, "{r}");
    }

    let sn = lab.subnet(1).unwrap();
    assert!(ping(&pod.name, sn.gateway4.unwrap().into(), None));
    assert!(ping(&pod.name, sn.gateway6.unwrap().into(), None));
    let client = lab
        .fabric_client(1, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap();
    client_reaches(&client, &pod, v4);
    client_reaches(&client, &pod, v6);

    chain.check(&att).unwrap_or_else(|e| panic!("CHECK: {e}"));
    chain.del(&att).unwrap_or_else(|e| panic!("DEL: {e}"));
    assert_eq!(records(&lab), vec![], "DEL released the addresses");
    assert_detached(lab.node(), &pod, "eth0", &[v4, v6]);
    // A repeated DEL, and one after the netns is gone, still succeed.
    chain
        .del(&att)
        .unwrap_or_else(|e| panic!("second DEL: {e}"));
    lab.remove_netns(&pod.name).unwrap();
    let gone = Attachment {
        netns: None,
        ..att.clone()
    };
    chain
        .del(&gone)
        .unwrap_or_else(|e| panic!("DEL without netns: {e}"));
    assert_eq!(records(&lab), vec![]);
}

// 2. Two NICs, a pool each.
#[test]
fn two_nics_each_from_its_own_pool() {
    let lab = Lab::builder().subnets(2).build().expect("build lab");
    let eth0 = chain(&lab, "macvlan-coordinator-ipam.conflist");
    let net1 = chain(&lab, "macvlan-coordinator-ipam-net1.conflist");
    let pod = lab.pod("two").unwrap();
    let a0 = pod_att("ctr-ipam-two", &pod, "eth0", "default", "app-0");
    let a1 = pod_att("ctr-ipam-two", &pod, "net1", "default", "app-0");
    let r0 = add(&eth0, &a0);
    let r1 = add(&net1, &a1);
    let [e4, e6] = both(&r0);
    let [n4, n6] = both(&r1);
    assert_in(e4, &["10.6.1.0/24"]);
    assert_in(e6, &["fd00:6::1:0/120"]);
    assert_in(n4, &["10.7.1.0/24"]);
    assert_in(n6, &["fd00:7::1:0/120"]);
    let on_net1 = lab::state::addresses_of(&pod.name, "net1").unwrap();
    assert!(on_net1.contains(&format!("{n4}/16")), "{on_net1:?}");
    assert!(on_net1.contains(&format!("{n6}/64")), "{on_net1:?}");

    // Each network has its own records under the one data dir.
    let list = cli_list(&lab);
    assert_eq!(list.len(), 4, "{list:?}");
    for (ip, network, pool, ifname) in [
        (e4, "macvlan-coordinator-ipam", "ens1-v4", "eth0"),
        (e6, "macvlan-coordinator-ipam", "ens1-v6", "eth0"),
        (n4, "macvlan-coordinator-ipam-ens2", "ens2-v4", "net1"),
        (n6, "macvlan-coordinator-ipam-ens2", "ens2-v6", "net1"),
    ] {
        let r = record_of(&list, &ip);
        assert_eq!(
            (&r["network"], &r["pool"], &r["ifname"]),
            (&json!(network), &json!(pool), &json!(ifname)),
            "{r}"
        );
    }

    for (subnet, ips) in [(1u8, [e4, e6]), (2, [n4, n6])] {
        let sn = lab.subnet(subnet).unwrap();
        let client = lab
            .fabric_client(subnet, sn.host4(9, 9), sn.host6(0x9999))
            .unwrap();
        for ip in ips {
            client_reaches(&client, &pod, ip);
        }
    }

    net1.del(&a1).unwrap_or_else(|e| panic!("DEL net1: {e}"));
    eth0.del(&a0).unwrap_or_else(|e| panic!("DEL eth0: {e}"));
    assert_eq!(records(&lab), vec![]);
    assert_detached(lab.node(), &pod, "net1", &[e4, e6, n4, n6]);
}

// 3. Two nodes in different racks, one config: pools chosen by node name.
#[test]
fn one_config_two_racks_pools_by_node_name() {
    let lab = Lab::builder().subnets(2).build().expect("build lab");
    // The second node's ens1 is wired to subnet 2 (another rack's subnet).
    let node_b = lab.extra_node("nodeb", &[2]).unwrap();
    assert_eq!(node_b.nics[0].name, "ens1");
    let mut list = load(&lab, "macvlan-coordinator-ipam-racks.conflist");
    assert!(
        ipam_mut(&mut list).get("nodeName").is_none(),
        "the config names no node: each node's NODE_NAME decides"
    );
    let on_a = lab
        .chain(list.clone())
        .cni_path(cni_path())
        .env("NODE_NAME", "rack1-n01");
    let on_b = node_b
        .chain(list)
        .cni_path(cni_path())
        .env("NODE_NAME", "rack2-n07");
    let pod_a = lab.pod("ra").unwrap();
    let pod_b = lab.pod("rb").unwrap();
    let att_a = pod_att("ctr-rack-a", &pod_a, "eth0", "default", "web-a");
    let att_b = pod_att("ctr-rack-b", &pod_b, "eth0", "default", "web-b");
    let [a4, a6] = both(&add(&on_a, &att_a));
    let [b4, b6] = both(&add(&on_b, &att_b));
    assert_in(a4, &["10.6.1.0/24"]);
    assert_in(a6, &["fd00:6::1:0/120"]);
    assert_in(b4, &["10.7.1.0/24"]);
    assert_in(b6, &["fd00:7::1:0/120"]);
    let records = cli_list(&lab);
    for (ip, node, pool) in [
        (a4, "rack1-n01", "rack1-v4"),
        (a6, "rack1-n01", "rack1-v6"),
        (b4, "rack2-n07", "rack2-v4"),
        (b6, "rack2-n07", "rack2-v6"),
    ] {
        let r = record_of(&records, &ip);
        assert_eq!(
            (&r["node"], &r["pool"]),
            (&json!(node), &json!(pool)),
            "{r}"
        );
    }
    // The second node is on rack 2's subnet.
    let b_ip = node_b.nics[0].ipv4.unwrap();
    assert_in(b_ip.into(), &["10.7.0.0/16"]);
    assert!(ping(
        &node_b.name,
        lab.subnet(2).unwrap().gateway4.unwrap().into(),
        None
    ));
    // Each pod works on its own rack's subnet.
    for (pod, subnet, ips) in [(&pod_a, 1u8, [a4, a6]), (&pod_b, 2, [b4, b6])] {
        let sn = lab.subnet(subnet).unwrap();
        assert!(ping(&pod.name, sn.gateway4.unwrap().into(), None));
        assert!(ping(&pod.name, sn.gateway6.unwrap().into(), None));
        let client = lab
            .fabric_client(subnet, sn.host4(9, 9), sn.host6(0x9999))
            .unwrap();
        for ip in ips {
            client_reaches(&client, pod, ip);
        }
    }
    // A node that matches no pool gets a clean error, not an address.
    let pod_c = lab.pod("rc").unwrap();
    let off = lab
        .chain(load(&lab, "macvlan-coordinator-ipam-racks.conflist"))
        .cni_path(cni_path())
        .env("NODE_NAME", "rack3-n01");
    let att_c = pod_att("ctr-rack-c", &pod_c, "eth0", "default", "web-c");
    let err = off.add(&att_c).expect_err("no pool serves rack3");
    assert_eq!(err.plugin.as_deref(), Some("macvlan"), "{err:?}");
    assert!(err.code != 0, "a CNI error code: {err:?}");
    off.del(&att_c)
        .unwrap_or_else(|e| panic!("DEL after failed ADD: {e}"));
    assert!(!lab::state::link_names(&pod_c.name)
        .unwrap()
        .contains(&"eth0".to_string()));

    on_b.del(&att_b).unwrap_or_else(|e| panic!("DEL b: {e}"));
    on_a.del(&att_a).unwrap_or_else(|e| panic!("DEL a: {e}"));
    assert_eq!(self::records(&lab), vec![]);
    assert_detached(lab.node(), &pod_a, "eth0", &[a4, a6]);
    assert_detached(&node_b.name, &pod_b, "eth0", &[b4, b6]);
}

// 4. Pool exhausted: code 110, nothing reserved, no link.
#[test]
fn exhausted_pool_fails_cleanly() {
    let lab = Lab::new().expect("build lab");
    let mut list = load(&lab, "macvlan-coordinator-ipam.conflist");
    // Two IPv4 addresses; IPv6 has room, so the failed ADD must also give
    // back the IPv6 address it would have taken (dual-stack is all or nothing).
    ipam_mut(&mut list)["pools"][0]["ranges"] = json!(["10.6.1.1-10.6.1.2"]);
    let chain = lab.chain(list).cni_path(cni_path());
    let mut held = Vec::new();
    for (i, name) in ["p0", "p1"].iter().enumerate() {
        let pod = lab.pod(name).unwrap();
        let att = pod_att(&format!("ctr-ex-{i}"), &pod, "eth0", "default", name);
        let r = add(&chain, &att);
        held.extend(both(&r));
    }
    let before = records(&lab);
    assert_eq!(before.len(), 4, "{before:?}");

    let pod = lab.pod("p2").unwrap();
    let att = pod_att("ctr-ex-2", &pod, "eth0", "default", "p2");
    let err = chain.add(&att).expect_err("third pod: the pool is full");
    assert_eq!(err.plugin.as_deref(), Some("macvlan"), "{err:?}");
    assert_eq!(err.code, 110, "pool exhausted: {err:?}");
    assert!(err.msg.contains("ens1-v4"), "names the pool: {}", err.msg);
    assert_eq!(records(&lab), before, "nothing reserved for the failed pod");
    // Nothing was configured: no address of either pool in the pod (the
    // reference macvlan leaves its bare eth0 behind when its IPAM fails; the
    // runtime's DEL below removes it).
    let addrs = lab::addrs(&pod.name).unwrap().to_string();
    for pool in ["\"10.6.", "\"fd00:6:"] {
        assert!(!addrs.contains(pool), "pod got an address: {addrs}");
    }
    // The runtime's DEL after the failed ADD succeeds, frees nothing else and
    // leaves no link in the pod.
    chain
        .del(&att)
        .unwrap_or_else(|e| panic!("DEL after failed ADD: {e}"));
    assert_eq!(records(&lab), before);
    let left = lab::state::link_names(&pod.name).unwrap();
    assert_eq!(left, vec!["lo".to_string()], "links left in the pod");
    // The two pods still work.
    let sn = lab.subnet(1).unwrap();
    let client = lab
        .fabric_client(1, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap();
    for ip in &held {
        assert!(ping(&client.name, *ip, None), "client -> {ip}");
    }
}

// 5. Sticky: a StatefulSet pod keeps its address across re-creation.
#[test]
fn sticky_statefulset_pod_keeps_its_address() {
    let lab = Lab::new().expect("build lab");
    let chain = chain(&lab, "macvlan-coordinator-ipam.conflist");
    let sn = lab.subnet(1).unwrap();
    let client = lab
        .fabric_client(1, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap();

    let old = lab.pod("mysql0-a").unwrap();
    let att_old = pod_att("ctr-mysql-0-old", &old, "eth0", "db", "mysql-0");
    let ips = both(&add(&chain, &att_old));
    for ip in ips {
        client_reaches(&client, &old, ip);
    }

    // Pod deleted: the addresses are parked for db/mysql-0, not freed.
    chain
        .del(&att_old)
        .unwrap_or_else(|e| panic!("DEL old: {e}"));
    lab.remove_netns(&old.name).unwrap();
    let list = cli_list(&lab);
    assert_eq!(list.len(), 2, "{list:?}");
    for ip in &ips {
        let r = record_of(&list, ip);
        assert_eq!(r["parked"], true, "{r}");
        assert_eq!(r["sticky"], "db/mysql-0", "{r}");
    }

    // Meanwhile other pods come and go; none gets the parked addresses.
    let other = lab.pod("web").unwrap();
    let att_other = pod_att("ctr-web-1", &other, "eth0", "default", "web-1");
    let web = both(&add(&chain, &att_other));
    assert!(web.iter().all(|ip| !ips.contains(ip)), "{web:?} vs {ips:?}");

    // Re-created (new sandbox, new container ID): the same addresses.
    let new = lab.pod("mysql0-b").unwrap();
    let att_new = pod_att("ctr-mysql-0-new", &new, "eth0", "db", "mysql-0");
    assert_eq!(both(&add(&chain, &att_new)), ips);
    let list = cli_list(&lab);
    for ip in &ips {
        let r = record_of(&list, ip);
        assert_eq!(r["containerId"], "ctr-mysql-0-new", "{r}");
        assert_eq!(r["parked"], false, "{r}");
    }
    for ip in ips {
        client_reaches(&client, &new, ip);
    }

    // A late DEL from the old sandbox frees nothing the new one holds.
    let late = Attachment {
        netns: None,
        ..att_old.clone()
    };
    chain.del(&late).unwrap_or_else(|e| panic!("late DEL: {e}"));
    let list = cli_list(&lab);
    for ip in &ips {
        assert_eq!(record_of(&list, ip)["containerId"], "ctr-mysql-0-new");
    }
    for ip in ips {
        client_reaches(&client, &new, ip);
    }

    // The pod moves to another node that shares the store (same subnet):
    // same addresses again, and the client's neighbour entries, REACHABLE
    // with the previous pod's MAC, follow the new one.
    chain.del(&att_other).unwrap();
    chain
        .del(&att_new)
        .unwrap_or_else(|e| panic!("DEL new: {e}"));
    assert_detached(lab.node(), &new, "eth0", &ips);
    let node_b = lab.extra_node("nodeb", &[1]).unwrap();
    let on_b = node_b.chain(load(&lab, "macvlan-coordinator-ipam.conflist"));
    let on_b = on_b.cni_path(cni_path());
    let moved = lab.pod("mysql0-c").unwrap();
    let att_moved = pod_att("ctr-mysql-0-moved", &moved, "eth0", "db", "mysql-0");
    assert_eq!(both(&add(&on_b, &att_moved)), ips);
    for ip in ips {
        client_reaches(&client, &moved, ip);
    }
    let mac = mac_of(&moved.name, "eth0");
    let neigh = lab::neighbours(&client.name).unwrap();
    for ip in ips {
        let entry = neigh
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["dst"] == ip.to_string().as_str())
            .unwrap_or_else(|| panic!("client has no entry for {ip}: {neigh}"));
        assert_eq!(entry["lladdr"], mac.as_str(), "{entry}");
    }

    on_b.del(&att_moved).unwrap();
    assert_detached(&node_b.name, &moved, "eth0", &ips);
    assert_eq!(
        cli_list(&lab).len(),
        2,
        "only db/mysql-0's parked addresses"
    );
}

/// The conf-examples added for this file parse as coordinator-ipam configs
/// (the plugin's own CLI reads them), so a typo there fails here too.
#[test]
fn conf_examples_parse_with_the_cli() {
    for file in [
        "macvlan-coordinator-ipam.conflist",
        "macvlan-coordinator-ipam-net1.conflist",
        "macvlan-coordinator-ipam-racks.conflist",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = conf_example(file).display().to_string();
        let data = dir.path().display().to_string();
        Exec::new(bin_dir().join("coordinator-ipam"))
            .args(&["usage", "--config", &config, "--data-dir", &data])
            .env("NODE_NAME", "rack1-n01")
            .run()
            .ok();
    }
}

/// Many pods of one node ADD at once (the kubelet starts sandboxes in
/// parallel): the store's lock serialises them, every pod gets its own
/// addresses, every address works, and parallel DELs free them all.
#[test]
fn parallel_adds_get_distinct_addresses() {
    const PODS: usize = 8;
    let lab = Lab::new().expect("build lab");
    let chain = chain(&lab, "macvlan-coordinator-ipam.conflist");
    let pods: Vec<Pod> = (0..PODS)
        .map(|i| lab.pod(&format!("par{i}")).unwrap())
        .collect();
    let atts: Vec<Attachment> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            pod_att(
                &format!("ctr-par-{i}"),
                p,
                "eth0",
                "default",
                &format!("par-{i}"),
            )
        })
        .collect();
    let results: Vec<[IpAddr; 2]> = std::thread::scope(|s| {
        let handles: Vec<_> = atts
            .iter()
            .map(|a| s.spawn(|| both(&add(&chain, a))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<IpAddr> = results.iter().flatten().copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 2 * PODS, "distinct addresses: {results:?}");
    let list = cli_list(&lab);
    assert_eq!(list.len(), 2 * PODS, "{list:?}");
    for (att, ips) in atts.iter().zip(&results) {
        for ip in ips {
            assert_eq!(
                record_of(&list, ip)["containerId"],
                att.container_id.as_str()
            );
        }
    }
    let sn = lab.subnet(1).unwrap();
    let client = lab
        .fabric_client(1, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap();
    for ip in results.iter().flatten() {
        assert!(ping(&client.name, *ip, None), "client -> {ip}");
    }
    std::thread::scope(|s| {
        for a in &atts {
            let chain = &chain;
            s.spawn(move || {
                chain
                    .del(a)
                    .unwrap_or_else(|e| panic!("DEL {}: {e}", a.container_id))
            });
        }
    });
    assert_eq!(records(&lab), vec![]);
}

/// Issue 5 meets the IPAM: the coordinator finds the IPAM's address in use
/// on the fabric, fails the ADD and quarantines it; the IPAM then never
/// hands that address out while the quarantine lasts, even when its
/// rotation comes back round to it.
#[test]
fn conflicting_address_is_quarantined_and_skipped() {
    let lab = Lab::new().expect("build lab");
    let mut list = load(&lab, "macvlan-coordinator-ipam.conflist");
    ipam_mut(&mut list)["pools"][0]["ranges"] = json!(["10.6.1.1-10.6.1.2"]);
    list.plugin_mut("coordinator")
        .unwrap()
        .insert("detectIPConflict".into(), json!(true));
    let chain = lab.chain(list).cni_path(cni_path());
    let first: IpAddr = "10.6.1.1".parse().unwrap();
    let second: IpAddr = "10.6.1.2".parse().unwrap();
    // An outside machine already uses the first address of the range.
    let _holder = lab
        .fabric_client(1, Some("10.6.1.1".parse().unwrap()), None)
        .unwrap();

    let p0 = lab.pod("q0").unwrap();
    let a0 = pod_att("ctr-q-0", &p0, "eth0", "default", "q-0");
    let err = chain.add(&a0).expect_err("10.6.1.1 is in use");
    assert_eq!(err.plugin.as_deref(), Some("coordinator"), "{err:?}");
    assert_eq!(err.code, 101, "{err:?}");
    let q = std::fs::read_to_string(lab.dir().join("quarantine.json")).unwrap_or_default();
    assert!(q.contains("\"10.6.1.1\""), "quarantined: {q}");
    chain
        .del(&a0)
        .unwrap_or_else(|e| panic!("DEL after failed ADD: {e}"));
    assert_eq!(records(&lab), vec![], "the runtime's DEL released it");

    // The cursor now stands after 10.6.1.1: one pod takes 10.6.1.2 and
    // leaves, so the rotation wraps round to the quarantined 10.6.1.1.
    let p1 = lab.pod("q1").unwrap();
    let a1 = pod_att("ctr-q-1", &p1, "eth0", "default", "q-1");
    assert_eq!(ip_of(&add(&chain, &a1), true), second);
    chain.del(&a1).unwrap();
    let p2 = lab.pod("q2").unwrap();
    let a2 = pod_att("ctr-q-2", &p2, "eth0", "default", "q-2");
    let r2 = add(&chain, &a2);
    assert_eq!(ip_of(&r2, true), second, "10.6.1.1 is skipped: {r2}");
    assert!(!cli_list(&lab)
        .iter()
        .any(|r| r["ip"] == first.to_string().as_str()));
    let sn = lab.subnet(1).unwrap();
    assert!(ping(&p2.name, sn.gateway4.unwrap().into(), None));
    // With the only other address taken, the pool is exhausted rather than
    // handing out the conflicting one.
    let p3 = lab.pod("q3").unwrap();
    let a3 = pod_att("ctr-q-3", &p3, "eth0", "default", "q-3");
    let err = chain
        .add(&a3)
        .expect_err("only a quarantined address is left");
    assert_eq!(err.code, 110, "{err:?}");
    chain.del(&a3).unwrap();
    chain.del(&a2).unwrap();
    assert_eq!(records(&lab), vec![]);
}

/// Fixed addresses through the two ways a runtime asks for them: CNI_ARGS
/// `IP=` and the `ips` capability (Multus' `ips` annotation becomes
/// `runtimeConfig.ips`, which macvlan hands to its IPAM unchanged). A second
/// pod asking for a held address fails with 111 and gets nothing.
#[test]
fn requested_addresses_via_cni_args_and_runtime_config() {
    let lab = Lab::new().expect("build lab");
    let mut list = load(&lab, "macvlan-coordinator-ipam.conflist");
    list.plugin_mut("macvlan")
        .unwrap()
        .insert("capabilities".into(), json!({"ips": true}));
    let chain = lab.chain(list).cni_path(cni_path());
    let want4: IpAddr = "10.6.1.77".parse().unwrap();
    let want6: IpAddr = "fd00:6::1:77".parse().unwrap();

    let p0 = lab.pod("fix0").unwrap();
    let a0 = pod_att("ctr-fix-0", &p0, "eth0", "default", "fix-0").arg("IP", "10.6.1.77");
    let r0 = add(&chain, &a0);
    assert_eq!(ip_of(&r0, true), want4, "{r0}");
    assert_in(ip_of(&r0, false), &["fd00:6::1:0/120"]);

    let p1 = lab.pod("fix1").unwrap();
    let a1 = pod_att("ctr-fix-1", &p1, "eth0", "default", "fix-1")
        .capability("ips", json!(["fd00:6::1:77/64"]));
    let r1 = add(&chain, &a1);
    assert_eq!(ip_of(&r1, false), want6, "{r1}");
    assert_ne!(ip_of(&r1, true), want4);

    let sn = lab.subnet(1).unwrap();
    let client = lab
        .fabric_client(1, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap();
    client_reaches(&client, &p0, want4);
    client_reaches(&client, &p1, want6);

    let before = records(&lab);
    let p2 = lab.pod("fix2").unwrap();
    let a2 = pod_att("ctr-fix-2", &p2, "eth0", "default", "fix-2").arg("IP", "10.6.1.77");
    let err = chain.add(&a2).expect_err("10.6.1.77 is held by fix-0");
    assert_eq!(err.code, 111, "{err:?}");
    assert!(err.msg.contains("10.6.1.77"), "{}", err.msg);
    assert_eq!(records(&lab), before, "nothing reserved for fix-2");
    chain.del(&a2).unwrap();

    chain.del(&a1).unwrap();
    chain.del(&a0).unwrap();
    assert_eq!(records(&lab), vec![]);
}

/// A sticky pod re-created on a node of another rack, whose subnet cannot
/// carry its address: the ADD fails loudly (111, naming the address and the
/// node) instead of moving the pod to a new address or handing it one that
/// rack cannot route; the parked addresses stay parked, nothing is taken
/// from rack 2's pools, and back on rack 1 the pod gets them again.
#[test]
fn sticky_pod_on_a_rack_that_cannot_hold_its_address_fails_loudly() {
    let lab = Lab::builder().subnets(2).build().expect("build lab");
    let node_b = lab.extra_node("nodeb", &[2]).unwrap();
    let mut list = load(&lab, "macvlan-coordinator-ipam-racks.conflist");
    ipam_mut(&mut list).insert(
        "sticky".into(),
        json!([{"namespace": "db", "pod": "mysql-*"}]),
    );
    let on_a = lab
        .chain(list.clone())
        .cni_path(cni_path())
        .env("NODE_NAME", "rack1-n01");
    let on_b = node_b
        .chain(list)
        .cni_path(cni_path())
        .env("NODE_NAME", "rack2-n07");

    let p0 = lab.pod("m0").unwrap();
    let a0 = pod_att("ctr-m-0", &p0, "eth0", "db", "mysql-0");
    let ips = both(&add(&on_a, &a0));
    on_a.del(&a0).unwrap();
    let parked = cli_list(&lab);

    let p1 = lab.pod("m1").unwrap();
    let a1 = pod_att("ctr-m-1", &p1, "eth0", "db", "mysql-0");
    let err = on_b.add(&a1).expect_err("rack 2 cannot hold 10.6.x");
    assert_eq!(err.code, 111, "{err:?}");
    for part in [ips[0].to_string().as_str(), "rack2-n07"] {
        assert!(err.msg.contains(part), "{} should name {part}", err.msg);
    }
    on_b.del(&a1).unwrap();
    assert_eq!(cli_list(&lab), parked, "still parked, nothing taken");

    let p2 = lab.pod("m2").unwrap();
    let a2 = pod_att("ctr-m-2", &p2, "eth0", "db", "mysql-0");
    assert_eq!(both(&add(&on_a, &a2)), ips);
    let sn = lab.subnet(1).unwrap();
    let client = lab
        .fabric_client(1, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap();
    client_reaches(&client, &p2, ips[1]);
    on_a.del(&a2).unwrap();
}

// 10. Two nodes sharing an etcd store (issue 13): a sticky pod whose node
// fails is recreated on the other node with its addresses, a fabric client
// reaches it there (its neighbour entry follows the new MAC), and the old
// node's late DEL frees nothing.
#[test]
fn sticky_pod_moves_to_another_node_sharing_etcd() {
    let lab = Lab::new().expect("build lab");
    let node_b = lab.extra_node("nodeb", &[1]).unwrap();
    let sn = lab.subnet(1).unwrap();
    // etcd runs on the fabric (a host of subnet 1), where both nodes reach it.
    let etcd_host = lab.fabric_client(1, sn.host4(9, 20), None).unwrap();
    let etcd_ip = IpAddr::V4(etcd_host.ipv4.unwrap());
    let cluster = integration::etcd::Cluster::start_in(1, None, Some((&etcd_host.name, etcd_ip)));
    let mut list = load(&lab, "macvlan-coordinator-ipam.conflist");
    let ipam = ipam_mut(&mut list);
    ipam.insert(
        "store".into(),
        json!({"kind": "etcd", "endpoints": cluster.endpoints()}),
    );
    ipam.insert(
        "sticky".into(),
        json!([{"namespace": "db", "pod": "mysql-*"}]),
    );
    ipam.remove("nodeName");
    let conf_file = lab.dir().join("etcd-net.conflist");
    std::fs::write(&conf_file, serde_json::to_string(&list.to_value()).unwrap()).unwrap();
    let on_a = lab
        .chain(list.clone())
        .cni_path(cni_path())
        .env("NODE_NAME", "node-a");
    let on_b = node_b
        .chain(list)
        .cni_path(cni_path())
        .env("NODE_NAME", "node-b");
    // The operator's view, through the etcd store, from node A.
    let owners = || -> Vec<(String, Option<String>, String)> {
        let conf = conf_file.display().to_string();
        let v = Exec::new(bin_dir().join("coordinator-ipam"))
            .args(&["list", "--json", "--config", &conf])
            .in_netns(lab.node_path())
            .run()
            .ok_json();
        let mut r: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["ip"].as_str().unwrap().to_string(),
                    r["containerId"].as_str().map(str::to_string),
                    r["node"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        r.sort();
        r
    };

    let pod_a = lab.pod("sta").unwrap();
    let att_a = pod_att("ctr-sticky-a", &pod_a, "eth0", "db", "mysql-0");
    let ips = both(&add(&on_a, &att_a));
    let client = lab
        .fabric_client(1, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap();
    for ip in ips {
        client_reaches(&client, &pod_a, ip);
    }
    // Node A fails: the sandbox is gone and no DEL ran. The pod is recreated on B.
    lab.remove_netns(&pod_a.name).unwrap();
    let pod_b = lab.pod("stb").unwrap();
    let att_b = pod_att("ctr-sticky-b", &pod_b, "eth0", "db", "mysql-0");
    let res_b = add(&on_b, &att_b);
    assert_eq!(
        both(&res_b),
        ips,
        "the sticky pod keeps its addresses on node B"
    );
    for ip in ips {
        client_reaches(&client, &pod_b, ip);
    }
    let mac_b = res_b["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sandbox"].as_str().is_some_and(|s| !s.is_empty()))
        .and_then(|i| i["mac"].as_str())
        .expect("pod interface MAC")
        .to_lowercase();
    let neigh = lab::neighbours(&client.name).unwrap();
    for ip in ips {
        let entry = neigh
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["dst"] == ip.to_string().as_str())
            .unwrap_or_else(|| panic!("no neighbour entry for {ip}: {neigh}"));
        assert_eq!(entry["lladdr"], mac_b.as_str(), "{ip}: {entry}");
    }
    let held_by_b: Vec<_> = ips
        .iter()
        .map(|ip| {
            (
                ip.to_string(),
                Some("ctr-sticky-b".to_string()),
                "node-b".to_string(),
            )
        })
        .collect();
    assert_eq!(owners(), held_by_b);
    // A comes back and runs its late DEL: success, and B keeps everything.
    on_a.del(&att_a)
        .unwrap_or_else(|e| panic!("late DEL on A: {e}"));
    assert_eq!(owners(), held_by_b);
    for ip in ips {
        client_reaches(&client, &pod_b, ip);
    }
    // B's DEL parks the addresses for the pod's next sandbox.
    on_b.del(&att_b).unwrap_or_else(|e| panic!("DEL on B: {e}"));
    let parked: Vec<_> = ips
        .iter()
        .map(|ip| (ip.to_string(), None, "node-b".to_string()))
        .collect();
    assert_eq!(owners(), parked);
    assert_detached(&node_b.name, &pod_b, "eth0", &ips);
}
