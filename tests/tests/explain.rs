//! `coordinator explain` (issue 14) on pods built in a netns lab by the real
//! chains of conf-examples/, healthy and deliberately broken (a removed rule,
//! a missing serviceCIDR, a multipath default), in text and JSON; and the
//! verdict matched against real traffic on the strict fabric. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cni_tests::{bin_dir, cni_path, conf_example};
use integration::chain::{result_ips, Attachment, NetConfList};
use integration::exec::Exec;
use integration::lab::{state, Lab, Pod};
use integration::nsexec::{command_in, Enter};
use integration::traffic::{tcp_request, TcpServer};
use serde_json::{json, Value};

const SERVICES: &[&str] = &["10.233.0.0/18", "fd00:233::/110"];
const PORT: u16 = 8080;

fn coordinator() -> String {
    let bin = bin_dir().join("coordinator");
    assert!(
        bin.is_file(),
        "{} missing (cargo build -p coordinator)",
        bin.display()
    );
    bin.display().to_string()
}

/// A conflist from conf-examples/ with the machine's node defaults kept out.
fn load(lab: &Lab, file: &str, service_cidr: bool) -> NetConfList {
    let mut list = NetConfList::from_file(conf_example(file)).expect(file);
    lab.localize(&mut list);
    let c = list.plugin_mut("coordinator").expect("a coordinator");
    let nodefaults = lab.dir().join("no-defaults.json");
    c.insert("defaultsFile".into(), json!(nodefaults));
    if service_cidr {
        c.insert("serviceCIDR".into(), json!(SERVICES));
    } else {
        c.remove("serviceCIDR");
    }
    list
}

/// Attach `ifname` with `file`; the NIC's addresses.
fn attach(lab: &Lab, pod: &Pod, list: NetConfList, ifname: &str) -> Vec<IpAddr> {
    let att = Attachment::new(&format!("ctr-{}", pod.name), &pod.path, ifname);
    let out = lab
        .chain(list)
        .cni_path(cni_path())
        .add(&att)
        .unwrap_or_else(|e| panic!("ADD {ifname}: {e}"));
    let ips = result_ips(&out.result.expect("a result"));
    assert!(!ips.is_empty());
    ips
}

struct Explained {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Explained {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("explain --json: {e}\n{}\n{}", self.stdout, self.stderr))
    }
}

/// Run `coordinator explain` in the lab's node netns (as an operator on the node).
fn explain(lab: &Lab, pod: &Pod, extra: &[&str]) -> Explained {
    let mut cmd = command_in(lab.node(), &coordinator(), Enter::NetOnly).unwrap();
    cmd.arg("explain")
        .arg("--netns")
        .arg(&pod.path)
        .arg("--defaults")
        .arg(lab.dir().join("no-defaults.json"))
        .args(extra);
    let out = cmd.output().expect("run coordinator explain");
    Explained {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn with_services(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec!["--service-cidr", SERVICES[0], "--service-cidr", SERVICES[1]];
    v.extend_from_slice(extra);
    v
}

fn flow<'a>(report: &'a Value, nic: &str, family: u64, kind: &str) -> &'a Value {
    report["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["nic"] == nic && f["family"] == family && f["flow"] == kind)
        .unwrap_or_else(|| panic!("no {nic} IPv{family} {kind} flow in {report:#}"))
}

/// explain --json exits 1 and exactly the flows `want` are not symmetric.
fn broken(lab: &Lab, pod: &Pod, want: &[&str]) -> Value {
    let r = explain(lab, pod, &with_services(&["--json"]));
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let report = r.json();
    assert_eq!(asymmetric(&report), want, "{report:#}");
    report
}

fn asymmetric(report: &Value) -> Vec<String> {
    report["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["symmetric"] == false)
        .map(|f| {
            format!(
                "{} v{} {}",
                f["nic"].as_str().unwrap(),
                f["family"],
                f["flow"].as_str().unwrap()
            )
        })
        .collect()
}

/// A two-NIC dual-stack underlay pod: eth0 on subnet 1, net1 on subnet 2
/// with a default route of its own (moved into its table by the
/// coordinator) for each family in `defaults`.
fn two_nic_pod(lab: &Lab, defaults: &[&str]) -> (Pod, Vec<IpAddr>, Vec<IpAddr>) {
    let pod = lab.pod("p").unwrap();
    let eth0 = attach(
        lab,
        &pod,
        load(lab, "macvlan-underlay.conflist", true),
        "eth0",
    );
    let mut list = load(lab, "macvlan-underlay-net1.conflist", true);
    let routes: Vec<Value> = defaults.iter().map(|d| json!({ "dst": d })).collect();
    list.plugin_mut("macvlan").unwrap()["ipam"]["routes"] = json!(routes);
    let net1 = attach(lab, &pod, list, "net1");
    (pod, eth0, net1)
}

fn of(ips: &[IpAddr], v6: bool) -> IpAddr {
    *ips.iter()
        .find(|i| i.is_ipv6() == v6)
        .expect("address of the family")
}

#[test]
fn healthy_two_nic_pod_is_symmetric_in_text_and_json() {
    let lab = Lab::builder().subnets(2).build().expect("lab (needs root)");
    // IPv4 only: a second IPv6 default would be merged by the kernel (see
    // multipath_default_is_named).
    let (pod, eth0, net1) = two_nic_pod(&lab, &["0.0.0.0/0"]);

    let r = explain(&lab, &pod, &with_services(&["--json"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let report = r.json();
    assert_eq!(report["mode"], "underlay");
    assert_eq!(report["symmetric"], true);
    let flows = report["flows"].as_array().unwrap();
    // 2 NICs x 2 families x 5 flows, but NodePorts lead to the pod IP
    // (eth0's address) only.
    assert_eq!(flows.len(), 18, "{report:#}");
    for f in flows {
        assert_eq!(f["symmetric"], true, "{f}");
        assert_eq!(f["fix"], Value::Null, "{f}");
        for k in ["nic", "family", "flow", "request_nic", "reply_nic"] {
            assert!(!f[k].is_null(), "{k} in {f}");
        }
    }
    for nic in ["eth0", "net1"] {
        for fam in [4, 6] {
            assert_eq!(flow(&report, nic, fam, "subnet")["reply_nic"], nic);
            let routed = flow(&report, nic, fam, "routed");
            assert_eq!(routed["reply_nic"], nic);
            assert!(!routed["reply_gateway"].is_null(), "{routed}");
            let via_node: &[&str] = if nic == "eth0" {
                &["node", "service", "nodeport"]
            } else {
                &["node", "service"]
            };
            for through_node in via_node {
                let f = flow(&report, nic, fam, through_node);
                assert_eq!(f["request_nic"], "veth0", "{f}");
                assert_eq!(f["reply_nic"], "veth0", "{f}");
            }
        }
    }

    // Traffic agrees: the pod reaches a Service DNATed on the node, from
    // each NIC's address.
    let (backends, _server) = services_on_node(&lab);
    for (cluster, backend) in &backends {
        for src in eth0
            .iter()
            .chain(&net1)
            .filter(|a| a.is_ipv4() == cluster.is_ipv4())
        {
            let reply = tcp_request(&pod.name, Some(*src), *cluster, Duration::from_secs(3));
            assert!(reply.is_ok(), "{src} -> {cluster} ({backend}): {reply:?}");
        }
    }

    let text = explain(&lab, &pod, &with_services(&[]));
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout
            .contains("mode underlay (to the node through veth0)"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("all 18 flows symmetric"),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains("ASYMMETRIC"), "{}", text.stdout);

    // --pid of a process inside the pod names the same netns.
    let mut sleeper = command_in(&pod.name, "sleep", Enter::NetOnly)
        .unwrap()
        .arg("30")
        .spawn()
        .unwrap();
    let by_pid = explain_pid(&lab, sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(by_pid, 0);
}

fn explain_pid(lab: &Lab, pid: u32) -> i32 {
    let mut cmd = command_in(lab.node(), &coordinator(), Enter::NetOnly).unwrap();
    cmd.args(["explain", "--pid", &pid.to_string(), "--defaults"])
        .arg(lab.dir().join("no-defaults.json"))
        .args(with_services(&["--json"]));
    cmd.output().unwrap().status.code().unwrap_or(-1)
}

/// The `from <net1 address> lookup <table>` rule removed: replies to routed
/// clients of net1 leave by eth0 (main's default). explain says so and names
/// the rule; the strict fabric drops the real reply too.
#[test]
fn removed_rule_is_named_and_traffic_agrees() {
    let lab = Lab::builder().subnets(3).build().expect("lab (needs root)");
    let (pod, _eth0, net1) = two_nic_pod(&lab, &["0.0.0.0/0"]);
    let a = of(&net1, false);
    let table = rule_table(&pod, a).expect("a from rule for net1's address");

    // A client on subnet 3, where the pod has no NIC, is routed to net1
    // through the fabric: it gets its reply before.
    let client = lab
        .fabric_client(3, Some("10.8.200.9".parse().unwrap()), None)
        .unwrap();
    let _server = TcpServer::start(&pod.name, SocketAddr::new(a, PORT)).unwrap();
    let far = SocketAddr::new(a, PORT);
    assert!(tcp_request(&client.name, None, far, Duration::from_secs(3)).is_ok());
    let before = explain(&lab, &pod, &with_services(&["--json"]));
    assert_eq!(before.code, 0, "{}", before.stdout);
    let healthy = before.json();
    assert_eq!(
        flow(&healthy, "net1", 4, "routed")["pod_table"].to_string(),
        table,
        "net1's own table answered"
    );

    state::ip(
        &pod.name,
        &["rule", "del", "from", &a.to_string(), "table", &table],
    )
    .unwrap();
    let report = broken(&lab, &pod, &["net1 v4 routed"]);
    let routed = flow(&report, "net1", 4, "routed");
    assert_eq!(routed["request_nic"], "net1");
    assert_eq!(routed["reply_nic"], "eth0");
    assert_eq!(routed["pod_table"], 254, "main answered: {routed}");
    let fix = routed["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!("rule `from {a} lookup {table}` is missing")),
        "{fix}"
    );
    assert!(fix.contains("tunePodRoutes"), "{fix}");
    // The on-link client still gets its reply through net1 (connected route).
    assert_eq!(flow(&report, "net1", 4, "subnet")["symmetric"], true);

    let text = explain(&lab, &pod, &with_services(&[]));
    assert_eq!(text.code, 1);
    assert!(text.stdout.contains("ASYMMETRIC"), "{}", text.stdout);
    assert!(
        text.stdout.contains("1 of 18 flows not symmetric"),
        "{}",
        text.stdout
    );

    // Traffic agrees: the reply leaves by eth0 and the fabric drops it.
    assert!(
        tcp_request(&client.name, None, far, Duration::from_secs(2)).is_err(),
        "a routed client still got a reply after the rule was removed"
    );
}

/// Services 10.233.0.10:80 and [fd00:233::10]:80 DNATed on the node to a
/// backend listening on the node's own addresses: the (clusterIP, backend)
/// pairs, and the backend server (serving until dropped).
fn services_on_node(lab: &Lab) -> (Vec<(SocketAddr, SocketAddr)>, TcpServer) {
    let sn = lab.subnet(1).unwrap();
    let server =
        TcpServer::start(lab.node(), SocketAddr::new("::".parse().unwrap(), 7000)).unwrap();
    let pairs: Vec<(SocketAddr, SocketAddr)> = [
        ("10.233.0.10:80", sn.node4.map(IpAddr::from)),
        ("[fd00:233::10]:80", sn.node6.map(IpAddr::from)),
    ]
    .into_iter()
    .filter_map(|(c, node)| Some((c.parse().unwrap(), SocketAddr::new(node?, 7000))))
    .collect();
    for (cluster, backend) in &pairs {
        lab.node_service(*cluster, *backend).unwrap();
    }
    (pairs, server)
}

fn rule_table(pod: &Pod, ip: IpAddr) -> Option<String> {
    let rules = state::rules(&pod.name).unwrap();
    rules.as_array()?.iter().find_map(|r| {
        (r["src"] == ip.to_string()).then(|| r["table"].to_string().trim_matches('"').to_string())
    })
}

/// A pod attached without serviceCIDR while the cluster's Services live in
/// 10.233.0.0/18: the request goes to the underlay gateway.
#[test]
fn missing_service_cidr_is_named() {
    let lab = Lab::new().expect("lab (needs root)");
    let pod = lab.pod("p").unwrap();
    attach(
        &lab,
        &pod,
        load(&lab, "macvlan-underlay.conflist", false),
        "eth0",
    );
    let report = broken(&lab, &pod, &["eth0 v4 service", "eth0 v6 service"]);
    // Traffic agrees: the Service is not reached (the request goes to the
    // underlay gateway, which knows no Services).
    let (backends, _server) = services_on_node(&lab);
    for (cluster, _) in &backends {
        let to = tcp_request(&pod.name, None, *cluster, Duration::from_secs(2));
        assert!(to.is_err(), "{cluster} reached without serviceCIDR: {to:?}");
    }
    for fam in [4, 6] {
        let svc = flow(&report, "eth0", fam, "service");
        assert_eq!(svc["request_nic"], "eth0", "{svc}");
        assert_eq!(svc["reply_nic"], "veth0", "{svc}");
        assert!(
            svc["fix"].as_str().unwrap().contains("serviceCIDR"),
            "{svc}"
        );
    }
    // Without any Service range known, there is no service flow to judge.
    let none = explain(&lab, &pod, &["--json"]);
    assert_eq!(none.code, 0, "{}", none.stdout);
    assert!(none.json()["flows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["flow"] != "service"));
}

/// The IPv6 defaults of both NICs' tables replaced by a multipath route over
/// eth0 and net1 (what the kernel's merge of equal-metric IPv6 defaults
/// produces in one table). Replies to routed clients spread over both NICs.
/// (IPv6 only: since Linux 6.16 an IPv4 multipath route prefers the nexthop
/// whose device holds the source address.)
#[test]
fn multipath_default_is_named() {
    let lab = Lab::builder().subnets(2).build().expect("lab (needs root)");
    let (pod, eth0, net1) = two_nic_pod(&lab, &["0.0.0.0/0"]);
    for ip in [of(&eth0, true), of(&net1, true)] {
        let table = rule_table(&pod, ip).expect("a from rule");
        let multipath = [
            "-6",
            "route",
            "replace",
            "default",
            "table",
            &table,
            "nexthop",
            "via",
            "fd00:6::1",
            "dev",
            "eth0",
            "onlink",
            "nexthop",
            "via",
            "fd00:7::1",
            "dev",
            "net1",
            "onlink",
        ];
        state::ip(&pod.name, &multipath).unwrap();
    }
    let report = broken(&lab, &pod, &["eth0 v6 routed", "net1 v6 routed"]);
    for nic in ["eth0", "net1"] {
        let f = flow(&report, nic, 6, "routed");
        let spread: Vec<&str> = f["reply_nics"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(spread.contains(&"net1") && spread.contains(&"eth0"), "{f}");
        assert!(f["fix"].as_str().unwrap().contains("multipath"), "{f}");
    }
    let text = explain(&lab, &pod, &with_services(&[]));
    assert!(
        text.stdout.contains("reply out eth0+net1") || text.stdout.contains("reply out net1+eth0"),
        "{}",
        text.stdout
    );
}

/// Without CNI_COMMAND the binary is the operator tool, like coordinator-ipam.
#[test]
fn help_and_version_like_coordinator_ipam() {
    for (bin, name) in [
        (coordinator(), "coordinator"),
        (
            bin_dir().join("coordinator-ipam").display().to_string(),
            "coordinator-ipam",
        ),
    ] {
        let run = |args: &[&str]| Exec::new(&bin).args(args).run();
        let v = run(&["--version"]);
        assert_eq!(v.code, Some(0));
        assert_eq!(v.stdout, format!("{name} {}\n", env!("CARGO_PKG_VERSION")));
        let h = run(&["--help"]);
        assert_eq!(h.code, Some(0));
        assert!(
            h.stdout
                .contains(&format!("{name} install --cni-bin-dir DIR")),
            "{}",
            h.stdout
        );
        assert_eq!(run(&["frobnicate"]).code, Some(2));
    }
    // Without arguments the coordinator stays a CNI plugin: a missing
    // CNI_COMMAND is CNI error 4 on stdout (conformance.rs has the details).
    let none = Exec::new(coordinator()).run();
    assert_eq!(none.err(4)["code"], 4);
    let h = Exec::new(coordinator()).args(&["--help"]).run();
    assert!(h
        .stdout
        .contains("coordinator explain (--netns PATH | --pid PID)"));
    let e = Exec::new(coordinator()).args(&["explain", "--json"]).run();
    assert_eq!(e.code, Some(2));
    assert!(e.stdout.is_empty());
}

/// Overlay mode: a ptp `eth0` (Calico-like) and a macvlan `net1`. The node,
/// Services and NodePorts go through `eth0`; net1's clients are answered
/// through net1.
#[test]
fn overlay_pod_goes_through_eth0() {
    let lab = Lab::new().expect("lab (needs root)");
    let pod = lab.pod("p").unwrap();
    attach(&lab, &pod, load(&lab, "ptp-overlay.conflist", true), "eth0");
    attach(
        &lab,
        &pod,
        load(&lab, "macvlan-overlay-net1.conflist", true),
        "net1",
    );
    let r = explain(&lab, &pod, &with_services(&["--json"]));
    let report = r.json();
    assert_eq!(r.code, 0, "{report:#}\n{}", r.stderr);
    assert_eq!(report["mode"], "overlay");
    assert_eq!(report["host_iface"], "eth0");
    for fam in [4, 6] {
        for (nic, kind) in [
            ("eth0", "node"),
            ("eth0", "service"),
            ("eth0", "nodeport"),
            ("net1", "node"),
            ("net1", "service"),
        ] {
            let f = flow(&report, nic, fam, kind);
            assert_eq!(f["request_nic"], "eth0", "{f}");
            assert_eq!(f["reply_nic"], "eth0", "{f}");
        }
        for kind in ["subnet", "routed"] {
            assert_eq!(flow(&report, "net1", fam, kind)["reply_nic"], "net1");
        }
    }
    assert_eq!(report["flows"].as_array().unwrap().len(), 18);
}

/// The node's `from all lookup 500` rule removed: the node reaches the pod's
/// addresses through its uplink (the macvlan parent, which its children never
/// hear), so probes, Service replies and NodePorts are named, with the field.
#[test]
fn removed_host_rule_is_named() {
    let lab = Lab::new().expect("lab (needs root)");
    let pod = lab.pod("p").unwrap();
    let ips = attach(
        &lab,
        &pod,
        load(&lab, "macvlan-underlay.conflist", true),
        "eth0",
    );
    let _server =
        TcpServer::start(&pod.name, SocketAddr::new("::".parse().unwrap(), PORT)).unwrap();
    let probe = |ip: &IpAddr| {
        tcp_request(
            lab.node(),
            None,
            SocketAddr::new(*ip, PORT),
            Duration::from_secs(2),
        )
    };
    for ip in &ips {
        assert!(probe(ip).is_ok(), "node -> {ip} before");
    }
    for fam in ["-4", "-6"] {
        state::ip(lab.node(), &[fam, "rule", "del", "lookup", "500"]).unwrap();
    }
    // Traffic agrees: the node's probes no longer reach the pod.
    for ip in &ips {
        assert!(probe(ip).is_err(), "node -> {ip} without the host rule");
    }
    let report = broken(
        &lab,
        &pod,
        &[
            "eth0 v4 node",
            "eth0 v4 service",
            "eth0 v4 nodeport",
            "eth0 v6 node",
            "eth0 v6 service",
            "eth0 v6 nodeport",
        ],
    );
    for fam in [4, 6] {
        let node = flow(&report, "eth0", fam, "node");
        assert!(node["request_nic"].is_null(), "{node}");
        let fix = node["fix"].as_str().unwrap();
        assert!(fix.contains("table 500 (hostRuleTable)"), "{fix}");
        assert!(fix.contains("`from all lookup 500`"), "{fix}");
    }
    // The table named on the command line is the one the fix names.
    let r = explain(
        &lab,
        &pod,
        &with_services(&["--json", "--host-rule-table", "600"]),
    );
    assert_eq!(r.code, 1);
    let fix = flow(&r.json(), "eth0", 4, "node")["fix"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fix.contains("table 600 (hostRuleTable)"), "{fix}");
}
