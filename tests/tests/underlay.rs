//! Underlay mode end to end (issue 3): macvlan NICs from conf-examples/
//! chained with the coordinator in a netns lab, proven with real traffic on
//! the strict fabric (IPv4 `rp_filter=1`, plus an nftables `fib` reverse-path
//! check for IPv6, which has no rp_filter). Needs root; never skips.
//!
//! The coordinator binary is exec'd from the target dir: build it first
//! (`cargo build -p coordinator`, as scripts/test.sh does).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cni_tests::{bin_dir, cni_path, conf_example, ifindex};
use coordinator::detect::socket::{Direction, PacketSocket};
use integration::chain::{result_ips, Attachment, Chain, ChainError, NetConfList};
use integration::lab::{self, state, Lab, LabBuilder, Pod, Subnet};
use integration::nsexec::{self, Enter};
use integration::traffic::{ping, reply_peer, tcp_request, TcpServer};
use serde_json::{json, Map, Value};

const T: Duration = Duration::from_secs(5);
/// Where pods, clients and node backends listen.
const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;
const BACKEND_PORT: u16 = 7000;
const CLIENT_PORT: u16 = 7100;
const HOST_TABLE: &str = "500";

// ---------------------------------------------------------------- conflists

fn build_lab(b: LabBuilder) -> Lab {
    assert!(
        bin_dir().join("coordinator").is_file(),
        "coordinator binary missing in {} (cargo build -p coordinator)",
        bin_dir().display()
    );
    let lab = b.build().expect("build lab (needs root)");
    strict_ipv6_fabric(&lab);
    lab
}

/// IPv6 has no rp_filter: drop routed packets whose source is not reachable
/// through the interface they came in on, as a uRPF router would. Bridged
/// frames stay plain L2 (as for IPv4, whose rp_filter only sees routed
/// packets), even when br_netfilter is loaded on the machine.
fn strict_ipv6_fabric(lab: &Lab) {
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
}

/// A conflist from conf-examples/, with state and logs kept in the lab and
/// the machine's node defaults file kept out of the test.
fn load(lab: &Lab, file: &str) -> NetConfList {
    let mut list = NetConfList::from_file(conf_example(file))
        .unwrap_or_else(|e| panic!("load conf-examples/{file}: {e}"));
    assert_eq!(list.types(), vec!["macvlan", "coordinator"], "{file}");
    lab.localize(&mut list);
    let nodefaults = lab.dir().join("no-defaults.json").display().to_string();
    set(&mut list, "defaultsFile", json!(nodefaults));
    list
}

fn coord(list: &mut NetConfList) -> &mut Map<String, Value> {
    list.plugin_mut("coordinator")
        .expect("conflist has a coordinator")
}

fn set(list: &mut NetConfList, key: &str, value: Value) {
    coord(list).insert(key.into(), value);
}

fn macvlan(list: &mut NetConfList) -> &mut Map<String, Value> {
    list.plugin_mut("macvlan").expect("conflist has macvlan")
}

/// Keep only the IPAM ranges and routes of the wanted families.
fn keep_families(list: &mut NetConfList, v4: bool, v6: bool) {
    let keep = |s: &str| if s.contains(':') { v6 } else { v4 };
    let ipam = macvlan(list)
        .get_mut("ipam")
        .and_then(Value::as_object_mut)
        .expect("macvlan has ipam");
    if let Some(Value::Array(sets)) = ipam.get_mut("ranges") {
        sets.retain(|set| set[0]["subnet"].as_str().is_some_and(keep));
    }
    if let Some(Value::Array(routes)) = ipam.get_mut("routes") {
        routes.retain(|r| r["dst"].as_str().is_some_and(keep));
    }
}

/// A later NIC on `sn`: macvlan-underlay-net1.conflist with its master,
/// ranges and name moved to that subnet.
fn nic_list(lab: &Lab, sn: &Subnet) -> NetConfList {
    let mut list = load(lab, "macvlan-underlay-net1.conflist");
    list.name = format!("macvlan-{}", sn.parent);
    let mut ranges = Vec::new();
    if let (Some(net), Some(gw)) = (sn.v4, sn.gateway4) {
        ranges.push(json!([{
            "subnet": net.to_string(),
            "rangeStart": sn.host4(1, 1).unwrap().to_string(),
            "rangeEnd": sn.host4(1, 254).unwrap().to_string(),
            "gateway": gw.to_string()
        }]));
    }
    if let (Some(net), Some(gw)) = (sn.v6, sn.gateway6) {
        let s = net.addr().segments();
        let at = |low: u16| std::net::Ipv6Addr::new(s[0], s[1], 0, 0, 0, 0, 1, low).to_string();
        ranges.push(json!([{
            "subnet": net.to_string(),
            "rangeStart": at(1),
            "rangeEnd": at(0xff),
            "gateway": gw.to_string()
        }]));
    }
    let m = macvlan(&mut list);
    m.insert("master".into(), sn.parent.clone().into());
    m["ipam"]["ranges"] = Value::Array(ranges);
    list
}

/// The hijacked CIDRs every single-NIC test exercises, besides serviceCIDR.
fn add_hijacks(list: &mut NetConfList) {
    set(
        list,
        "overlayPodCIDR",
        json!(["10.244.0.0/16", "fd00:244::/48"]),
    );
    set(
        list,
        "hijackCIDR",
        json!(["169.254.25.10/32", "fd00:25::10/128"]),
    );
}

// ---------------------------------------------------------------- attaching

/// One attached NIC.
struct Nic {
    chain: Chain,
    att: Attachment,
    result: Value,
    ips: Vec<IpAddr>,
    /// What the main plugin (macvlan) printed: replayed for a repeated ADD.
    main_stdout: String,
}

impl Nic {
    fn v4(&self) -> IpAddr {
        *self
            .ips
            .iter()
            .find(|i| i.is_ipv4())
            .expect("NIC has an IPv4 address")
    }
    fn v6(&self) -> IpAddr {
        *self
            .ips
            .iter()
            .find(|i| i.is_ipv6())
            .expect("NIC has an IPv6 address")
    }
    fn of(&self, v6: bool) -> Option<IpAddr> {
        self.ips.iter().copied().find(|i| i.is_ipv6() == v6)
    }
}

fn describe(e: &ChainError) -> String {
    let stderr = e
        .runs
        .last()
        .map(|r| r.stderr.trim().to_string())
        .unwrap_or_default();
    format!("{e}\nplugin stderr: {stderr}")
}

fn chain_for(lab: &Lab, list: NetConfList) -> Chain {
    lab.chain(list).cni_path(cni_path())
}

fn attach(lab: &Lab, pod: &Pod, list: NetConfList, ifname: &str) -> Nic {
    let att = Attachment::new(&container_id(pod), &pod.path, ifname).arg("IgnoreUnknown", "1");
    attach_with(lab, list, att)
}

fn attach_with(lab: &Lab, list: NetConfList, att: Attachment) -> Nic {
    let chain = chain_for(lab, list);
    let out = chain
        .add(&att)
        .unwrap_or_else(|e| panic!("ADD {}: {}", att.ifname, describe(&e)));
    let result = out.result.expect("ADD printed a result");
    let ips = result_ips(&result);
    assert!(!ips.is_empty(), "no IPs in {result}");
    Nic {
        chain,
        att,
        result,
        ips,
        main_stdout: out.runs[0].stdout.clone(),
    }
}

fn container_id(pod: &Pod) -> String {
    format!("ctr-{}", pod.name)
}

fn host_veth(pod: &Pod) -> String {
    coordinator::names::host_veth_name(&container_id(pod))
}

// ---------------------------------------------------------------- kernel state

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

/// Routes of every table but `local` (and no multicast), as lines.
fn route_lines(ns: &str, table: &str) -> Vec<String> {
    state::routes(ns, table)
        .unwrap()
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["table"] != "local" && r["dst"] != "multicast")
        .map(state::route_line)
        .collect()
}

fn routes(ns: &str, table: &str) -> Vec<Value> {
    state::routes(ns, table)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn permanent_neighbours(ns: &str) -> Vec<String> {
    let mut v: Vec<String> = state::neighbours(ns)
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
    v.sort();
    v
}

/// Neighbour entries (any state) for `ip`, as lines.
fn neighbours_of(ns: &str, ip: IpAddr) -> Vec<String> {
    state::neighbours(ns)
        .unwrap()
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["dst"].as_str().and_then(|d| d.parse::<IpAddr>().ok()) == Some(ip))
        .map(state::neigh_line)
        .collect()
}

/// Everything ADD/DEL may touch in a netns, for before/after comparisons.
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
    Snapshot {
        links,
        rules: rule_lines(ns),
        routes: route_lines(ns, "all"),
        neighbours: permanent_neighbours(ns),
        nft: run_nft_list(ns),
    }
}

fn run_nft_list(ns: &str) -> String {
    let out = nsexec::command_in(ns, "nft", Enter::NetOnly)
        .and_then(|mut c| c.args(["list", "ruleset"]).output())
        .expect("nft list ruleset");
    assert!(out.status.success(), "nft list ruleset in {ns}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link(ns: &str, name: &str) -> Option<Value> {
    state::links(ns)
        .unwrap()
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["ifname"] == name)
        .cloned()
}

fn has_link(ns: &str, name: &str) -> bool {
    link(ns, name).is_some()
}

/// Captures what a pod sends out of one of its links (a packet socket in the
/// pod netns), so a check counts the flow's own packets, not the IPv6
/// router solicitations and MLD reports a fresh link sends on its own.
struct Sniffer(PacketSocket);

impl Sniffer {
    fn start(ns: &str, dev: &str) -> Sniffer {
        let name = dev.to_string();
        let sock = lab::in_netns(ns, move || {
            PacketSocket::open(ifindex(&name)?, libc::ETH_P_ALL as u16)
        })
        .unwrap_or_else(|e| panic!("packet socket on {ns}/{dev}: {e}"));
        Sniffer(sock)
    }

    /// Outgoing IP packets addressed to `dst` since the capture started.
    fn sent_to(&self, dst: IpAddr) -> usize {
        self.sent_to_any(&[dst])
    }

    /// Outgoing IP packets addressed to any of `dsts` since the capture
    /// started (drains the capture).
    fn sent_to_any(&self, dsts: &[IpAddr]) -> usize {
        let mut buf = vec![0u8; 70_000];
        let mut n = 0;
        while let Some((len, dir)) = self.0.try_recv(&mut buf).expect("recv") {
            if dir == Direction::Outgoing && ip_dst(&buf[..len]).is_some_and(|d| dsts.contains(&d))
            {
                n += 1;
            }
        }
        n
    }
}

/// The destination of an Ethernet frame carrying IPv4 or IPv6.
fn ip_dst(frame: &[u8]) -> Option<IpAddr> {
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 => {
            let b: [u8; 4] = frame.get(30..34)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        0x86dd => {
            let b: [u8; 16] = frame.get(38..54)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

fn sysctl(ns: &str, key: &str) -> String {
    let key = key.to_string();
    lab::in_netns(ns, move || cni::netns::sysctl_get(&key))
        .unwrap_or_else(|e| panic!("sysctl in {ns}: {e}"))
}

/// `ip -j route get <dst> [from <src>]` in `ns`.
fn route_get(ns: &str, dst: IpAddr, from: Option<IpAddr>) -> Value {
    let dst = dst.to_string();
    let mut args = vec!["-j", "route", "get", dst.as_str()];
    let src = from.map(|s| s.to_string());
    if let Some(s) = &src {
        args.extend(["from", s.as_str()]);
    }
    let v: Value = serde_json::from_str(&lab::ip(ns, &args).unwrap()).unwrap();
    v[0].clone()
}

/// `(IPv4, IPv6)` counts of `from all lookup <table>` rules.
fn host_rule_count(ns: &str, table: &str) -> (usize, usize) {
    let rules = state::rules(ns).unwrap();
    let count = |fam: &str| {
        rules
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["family"] == fam
                    && r["src"] == "all"
                    && r["table"] == table
                    && r.get("fwmark").is_none()
            })
            .count()
    };
    (count("inet"), count("inet6"))
}

/// Main-table default route devices of `ns`, per family.
fn default_devs(ns: &str) -> Vec<(String, String)> {
    routes(ns, "main")
        .iter()
        .filter(|r| r["dst"] == "default")
        .map(|r| {
            (
                r["family"].as_str().unwrap_or("").to_string(),
                r["dev"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Node routes and neighbours that mention one of `ips`.
fn node_entries_for(node: &str, ips: &[IpAddr]) -> Vec<String> {
    let mut out: Vec<String> = routes(node, "all")
        .iter()
        .filter(|r| r["table"] != "local")
        .filter(|r| {
            r["dst"]
                .as_str()
                .and_then(|d| d.split('/').next())
                .and_then(|d| d.parse::<IpAddr>().ok())
                .is_some_and(|d| ips.contains(&d))
        })
        .map(state::route_line)
        .collect();
    for ip in ips {
        out.extend(neighbours_of(node, *ip));
    }
    out.sort();
    out
}

/// The table of the pod's `from <ip> lookup T` rule.
fn from_rule_table(ns: &str, ip: IpAddr) -> Option<String> {
    state::rules(ns)
        .unwrap()
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["src"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(ip))
        .map(|r| match &r["table"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
}

// ---------------------------------------------------------------- traffic

/// TCP from `ns` (optionally from `src`) to `dst`: the server must have seen `want`.
fn expect_peer(ns: &str, src: Option<IpAddr>, dst: SocketAddr, want: IpAddr) {
    let reply = tcp_request(ns, src, dst, T).unwrap_or_else(|e| {
        panic!(
            "TCP {ns} (from {src:?}) -> {dst}: {e}\nrules: {:#?}\nroutes: {:#?}",
            rule_lines(ns),
            route_lines(ns, "all")
        )
    });
    assert_eq!(
        reply_peer(&reply).map(|p| p.ip()),
        Some(want),
        "{ns} -> {dst}: {reply}"
    );
}

/// Like [`expect_peer`], and the exchange must have sent packets out of the
/// pod's `veth0`.
fn expect_peer_via_veth0(pod: &Pod, ns: &str, src: Option<IpAddr>, dst: SocketAddr, want: IpAddr) {
    let veth0 = Sniffer::start(&pod.name, "veth0");
    expect_peer(ns, src, dst, want);
    // The pod is the client (sends to dst) or the server behind a DNAT
    // (replies to the peer it saw).
    let sent = veth0.sent_to_any(&[dst.ip(), want]);
    assert!(
        sent >= 2,
        "{ns} -> {dst}: the pod sent {sent} packets of the flow through veth0, expected it there"
    );
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn node_ip(lab: &Lab, v6: bool) -> IpAddr {
    let sn = lab.subnet(1).unwrap();
    if v6 {
        sn.node6.unwrap().into()
    } else {
        sn.node4.unwrap().into()
    }
}

fn node_ips(lab: &Lab) -> Vec<IpAddr> {
    lab.subnets()
        .iter()
        .flat_map(|s| [s.node4.map(IpAddr::from), s.node6.map(IpAddr::from)])
        .flatten()
        .collect()
}

fn client_on(lab: &Lab, subnet: u8) -> lab::Client {
    let sn = lab.subnet(subnet).unwrap();
    lab.fabric_client(subnet, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap()
}

fn client_ip(c: &lab::Client, v6: bool) -> Option<IpAddr> {
    if v6 {
        c.ipv6.map(IpAddr::from)
    } else {
        c.ipv4.map(IpAddr::from)
    }
}

/// The node reaches each pod address; the server sees a node address and
/// the reply left the pod through `veth0`.
fn node_reaches(lab: &Lab, pod: &Pod, ips: &[IpAddr]) {
    let nodes = node_ips(lab);
    for ip in ips {
        let veth0 = Sniffer::start(&pod.name, "veth0");
        let reply = tcp_request(lab.node(), None, sa(*ip, POD_PORT), T)
            .unwrap_or_else(|e| panic!("node -> pod {ip}: {e}"));
        let peer = reply_peer(&reply).map(|p| p.ip());
        assert!(
            peer.is_some_and(|p| nodes.contains(&p)),
            "node -> pod {ip}: server saw {peer:?}, not a node address {nodes:?}"
        );
        let sent = peer.map_or(0, |p| veth0.sent_to(p));
        assert!(
            sent >= 2,
            "node -> pod {ip}: reply not through veth0 ({sent} packets)"
        );
    }
}

/// Clients reach pod addresses and get replies; the server sees the client.
fn clients_reach(clients: &[&lab::Client], addrs: &[IpAddr]) {
    for c in clients {
        for a in addrs {
            let Some(from) = client_ip(c, a.is_ipv6()) else {
                continue;
            };
            expect_peer(&c.name, None, sa(*a, POD_PORT), from);
        }
    }
}

/// Service-like destinations (cluster address, family): DNATed in the node
/// to a backend listening in the node itself.
fn services(v4: bool, v6: bool) -> Vec<SocketAddr> {
    let mut v = Vec::new();
    if v4 {
        // serviceCIDR, overlayPodCIDR, hijackCIDR
        for s in ["10.233.0.10:80", "10.244.3.7:80", "169.254.25.10:80"] {
            v.push(s.parse().unwrap());
        }
    }
    if v6 {
        for s in ["[fd00:233::10]:80", "[fd00:244::7]:80", "[fd00:25::10]:80"] {
            v.push(s.parse().unwrap());
        }
    }
    v
}

fn install_services(lab: &Lab, clusters: &[SocketAddr]) {
    for c in clusters {
        lab.node_service(*c, sa(node_ip(lab, c.is_ipv6()), BACKEND_PORT))
            .unwrap();
    }
}

// ---------------------------------------------------------------- 1. one NIC

/// Issue 3, point 1, for the families of `lab` and `list`.
fn one_nic(lab: Lab, mut list: NetConfList, v4: bool, v6: bool) {
    add_hijacks(&mut list);
    let pod = lab.pod("p").unwrap();
    let nic = attach(&lab, &pod, list, "eth0");
    assert_eq!(
        nic.ips.iter().map(|i| i.is_ipv6()).collect::<BTreeSet<_>>(),
        [v4.then_some(false), v6.then_some(true)]
            .into_iter()
            .flatten()
            .collect(),
        "families of {:?}",
        nic.ips
    );
    assert!(has_link(lab.node(), &host_veth(&pod)));
    assert!(has_link(&pod.name, "veth0"));
    // No route of a family the pod does not have.
    let veth0_families: BTreeSet<String> = routes(&pod.name, "all")
        .iter()
        .filter(|r| r["dev"] == "veth0" && r["table"] != "local")
        .filter(|r| !r["dst"].as_str().is_some_and(|d| d.starts_with("fe80:")))
        .map(|r| r["family"].as_str().unwrap_or("").to_string())
        .collect();
    let want: BTreeSet<String> = [v4.then_some("inet"), v6.then_some("inet6")]
        .into_iter()
        .flatten()
        .map(String::from)
        .collect();
    assert_eq!(veth0_families, want, "families of the veth0 routes");

    // Pod -> gateway.
    let sn = lab.subnet(1).unwrap().clone();
    for gw in [sn.gateway4.map(IpAddr::from), sn.gateway6.map(IpAddr::from)]
        .into_iter()
        .flatten()
    {
        assert!(ping(&pod.name, gw, None), "pod -> gateway {gw}");
    }
    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();

    // Node -> pod (kubelet probe), reply through veth0.
    node_reaches(&lab, &pod, &nic.ips);

    // NodePort: a fabric client -> node:port, DNATed to the pod; the reply
    // must return through veth0 and the node (reply mark + table 100).
    let client = client_on(&lab, 1);
    for ip in &nic.ips {
        let node = node_ip(&lab, ip.is_ipv6());
        lab.node_service(sa(node, NODE_PORT), sa(*ip, POD_PORT))
            .unwrap();
        let from = client_ip(&client, ip.is_ipv6()).unwrap();
        expect_peer_via_veth0(&pod, &client.name, None, sa(node, NODE_PORT), from);
    }

    // Pod -> Service / overlay pod / hijacked address, DNATed in the node.
    let _backend = TcpServer::start(lab.node(), sa("::".parse().unwrap(), BACKEND_PORT)).unwrap();
    let clusters = services(v4, v6);
    install_services(&lab, &clusters);
    for c in &clusters {
        let me = nic.of(c.is_ipv6()).unwrap();
        expect_peer_via_veth0(&pod, &pod.name, None, *c, me);
    }

    nic.chain
        .check(&nic.att)
        .unwrap_or_else(|e| panic!("CHECK: {}", describe(&e)));
    nic.chain
        .del(&nic.att)
        .unwrap_or_else(|e| panic!("DEL: {}", describe(&e)));
    assert!(!has_link(lab.node(), &host_veth(&pod)), "host veth left");
    assert_eq!(node_entries_for(lab.node(), &nic.ips), Vec::<String>::new());
}

#[test]
fn one_nic_dual_stack() {
    let lab = build_lab(Lab::builder());
    let list = load(&lab, "macvlan-underlay-dualstack.conflist");
    one_nic(lab, list, true, true);
}

#[test]
fn one_nic_ipv4_only() {
    let lab = build_lab(Lab::builder().ipv6(false));
    let mut list = load(&lab, "macvlan-underlay.conflist");
    keep_families(&mut list, true, false);
    one_nic(lab, list, true, false);
}

#[test]
fn one_nic_ipv6_only() {
    let lab = build_lab(Lab::builder().ipv4(false));
    let mut list = load(&lab, "macvlan-underlay.conflist");
    keep_families(&mut list, false, true);
    one_nic(lab, list, false, true);
}

// ---------------------------------------------------------------- 2. several NICs

/// eth0 + net1 with policyRoutes; clients on each subnet and on a subnet the
/// pod is not on; net1-sourced cluster traffic through veth0; DEL of net1
/// alone takes back exactly what its ADD made.
#[test]
fn two_nics_symmetric_replies_policy_routes_and_del_of_net1() {
    let lab = build_lab(Lab::builder().subnets(3));
    let pod = lab.pod("p").unwrap();
    let eth0 = attach(&lab, &pod, load(&lab, "macvlan-underlay.conflist"), "eth0");
    let pod_before = snapshot(&pod.name);
    let node_before = snapshot(lab.node());

    // A router on subnet 2 for the policy routes: it holds the "remote"
    // addresses itself, which the fabric has no route to.
    let sn2 = lab.subnet(2).unwrap().clone();
    let router = lab
        .fabric_client(2, sn2.host4(9, 8), sn2.host6(0x9998))
        .unwrap();
    lab::ip(
        &router.name,
        &["addr", "add", "10.99.0.1/32", "dev", "eth0"],
    )
    .unwrap();
    lab::ip(
        &router.name,
        &["addr", "add", "fd00:99::1/128", "dev", "eth0", "nodad"],
    )
    .unwrap();
    let mut net1_list = load(&lab, "macvlan-underlay-net1.conflist");
    set(
        &mut net1_list,
        "policyRoutes",
        json!([
            {"dst": "10.99.0.0/24", "gw": router.ipv4.unwrap().to_string()},
            {"dst": "fd00:99::/64", "gw": router.ipv6.unwrap().to_string()}
        ]),
    );
    let net1 = attach(&lab, &pod, net1_list, "net1");

    // net1's table: its own id, default via its gateway, the policy route.
    let table = from_rule_table(&pod.name, net1.v4()).expect("from rule for net1");
    assert_eq!(from_rule_table(&pod.name, net1.v6()), Some(table.clone()));
    let n: u32 = table.parse().expect("numeric table");
    assert!(n >= 101, "net1 table {n}");
    let in_table = route_lines(&pod.name, &table);
    for want in [
        "default via 10.7.0.1 dev net1",
        "default via fd00:7::1 dev net1",
        "10.99.0.0/24 via 10.7.9.8 dev net1",
        "fd00:99::/64 via fd00:7::9998 dev net1",
    ] {
        assert!(
            in_table.iter().any(|r| r.starts_with(want)),
            "{want} not in table {table}: {in_table:#?}"
        );
    }
    // Cluster routes through veth0, via a node address.
    for want in ["10.233.0.0/18 via 10.", "fd00:233::/110 via fd00:"] {
        assert!(
            in_table
                .iter()
                .any(|r| r.starts_with(want) && r.contains(" dev veth0")),
            "{want}.. dev veth0 not in table {table}: {in_table:#?}"
        );
    }
    assert_eq!(
        default_devs(&pod.name),
        vec![
            ("inet".into(), "eth0".into()),
            ("inet6".into(), "eth0".into())
        ]
    );

    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    let (c1, c2, c3) = (client_on(&lab, 1), client_on(&lab, 2), client_on(&lab, 3));
    // Every client reaches every pod address. c3's subnet is not the pod's:
    // a reply from net1's address leaving by eth0's default would reach the
    // fabric on the wrong port and be dropped.
    clients_reach(
        &[&c1, &c2, &c3],
        &[eth0.v4(), eth0.v6(), net1.v4(), net1.v6()],
    );

    // policyRoutes: the only way to 10.99.0.1 is via the router.
    let _r = TcpServer::start(&router.name, sa("::".parse().unwrap(), CLIENT_PORT)).unwrap();
    for (dst, src) in [
        ("10.99.0.1".parse::<IpAddr>().unwrap(), net1.v4()),
        ("fd00:99::1".parse().unwrap(), net1.v6()),
    ] {
        let got = route_get(&pod.name, dst, Some(src));
        assert_eq!(got["dev"], "net1", "{got}");
        assert_eq!(
            got["gateway"].as_str(),
            Some(
                client_ip(&router, dst.is_ipv6())
                    .unwrap()
                    .to_string()
                    .as_str()
            ),
            "{got}"
        );
        expect_peer(&pod.name, Some(src), sa(dst, CLIENT_PORT), src);
    }

    // Cluster traffic sourced from net1's addresses still goes through veth0.
    let _backend = TcpServer::start(lab.node(), sa("::".parse().unwrap(), BACKEND_PORT)).unwrap();
    let clusters = services(true, true);
    install_services(&lab, &clusters[..1]);
    install_services(&lab, &clusters[3..4]);
    for (c, src) in [(clusters[0], net1.v4()), (clusters[3], net1.v6())] {
        expect_peer_via_veth0(&pod, &pod.name, Some(src), c, src);
    }
    for src in [net1.v4(), net1.v6()] {
        let node = sa(node_ip(&lab, src.is_ipv6()), BACKEND_PORT);
        expect_peer_via_veth0(&pod, &pod.name, Some(src), node, src);
    }
    node_reaches(&lab, &pod, &[eth0.v4(), eth0.v6(), net1.v4(), net1.v6()]);

    for nic in [&eth0, &net1] {
        nic.chain
            .check(&nic.att)
            .unwrap_or_else(|e| panic!("CHECK {}: {}", nic.att.ifname, describe(&e)));
    }

    // CHECK of net1 names its missing `from` rule.
    let from = net1.v4().to_string();
    let del_rule = [
        "rule",
        "del",
        "from",
        from.as_str(),
        "lookup",
        table.as_str(),
    ];
    lab::ip(&pod.name, &del_rule).unwrap();
    let err = net1
        .chain
        .check(&net1.att)
        .expect_err("CHECK net1 without its from rule");
    assert!(
        err.msg.contains("rule") && err.msg.contains(&from),
        "{}",
        err.msg
    );
    let add_rule = [
        "rule",
        "add",
        "priority",
        "1000",
        "from",
        from.as_str(),
        "lookup",
        table.as_str(),
    ];
    lab::ip(&pod.name, &add_rule).unwrap();
    net1.chain
        .check(&net1.att)
        .unwrap_or_else(|e| panic!("CHECK net1 restored: {}", describe(&e)));

    // DEL net1 alone: the pod and the node are back to before its ADD.
    net1.chain
        .del(&net1.att)
        .unwrap_or_else(|e| panic!("DEL net1: {}", describe(&e)));
    assert_eq!(snapshot(&pod.name), pod_before, "pod after DEL of net1");
    let node_after = snapshot(lab.node());
    assert_eq!(node_after.rules, node_before.rules);
    assert_eq!(node_after.routes, node_before.routes);
    assert_eq!(node_after.neighbours, node_before.neighbours);
    // eth0 still works both ways.
    node_reaches(&lab, &pod, &[eth0.v4(), eth0.v6()]);
    clients_reach(&[&c1, &c3], &[eth0.v4(), eth0.v6()]);
}

/// `podDefaultRouteNic: net1` moves main's default to net1; eth0's replies
/// keep leaving by eth0 through a table of their own.
#[test]
fn default_route_nic_net1_moves_the_default() {
    let lab = build_lab(Lab::builder().subnets(3));
    let pod = lab.pod("p").unwrap();
    let mut l0 = load(&lab, "macvlan-underlay.conflist");
    set(&mut l0, "podDefaultRouteNic", json!("net1"));
    let eth0 = attach(&lab, &pod, l0, "eth0");
    // net1 is not there yet: not an error, eth0 keeps the default for now.
    let defaults: BTreeSet<String> = default_devs(&pod.name).into_iter().map(|d| d.1).collect();
    assert_eq!(defaults, BTreeSet::from(["eth0".to_string()]));
    let mut l1 = load(&lab, "macvlan-underlay-net1.conflist");
    set(&mut l1, "podDefaultRouteNic", json!("net1"));
    let net1 = attach(&lab, &pod, l1, "net1");

    assert_eq!(
        default_devs(&pod.name),
        vec![
            ("inet".into(), "net1".into()),
            ("inet6".into(), "net1".into())
        ]
    );
    let t0 = from_rule_table(&pod.name, eth0.v4()).expect("eth0 got a from rule");
    let t1 = from_rule_table(&pod.name, net1.v4()).expect("net1 got a from rule");
    assert_ne!(t0, t1);
    assert_ne!(t0, "100");
    assert!(route_lines(&pod.name, &t0)
        .iter()
        .any(|r| r.starts_with("default via 10.6.0.1 dev eth0")));

    // A repeated ADD of net1 (the default NIC now) changes nothing.
    let (pod_state, node_state) = (snapshot(&pod.name), snapshot(lab.node()));
    replay_chain(&lab, &net1)
        .add(&net1.att)
        .unwrap_or_else(|e| panic!("repeated ADD net1: {}", describe(&e)));
    assert_eq!(snapshot(&pod.name), pod_state, "pod after repeated ADD");
    assert_eq!(snapshot(lab.node()), node_state, "node after repeated ADD");

    // Off-subnet traffic (subnet 3: neither NIC's) leaves by net1.
    let c3 = client_on(&lab, 3);
    let _c = TcpServer::start(&c3.name, sa("::".parse().unwrap(), CLIENT_PORT)).unwrap();
    for v6 in [false, true] {
        let dst = client_ip(&c3, v6).unwrap();
        assert_eq!(route_get(&pod.name, dst, None)["dev"], "net1");
        expect_peer(&pod.name, None, sa(dst, CLIENT_PORT), net1.of(v6).unwrap());
    }
    // Clients off both subnets reach both NICs (strict fabric: symmetric).
    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    let c1 = client_on(&lab, 1);
    clients_reach(&[&c1, &c3], &[eth0.v4(), eth0.v6(), net1.v4(), net1.v6()]);
    node_reaches(&lab, &pod, &[eth0.v4(), eth0.v6(), net1.v4(), net1.v6()]);
    // eth0's addresses now have a table of their own: unbound and bound
    // sockets alike still reach Services and the node through veth0.
    let _backend = TcpServer::start(lab.node(), sa("::".parse().unwrap(), BACKEND_PORT)).unwrap();
    let clusters = services(true, true);
    install_services(&lab, &[clusters[0], clusters[3]]);
    for (c, me) in [(clusters[0], eth0.v4()), (clusters[3], eth0.v6())] {
        expect_peer_via_veth0(&pod, &pod.name, None, c, me);
        expect_peer_via_veth0(&pod, &pod.name, Some(me), c, me);
        let node = sa(node_ip(&lab, me.is_ipv6()), BACKEND_PORT);
        expect_peer_via_veth0(&pod, &pod.name, None, node, me);
    }
    for nic in [&eth0, &net1] {
        nic.chain
            .check(&nic.att)
            .unwrap_or_else(|e| panic!("CHECK {}: {}", nic.att.ifname, describe(&e)));
    }
}

/// Three NICs; `podDefaultRouteNic: net2` is named from the first call on.
#[test]
fn three_nics_default_route_on_net2() {
    let lab = build_lab(Lab::builder().subnets(4));
    let pod = lab.pod("p").unwrap();
    let with_default = |mut l: NetConfList| {
        set(&mut l, "podDefaultRouteNic", json!("net2"));
        l
    };
    let eth0 = attach(
        &lab,
        &pod,
        with_default(load(&lab, "macvlan-underlay.conflist")),
        "eth0",
    );
    let net1 = attach(
        &lab,
        &pod,
        with_default(load(&lab, "macvlan-underlay-net1.conflist")),
        "net1",
    );
    // net2 is named while only net1 is attached: no error, default stays.
    let defaults: BTreeSet<String> = default_devs(&pod.name).into_iter().map(|d| d.1).collect();
    assert_eq!(defaults, BTreeSet::from(["eth0".to_string()]));
    let sn3 = lab.subnet(3).unwrap().clone();
    let net2 = attach(&lab, &pod, with_default(nic_list(&lab, &sn3)), "net2");
    assert_eq!(
        default_devs(&pod.name),
        vec![
            ("inet".into(), "net2".into()),
            ("inet6".into(), "net2".into())
        ]
    );
    let tables: BTreeSet<String> = [&eth0, &net1, &net2]
        .iter()
        .flat_map(|n| n.ips.iter().map(|ip| from_rule_table(&pod.name, *ip)))
        .map(|t| t.expect("a from rule for every address"))
        .collect();
    assert_eq!(tables.len(), 3, "one table per NIC: {tables:?}");
    assert!(!tables.contains("100"));

    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    let clients: Vec<lab::Client> = (1..=4).map(|i| client_on(&lab, i)).collect();
    // Each subnet's client reaches the pod's address there; the outside
    // client (subnet 4) reaches all of them.
    for (c, nic) in clients.iter().zip([&eth0, &net1, &net2]) {
        clients_reach(&[c], &nic.ips);
    }
    let all: Vec<IpAddr> = [&eth0, &net1, &net2]
        .iter()
        .flat_map(|n| n.ips.clone())
        .collect();
    clients_reach(&[&clients[3]], &all);
    // Off-subnet traffic leaves by net2.
    let _c = TcpServer::start(&clients[3].name, sa("::".parse().unwrap(), CLIENT_PORT)).unwrap();
    for v6 in [false, true] {
        let dst = client_ip(&clients[3], v6).unwrap();
        expect_peer(&pod.name, None, sa(dst, CLIENT_PORT), net2.of(v6).unwrap());
    }
    // Cluster traffic from every NIC's addresses goes through veth0.
    let _backend = TcpServer::start(lab.node(), sa("::".parse().unwrap(), BACKEND_PORT)).unwrap();
    let clusters = services(true, true);
    install_services(&lab, &clusters);
    for src in &all {
        let c = if src.is_ipv6() {
            clusters[3]
        } else {
            clusters[0]
        };
        expect_peer_via_veth0(&pod, &pod.name, Some(*src), c, *src);
    }
    node_reaches(&lab, &pod, &all);
    for nic in [&eth0, &net1, &net2] {
        nic.chain
            .check(&nic.att)
            .unwrap_or_else(|e| panic!("CHECK {}: {}", nic.att.ifname, describe(&e)));
    }

    // DEL net1 while net2 stays: net1's rules go, eth0 keeps its own table
    // (net2 still needs it); DEL net2 then takes eth0's table away too.
    net1.chain
        .del(&net1.att)
        .unwrap_or_else(|e| panic!("DEL net1: {}", describe(&e)));
    for ip in &net1.ips {
        assert_eq!(from_rule_table(&pod.name, *ip), None, "rule of {ip} left");
    }
    for ip in eth0.ips.iter().chain(&net2.ips) {
        assert!(
            from_rule_table(&pod.name, *ip).is_some(),
            "rule of {ip} gone"
        );
    }
    net2.chain
        .del(&net2.att)
        .unwrap_or_else(|e| panic!("DEL net2: {}", describe(&e)));
    for ip in eth0.ips.iter().chain(&net2.ips) {
        assert_eq!(from_rule_table(&pod.name, *ip), None, "rule of {ip} left");
    }
    let main = route_lines(&pod.name, "main");
    assert!(
        main.iter()
            .any(|r| r.starts_with("default via") && r.contains("dev eth0")),
        "the default route is back on eth0: {main:#?}"
    );
    node_reaches(&lab, &pod, &eth0.ips);
}

/// An IPv4 lab whose fabric also routes 10.70.0.0/24, a subnet the node has
/// no address in (reached through its second uplink), and the macvlan
/// conflist on that uplink.
fn remote_subnet_lab() -> (Lab, NetConfList) {
    let lab = build_lab(Lab::builder().subnets(2).ipv6(false));
    lab::ip(lab.fabric(), &["addr", "add", "10.70.0.1/24", "dev", "br2"]).unwrap();
    lab::ip(
        lab.node(),
        &[
            "route",
            "add",
            "10.70.0.0/24",
            "via",
            "10.7.0.1",
            "dev",
            "ens2",
        ],
    )
    .unwrap();
    let mut list = load(&lab, "macvlan-underlay.conflist");
    macvlan(&mut list).insert("master".into(), json!("ens2"));
    (lab, list)
}

/// Pods on a subnet the node has no address in (routed by the fabric, the
/// node reaching it through a second uplink): the hijack gateway is the
/// node's source toward the pod's network, and stays the same for CHECK and
/// a repeated ADD after the host got its route to the pod through the veth.
#[test]
fn pod_on_a_subnet_the_node_is_not_on() {
    let (lab, mut list) = remote_subnet_lab();
    keep_families(&mut list, true, false);
    let m = macvlan(&mut list);
    m["ipam"]["ranges"] = json!([[{
        "subnet": "10.70.0.0/24", "rangeStart": "10.70.0.5",
        "rangeEnd": "10.70.0.50", "gateway": "10.70.0.1"
    }]]);
    let pod = lab.pod("p").unwrap();
    let nic = attach(&lab, &pod, list, "eth0");
    let main = route_lines(&pod.name, "main");
    assert!(
        main.iter()
            .any(|r| r.starts_with("10.233.0.0/18 via 10.7.0.2 dev veth0")),
        "hijack via the node's address toward the pod's network: {main:#?}"
    );
    nic.chain
        .check(&nic.att)
        .unwrap_or_else(|e| panic!("CHECK: {}", describe(&e)));
    let (pod_state, node_state) = (snapshot(&pod.name), snapshot(lab.node()));
    replay_chain(&lab, &nic)
        .add(&nic.att)
        .unwrap_or_else(|e| panic!("repeated ADD: {}", describe(&e)));
    assert_eq!(snapshot(&pod.name), pod_state, "pod after repeated ADD");
    assert_eq!(snapshot(lab.node()), node_state, "node after repeated ADD");

    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    node_reaches(&lab, &pod, &nic.ips);
    let c1 = client_on(&lab, 1);
    clients_reach(&[&c1], &nic.ips);
    let _backend = TcpServer::start(lab.node(), sa("::".parse().unwrap(), BACKEND_PORT)).unwrap();
    let cluster = services(true, false)[0];
    install_services(&lab, &[cluster]);
    expect_peer_via_veth0(&pod, &pod.name, None, cluster, nic.v4());
}

/// A /32 without a gateway (how routed underlays and ipvlan L3 hand out
/// addresses) on a subnet the node is not on. The host's route toward the
/// pod IP changes once ADD installs `<pod IP> dev <host veth>`, so the hijack
/// gateway must not come from that lookup: CHECK and a repeated ADD must see
/// what the first ADD did.
#[test]
fn host_prefix_without_gateway_keeps_its_hijack_gateway() {
    let (lab, mut list) = remote_subnet_lab();
    let m = macvlan(&mut list);
    m["ipam"] = json!({
        "type": "static",
        "addresses": [{"address": "10.70.0.5/32"}],
        "routes": [{"dst": "0.0.0.0/0"}]
    });
    let pod = lab.pod("p").unwrap();
    let nic = attach(&lab, &pod, list, "eth0");
    let (pod_state, node_state) = (snapshot(&pod.name), snapshot(lab.node()));
    let replay = replay_chain(&lab, &nic);
    replay
        .add(&nic.att)
        .unwrap_or_else(|e| panic!("repeated ADD: {}", describe(&e)));
    assert_eq!(snapshot(&pod.name), pod_state, "pod after repeated ADD");
    assert_eq!(snapshot(lab.node()), node_state, "node after repeated ADD");
    // The reference macvlan's own CHECK cannot verify a route without a
    // gateway: check the coordinator behind the replayed main result.
    replay
        .check(&nic.att)
        .unwrap_or_else(|e| panic!("CHECK after ADD: {}", describe(&e)));

    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    node_reaches(&lab, &pod, &nic.ips);
    let _backend = TcpServer::start(lab.node(), sa("::".parse().unwrap(), BACKEND_PORT)).unwrap();
    let cluster = services(true, false)[0];
    install_services(&lab, &[cluster]);
    expect_peer_via_veth0(&pod, &pod.name, None, cluster, nic.v4());
}

// ---------------------------------------------------------------- 3. tuning

#[test]
fn tuning_rp_filter_txqueuelen_veth_mtu_and_link_address() {
    let lab = build_lab(Lab::builder());
    let _backend = TcpServer::start(lab.node(), sa("::".parse().unwrap(), BACKEND_PORT)).unwrap();
    let clusters = services(true, true);
    install_services(&lab, &clusters);

    // Pod 1: podRPFilter 2, txQueueLen, vethLinkAddress; vethMTU defaults to
    // eth0's MTU, made non-default by macvlan's "mtu".
    let p1 = lab.pod("p1").unwrap();
    let mut l1 = load(&lab, "macvlan-underlay.conflist");
    add_hijacks(&mut l1);
    macvlan(&mut l1).insert("mtu".into(), json!(1400));
    set(&mut l1, "podRPFilter", json!(2));
    set(&mut l1, "txQueueLen", json!(2000));
    set(&mut l1, "vethLinkAddress", json!("169.254.100.1"));
    let n1 = attach(&lab, &p1, l1, "eth0");
    for dev in ["all", "eth0", "veth0"] {
        assert_eq!(
            sysctl(&p1.name, &format!("net.ipv4.conf.{dev}.rp_filter")),
            "2",
            "{dev}"
        );
    }
    let eth0 = link(&p1.name, "eth0").unwrap();
    assert_eq!(eth0["txqlen"], 2000, "{eth0}");
    assert_eq!(eth0["mtu"], 1400);
    assert_eq!(link(&p1.name, "veth0").unwrap()["mtu"], 1400);
    assert_eq!(link(lab.node(), &host_veth(&p1)).unwrap()["mtu"], 1400);
    let on_veth0 = link_addrs(&p1.name, "veth0");
    assert!(
        on_veth0.iter().any(|a| a.starts_with("169.254.100.1/")),
        "vethLinkAddress on veth0: {on_veth0:?}"
    );
    // The link address must not become the source of cluster traffic: the
    // node has no way back to it.
    let _s1 = TcpServer::start(&p1.name, "[::]:8080".parse().unwrap()).unwrap();
    node_reaches(&lab, &p1, &n1.ips);
    for c in &clusters {
        expect_peer_via_veth0(&p1, &p1.name, None, *c, n1.of(c.is_ipv6()).unwrap());
    }

    // Pod 2: explicit vethMTU; podRPFilter unset means 0, even over a pod
    // that started with 1.
    let p2 = lab.pod("p2").unwrap();
    lab::in_netns(&p2.name, || {
        cni::netns::sysctl_set("net.ipv4.conf.all.rp_filter", "1")?;
        cni::netns::sysctl_set("net.ipv4.conf.default.rp_filter", "1")
    })
    .unwrap();
    let mut l2 = load(&lab, "macvlan-underlay.conflist");
    set(&mut l2, "vethMTU", json!(1300));
    let n2 = attach(&lab, &p2, l2, "eth0");
    for dev in ["all", "eth0", "veth0"] {
        assert_eq!(
            sysctl(&p2.name, &format!("net.ipv4.conf.{dev}.rp_filter")),
            "0",
            "{dev}"
        );
    }
    assert_eq!(link(&p2.name, "eth0").unwrap()["mtu"], 1500);
    assert_eq!(link(&p2.name, "veth0").unwrap()["mtu"], 1300);
    assert_eq!(link(lab.node(), &host_veth(&p2)).unwrap()["mtu"], 1300);
    assert!(link_addrs(&p2.name, "veth0")
        .iter()
        .all(|a| !a.starts_with("169.254.")));
    let _s2 = TcpServer::start(&p2.name, "[::]:8080".parse().unwrap()).unwrap();
    node_reaches(&lab, &p2, &n2.ips);
}

/// Every address on `dev` (any scope), `addr/len`.
fn link_addrs(ns: &str, dev: &str) -> Vec<String> {
    state::addrs(ns)
        .unwrap()
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] == dev)
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
        .collect()
}

// ---------------------------------------------------------------- 4. host side

#[test]
fn host_rule_once_per_pod_entries_and_stale_neighbours() {
    let lab = build_lab(Lab::builder());
    let node = lab.node().to_string();
    assert_eq!(host_rule_count(&node, HOST_TABLE), (0, 0));
    // A neighbour entry left on the uplink for the first pod's addresses
    // (an earlier owner of the IPs): ADD must remove it.
    let wanted = ["10.6.1.50", "fd00:6::1:50"];
    for ip in wanted {
        lab::ip(
            &node,
            &[
                "neigh",
                "add",
                ip,
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                "ens1",
                "nud",
                "stale",
            ],
        )
        .unwrap();
    }
    let list = || {
        let mut l = load(&lab, "macvlan-underlay.conflist");
        macvlan(&mut l).insert("capabilities".into(), json!({"ips": true}));
        l
    };
    let mut pods = Vec::new();
    let mut nics = Vec::new();
    let mut entries = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let pod = lab.pod(name).unwrap();
        let ips = json!([
            format!("10.6.1.{}/16", 50 + i),
            format!("fd00:6::1:{}/64", 50 + i)
        ]);
        let att = Attachment::new(&container_id(&pod), &pod.path, "eth0")
            .arg("IgnoreUnknown", "1")
            .capability("ips", ips);
        let nic = attach_with(&lab, list(), att);
        if i == 0 {
            let want: Vec<IpAddr> = wanted.iter().map(|w| w.parse().unwrap()).collect();
            assert_eq!(nic.ips, want, "the requested addresses");
            for ip in &want {
                let left: Vec<String> = neighbours_of(&node, *ip)
                    .into_iter()
                    .filter(|n| n.contains(" dev ens1 "))
                    .collect();
                assert_eq!(left, Vec::<String>::new(), "stale neighbour kept");
            }
        }
        // This pod's host entries: /32 /128 routes and permanent neighbours
        // on its own veth, with its veth0's MAC.
        let hv = host_veth(&pod);
        let mac = link(&pod.name, "veth0").unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string();
        let mine = node_entries_for(&node, &nic.ips);
        for ip in &nic.ips {
            let host = if ip.is_ipv6() { "" } else { " scope link" };
            let route = format!("{ip} dev {hv} table {HOST_TABLE}");
            assert!(
                mine.iter()
                    .any(|e| e.starts_with(&route) && e.contains(host)),
                "{route} missing: {mine:#?}"
            );
            let neigh = format!("{ip} dev {hv} lladdr {mac} PERMANENT");
            assert!(mine.contains(&neigh), "{neigh} missing: {mine:#?}");
        }
        // Earlier pods' entries are untouched by this ADD.
        for (nic_prev, before) in nics.iter().zip(&entries) {
            let nic_prev: &Nic = nic_prev;
            assert_eq!(&node_entries_for(&node, &nic_prev.ips), before);
        }
        entries.push(mine);
        nics.push(nic);
        pods.push(pod);
        assert_eq!(host_rule_count(&node, HOST_TABLE), (1, 1));
    }
    let servers: Vec<TcpServer> = pods
        .iter()
        .map(|p| TcpServer::start(&p.name, "[::]:8080".parse().unwrap()).unwrap())
        .collect();
    for (p, n) in pods.iter().zip(&nics) {
        node_reaches(&lab, p, &n.ips);
    }

    // DEL the middle pod: its entries go, the others' stay and still answer.
    nics[1]
        .chain
        .del(&nics[1].att)
        .unwrap_or_else(|e| panic!("DEL b: {}", describe(&e)));
    assert!(!has_link(&node, &host_veth(&pods[1])));
    assert_eq!(node_entries_for(&node, &nics[1].ips), Vec::<String>::new());
    for i in [0, 2] {
        assert_eq!(node_entries_for(&node, &nics[i].ips), entries[i]);
        node_reaches(&lab, &pods[i], &nics[i].ips);
    }
    assert_eq!(host_rule_count(&node, HOST_TABLE), (1, 1));
    drop(servers);
}

// ---------------------------------------------------------------- 5. repeated and failed ADD

/// A plugin that prints a recorded result: replays the main plugin's ADD so
/// the coordinator can be run again on the same container and NIC.
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

#[test]
fn repeated_add_changes_nothing() {
    let lab = build_lab(Lab::builder().subnets(2));
    let pod = lab.pod("p").unwrap();
    let nics = [
        attach(&lab, &pod, load(&lab, "macvlan-underlay.conflist"), "eth0"),
        attach(
            &lab,
            &pod,
            load(&lab, "macvlan-underlay-net1.conflist"),
            "net1",
        ),
    ];
    let pod_before = snapshot(&pod.name);
    let node_before = snapshot(lab.node());
    for _ in 0..2 {
        for nic in &nics {
            let again = replay_chain(&lab, nic);
            let out = again
                .add(&nic.att)
                .unwrap_or_else(|e| panic!("repeated ADD {}: {}", nic.att.ifname, describe(&e)));
            assert_eq!(out.result.as_ref(), Some(&nic.result));
            assert_eq!(snapshot(&pod.name), pod_before, "pod after repeated ADD");
            assert_eq!(snapshot(lab.node()), node_before, "node after repeated ADD");
        }
    }
    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    let all: Vec<IpAddr> = nics.iter().flat_map(|n| n.ips.clone()).collect();
    node_reaches(&lab, &pod, &all);
    for nic in &nics {
        nic.chain
            .check(&nic.att)
            .unwrap_or_else(|e| panic!("CHECK {}: {}", nic.att.ifname, describe(&e)));
    }
}

/// ADD of `file` on `ifname` with policyRoutes through a gateway on no
/// connected subnet: the kernel refuses that route after everything else was
/// made, and the coordinator fails naming it. The chain and attachment, for
/// the DEL the runtime sends next.
fn failing_add(lab: &Lab, pod: &Pod, file: &str, ifname: &str) -> (Chain, Attachment) {
    let mut list = load(lab, file);
    set(
        &mut list,
        "policyRoutes",
        json!([{"dst": "10.99.0.0/24", "gw": "10.50.0.1"}]),
    );
    let chain = chain_for(lab, list);
    let att = Attachment::new(&container_id(pod), &pod.path, ifname);
    let err = chain
        .add(&att)
        .expect_err("ADD with an unreachable gateway");
    assert_eq!(
        err.plugin.as_deref(),
        Some("coordinator"),
        "{}",
        describe(&err)
    );
    assert!(
        err.msg.contains("10.99.0.0/24") && err.msg.contains("10.50.0.1"),
        "error names the route: {}",
        err.msg
    );
    (chain, att)
}

#[test]
fn failed_add_leaves_nothing_behind() {
    let lab = build_lab(Lab::builder().subnets(2));
    let node_before = snapshot(lab.node());
    let pod = lab.pod("p").unwrap();
    let pod_before = snapshot(&pod.name);

    let (chain, att) = failing_add(&lab, &pod, "macvlan-underlay.conflist", "eth0");
    assert_eq!(snapshot(lab.node()), node_before, "node after failed ADD");
    let after = snapshot(&pod.name);
    assert_eq!(after.links, vec!["eth0".to_string(), "lo".to_string()]);
    assert_eq!(after.rules, pod_before.rules, "pod rules");
    assert_eq!(after.nft, pod_before.nft, "pod nftables");
    assert_eq!(after.neighbours, pod_before.neighbours, "pod neighbours");
    assert!(
        after
            .routes
            .iter()
            .all(|r| r.contains(" dev eth0") && !r.contains("table 100")),
        "only macvlan's routes: {:#?}",
        after.routes
    );
    // The runtime cleans up the failed attachment with DEL.
    chain
        .del(&att)
        .unwrap_or_else(|e| panic!("DEL after failed ADD: {}", describe(&e)));
    assert_eq!(snapshot(&pod.name), pod_before, "pod after DEL");

    // A failure on a later NIC takes back only that NIC's work.
    let good = attach(&lab, &pod, load(&lab, "macvlan-underlay.conflist"), "eth0");
    let pod_mid = snapshot(&pod.name);
    let node_mid = snapshot(lab.node());
    failing_add(&lab, &pod, "macvlan-underlay-net1.conflist", "net1");
    let mut after = snapshot(&pod.name);
    after.links.retain(|l| l != "net1");
    after.routes.retain(|r| !r.contains(" dev net1"));
    assert_eq!(after, pod_mid, "pod after failed net1 ADD");
    assert_eq!(snapshot(lab.node()), node_mid, "node after failed net1 ADD");
    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    node_reaches(&lab, &pod, &good.ips);
}

// ---------------------------------------------------------------- 6. DEL

/// A DEL that cannot remove what it finds does not succeed: here the
/// coordinator runs without CAP_NET_ADMIN (a wrapper drops it from the
/// bounding set), so the kernel refuses every change. DEL still tries every
/// step (rules, table, nftables, veth), fails with code 11 naming each
/// refusal so the runtime retries, and the retry leaves the pod and the node
/// exactly as before the ADD.
#[test]
fn del_reports_a_real_failure_and_its_retry_completes() {
    let lab = build_lab(Lab::builder().subnets(1));
    let node = lab.node().to_string();
    let pod = lab.pod("f").unwrap();
    let pod_before = snapshot(&pod.name);
    let nic = attach(&lab, &pod, load(&lab, "macvlan-underlay.conflist"), "eth0");
    let pod_added = snapshot(&pod.name);
    let node_added = snapshot(&node);

    let wrap = lab.dir().join("no-net-admin");
    std::fs::create_dir_all(&wrap).unwrap();
    let script = wrap.join("coordinator");
    let real = bin_dir().join("coordinator");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set -net_admin -- {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut path = vec![wrap];
    path.extend(cni_path());
    let weak = lab
        .chain(load(&lab, "macvlan-underlay.conflist"))
        .cni_path(path);
    let err = weak.del(&nic.att).expect_err("DEL without CAP_NET_ADMIN");
    assert_eq!(
        err.plugin.as_deref(),
        Some("coordinator"),
        "{}",
        describe(&err)
    );
    assert_eq!(err.code, 11, "{}", describe(&err));
    for step in ["rule priority 900", "nftables", "veth"] {
        assert!(err.msg.contains(step), "{step} not tried: {}", err.msg);
    }
    assert!(err.msg.contains("Operation not permitted"), "{}", err.msg);
    // Nothing was removed, and nothing half-removed is in the way of the retry.
    assert_eq!(snapshot(&pod.name), pod_added, "pod after the refused DEL");
    assert_eq!(snapshot(&node), node_added, "node after the refused DEL");

    nic.chain
        .del(&nic.att)
        .unwrap_or_else(|e| panic!("retried DEL: {}", describe(&e)));
    assert_eq!(snapshot(&pod.name), pod_before, "pod after the retried DEL");
    // The node's `from all lookup 500` rule serves every pod and stays.
    assert!(!has_link(&node, &host_veth(&pod)));
    assert_eq!(node_entries_for(&node, &nic.ips), Vec::<String>::new());
}

#[test]
fn del_cleans_up_and_never_fails() {
    // Two subnets: macvlan's DEL looks up its master (ens2 for net1).
    let lab = build_lab(Lab::builder().subnets(2));
    let node = lab.node().to_string();

    // Pod alive: host veth, host routes and neighbours, pod veth0, rules,
    // table 100 and the nftables table go.
    let pod = lab.pod("a").unwrap();
    let pod_before = snapshot(&pod.name);
    let nic = attach(&lab, &pod, load(&lab, "macvlan-underlay.conflist"), "eth0");
    nic.chain
        .del(&nic.att)
        .unwrap_or_else(|e| panic!("DEL: {}", describe(&e)));
    assert!(!has_link(&node, &host_veth(&pod)));
    assert_eq!(node_entries_for(&node, &nic.ips), Vec::<String>::new());
    assert_eq!(snapshot(&pod.name), pod_before, "pod after DEL");
    nic.chain
        .del(&nic.att)
        .unwrap_or_else(|e| panic!("repeated DEL: {}", describe(&e)));

    // The pod netns is gone before DEL (path left dangling, then empty).
    let pod = lab.pod("b").unwrap();
    let nic = attach(&lab, &pod, load(&lab, "macvlan-underlay.conflist"), "eth0");
    lab.remove_netns(&pod.name).unwrap();
    nic.chain
        .del(&nic.att)
        .unwrap_or_else(|e| panic!("DEL after the netns is gone: {}", describe(&e)));
    let gone = Attachment {
        netns: None,
        ..nic.att.clone()
    };
    nic.chain
        .del(&gone)
        .unwrap_or_else(|e| panic!("DEL without netns: {}", describe(&e)));
    assert!(!has_link(&node, &host_veth(&pod)));
    assert_eq!(node_entries_for(&node, &nic.ips), Vec::<String>::new());

    // ADD never ran.
    let pod = lab.pod("c").unwrap();
    let chain = chain_for(&lab, load(&lab, "macvlan-underlay.conflist"));
    let att = Attachment::new(&container_id(&pod), &pod.path, "eth0");
    chain
        .del(&att)
        .unwrap_or_else(|e| panic!("DEL without ADD: {}", describe(&e)));
    chain
        .del(&Attachment {
            netns: None,
            ..att.clone()
        })
        .unwrap_or_else(|e| panic!("DEL without ADD or netns: {}", describe(&e)));
    let net1 = chain_for(&lab, load(&lab, "macvlan-underlay-net1.conflist"));
    net1.del(&Attachment::new(&container_id(&pod), &pod.path, "net1"))
        .unwrap_or_else(|e| panic!("DEL net1 without ADD: {}", describe(&e)));
    assert_eq!(
        host_rule_count(&node, HOST_TABLE),
        (1, 1),
        "the shared rule stays"
    );
}

// ---------------------------------------------------------------- 7. CHECK

/// (netns, `ip` command removing a piece, words the error must contain, `ip` command restoring it)
type Case<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);

#[test]
fn check_names_the_missing_piece() {
    let lab = build_lab(Lab::builder());
    let pod = lab.pod("p").unwrap();
    let nic = attach(&lab, &pod, load(&lab, "macvlan-underlay.conflist"), "eth0");
    let check = || nic.chain.check(&nic.att);
    check().unwrap_or_else(|e| panic!("CHECK after ADD: {}", describe(&e)));
    let node = lab.node();
    let v4 = nic.v4().to_string();
    let hv = host_veth(&pod);
    let cases: [Case; 4] = [
        (
            &pod.name,
            vec![
                "rule", "del", "priority", "900", "fwmark", "0xc0de", "lookup", "100",
            ],
            vec!["rule", "900", "100"],
            vec![
                "rule", "add", "priority", "900", "fwmark", "0xc0de", "lookup", "100",
            ],
        ),
        (
            &pod.name,
            vec!["route", "del", "10.233.0.0/18"],
            vec!["route", "10.233.0.0/18"],
            // Exactly as ADD made it (CHECK compares `src` and protocol too).
            vec![
                "route",
                "add",
                "10.233.0.0/18",
                "via",
                "10.6.0.2",
                "dev",
                "veth0",
                "src",
                &v4,
                "proto",
                "222",
            ],
        ),
        (
            node,
            vec!["route", "del", &v4, "table", HOST_TABLE],
            vec!["host route", &v4],
            vec![
                "route", "add", &v4, "dev", &hv, "scope", "link", "table", HOST_TABLE, "proto",
                "222",
            ],
        ),
        (
            node,
            vec!["rule", "del", "priority", "1000", "lookup", HOST_TABLE],
            vec!["host rule", HOST_TABLE],
            vec!["rule", "add", "priority", "1000", "lookup", HOST_TABLE],
        ),
    ];
    for (ns, remove, words, restore) in &cases {
        lab::ip(ns, remove).unwrap();
        let err = check().expect_err(&format!("CHECK after `ip {}`", remove.join(" ")));
        assert_eq!(
            err.plugin.as_deref(),
            Some("coordinator"),
            "{}",
            describe(&err)
        );
        for w in words {
            assert!(
                err.msg.contains(w),
                "`ip {}`: {:?} lacks {w:?}",
                remove.join(" "),
                err.msg
            );
        }
        lab::ip(ns, restore).unwrap();
        check().unwrap_or_else(|e| panic!("CHECK after restoring: {}", describe(&e)));
    }
    // The reply-mark table in the pod.
    lab::nft_in(&pod.name, "delete table inet coordinator\n").unwrap();
    let err = check().expect_err("CHECK without the nftables table");
    assert!(err.msg.contains("nftables"), "{}", err.msg);
    // And the veth itself.
    lab::ip(node, &["link", "del", &hv]).unwrap();
    let err = check().expect_err("CHECK without the host veth");
    assert_eq!(err.plugin.as_deref(), Some("coordinator"));
    assert!(
        err.msg.contains(&hv) && err.msg.contains("veth"),
        "{}",
        err.msg
    );
}

// ---------------------------------------------------------------- 8. conf-examples

/// The JSON blocks under `config: |-` in a NetworkAttachmentDefinition file.
fn nad_configs(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.trim_start().starts_with("config: |") {
            let base = indent(l);
            let mut block = Vec::new();
            i += 1;
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > base) {
                block.push(lines[i].trim_end());
                i += 1;
            }
            let strip = block
                .iter()
                .filter(|b| !b.trim().is_empty())
                .map(|b| indent(b))
                .min()
                .unwrap_or(0);
            out.push(
                block
                    .iter()
                    .map(|b| b.get(strip..).unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        } else {
            i += 1;
        }
    }
    out
}

fn validate_list(what: &str, value: Value, defaults: &Path) -> usize {
    let list = NetConfList::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what}: not a NetConfList: {e}"));
    assert!(
        ["0.4.0", "1.0.0", "1.1.0"].contains(&list.cni_version.as_str()),
        "{what}: cniVersion {}",
        list.cni_version
    );
    assert!(!list.plugins.is_empty(), "{what}");
    let mut n = 0;
    for p in list.plugins.iter().filter(|p| p["type"] == "coordinator") {
        let mut raw = p.clone();
        raw.insert("cniVersion".into(), list.cni_version.clone().into());
        raw.insert("name".into(), list.name.clone().into());
        raw.insert("defaultsFile".into(), defaults.display().to_string().into());
        coordinator::config::Config::from_raw(&Value::Object(raw))
            .unwrap_or_else(|e| panic!("{what}: coordinator entry refused: {e}"));
        n += 1;
    }
    n
}

#[test]
fn conf_examples_parse_and_validate() {
    let dir = conf_example("");
    let defaults = conf_example("defaults.json");
    // The node defaults file is itself a valid coordinator config.
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&defaults).unwrap()).unwrap();
    let cfg = coordinator::config::Config::from_raw(&json!({
        "defaultsFile": defaults.display().to_string()
    }))
    .unwrap();
    assert_eq!(
        cfg.ids.host_table,
        d["hostRuleTable"].as_u64().unwrap() as u32
    );
    assert!(!cfg.service_cidr.is_empty());

    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let (mut lists, mut nads, mut coordinators) = (0, 0, 0);
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        if name.ends_with(".conflist") {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            coordinators += validate_list(&name, v, &defaults);
            lists += 1;
        } else if name.ends_with(".yaml") {
            let blocks = nad_configs(&text);
            let docs = text
                .split("\n---")
                .filter(|d| d.contains("kind: NetworkAttachmentDefinition"))
                .count();
            assert_eq!(blocks.len(), docs, "{name}: one config per definition");
            for (i, b) in blocks.into_iter().enumerate() {
                let v: Value = serde_json::from_str(&b)
                    .unwrap_or_else(|e| panic!("{name} config #{i}: {e}\n{b}"));
                coordinators += validate_list(&format!("{name} #{i}"), v, &defaults);
                nads += 1;
            }
        }
    }
    // ipvlan and SR-IOV are among them, and every list has a coordinator.
    for must in [
        "ipvlan-underlay.conflist",
        "sriov-underlay.conflist",
        "ipvlan-underlay-nad.yaml",
        "sriov-underlay-nad.yaml",
    ] {
        assert!(dir.join(must).is_file(), "{must}");
    }
    assert!(
        lists >= 9 && nads >= 6,
        "{lists} conflists, {nads} NAD configs"
    );
    assert_eq!(coordinators, lists + nads, "a coordinator in every list");
}

#[test]
fn nad_config_extraction() {
    let yaml = "a: 1\nspec:\n  config: |-\n    {\n      \"x\": 1\n    }\n---\nspec:\n  config: |-\n    {\"y\": 2}\nother: 3\n";
    assert_eq!(
        nad_configs(yaml),
        vec!["{\n  \"x\": 1\n}".to_string(), "{\"y\": 2}".to_string()]
    );
}

/// A client on net1's subnet talking to eth0's address: the reply leaves
/// through eth0 (eth0's own table, reached by `from` rules once net1 is
/// attached), not through net1 whose connected route to the client stays in
/// main. net1 sends nothing toward the client; eth0 carries the reply.
#[test]
fn reply_from_eth0_address_leaves_through_eth0_toward_net1_subnet() {
    let lab = build_lab(Lab::builder().subnets(2));
    let pod = lab.pod("p").unwrap();
    let eth0 = attach(&lab, &pod, load(&lab, "macvlan-underlay.conflist"), "eth0");
    let _net1 = attach(
        &lab,
        &pod,
        load(&lab, "macvlan-underlay-net1.conflist"),
        "net1",
    );
    let client = client_on(&lab, 2);
    let _server = TcpServer::start(&pod.name, sa("::".parse().unwrap(), POD_PORT)).unwrap();
    for v6 in [false, true] {
        let to = client_ip(&client, v6).expect("client address");
        let from = eth0.of(v6).expect("eth0 address");
        let how = route_get(&pod.name, to, Some(from));
        assert_eq!(how["dev"], "eth0", "route from {from} to {to}: {how}");
        let (net1, eth0) = (
            Sniffer::start(&pod.name, "net1"),
            Sniffer::start(&pod.name, "eth0"),
        );
        expect_peer(&client.name, None, sa(from, POD_PORT), to);
        assert_eq!(
            net1.sent_to(to),
            0,
            "a reply from {from} to {to} left through net1"
        );
        assert!(eth0.sent_to(to) >= 2, "no reply to {to} through eth0");
    }
}

// ---------------------------------------------------------------- 9. NodePort without a default in main

/// A UDP server in a netns that answers each datagram with
/// `from <peer>` (as [`TcpServer`] does), and records the errors of the
/// replies the kernel refused (no route).
struct UdpEcho {
    stop: Arc<AtomicBool>,
    refused: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &str, addr: SocketAddr) -> UdpEcho {
        let sock = lab::in_netns(ns, move || UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("UDP bind {addr} in {ns}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, refused) = (Arc::clone(&stop), Arc::clone(&refused));
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((_, peer)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let line = format!(
                        "from {}",
                        SocketAddr::new(peer.ip().to_canonical(), peer.port())
                    );
                    if let Err(e) = sock.send_to(line.as_bytes(), peer) {
                        refused
                            .lock()
                            .unwrap()
                            .push(format!("reply to {peer}: {e}"));
                    }
                }
            })
        };
        UdpEcho {
            stop,
            refused,
            thread: Some(thread),
        }
    }

    fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One datagram from `ns` to `dst`: the reply's source and text.
fn udp_request(ns: &str, dst: SocketAddr) -> std::io::Result<(SocketAddr, String)> {
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    let sock = lab::in_netns(ns, move || UdpSocket::bind(any))?;
    sock.set_read_timeout(Some(T))?;
    sock.send_to(b"ping", dst)?;
    let mut buf = [0u8; 512];
    let (n, from) = sock.recv_from(&mut buf)?;
    Ok((from, String::from_utf8_lossy(&buf[..n]).into_owned()))
}

/// NodePort for UDP: `node` DNATed to `backend` (TCP has
/// [`Lab::node_service`]).
fn node_port_udp(lab: &Lab, node: SocketAddr, backend: SocketAddr) {
    let (family, target) = match backend {
        SocketAddr::V4(b) => ("ip", b.to_string()),
        SocketAddr::V6(b) => ("ip6", b.to_string()),
    };
    let script = format!(
        "table {family} np_udp {{\n chain pre {{ type nat hook prerouting priority -100; }}\n}}\n\
         add rule {family} np_udp pre {family} daddr {} udp dport {} dnat to {target}\n",
        node.ip(),
        node.port()
    );
    lab.nft(&script).unwrap();
}

/// The node's address on subnet `s`.
fn node_on(lab: &Lab, s: u8, v6: bool) -> IpAddr {
    let sn = lab.subnet(s).unwrap();
    match v6 {
        true => sn.node6.unwrap().into(),
        false => sn.node4.unwrap().into(),
    }
}

/// Issue 24, item 2: an underlay pod whose IPAM gives no default route
/// (routes only for its own subnet) serves a NodePort. The client is on
/// another subnet, so the pod's `main` has no route to it: the SYN-ACK
/// must take the reply mark into its very first route lookup (ingress mark
/// and `tcp_fwmark_accept`), else it is never sent. Both families; with SYN
/// cookies too, where the connection is made from the client's final ACK,
/// which must carry the mark as well.
#[test]
fn nodeport_reaches_a_pod_without_a_default_route_in_main() {
    let lab = build_lab(Lab::builder().subnets(2));
    let mut list = load(&lab, "macvlan-underlay-dualstack.conflist");
    let ipam = macvlan(&mut list)["ipam"].as_object_mut().unwrap();
    ipam.remove("routes").expect("the example has routes");
    let pod = lab.pod("p").unwrap();
    let nic = attach(&lab, &pod, list, "eth0");
    assert_eq!(default_devs(&pod.name), Vec::new(), "main has no default");
    let _srv = TcpServer::start(&pod.name, sa("::".parse().unwrap(), POD_PORT)).unwrap();
    node_reaches(&lab, &pod, &nic.ips);
    let client = client_on(&lab, 2);
    for ip in &nic.ips {
        let v6 = ip.is_ipv6();
        let from = client_ip(&client, v6).unwrap();
        // The premise: without the mark the pod has no way to the client.
        let unrouted = lab::ip(&pod.name, &["route", "get", &from.to_string()]);
        assert!(unrouted.is_err(), "pod routes to {from}: {unrouted:?}");
        let np = sa(node_on(&lab, 2, v6), NODE_PORT);
        lab.node_service(np, sa(*ip, POD_PORT)).unwrap();
        expect_peer_via_veth0(&pod, &client.name, None, np, from);
    }
    assert_eq!(sysctl(&pod.name, "net/ipv4/tcp_fwmark_accept"), "1");
    // Every SYN answered with a cookie: the request socket is built from the
    // client's ACK, whose route lookup needs the mark too.
    let syncookies = |v: &str| {
        let v = v.to_string();
        lab::in_netns(&pod.name, move || {
            cni::netns::sysctl_set("net/ipv4/tcp_syncookies", &v)
        })
        .unwrap()
    };
    syncookies("2");
    for ip in &nic.ips {
        let v6 = ip.is_ipv6();
        let np = sa(node_on(&lab, 2, v6), NODE_PORT);
        let from = client_ip(&client, v6).unwrap();
        expect_peer_via_veth0(&pod, &client.name, None, np, from);
    }
    syncookies("1");

    nic.chain
        .check(&nic.att)
        .unwrap_or_else(|e| panic!("CHECK: {}", describe(&e)));
    // CHECK requires the ingress mark, not just a rule in each chain.
    let listing = lab::nft_in(&pod.name, "list chain inet coordinator prerouting\n").unwrap();
    assert!(
        listing.contains("meta mark set ct mark"),
        "no ingress mark in {listing}"
    );
    let out = nsexec::command_in(&pod.name, "nft", Enter::NetOnly)
        .and_then(|mut c| {
            c.args(["-a", "list", "chain", "inet", "coordinator", "prerouting"])
                .output()
        })
        .unwrap();
    let handle = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("meta mark set ct mark"))
        .and_then(|l| l.rsplit("# handle ").next().map(|h| h.trim().to_string()))
        .expect("the ingress mark rule's handle");
    lab::nft_in(
        &pod.name,
        &format!("delete rule inet coordinator prerouting handle {handle}\n"),
    )
    .unwrap();
    let err = nic
        .chain
        .check(&nic.att)
        .expect_err("CHECK without the ingress mark");
    assert!(err.msg.contains("nftables"), "{}", describe(&err));
    nic.chain
        .del(&nic.att)
        .unwrap_or_else(|e| panic!("DEL: {}", describe(&e)));
    assert!(!has_link(lab.node(), &host_veth(&pod)), "host veth left");
}

/// UDP NodePort replies: they are routed by the server's `sendto`, which
/// knows no connection, so only the output chain's re-route brings them
/// back through `veth0` (with the pod's default in `main`: without one,
/// the `sendto` itself fails, see the operator guide). The ingress mark
/// must not change that; the reply comes back from the node's address.
#[test]
fn nodeport_udp_replies_return_through_veth0() {
    let lab = build_lab(Lab::builder().subnets(2));
    let pod = lab.pod("p").unwrap();
    let list = load(&lab, "macvlan-underlay-dualstack.conflist");
    let nic = attach(&lab, &pod, list, "eth0");
    let echo = UdpEcho::start(&pod.name, sa("::".parse().unwrap(), POD_PORT));
    let client = client_on(&lab, 2);
    for ip in &nic.ips {
        let v6 = ip.is_ipv6();
        let from = client_ip(&client, v6).unwrap();
        let np = sa(node_on(&lab, 2, v6), NODE_PORT);
        node_port_udp(&lab, np, sa(*ip, POD_PORT));
        let veth0 = Sniffer::start(&pod.name, "veth0");
        let (src, text) = udp_request(&client.name, np)
            .unwrap_or_else(|e| panic!("UDP {} -> {np}: {e}; {:?}", client.name, echo.refused()));
        assert_eq!(src, np, "the reply must come back from the NodePort");
        assert_eq!(reply_peer(&text).map(|p| p.ip()), Some(from), "{text}");
        assert!(
            veth0.sent_to(from) >= 1,
            "the UDP reply to {from} left the pod elsewhere"
        );
    }
    assert_eq!(echo.refused(), Vec::<String>::new());
    nic.chain
        .del(&nic.att)
        .unwrap_or_else(|e| panic!("DEL: {}", describe(&e)));
}
