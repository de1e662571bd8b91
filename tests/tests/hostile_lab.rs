//! Issue 12 reproductions that need a netns lab: a pod netns that is the
//! node's own, pod addresses the node owns, and an `eth0` attached without
//! the coordinator in mode `auto`. Each checks that the node is left exactly
//! as it was. Needs root and the built binaries; never skips.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cni_tests::{bin_dir, cni_path};
use integration::chain::{Attachment, NetConfList};
use integration::lab::{state, Lab, LabBuilder};
use integration::nsexec::{command_in, Enter};
use integration::traffic::{ping, reply_peer, tcp_request, TcpServer};
use serde_json::{json, Value};

fn lab(subnets: usize) -> Lab {
    assert!(
        bin_dir().join("coordinator").is_file(),
        "coordinator binary missing (cargo build --workspace --bins)"
    );
    LabBuilder::default()
        .subnets(subnets)
        .ipv6(false)
        .build()
        .expect("build lab (needs root)")
}

/// Everything on the node a plugin could leave behind or remove (the
/// kit's snapshot).
fn node_state(lab: &Lab) -> Vec<String> {
    cni_tests::kstate::Snapshot::capture(lab.node())
        .expect("node snapshot")
        .lines()
}

/// Exec the coordinator in the node netns as a runtime would.
fn coordinator_in_node(lab: &Lab, cmd: &str, netns: &str, conf: &Value) -> (i32, Value) {
    let bin = bin_dir().join("coordinator");
    let mut c = command_in(lab.node(), &bin.display().to_string(), Enter::WithSysfs)
        .expect("enter node netns");
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", format!("own-{}", lab.prefix()))
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn coordinator");
    use std::io::Write;
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes());
    let out = child.wait_with_output().expect("coordinator ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout {stdout:?}: {e}"))
    };
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn the_nodes_own_netns_is_refused_and_del_leaves_it_alone() {
    let lab = lab(1);
    let ns = lab.node();
    // What an underlay pod netns holds, planted on the node: a DEL that took
    // the node for a pod would delete all of it.
    state::ip_batch(
        ns,
        &[
            "link add veth0 type veth peer name hostile0".into(),
            "link set veth0 up".into(),
            "link set hostile0 up".into(),
            "rule add fwmark 0xc0de lookup 100 priority 900".into(),
            "route add default dev veth0 table 100".into(),
        ],
    )
    .expect("plant pod-like state on the node");
    lab.nft("table inet coordinator {\n}\n").expect("nft table");
    let before = node_state(&lab);
    let node_path: PathBuf = lab.node_path();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ownns", "type": "coordinator", "mode": "underlay",
        "defaultsFile": lab.dir().join("no-defaults.json"),
        "quarantineFile": lab.dir().join("quarantine.json"),
        "logOptions": {"logFile": "-", "logLevel": "debug"},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": node_path}],
            "ips": [{"address": "10.6.1.77/16", "gateway": "10.6.0.1", "interface": 0}]},
    });
    let netns = node_path.display().to_string();
    let (code, err) = coordinator_in_node(&lab, "ADD", &netns, &conf);
    assert_eq!((code, &err["code"]), (1, &json!(4)), "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or("")
            .contains("own network namespace"),
        "{err}"
    );
    assert_eq!(node_state(&lab), before, "ADD changed the node");
    for _ in 0..2 {
        let (code, out) = coordinator_in_node(&lab, "DEL", &netns, &conf);
        assert_eq!(code, 0, "DEL: {out}");
    }
    assert_eq!(node_state(&lab), before, "DEL changed the node");
}

fn static_underlay(lab: &Lab, address: &str) -> NetConfList {
    let mut v = json!({
        "cniVersion": "1.0.0", "name": "guarded",
        "plugins": [
            {"type": "macvlan", "master": "ens1", "mode": "bridge",
             "ipam": {"type": "static", "addresses": [{"address": address, "gateway": "10.6.0.1"}],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "coordinator", "mode": "underlay"}
        ]
    });
    v["plugins"][1]["defaultsFile"] = json!(lab.dir().join("no-defaults.json"));
    let mut list = NetConfList::from_value(v).expect("conflist");
    lab.localize(&mut list);
    list
}

#[test]
fn pod_addresses_the_node_owns_are_refused_before_any_change() {
    let lab = lab(1);
    // A node route through the fabric gateway, so 10.6.0.1 is "a gateway of
    // the node" as the issue describes (node's default or any route via it).
    state::ip(
        lab.node(),
        &[
            "route",
            "add",
            "10.99.0.0/16",
            "via",
            "10.6.0.1",
            "dev",
            "ens1",
        ],
    )
    .expect("node route via the gateway");
    let before = node_state(&lab);
    for (i, (address, what)) in [
        ("10.6.0.1/16", "gateway of the node"),
        ("10.6.0.2/16", "address of the node"),
    ]
    .into_iter()
    .enumerate()
    {
        let pod = lab.pod(&format!("g{i}")).expect("pod netns");
        let chain = lab
            .chain(static_underlay(&lab, address))
            .cni_path(cni_path());
        let att = Attachment::new(&format!("guard-{}-{i}", lab.prefix()), &pod.path, "eth0");
        let e = chain.add(&att).expect_err("ADD must be refused");
        let msg = e.to_string();
        assert!(
            msg.contains(what) && msg.contains("101"),
            "{address}: {msg}"
        );
        // The runtime's DEL after a failed ADD.
        chain.del(&att).expect("DEL after the refused ADD");
        assert_eq!(node_state(&lab), before, "{address}: node changed");
        // The node still reaches its gateway through its uplink.
        let via = state::ip(lab.node(), &["route", "get", "10.6.0.1"]).expect("route get");
        assert!(via.contains("dev ens1"), "{via}");
    }
}

#[test]
fn auto_mode_never_takes_an_underlay_eth0s_uplink_for_an_overlay_peer() {
    let lab = lab(2);
    let before = node_state(&lab);
    let pod = lab.pod("m").expect("pod netns");
    let id = format!("auto-{}", lab.prefix());
    // eth0: plain macvlan on ens1, no coordinator.
    let mut eth0 = NetConfList::from_value(json!({
        "cniVersion": "1.0.0", "name": "plain-eth0",
        "plugins": [{"type": "macvlan", "master": "ens1", "mode": "bridge",
            "ipam": {"type": "static", "addresses": [{"address": "10.6.1.40/16", "gateway": "10.6.0.1"}],
                     "routes": [{"dst": "0.0.0.0/0"}]}}]
    }))
    .expect("eth0 conflist");
    lab.localize(&mut eth0);
    let eth0 = lab.chain(eth0).cni_path(cni_path());
    let eth0_att = Attachment::new(&id, &pod.path, "eth0");
    eth0.add(&eth0_att).expect("eth0 ADD");
    // net1: macvlan on ens2 + the coordinator in mode auto.
    let mut net1 = NetConfList::from_value(json!({
        "cniVersion": "1.0.0", "name": "auto-net1",
        "plugins": [
            {"type": "macvlan", "master": "ens2", "mode": "bridge",
             "ipam": {"type": "static", "addresses": [{"address": "10.7.1.40/16", "gateway": "10.7.0.1"}]}},
            {"type": "coordinator", "mode": "auto"}
        ]
    }))
    .expect("net1 conflist");
    net1.plugins[1].insert(
        "defaultsFile".into(),
        json!(lab.dir().join("no-defaults.json")),
    );
    lab.localize(&mut net1);
    let net1 = lab.chain(net1).cni_path(cni_path());
    let net1_att = Attachment::new(&id, &pod.path, "net1");
    net1.add(&net1_att)
        .unwrap_or_else(|e| panic!("net1 ADD: {e}"));
    // Nothing of the pod's went onto the node (eth0's parent uplink ens1
    // used to get permanent neighbours and host routes for 10.7.1.40).
    let after_add = node_state(&lab);
    let added: Vec<&String> = after_add.iter().filter(|l| !before.contains(l)).collect();
    assert!(added.is_empty(), "ADD left on the node: {added:?}");
    net1.del(&net1_att).expect("net1 DEL");
    eth0.del(&eth0_att).expect("eth0 DEL");
    assert_eq!(node_state(&lab), before, "node changed");
}

/// The node's routes to `ip` in the host table (500), as `ip route` lines.
fn host_routes_to(lab: &Lab, ip: &str) -> Vec<String> {
    let text = state::ip(lab.node(), &["route", "show", "table", "500", ip]).expect("ip route");
    text.lines().map(|l| l.trim().to_string()).collect()
}

/// The node reaches the pod at `ip` (ping, and a TCP exchange whose server
/// saw the node's address).
fn node_reaches(lab: &Lab, ip: IpAddr, what: &str) {
    assert!(ping(lab.node(), ip, None), "{what}: node -> {ip} ping");
    let reply = tcp_request(
        lab.node(),
        None,
        SocketAddr::new(ip, 8080),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{what}: node -> {ip}:8080: {e}"));
    let node: IpAddr = "10.6.0.2".parse().unwrap();
    assert_eq!(
        reply_peer(&reply).map(|p| p.ip()),
        Some(node),
        "{what}: {reply}"
    );
}

/// Issue 21.5: two pods given one address (detectIPConflict off). The second
/// ADD is refused with code 101 naming the first pod's host veth, before it
/// changes anything: the node's host route still leads to the first pod,
/// which the node still reaches, also after the second pod's DEL.
#[test]
fn a_second_pod_with_the_same_address_is_refused_and_the_first_keeps_its_route() {
    let lab = lab(1);
    let address = "10.6.1.50";
    let ip: IpAddr = address.parse().unwrap();
    let attach = |name: &str| {
        let pod = lab.pod(name).expect("pod netns");
        let chain = lab
            .chain(static_underlay(&lab, &format!("{address}/16")))
            .cni_path(cni_path());
        let id = format!("dup-{}-{name}", lab.prefix());
        let att = Attachment::new(&id, &pod.path, "eth0");
        (pod, chain, att, coordinator::names::host_veth_name(&id))
    };
    let (first, chain1, att1, veth1) = attach("d1");
    chain1.add(&att1).expect("first pod's ADD");
    let _srv = TcpServer::start(&first.name, "0.0.0.0:8080".parse().unwrap()).unwrap();
    let route = host_routes_to(&lab, address);
    assert!(
        route.len() == 1 && route[0].contains(&format!("dev {veth1}")),
        "{route:?}"
    );
    node_reaches(&lab, ip, "first pod attached");
    let before = node_state(&lab);

    let (_second, chain2, att2, veth2) = attach("d2");
    let e = chain2
        .add(&att2)
        .expect_err("the second ADD must be refused");
    assert_eq!(e.code, 101, "{e}");
    assert!(e.msg.contains(address) && e.msg.contains(&veth1), "{e}");
    assert_eq!(node_state(&lab), before, "the refused ADD changed the node");
    assert_eq!(host_routes_to(&lab, address), route);
    node_reaches(&lab, ip, "second ADD refused");

    // The runtime's DEL after the failed ADD (twice: idempotent).
    for _ in 0..2 {
        chain2.del(&att2).expect("second pod's DEL");
    }
    assert_eq!(
        node_state(&lab),
        before,
        "the second pod's DEL changed the node"
    );
    assert!(!state::link_names(lab.node()).unwrap().contains(&veth2));
    node_reaches(&lab, ip, "second pod deleted");

    chain1.del(&att1).expect("first pod's DEL");
    assert_eq!(host_routes_to(&lab, address), Vec::<String>::new());
}
