//! Router advertisements on later NICs (issue 24, item 1), with real RAs:
//! Debian's `radvd` runs in the lab's fabric netns (the router of subnet 2)
//! and advertises fd00:7::/64 with itself as default router. The pod has a
//! macvlan `eth0` (dual-stack IPAM) and a macvlan `net1` whose IPAM gives
//! IPv4 only, so net1's IPv6 address comes from SLAAC. Proven with TCP on
//! the strict fabric (IPv4 `rp_filter=1`, an nftables `fib` reverse-path
//! check for IPv6). Needs root and radvd (scripts/setup.sh); never skips.
//!
//! radvd runs only in the lab's fabric netns, with its config and pid file
//! in a temporary directory, and is killed when the test ends (also when it
//! fails: a guard's drop).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cni_tests::{bin_dir, cni_path, conf_example, ifindex};
use coordinator::detect::socket::{Direction, PacketSocket};
use integration::chain::{plugin_stdin, Attachment, CacheKey, Chain, ChainError, NetConfList};
use integration::exec::{self, Spawn};
use integration::lab::{self, state, Lab, Pod};
use integration::nsexec::{self, Enter};
use integration::traffic::{reply_peer, tcp_request, TcpServer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 7000;
/// radvd's MaxRtrAdvInterval: an unsolicited RA at least this often.
const RA_INTERVAL: Duration = Duration::from_secs(4);
const DEFRTR: &str = "net/ipv6/conf/net1/accept_ra_defrtr";

// ---------------------------------------------------------------- radvd

/// radvd advertising subnet 2's prefix on the fabric's bridge `br2`.
struct Radvd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Radvd {
    fn start(lab: &Lab) -> Radvd {
        let sn = lab.subnet(2).expect("subnet 2");
        let prefix = sn.v6.expect("subnet 2 has IPv6");
        let dir = tempfile::tempdir().expect("temp dir for radvd");
        let conf = dir.path().join("radvd.conf");
        let text = format!(
            "interface {} {{\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  \
             MaxRtrAdvInterval {};\n  AdvDefaultLifetime 1800;\n  \
             prefix {prefix} {{\n    AdvOnLink on;\n    AdvAutonomous on;\n  }};\n}};\n",
            sn.bridge,
            RA_INTERVAL.as_secs()
        );
        std::fs::write(&conf, text).expect("write radvd.conf");
        let pid = dir.path().join("radvd.pid");
        let log = std::fs::File::create(dir.path().join("radvd.log")).expect("radvd log");
        let child = nsexec::command_in(lab.fabric(), "radvd", Enter::NetOnly)
            .and_then(|mut c| {
                c.args(["--nodaemon", "--logmethod", "stderr", "--config"])
                    .arg(&conf)
                    .arg("--pidfile")
                    .arg(&pid)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
            })
            .unwrap_or_else(|e| panic!("starting radvd (apt-get install radvd): {e}"));
        let mut r = Radvd { child, _dir: dir };
        // Up when it wrote its pid file; gone early means a bad config.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pid.exists() {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("radvd exited ({status}): {}", r.log());
            }
            assert!(Instant::now() < deadline, "radvd not up: {}", r.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("radvd.log")).unwrap_or_default()
    }
}

impl Drop for Radvd {
    fn drop(&mut self) {
        // Only our child, by its pid: SIGTERM lets it stop its privsep
        // helper and remove its pid file; SIGKILL if it lingers.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- lab

fn build_lab() -> Lab {
    assert!(
        bin_dir().join("coordinator").is_file(),
        "coordinator binary missing in {} (scripts/build.sh --profile dev)",
        bin_dir().display()
    );
    let lab = Lab::builder()
        .subnets(3)
        .build()
        .expect("build lab (needs root)");
    strict_ipv6_fabric(&lab);
    lab
}

/// IPv6 has no rp_filter: drop routed packets whose source is not reachable
/// through the interface they came in on, as a uRPF router would.
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

fn load(lab: &Lab, file: &str) -> NetConfList {
    let mut list = NetConfList::from_file(conf_example(file))
        .unwrap_or_else(|e| panic!("load conf-examples/{file}: {e}"));
    lab.localize(&mut list);
    let nodefaults = lab.dir().join("no-defaults.json").display().to_string();
    list.plugin_mut("coordinator")
        .expect("a coordinator entry")
        .insert("defaultsFile".into(), json!(nodefaults));
    list
}

/// net1 on subnet 2 with an IPv4-only IPAM: IPv6 is the router's business.
fn net1_list(lab: &Lab) -> NetConfList {
    let mut list = load(lab, "macvlan-underlay-net1.conflist");
    let m = list.plugin_mut("macvlan").expect("macvlan");
    let ranges = m["ipam"]["ranges"].as_array_mut().expect("ranges");
    ranges.retain(|set| !set[0]["subnet"].as_str().unwrap_or("").contains(':'));
    assert_eq!(ranges.len(), 1, "net1 keeps its IPv4 range only");
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

fn attachment(pod: &Pod, ifname: &str) -> Attachment {
    Attachment::new(&format!("ctr-{}", pod.name), &pod.path, ifname).arg("IgnoreUnknown", "1")
}

fn chain_for(lab: &Lab, list: NetConfList) -> Chain {
    lab.chain(list).cni_path(cni_path())
}

/// The coordinator alone, as the chain runner would exec it after the main
/// plugin (`prev`: the main plugin's result): its stdout on success.
fn coordinator(
    lab: &Lab,
    chain: &Chain,
    att: &Attachment,
    verb: &str,
    prev: &Value,
) -> Result<String, String> {
    let mut list = chain.list().clone();
    let conf = list
        .plugin_mut("coordinator")
        .expect("a coordinator")
        .clone();
    let stdin = plugin_stdin(
        &conf,
        &list.cni_version,
        &list.name,
        &att.capability_args,
        Some(prev),
    );
    let netns = att.netns.as_ref().expect("netns").display().to_string();
    let path: Vec<String> = cni_path().iter().map(|p| p.display().to_string()).collect();
    let node = nsexec::netns_path(lab.node());
    let raw = exec::run(Spawn {
        binary: &bin_dir().join("coordinator"),
        args: Vec::new(),
        clear_env: false,
        env: vec![
            ("CNI_COMMAND".into(), verb.into()),
            ("CNI_CONTAINERID".into(), att.container_id.clone()),
            ("CNI_NETNS".into(), netns),
            ("CNI_IFNAME".into(), att.ifname.clone()),
            ("CNI_ARGS".into(), "IgnoreUnknown=1".into()),
            ("CNI_PATH".into(), path.join(":")),
        ],
        stdin: stdin.to_string().into_bytes(),
        netns: Some(&node),
        timeout: Duration::from_secs(60),
    })
    .expect("exec coordinator");
    let out = String::from_utf8_lossy(&raw.stdout).into_owned();
    match raw.exit_code {
        Some(0) => Ok(out),
        code => Err(format!(
            "coordinator {verb} exit {code:?}: {out}\n{}",
            String::from_utf8_lossy(&raw.stderr)
        )),
    }
}

// ---------------------------------------------------------------- kernel state

fn sysctl(ns: &str, key: &str) -> String {
    let key = key.to_string();
    lab::in_netns(ns, move || cni::netns::sysctl_get(&key))
        .unwrap_or_else(|e| panic!("sysctl in {ns}: {e}"))
}

/// net1's SLAAC address (global, `dynamic`: no IFA_F_PERMANENT), if any.
fn slaac_of(pod: &Pod) -> Option<IpAddr> {
    let out = lab::ip(&pod.name, &["-j", "-6", "addr", "show", "dev", "net1"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()?
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .find(|a| a["scope"] == "global" && a["dynamic"] == true)
        .and_then(|a| a["local"].as_str()?.parse().ok())
}

fn routes(ns: &str, table: &str) -> Vec<Value> {
    state::routes(ns, table)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// IPv6 defaults of `table` through net1.
fn net1_v6_defaults(pod: &Pod, table: &str) -> Vec<Value> {
    routes(&pod.name, table)
        .into_iter()
        .filter(|r| r["dst"] == "default" && r["dev"] == "net1" && r["family"] == "inet6")
        .collect()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
    routes(ns, "all")
        .iter()
        .filter(|r| r["table"] != "local" && r["dst"] != "multicast")
        .map(state::route_line)
        .collect()
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

/// Everything ADD/DEL may touch in a netns, for before/after comparisons:
/// links, rules, routes, permanent neighbours.
fn snapshot(ns: &str) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
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
    (links, rule_lines(ns), route_lines(ns), neighbours)
}

/// `coordinator explain --json` run on the node: the verdicts of the flows
/// of `addr`, as (flow, symmetric).
fn explained(lab: &Lab, pod: &Pod, addr: IpAddr) -> Vec<(String, bool)> {
    let mut cmd = nsexec::command_in(
        lab.node(),
        &bin_dir().join("coordinator").display().to_string(),
        Enter::NetOnly,
    )
    .unwrap();
    cmd.arg("explain")
        .arg("--netns")
        .arg(&pod.path)
        .arg("--defaults")
        .arg(lab.dir().join("no-defaults.json"))
        .arg("--json");
    let out = cmd.output().expect("run coordinator explain");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "explain --json: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["address"].as_str().and_then(|a| a.parse().ok()) == Some(addr))
        .map(|f| {
            (
                f["flow"].as_str().unwrap_or("").to_string(),
                f["symmetric"] == true,
            )
        })
        .collect()
}

// ---------------------------------------------------------------- traffic

/// What the pod sends out of one link, to count a flow's own packets.
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

    /// Outgoing IPv6 packets addressed to `dst` since the capture started.
    fn sent_to(&self, dst: IpAddr) -> usize {
        let mut buf = vec![0u8; 70_000];
        let mut n = 0;
        while let Some((len, dir)) = self.0.try_recv(&mut buf).expect("recv") {
            let frame = &buf[..len];
            let is_v6 = frame.get(12..14) == Some(&[0x86, 0xdd][..]);
            let to: Option<[u8; 16]> = frame.get(38..54).and_then(|b| b.try_into().ok());
            if dir == Direction::Outgoing && is_v6 && to.map(IpAddr::from) == Some(dst) {
                n += 1;
            }
        }
        n
    }
}

/// TCP from `client` (bound to `from`) to the pod's `addr`: the server saw
/// the client, and the pod's side of the exchange left through `dev`.
fn reply_through(pod: &Pod, client: &str, from: IpAddr, addr: IpAddr, dev: &str) {
    let sniff = Sniffer::start(&pod.name, dev);
    let dst = SocketAddr::new(addr, POD_PORT);
    let reply = tcp_request(client, Some(from), dst, T).unwrap_or_else(|e| {
        panic!(
            "TCP {client} ({from}) -> {dst}: {e}\nrules: {:#?}\nroutes: {:#?}",
            rule_lines(&pod.name),
            route_lines(&pod.name)
        )
    });
    assert_eq!(reply_peer(&reply).map(|p| p.ip()), Some(from), "{reply}");
    let sent = sniff.sent_to(from);
    assert!(
        sent >= 2,
        "{client} -> {dst}: the pod sent {sent} packets of the flow through {dev}"
    );
}

/// Off-link clients only work while a reply from `addr` finds net1's router.
fn expect_no_reply(client: &str, from: IpAddr, addr: IpAddr) {
    let dst = SocketAddr::new(addr, POD_PORT);
    let got = tcp_request(client, Some(from), dst, Duration::from_secs(2));
    assert!(got.is_err(), "{client} -> {dst} answered: {got:?}");
}

fn client(lab: &Lab, subnet: u8) -> lab::Client {
    let sn = lab.subnet(subnet).unwrap();
    lab.fabric_client(subnet, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap()
}

fn v6(c: &lab::Client) -> IpAddr {
    c.ipv6.expect("client IPv6").into()
}

// ---------------------------------------------------------------- tests

/// The router answered before the coordinator ran (the chain's main plugin
/// brought net1 up and the RA came in before the next plugin): the SLAAC
/// address gets its `from` rule, the RA default leaves main for net1's
/// table with its lifetime, later RAs add none to main; clients on net1's
/// subnet and behind the router get their replies through net1, the node
/// reaches the address through veth0; CHECK passes and `explain` finds
/// every flow symmetric; DEL leaves the pod and the node as before net1,
/// `accept_ra_defrtr` back.
#[test]
fn slaac_address_before_add_gets_its_rule_and_the_ra_default_leaves_main() {
    let lab = build_lab();
    let pod = lab.pod("p").unwrap();
    let eth0 = chain_for(&lab, load(&lab, "macvlan-underlay.conflist"));
    let eth0_att = attachment(&pod, "eth0");
    eth0.add(&eth0_att)
        .unwrap_or_else(|e| panic!("ADD eth0: {}", describe(&e)));
    let (c1, c2, c3) = (client(&lab, 1), client(&lab, 2), client(&lab, 3));
    let before = snapshot(&pod.name);
    let node_before = snapshot(lab.node());
    let _radvd = Radvd::start(&lab);

    // net1's main plugin, then the router's answer, then the coordinator.
    let list = net1_list(&lab);
    let mut main_only = list.clone();
    main_only.plugins.truncate(1);
    let att = attachment(&pod, "net1");
    let prev = chain_for(&lab, main_only)
        .add(&att)
        .unwrap_or_else(|e| panic!("ADD net1 (macvlan): {}", describe(&e)))
        .result
        .expect("macvlan result");
    wait_for("net1's SLAAC address and RA default", || {
        slaac_of(&pod).is_some() && !net1_v6_defaults(&pod, "main").is_empty()
    });
    let slaac = slaac_of(&pod).unwrap();
    let default_before = sysctl(&pod.name, DEFRTR);
    assert_eq!(default_before, "1", "a fresh NIC takes RA defaults");
    let ra_default = net1_v6_defaults(&pod, "main").remove(0);
    assert_eq!(ra_default["protocol"], "ra", "{ra_default}");

    let full = chain_for(&lab, list);
    let out = coordinator(&lab, &full, &att, "ADD", &prev).expect("coordinator ADD");
    let result: Value = serde_json::from_str(&out).expect("ADD result");
    let key = CacheKey {
        network: &full.list().name,
        container_id: &att.container_id,
        ifname: &att.ifname,
    };
    full.cache()
        .put(&key, json!({"result": result}))
        .expect("cache the chain's result");

    // The SLAAC address leads to net1's table, like its IPAM address.
    let v4: IpAddr = integration::chain::result_ips(&result)[0];
    let table = from_rule_table(&pod.name, v4).expect("from rule of net1's IPv4");
    assert_eq!(
        from_rule_table(&pod.name, slaac),
        Some(table.clone()),
        "rules: {:#?}",
        rule_lines(&pod.name)
    );
    // The RA default: out of main, in net1's table with a lifetime.
    assert!(net1_v6_defaults(&pod, "main").is_empty());
    let copied = net1_v6_defaults(&pod, &table);
    assert_eq!(copied.len(), 1, "{:#?}", routes(&pod.name, &table));
    assert_eq!(copied[0]["gateway"], ra_default["gateway"]);
    let left = copied[0]["expires"].as_u64().unwrap_or(0);
    assert!(
        left > 0 && left <= 1800,
        "copied RA default must expire: {}",
        copied[0]
    );
    assert_eq!(sysctl(&pod.name, DEFRTR), "0");
    // Later RAs (one every RA_INTERVAL at most) put no default back.
    std::thread::sleep(RA_INTERVAL + Duration::from_secs(1));
    assert!(
        net1_v6_defaults(&pod, "main").is_empty(),
        "{:#?}",
        routes(&pod.name, "main")
    );

    // Traffic: a client on net1's subnet; one on eth0's, which main would
    // answer through eth0; one on a third subnet behind the router, whose
    // reply needs the copied default (by main it would leave through eth0
    // and the fabric's reverse-path check would drop it).
    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    for c in [&c2, &c1, &c3] {
        reply_through(&pod, &c.name, v6(c), slaac, "net1");
    }

    let node_now = snapshot(lab.node());
    let s = slaac.to_string();
    assert!(
        node_now.2.iter().any(|r| r.starts_with(&s)) && node_now.3.iter().any(|n| n.contains(&s)),
        "node route and neighbour for {s}: {node_now:#?}"
    );
    // The node reaches it through veth0 like an IPAM address, and traffic
    // sourced from it to the node goes through veth0 too.
    let node6: IpAddr = lab.subnet(1).unwrap().node6.unwrap().into();
    let sniff = Sniffer::start(&pod.name, "veth0");
    let dst = SocketAddr::new(slaac, POD_PORT);
    let reply =
        tcp_request(lab.node(), None, dst, T).unwrap_or_else(|e| panic!("node -> {dst}: {e}"));
    let peer = reply_peer(&reply).map(|p| p.ip()).expect("a peer");
    assert!(
        sniff.sent_to(peer) >= 2,
        "node -> {dst}: reply not through veth0"
    );
    let _node_srv = TcpServer::start(lab.node(), SocketAddr::new(node6, NODE_PORT)).unwrap();
    let sniff = Sniffer::start(&pod.name, "veth0");
    let reply = tcp_request(&pod.name, Some(slaac), SocketAddr::new(node6, NODE_PORT), T)
        .unwrap_or_else(|e| panic!("pod ({slaac}) -> node {node6}: {e}"));
    assert_eq!(reply_peer(&reply).map(|p| p.ip()), Some(slaac), "{reply}");
    assert!(sniff.sent_to(node6) >= 2, "pod -> node not through veth0");

    full.check(&att)
        .unwrap_or_else(|e| panic!("CHECK net1: {}", describe(&e)));
    // `coordinator explain` agrees with the traffic.
    let verdicts = explained(&lab, &pod, slaac);
    for flow in ["subnet", "routed", "node"] {
        assert!(
            verdicts.contains(&(flow.to_string(), true)),
            "explain {slaac}: {verdicts:?}"
        );
    }

    // The coordinator's DEL first (net1 outlives it): the sysctl is back.
    coordinator(&lab, &full, &att, "DEL", &result).expect("coordinator DEL");
    assert_eq!(sysctl(&pod.name, DEFRTR), default_before);
    assert_eq!(from_rule_table(&pod.name, slaac), None);
    assert_eq!(from_rule_table(&pod.name, v4), None);
    // Then the whole chain, as the runtime does: nothing of net1 is left.
    full.del(&att)
        .unwrap_or_else(|e| panic!("DEL net1: {}", describe(&e)));
    assert_eq!(snapshot(&pod.name), before, "pod after DEL of net1");
    let node_after = snapshot(lab.node());
    assert_eq!(node_after.1, node_before.1, "node rules");
    assert_eq!(node_after.2, node_before.2, "node routes");
    assert_eq!(node_after.3, node_before.3, "node neighbours");
}

/// The usual order: the chain ran before the router answered. ADD already
/// turned net1's `accept_ra_defrtr` off, so the RA's default never reaches
/// main; the SLAAC address that appears afterwards has no `from` rule, and
/// CHECK says so, naming it. Its replies to a client on a third subnet then
/// take main's default (eth0) and the strict fabric drops them: the drift
/// CHECK reports is real. DEL leaves the pod as before.
#[test]
fn slaac_address_after_add_is_reported_by_check() {
    let lab = build_lab();
    let pod = lab.pod("p").unwrap();
    let eth0 = chain_for(&lab, load(&lab, "macvlan-underlay.conflist"));
    eth0.add(&attachment(&pod, "eth0"))
        .unwrap_or_else(|e| panic!("ADD eth0: {}", describe(&e)));
    let c3 = client(&lab, 3);
    let before = snapshot(&pod.name);

    let net1 = chain_for(&lab, net1_list(&lab));
    let att = attachment(&pod, "net1");
    net1.add(&att)
        .unwrap_or_else(|e| panic!("ADD net1: {}", describe(&e)));
    assert_eq!(sysctl(&pod.name, DEFRTR), "0");
    net1.check(&att)
        .unwrap_or_else(|e| panic!("CHECK net1 before any RA: {}", describe(&e)));

    let _radvd = Radvd::start(&lab);
    wait_for("net1's SLAAC address", || slaac_of(&pod).is_some());
    let slaac = slaac_of(&pod).unwrap();
    // The RA that made the address was handled whole: no default from it.
    std::thread::sleep(RA_INTERVAL + Duration::from_secs(1));
    assert!(
        net1_v6_defaults(&pod, "main").is_empty(),
        "{:#?}",
        routes(&pod.name, "main")
    );
    assert_eq!(from_rule_table(&pod.name, slaac), None);

    let err = net1
        .check(&att)
        .expect_err("CHECK with a SLAAC address and no rule");
    assert!(
        err.msg.contains(&format!("from {slaac}/128")) && err.msg.contains("changed since its ADD"),
        "{}",
        err.msg
    );
    let _srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    expect_no_reply(&c3.name, v6(&c3), slaac);
    // explain sees it too: the node has no way to the address yet.
    let verdicts = explained(&lab, &pod, slaac);
    assert!(
        verdicts.contains(&("node".to_string(), false)),
        "explain {slaac}: {verdicts:?}"
    );

    net1.del(&att)
        .unwrap_or_else(|e| panic!("DEL net1: {}", describe(&e)));
    assert_eq!(snapshot(&pod.name), before, "pod after DEL of net1");
}
