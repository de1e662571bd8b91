//! Chosen table ids and rule priorities (issue 24, item 3), end to end: a
//! pod whose config moves every id gets working symmetric routes on two
//! NICs next to another policy-routing owner that uses the default ids, and
//! an ADD whose ids another owner already uses in the pod is refused naming
//! both, with nothing changed. Real macvlan chains in a netns lab, TCP both
//! ways through the strict fabric (IPv4 `rp_filter=1`, an nftables `fib`
//! reverse-path check for IPv6). Needs root; never skips.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use cni_tests::{bin_dir, cni_path, conf_example};
use integration::chain::{result_ips, Attachment, Chain, ChainError, NetConfList};
use integration::lab::{self, state, Lab, Pod};
use integration::nsexec::{self, Enter};
use integration::traffic::{reply_peer, tcp_request, TcpServer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;
const BACKEND_PORT: u16 = 7000;

/// Every id away from its default.
fn moved_ids() -> Value {
    json!({
        "podReplyTable": 2000, "podRuleTableFirst": 2001,
        "podReplyRulePriority": 2900, "podRulePriority": 3000,
        "hostRuleTable": 600, "hostRulePriority": 2500
    })
}

fn build_lab(subnets: usize) -> Lab {
    assert!(
        bin_dir().join("coordinator").is_file(),
        "coordinator binary missing in {} (scripts/build.sh)",
        bin_dir().display()
    );
    let lab = Lab::builder()
        .subnets(subnets)
        .build()
        .expect("build lab (needs root)");
    // IPv6 has no rp_filter: the fabric drops what a uRPF router would.
    lab::in_netns(lab.fabric(), || {
        for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
            let path = format!("net/bridge/{key}");
            if Path::new("/proc/sys").join(&path).exists() {
                cni::netns::sysctl_set(&path, "0")?;
            }
        }
        Ok(())
    })
    .expect("fabric bridge sysctls");
    let script = "table ip6 rpf {\n chain pre {\n  type filter hook prerouting priority -150; policy accept;\n  \
                  ip6 saddr != { ::, fe80::/10 } fib saddr . iif oif missing drop\n }\n}\n";
    lab::nft_in(lab.fabric(), script).expect("nft fib reverse-path filter in the fabric");
    lab
}

/// A conflist from conf-examples/ with the coordinator's `fields` merged in,
/// state and logs in the lab, no node defaults file.
fn load(lab: &Lab, file: &str, fields: &Value) -> NetConfList {
    let mut list = NetConfList::from_file(conf_example(file))
        .unwrap_or_else(|e| panic!("load conf-examples/{file}: {e}"));
    lab.localize(&mut list);
    let c = cni_tests::coordinator_entry(&mut list, fields, lab.dir());
    let nodefaults = lab.dir().join("no-defaults.json").display().to_string();
    c.insert("defaultsFile".into(), json!(nodefaults));
    list
}

fn describe(e: &ChainError) -> String {
    let stderr = e
        .runs
        .last()
        .map(|r| r.stderr.trim().to_string())
        .unwrap_or_default();
    format!("{e}\nplugin stderr: {stderr}")
}

struct Nic {
    chain: Chain,
    att: Attachment,
    ips: Vec<IpAddr>,
    /// What the main plugin (macvlan) printed: replayed for a repeated ADD.
    main_stdout: String,
}

impl Nic {
    fn of(&self, v6: bool) -> IpAddr {
        *self.ips.iter().find(|i| i.is_ipv6() == v6).unwrap()
    }
}

fn attachment(pod: &Pod, ifname: &str) -> Attachment {
    Attachment::new(&format!("ctr-{}", pod.name), &pod.path, ifname)
}

fn attach(lab: &Lab, pod: &Pod, list: NetConfList, ifname: &str) -> Nic {
    let chain = lab.chain(list).cni_path(cni_path());
    let att = attachment(pod, ifname);
    let out = chain
        .add(&att)
        .unwrap_or_else(|e| panic!("ADD {ifname}: {}", describe(&e)));
    let ips = result_ips(out.result.as_ref().expect("ADD printed a result"));
    assert_eq!(ips.len(), 2, "dual-stack {ifname}: {ips:?}");
    Nic {
        chain,
        att,
        ips,
        main_stdout: out.runs[0].stdout.clone(),
    }
}

/// The NIC's chain with its main plugin replaced by one that prints the
/// recorded result: the coordinator's ADD again on the same pod and NIC.
fn replay_chain(lab: &Lab, nic: &Nic) -> Chain {
    let dir = lab.dir().join("replay");
    std::fs::create_dir_all(&dir).unwrap();
    let ty = format!("replay-{}", nic.att.ifname);
    let saved = dir.join(format!("{ty}.json"));
    std::fs::write(&saved, &nic.main_stdout).unwrap();
    let script = dir.join(&ty);
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat >/dev/null\ncat {}\n", saved.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let list = nic.chain.list();
    let coordinator = list
        .plugins
        .iter()
        .find(|p| p["type"] == "coordinator")
        .unwrap()
        .clone();
    let replay = NetConfList::from_value(json!({
        "cniVersion": list.cni_version, "name": list.name,
        "plugins": [{"type": ty}, Value::Object(coordinator)]
    }))
    .unwrap();
    let mut path = vec![dir];
    path.extend(cni_path());
    lab.chain(replay).cni_path(path)
}

/// ADD of `list` on `ifname` that the coordinator must refuse with code 7
/// naming `field`; the error message.
fn refused(lab: &Lab, pod: &Pod, list: NetConfList, ifname: &str, field: &str) -> String {
    let chain = lab.chain(list).cni_path(cni_path());
    let err = chain
        .add(&attachment(pod, ifname))
        .expect_err("ADD into ids another owner uses");
    assert_eq!(
        err.plugin.as_deref(),
        Some("coordinator"),
        "{}",
        describe(&err)
    );
    assert_eq!(err.code, 7, "{}", describe(&err));
    assert!(
        err.msg.contains(&format!("\"{field}\"")),
        "names {field}: {}",
        err.msg
    );
    // The runtime's DEL after a failed ADD.
    chain
        .del(&attachment(pod, ifname))
        .unwrap_or_else(|e| panic!("DEL after the refused ADD: {}", describe(&e)));
    err.msg
}

// ------------------------------------------------------------ kernel state

fn rule_lines(ns: &str) -> Vec<String> {
    state::rules(ns)
        .unwrap()
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {}",
                r["family"].as_str().unwrap_or(""),
                state::rule_line(r)
            )
        })
        .collect()
}

fn route_lines(ns: &str) -> Vec<String> {
    state::routes(ns, "all")
        .unwrap()
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["table"] != "local" && r["dst"] != "multicast")
        .map(state::route_line)
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    links: Vec<String>,
    rules: Vec<String>,
    routes: Vec<String>,
    neighbours: Vec<String>,
    nft: String,
}

fn snapshot(ns: &str) -> Snapshot {
    let mut links = state::link_names(ns).unwrap();
    links.sort();
    let mut neighbours: Vec<String> = state::neighbours(ns)
        .unwrap()
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))
        })
        .map(state::neigh_line)
        .collect();
    neighbours.sort();
    let nft = nsexec::command_in(ns, "nft", Enter::NetOnly)
        .and_then(|mut c| c.args(["list", "ruleset"]).output())
        .expect("nft list ruleset");
    Snapshot {
        links,
        rules: rule_lines(ns),
        routes: route_lines(ns),
        neighbours,
        nft: String::from_utf8_lossy(&nft.stdout).into_owned(),
    }
}

/// The pod's rules as (priority, table) pairs of one family.
fn rule_ids(ns: &str, family: &str) -> Vec<(u64, String)> {
    state::rules(ns)
        .unwrap()
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["family"] == family)
        .map(|r| {
            let table = match &r["table"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (r["priority"].as_u64().unwrap_or(0), table)
        })
        .collect()
}

/// Lines of the pod's rules whose source is `ip`.
fn rules_from(ns: &str, ip: IpAddr) -> Vec<String> {
    rule_lines(ns)
        .into_iter()
        .filter(|l| l.contains(&format!(" from {ip} ")))
        .collect()
}

// ------------------------------------------------------------ traffic

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// TCP from `ns` (from `src` when given) to `dst`: the server must have
/// seen `want`.
fn expect_peer(ns: &str, src: Option<IpAddr>, dst: SocketAddr, want: IpAddr) {
    let reply = tcp_request(ns, src, dst, T).unwrap_or_else(|e| {
        panic!(
            "TCP {ns} (from {src:?}) -> {dst}: {e}\nrules: {:#?}\nroutes: {:#?}",
            rule_lines(ns),
            route_lines(ns)
        )
    });
    assert_eq!(
        reply_peer(&reply).map(|p| p.ip()),
        Some(want),
        "{ns} -> {dst}: {reply}"
    );
}

fn client(lab: &Lab, subnet: u8) -> lab::Client {
    let sn = lab.subnet(subnet).unwrap();
    lab.fabric_client(subnet, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap()
}

fn client_ip(c: &lab::Client, v6: bool) -> IpAddr {
    match v6 {
        true => c.ipv6.unwrap().into(),
        false => c.ipv4.unwrap().into(),
    }
}

fn node_ip(lab: &Lab, v6: bool) -> IpAddr {
    let sn = lab.subnet(1).unwrap();
    match v6 {
        true => sn.node6.unwrap().into(),
        false => sn.node4.unwrap().into(),
    }
}

/// Every client reaches every address of `nics` and gets its reply through
/// the strict fabric; the node reaches them too (its host routes in the
/// moved hostRuleTable, the replies through the moved reply table); a
/// NodePort connection to the first NIC's address gets its reply.
fn traffic(lab: &Lab, pod: &Pod, nics: &[&Nic], clients: &[&lab::Client]) {
    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    for c in clients {
        for nic in nics {
            for v6 in [false, true] {
                expect_peer(&c.name, None, sa(nic.of(v6), POD_PORT), client_ip(c, v6));
            }
        }
    }
    for nic in nics {
        for v6 in [false, true] {
            let reply = tcp_request(lab.node(), None, sa(nic.of(v6), POD_PORT), T)
                .unwrap_or_else(|e| panic!("node -> pod {}: {e}", nic.of(v6)));
            let peer = reply_peer(&reply).map(|p| p.ip());
            assert!(
                peer.is_some_and(|p| lab
                    .subnets()
                    .iter()
                    .any(|s| s.node4.map(IpAddr::from) == Some(p)
                        || s.node6.map(IpAddr::from) == Some(p))),
                "node -> pod {}: server saw {peer:?}",
                nic.of(v6)
            );
        }
    }
    for v6 in [false, true] {
        let node = node_ip(lab, v6);
        lab.node_service(sa(node, NODE_PORT), sa(nics[0].of(v6), POD_PORT))
            .unwrap();
        expect_peer(
            &clients[0].name,
            None,
            sa(node, NODE_PORT),
            client_ip(clients[0], v6),
        );
    }
    // Each NIC's addresses reach a Service through the node (the NIC
    // tables' hijack routes through veth0).
    let _backend = TcpServer::start(lab.node(), sa("::".parse().unwrap(), BACKEND_PORT)).unwrap();
    for (svc, v6) in [("10.233.0.10:80", false), ("[fd00:233::10]:80", true)] {
        let svc: SocketAddr = svc.parse().unwrap();
        lab.node_service(svc, sa(node_ip(lab, v6), BACKEND_PORT))
            .unwrap();
        for nic in nics {
            let src = nic.of(v6);
            expect_peer(&pod.name, Some(src), svc, src);
        }
    }
}

/// `coordinator explain --json` of `pod`, run on the node with a node
/// defaults file holding the moved ids; exit status 0 (every flow symmetric).
fn explain_moved(lab: &Lab, pod: &Pod) -> Value {
    let defaults = lab.dir().join("moved-defaults.json");
    let mut d = moved_ids();
    d["serviceCIDR"] = json!(["10.233.0.0/18", "fd00:233::/110"]);
    std::fs::write(&defaults, d.to_string()).unwrap();
    let coordinator = bin_dir().join("coordinator").display().to_string();
    let mut cmd = nsexec::command_in(lab.node(), &coordinator, Enter::NetOnly).unwrap();
    cmd.args(["explain", "--json", "--netns"])
        .arg(&pod.path)
        .arg("--defaults")
        .arg(&defaults);
    let out = cmd.output().expect("run coordinator explain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "explain: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("explain --json: {e}: {stdout}"))
}

/// What another policy-routing owner (a routing daemon, an operator) keeps
/// in the pod at the default ids: a route in table 100, a rule at 1000 into
/// table 101 and its route there, a rule at 900.
fn another_owner(ns: &str) {
    for args in [
        &[
            "route",
            "add",
            "unreachable",
            "10.97.0.0/16",
            "table",
            "100",
            "proto",
            "static",
        ][..],
        &[
            "route",
            "add",
            "unreachable",
            "10.98.0.0/16",
            "table",
            "101",
            "proto",
            "static",
        ],
        &[
            "rule",
            "add",
            "priority",
            "1000",
            "from",
            "10.98.0.0/16",
            "lookup",
            "101",
        ],
        &[
            "rule", "add", "priority", "900", "fwmark", "0x1", "lookup", "101",
        ],
        &[
            "-6",
            "route",
            "add",
            "unreachable",
            "fd00:98::/64",
            "table",
            "101",
            "proto",
            "static",
        ],
        &[
            "-6",
            "rule",
            "add",
            "priority",
            "1000",
            "from",
            "fd00:98::/64",
            "lookup",
            "101",
        ],
    ] {
        lab::ip(ns, args).unwrap_or_else(|e| panic!("ip {args:?} in {ns}: {e}"));
    }
}

// ------------------------------------------------------------ tests

/// Another owner uses tables 100 and 101 and priorities 900 and 1000 in
/// the pod. With the default ids the first NIC's ADD is refused; with every
/// id moved, both NICs attach next to it and route symmetrically, the node
/// uses the moved host table and priority, CHECK passes, and DEL leaves the
/// pod as it was, the other owner's rules and routes untouched.
#[test]
fn moved_ids_route_two_nics_next_to_another_owner() {
    let lab = build_lab(3);
    let pod = lab.pod("p").unwrap();
    another_owner(&pod.name);
    let pod_before = snapshot(&pod.name);
    let node_before = snapshot(lab.node());

    // One refusal names every id to move: the reply rule's priority (900)
    // first, then the reply table (100).
    let msg = refused(
        &lab,
        &pod,
        load(&lab, "macvlan-underlay.conflist", &json!({})),
        "eth0",
        "podReplyRulePriority",
    );
    for want in [
        "rule priority 900 (the coordinator's `900: from all fwmark 0xc0de lookup 100` for eth0)",
        "rule `900: from all fwmark 0x1 lookup 101`, which the coordinator did not make",
        "another policy-routing owner",
        "table 100 (the coordinator's, for the way back through veth0",
        "route `10.97.0.0/16 table 100` (protocol static (4)",
        "(set podReplyTable)",
    ] {
        assert!(msg.contains(want), "{want} not in {msg}");
    }
    assert_eq!(snapshot(&pod.name), pod_before, "pod after the refusal");
    assert_eq!(snapshot(lab.node()), node_before, "node after the refusal");

    let ids = moved_ids();
    let eth0 = attach(
        &lab,
        &pod,
        load(&lab, "macvlan-underlay.conflist", &ids),
        "eth0",
    );
    let net1 = attach(
        &lab,
        &pod,
        load(&lab, "macvlan-underlay-net1.conflist", &ids),
        "net1",
    );

    // The pod's rules: the other owner's as they were, ours at the moved
    // ids only; nothing of ours at a default id.
    for family in ["inet", "inet6"] {
        let got = rule_ids(&pod.name, family);
        let ours: Vec<&(u64, String)> = got
            .iter()
            .filter(|(p, _)| [2900, 3000].contains(p))
            .collect();
        assert_eq!(
            ours,
            vec![
                &(2900, "2000".to_string()),
                &(3000, "2001".to_string()),
                &(3000, "2002".to_string()),
            ],
            "{family}: {got:?}"
        );
        let defaults = got.iter().filter(|(p, _)| [900, 1000].contains(p)).count();
        let other_owner = if family == "inet" { 2 } else { 1 };
        assert_eq!(defaults, other_owner, "{family}: {got:?}");
    }
    for (nic, table) in [(&net1, "2001"), (&eth0, "2002")] {
        for v6 in [false, true] {
            let lines = rules_from(&pod.name, nic.of(v6));
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(
                lines[0].contains("3000: from") && lines[0].ends_with(&format!("lookup {table}")),
                "{lines:?}"
            );
        }
    }
    // The node: `from all lookup 600` at 2500, the pod's addresses in 600.
    let node_rules = rule_lines(lab.node());
    for family in ["inet", "inet6"] {
        let want = format!("{family} 2500: from all lookup 600");
        assert!(node_rules.contains(&want), "{want} not in {node_rules:#?}");
    }
    let table600 = state::routes(lab.node(), "600").unwrap();
    for ip in eth0.ips.iter().chain(&net1.ips) {
        assert!(
            table600
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["dst"].as_str() == Some(ip.to_string().as_str())),
            "{ip} not in the node's table 600: {table600}"
        );
    }

    let (c1, c2, c3) = (client(&lab, 1), client(&lab, 2), client(&lab, 3));
    traffic(&lab, &pod, &[&eth0, &net1], &[&c1, &c2, &c3]);

    for nic in [&eth0, &net1] {
        nic.chain
            .check(&nic.att)
            .unwrap_or_else(|e| panic!("CHECK {}: {}", nic.att.ifname, describe(&e)));
    }
    // `coordinator explain` with the node defaults of these ids agrees with
    // the traffic: every flow symmetric, through the moved tables.
    let report = explain_moved(&lab, &pod);
    let flows = report["flows"].as_array().unwrap();
    assert!(flows.len() >= 16, "{report:#}");
    let table_of = |nic: &str, kind: &str| -> Vec<u64> {
        flows
            .iter()
            .filter(|f| f["nic"] == nic && f["flow"] == kind)
            .map(|f| f["pod_table"].as_u64().unwrap_or(0))
            .collect()
    };
    assert_eq!(table_of("net1", "subnet"), [2001, 2001], "{report:#}");
    assert_eq!(table_of("eth0", "routed"), [2002, 2002], "{report:#}");
    assert_eq!(table_of("eth0", "nodeport"), [2000, 2000], "{report:#}");
    // A repeated ADD finds only its own ids: no refusal, nothing changes.
    let pod_added = snapshot(&pod.name);
    for nic in [&eth0, &net1] {
        replay_chain(&lab, nic)
            .add(&nic.att)
            .unwrap_or_else(|e| panic!("repeated ADD {}: {}", nic.att.ifname, describe(&e)));
        assert_eq!(snapshot(&pod.name), pod_added, "pod after repeated ADD");
    }

    for nic in [&net1, &eth0] {
        nic.chain
            .del(&nic.att)
            .unwrap_or_else(|e| panic!("DEL {}: {}", nic.att.ifname, describe(&e)));
    }
    assert_eq!(snapshot(&pod.name), pod_before, "pod after DEL");
    let node_after = snapshot(lab.node());
    assert_eq!(node_after.links, node_before.links, "node links after DEL");
    assert_eq!(
        node_after.routes, node_before.routes,
        "node routes after DEL"
    );
    assert_eq!(node_after.neighbours, node_before.neighbours);
    // The host rule is shared by the node's pods and stays, at 2500.
    let mut rules = node_after.rules.clone();
    rules.retain(|r| !r.ends_with("2500: from all lookup 600"));
    assert_eq!(rules, node_before.rules, "node rules after DEL");
}

/// A later NIC whose `from` rules' priority (1000) another owner took after
/// the first NIC's ADD: refused with code 7 naming podRulePriority, the
/// other owner's rule and ours; nothing of the coordinator's changed, and
/// the first NIC still works.
#[test]
fn another_owners_priority_refuses_a_later_nic() {
    let lab = build_lab(2);
    let pod = lab.pod("p").unwrap();
    let eth0 = attach(
        &lab,
        &pod,
        load(&lab, "macvlan-underlay.conflist", &json!({})),
        "eth0",
    );
    for args in [
        &[
            "route",
            "add",
            "unreachable",
            "10.98.0.0/16",
            "table",
            "101",
            "proto",
            "static",
        ][..],
        &[
            "rule",
            "add",
            "priority",
            "1000",
            "from",
            "10.98.0.0/16",
            "lookup",
            "101",
        ],
    ] {
        lab::ip(&pod.name, args).unwrap();
    }
    let pod_mid = snapshot(&pod.name);
    let node_mid = snapshot(lab.node());

    let chain = lab
        .chain(load(&lab, "macvlan-underlay-net1.conflist", &json!({})))
        .cni_path(cni_path());
    let att = attachment(&pod, "net1");
    let err = chain
        .add(&att)
        .expect_err("ADD net1 at another owner's priority");
    assert_eq!(
        err.plugin.as_deref(),
        Some("coordinator"),
        "{}",
        describe(&err)
    );
    assert_eq!(err.code, 7, "{}", describe(&err));
    for want in [
        "\"podRulePriority\"",
        "rule priority 1000 (the coordinator's `1000: from 10.7.1.",
        " for net1)",
        "rule `1000: from 10.98.0.0/16 lookup 101`, which the coordinator did not make",
    ] {
        assert!(err.msg.contains(want), "{want} not in {}", err.msg);
    }
    // Nothing of ours changed: only macvlan's net1 (and its routes) is new.
    let mut after = snapshot(&pod.name);
    after.links.retain(|l| l != "net1");
    after.routes.retain(|r| !r.contains(" dev net1"));
    assert_eq!(after, pod_mid, "pod after the refused ADD");
    assert_eq!(snapshot(lab.node()), node_mid, "node after the refused ADD");
    chain
        .del(&att)
        .unwrap_or_else(|e| panic!("DEL net1 after the refusal: {}", describe(&e)));
    assert_eq!(snapshot(&pod.name), pod_mid, "pod after DEL of net1");

    // eth0 still answers its clients and the node.
    let c1 = client(&lab, 1);
    traffic(&lab, &pod, &[&eth0], &[&c1]);
    eth0.chain
        .check(&eth0.att)
        .unwrap_or_else(|e| panic!("CHECK eth0: {}", describe(&e)));
}

/// The node's ports to the fabric carry only the node's own addresses (port
/// security): a reply of the pod's underlay address that left by the
/// overlay `eth0` and the node is dropped there.
fn strict_node_ports(lab: &Lab) {
    let mut script = String::from(
        "table inet ids_port {\n chain post { type filter hook postrouting priority 0; policy accept; }\n}\n",
    );
    for s in lab.subnets() {
        if let Some(me) = s.node4 {
            script.push_str(&format!(
                "add rule inet ids_port post oifname \"{}\" ip saddr != {me} drop\n",
                s.parent
            ));
        }
        if let Some(me) = s.node6 {
            script.push_str(&format!(
                "add rule inet ids_port post oifname \"{}\" ip6 saddr != {me} ip6 saddr != fe80::/10 ip6 saddr != :: drop\n",
                s.parent
            ));
        }
    }
    lab.nft(&script).unwrap();
}

/// Overlay mode with every id moved: ptp `eth0` (its own table is the
/// reply table, 2000) and macvlan `net1` (2001), next to another owner of
/// the default ids. Clients reach net1's addresses with symmetric replies,
/// the node reaches them through eth0's host peer (hostRuleTable 600 at
/// 2500), net1's addresses reach a Service through eth0; CHECK passes and
/// DEL leaves the pod as it was.
#[test]
fn moved_ids_in_overlay_mode() {
    let lab = build_lab(2);
    strict_node_ports(&lab);
    let pod = lab.pod("o").unwrap();
    another_owner(&pod.name);
    let pod_before = snapshot(&pod.name);
    let node_before = snapshot(lab.node());
    let ids = moved_ids();
    let eth0 = attach(&lab, &pod, load(&lab, "ptp-overlay.conflist", &ids), "eth0");
    let net1 = attach(
        &lab,
        &pod,
        load(&lab, "macvlan-overlay-net1.conflist", &ids),
        "net1",
    );
    assert!(!state::link_names(&pod.name)
        .unwrap()
        .contains(&"veth0".to_string()));
    for (nic, table) in [(&eth0, "2000"), (&net1, "2001")] {
        for v6 in [false, true] {
            let lines = rules_from(&pod.name, nic.of(v6));
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(
                lines[0].contains("3000: from") && lines[0].ends_with(&format!("lookup {table}")),
                "{lines:?}"
            );
        }
    }

    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    let (c1, c2) = (client(&lab, 1), client(&lab, 2));
    for c in [&c1, &c2] {
        for v6 in [false, true] {
            expect_peer(&c.name, None, sa(net1.of(v6), POD_PORT), client_ip(c, v6));
        }
    }
    let _backend = TcpServer::start(lab.node(), sa("::".parse().unwrap(), BACKEND_PORT)).unwrap();
    for v6 in [false, true] {
        // The node, from its fabric address: in through eth0's peer, the
        // reply back the same way (the fabric port would drop it otherwise).
        let node = node_ip(&lab, v6);
        expect_peer(lab.node(), Some(node), sa(net1.of(v6), POD_PORT), node);
        let table600 = state::routes(lab.node(), "600").unwrap();
        let dst = net1.of(v6).to_string();
        assert!(
            table600
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["dst"].as_str() == Some(dst.as_str())),
            "{dst} not in the node's table 600: {table600}"
        );
        let svc: SocketAddr = match v6 {
            false => "10.233.0.10:80".parse().unwrap(),
            true => "[fd00:233::10]:80".parse().unwrap(),
        };
        lab.node_service(svc, sa(node, BACKEND_PORT)).unwrap();
        expect_peer(&pod.name, Some(net1.of(v6)), svc, net1.of(v6));
    }
    for nic in [&eth0, &net1] {
        nic.chain
            .check(&nic.att)
            .unwrap_or_else(|e| panic!("CHECK {}: {}", nic.att.ifname, describe(&e)));
    }
    for nic in [&net1, &eth0] {
        nic.chain
            .del(&nic.att)
            .unwrap_or_else(|e| panic!("DEL {}: {}", nic.att.ifname, describe(&e)));
    }
    assert_eq!(snapshot(&pod.name), pod_before, "pod after DEL");
    let node_after = snapshot(lab.node());
    assert_eq!(
        node_after.routes, node_before.routes,
        "node routes after DEL"
    );
    assert_eq!(node_after.neighbours, node_before.neighbours);
}
