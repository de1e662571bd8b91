//! Root tests of the reply-path connmark table: kernel state read back with
//! `nft -j`, and real TCP traffic whose replies only come back when the
//! table is installed. Every namespace is created here and removed by a Drop
//! guard; nothing touches the root namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use cni::netns::NetNs;
use coordinator::nftables::{self, ReplyMark};
use integration::lab::Netns;
use serde_json::Value;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip <args>` inside netns `ns`.
fn ip(ns: &str, args: &str) {
    let mut full = vec!["-n", ns];
    full.extend(args.split_whitespace());
    run("ip", &full);
}

fn sysctl(ns: &str, key: &str, value: &str) {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ],
    );
}

/// Scratch namespaces of the test kit, one per role, deleted on drop (also
/// when a test panics).
struct Namespaces(Vec<Netns>);

impl Namespaces {
    fn new(roles: &[&str]) -> Self {
        Namespaces(roles.iter().map(|r| Netns::scratch(r)).collect())
    }

    fn name(&self, i: usize) -> &str {
        self.0[i].name()
    }

    fn open(&self, i: usize) -> &NetNs {
        self.0[i].ns()
    }
}

fn ruleset(ns: &str) -> Value {
    let out = run("ip", &["netns", "exec", ns, "nft", "-j", "list", "ruleset"]);
    serde_json::from_str(&out).expect("nft -j output is JSON")
}

/// The `nftables` array entries of one kind ("table", "chain", "rule").
fn objects<'a>(rs: &'a Value, kind: &str) -> Vec<&'a Value> {
    rs["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o.get(kind))
        .collect()
}

fn spec(mark: u32) -> ReplyMark {
    ReplyMark {
        iif: "veth0".into(),
        mark,
    }
}

#[test]
fn install_is_idempotent_and_remove_cleans_up() {
    let nss = Namespaces::new(&["s"]);
    let (name, ns) = (nss.name(0), nss.open(0));
    let mark = 0x1_0063;

    nftables::install(ns, &spec(mark)).expect("install");
    nftables::install(ns, &spec(mark)).expect("install again");

    let rs = ruleset(name);
    let tables = objects(&rs, "table");
    assert_eq!(tables.len(), 1, "{rs:#}");
    assert_eq!(tables[0]["family"], "inet");
    assert_eq!(tables[0]["name"], "coordinator");

    let chains = objects(&rs, "chain");
    assert_eq!(chains.len(), 2, "{rs:#}");
    for (chain, kind, hook) in [
        ("prerouting", "filter", "prerouting"),
        ("output", "route", "output"),
    ] {
        let c = chains
            .iter()
            .find(|c| c["name"] == chain)
            .unwrap_or_else(|| panic!("chain {chain} missing: {rs:#}"));
        assert_eq!(c["family"], "inet");
        assert_eq!(c["table"], "coordinator");
        assert_eq!(c["type"], kind, "{c}");
        assert_eq!(c["hook"], hook, "{c}");
        assert_eq!(c["prio"], -150, "{c}");
        assert_eq!(c["policy"], "accept", "{c}");
    }

    let rules = objects(&rs, "rule");
    assert_eq!(
        rules.len(),
        3,
        "two rules in prerouting, one in output, even after two installs: {rs:#}"
    );
    let rules_of = |chain: &str| -> Vec<Value> {
        rules
            .iter()
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    };
    // ct mark <mark> meta mark set ct mark
    let restores_mark = |r: &Value| {
        assert_eq!(r.as_array().map(Vec::len), Some(2), "{r}");
        assert_eq!(r[0]["match"]["left"]["ct"]["key"], "mark", "{r}");
        assert_eq!(r[0]["match"]["op"], "==", "{r}");
        assert_eq!(r[0]["match"]["right"], mark, "{r}");
        assert_eq!(r[1]["mangle"]["key"]["meta"]["key"], "mark", "{r}");
        assert_eq!(r[1]["mangle"]["value"]["ct"]["key"], "mark", "{r}");
    };
    let pre = rules_of("prerouting");
    assert_eq!(pre.len(), 2, "{rs:#}");
    // iifname "veth0" ct state new ct mark set <mark>
    let new = &pre[0];
    assert_eq!(new.as_array().map(Vec::len), Some(3), "{new}");
    assert_eq!(new[0]["match"]["left"]["meta"]["key"], "iifname", "{new}");
    assert_eq!(new[0]["match"]["right"], "veth0", "{new}");
    assert_eq!(new[1]["match"]["left"]["ct"]["key"], "state", "{new}");
    assert_eq!(new[1]["match"]["right"], "new", "{new}");
    assert_eq!(new[2]["mangle"]["key"]["ct"]["key"], "mark", "{new}");
    assert_eq!(new[2]["mangle"]["value"], mark, "{new}");
    // Then the packet mark on the way in (the SYN's mark is the SYN-ACK's).
    restores_mark(&pre[1]);
    let out = rules_of("output");
    assert_eq!(out.len(), 1, "{rs:#}");
    restores_mark(&out[0]);

    // Re-install with another spec replaces, not appends.
    nftables::install(
        ns,
        &ReplyMark {
            iif: "eth9".into(),
            mark: 7,
        },
    )
    .expect("reinstall");
    let rs = ruleset(name);
    assert_eq!(objects(&rs, "rule").len(), 3, "{rs:#}");
    assert!(
        rs.to_string().contains("eth9") && !rs.to_string().contains("veth0"),
        "{rs:#}"
    );

    nftables::remove(ns).expect("remove");
    let rs = ruleset(name);
    assert!(
        objects(&rs, "table").is_empty(),
        "table left behind: {rs:#}"
    );
    nftables::remove(ns).expect("remove when absent");
}

#[test]
fn remove_keeps_other_tables() {
    let nss = Namespaces::new(&["o"]);
    let (name, ns) = (nss.name(0), nss.open(0));
    run(
        "ip",
        &["netns", "exec", name, "nft", "add table inet other"],
    );
    nftables::install(ns, &spec(9)).expect("install");
    nftables::remove(ns).expect("remove");
    let rs = ruleset(name);
    let tables = objects(&rs, "table");
    assert_eq!(tables.len(), 1, "{rs:#}");
    assert_eq!(tables[0]["name"], "other");
}

#[test]
fn present_follows_install_and_remove() {
    let nss = Namespaces::new(&["p"]);
    let (name, ns) = (nss.name(0), nss.open(0));
    assert!(!nftables::present(ns, &spec(0x42)).expect("present before"));
    nftables::install(ns, &spec(0x42)).expect("install");
    assert!(nftables::present(ns, &spec(0x42)).expect("present after install"));

    // A table of our name with a chain missing is not "present".
    run(
        "ip",
        &[
            "netns",
            "exec",
            name,
            "nft",
            "delete chain inet coordinator output",
        ],
    );
    assert!(!nftables::present(ns, &spec(0x42)).expect("present, chain gone"));
    nftables::install(ns, &spec(0x42)).expect("repair");
    assert!(nftables::present(ns, &spec(0x42)).expect("present after repair"));

    // An emptied chain is not "present" either.
    run(
        "ip",
        &[
            "netns",
            "exec",
            name,
            "nft",
            "flush chain inet coordinator prerouting",
        ],
    );
    assert!(!nftables::present(ns, &spec(0x42)).expect("present, rule gone"));

    // Nor is an older release's table, whose prerouting chain lacks the
    // ingress mark.
    nftables::install(ns, &spec(0x42)).expect("repair");
    let rs = ruleset(name);
    let ingress = objects(&rs, "rule")
        .into_iter()
        .filter(|r| r["chain"] == "prerouting")
        .nth(1)
        .unwrap_or_else(|| panic!("no second prerouting rule: {rs:#}"));
    let handle = ingress["handle"].to_string();
    run(
        "ip",
        &[
            "netns",
            "exec",
            name,
            "nft",
            &format!("delete rule inet coordinator prerouting handle {handle}"),
        ],
    );
    assert!(!nftables::present(ns, &spec(0x42)).expect("present, no ingress mark"));

    nftables::remove(ns).expect("remove");
    assert!(!nftables::present(ns, &spec(0x42)).expect("present after remove"));
}

#[test]
fn bad_spec_is_refused_before_touching_the_kernel() {
    let nss = Namespaces::new(&["b"]);
    let (name, ns) = (nss.name(0), nss.open(0));
    let err = nftables::install(
        ns,
        &ReplyMark {
            iif: "x".repeat(16),
            mark: 1,
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), 7, "{err}");
    let err = nftables::install(ns, &spec(0)).unwrap_err();
    assert_eq!(err.code(), 7, "{err}");
    assert!(objects(&ruleset(name), "table").is_empty());
}

/// pod: eth0 (default route, to "fabric") + veth0 (to "host").
/// The host reaches the pod's eth0 address through veth0; the fabric has no
/// route back to the host subnet, so a reply that follows the pod's default
/// route is lost.
struct Lab {
    nss: Namespaces,
    pod_addr: IpAddr,
    host_addr: IpAddr,
}

const MARK: u32 = 0x63;
const PORT: u16 = 8080;

impl Lab {
    fn new(v6: bool) -> Lab {
        Lab::with_default(v6, true)
    }

    /// `default`: the pod's main has a default route (through eth0); without
    /// one it has no route at all to the host's address.
    fn with_default(v6: bool, default: bool) -> Lab {
        let nss = Namespaces::new(&["pod", "host", "fab"]);
        let (pod, host, fab) = (nss.name(0), nss.name(1), nss.name(2));
        ip(
            pod,
            &format!("link add veth0 type veth peer name hveth netns {host}"),
        );
        ip(
            pod,
            &format!("link add eth0 type veth peer name feth netns {fab}"),
        );
        for (ns, dev) in [
            (pod, "veth0"),
            (pod, "eth0"),
            (host, "hveth"),
            (fab, "feth"),
        ] {
            ip(ns, &format!("link set {dev} up"));
        }
        let (pod_addr, host_addr, fab_addr, plen, host_plen, any) = if v6 {
            ("fd98::2", "fd99::1", "fd98::1", 64, 128, "-6")
        } else {
            ("10.98.0.2", "10.99.0.1", "10.98.0.1", 24, 32, "-4")
        };
        let nodad = if v6 { "nodad" } else { "" };
        ip(pod, &format!("addr add {pod_addr}/{plen} dev eth0 {nodad}"));
        ip(fab, &format!("addr add {fab_addr}/{plen} dev feth {nodad}"));
        ip(
            host,
            &format!("addr add {host_addr}/{plen} dev hveth {nodad}"),
        );
        if default {
            ip(
                pod,
                &format!("{any} route add default via {fab_addr} dev eth0"),
            );
        }
        ip(
            host,
            &format!("{any} route add {pod_addr}/{host_plen} dev hveth"),
        );
        // As the coordinator lays it out: the host resolves the pod IP to
        // veth0's MAC (the pod would not answer for an eth0 address on veth0).
        let veth0_mac = mac(pod, "veth0");
        ip(
            host,
            &format!("neigh replace {pod_addr} lladdr {veth0_mac} dev hveth nud permanent"),
        );
        // Packets from the host arrive on veth0 while the pod's route back is
        // eth0: strict reverse-path filtering would drop them before any mark.
        sysctl(pod, "net.ipv4.conf.all.rp_filter", "0");
        sysctl(pod, "net.ipv4.conf.veth0.rp_filter", "0");
        // What the lead installs next to our table: fwmark -> table 100 -> veth0.
        ip(pod, &format!("{any} rule add fwmark {MARK} lookup 100"));
        ip(pod, &format!("{any} route add default dev veth0 table 100"));
        Lab {
            pod_addr: pod_addr.parse().expect("addr"),
            host_addr: host_addr.parse().expect("addr"),
            nss,
        }
    }

    fn pod(&self) -> &NetNs {
        self.nss.open(0)
    }

    fn host(&self) -> &NetNs {
        self.nss.open(1)
    }

    fn listen(&self) -> TcpListener {
        let addr = SocketAddr::new(self.pod_addr, PORT);
        let l = self
            .pod()
            .run(|| TcpListener::bind(addr))
            .expect("enter pod")
            .expect("listen in pod");
        l.set_nonblocking(true).expect("nonblocking");
        l
    }

    /// Connect from the host netns to the pod through veth0.
    fn connect(&self, timeout: Duration) -> std::io::Result<TcpStream> {
        let addr = SocketAddr::new(self.pod_addr, PORT);
        self.host()
            .run(|| TcpStream::connect_timeout(&addr, timeout))
            .expect("enter host")
    }
}

fn mac(ns: &str, dev: &str) -> String {
    let out = run("ip", &["-n", ns, "-j", "link", "show", dev]);
    let v: Value = serde_json::from_str(&out).expect("ip -j link");
    v[0]["address"].as_str().expect("mac").to_string()
}

/// Accept one connection (polling, so a lost connection cannot hang the
/// test) and echo what it receives, prefixed.
fn echo_once(l: TcpListener) -> std::thread::JoinHandle<std::io::Result<IpAddr>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut s, peer) = loop {
            match l.accept() {
                Ok(c) => break c,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        };
        s.set_nonblocking(false)?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        s.write_all(b"echo")?;
        s.write_all(&buf)?;
        Ok(peer.ip())
    })
}

fn reply_path(v6: bool) {
    let lab = Lab::new(v6);
    let listener = lab.listen();

    // Without the table the SYN-ACK follows the default route into the
    // fabric, which drops it: the connection cannot complete.
    let lost = lab.connect(Duration::from_secs(2));
    assert!(
        lost.is_err(),
        "reply escaped without the mark machinery: {lost:?}"
    );

    nftables::install(
        lab.pod(),
        &ReplyMark {
            iif: "veth0".into(),
            mark: MARK,
        },
    )
    .expect("install");
    let server = echo_once(listener.try_clone().expect("clone listener"));
    let mut s = lab
        .connect(Duration::from_secs(10))
        .expect("connect through veth0 with the reply mark");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"ping").expect("send");
    let mut got = [0u8; 8];
    s.read_exact(&mut got).expect("echo back through veth0");
    assert_eq!(&got, b"echoping");
    let peer = server.join().expect("server thread").expect("server");
    assert_eq!(peer, lab.host_addr, "the pod saw the host's own address");

    // Removing the table brings the asymmetric path (and its loss) back.
    nftables::remove(lab.pod()).expect("remove");
    let lost = lab.connect(Duration::from_secs(2));
    assert!(lost.is_err(), "reply still marked after remove: {lost:?}");
    drop(listener);
}

#[test]
fn replies_to_connections_via_veth0_return_via_veth0_ipv4() {
    reply_path(false);
}

#[test]
fn replies_to_connections_via_veth0_return_via_veth0_ipv6() {
    reply_path(true);
}

/// No default in the pod's main: the SYN-ACK's own route lookup (made by
/// the request socket, before any output hook) fails unless it carries the
/// reply mark, which takes the ingress mark and `tcp_fwmark_accept`.
fn reply_path_without_a_default(v6: bool) {
    let lab = Lab::with_default(v6, false);
    let pod = lab.nss.name(0).to_string();
    let listener = lab.listen();
    nftables::install(
        lab.pod(),
        &ReplyMark {
            iif: "veth0".into(),
            mark: MARK,
        },
    )
    .expect("install");
    sysctl(&pod, "net.ipv4.tcp_fwmark_accept", "0");
    let lost = lab.connect(Duration::from_secs(2));
    assert!(
        lost.is_err(),
        "a SYN-ACK without the mark found a route: {lost:?}"
    );
    sysctl(&pod, "net.ipv4.tcp_fwmark_accept", "1");
    let server = echo_once(listener.try_clone().expect("clone listener"));
    let mut s = lab
        .connect(Duration::from_secs(10))
        .expect("connect through veth0, SYN-ACK marked from the start");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"ping").expect("send");
    let mut got = [0u8; 8];
    s.read_exact(&mut got).expect("echo back through veth0");
    assert_eq!(&got, b"echoping");
    let peer = server.join().expect("server thread").expect("server");
    assert_eq!(peer, lab.host_addr);
    drop(listener);
}

#[test]
fn without_a_default_route_the_syn_ack_needs_the_accepted_mark_ipv4() {
    reply_path_without_a_default(false);
}

#[test]
fn without_a_default_route_the_syn_ack_needs_the_accepted_mark_ipv6() {
    reply_path_without_a_default(true);
}
