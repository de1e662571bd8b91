//! Overlay and auto modes end to end (issue 4), proven with real traffic in
//! network namespaces: the reference `ptp` plugin plays Calico (a veth `eth0`
//! whose peer is in the node, a /32 and a host route), macvlan adds `net1` on
//! the data-centre subnet, and our coordinator runs in `auto` mode behind
//! both. Needs root; never skips.
//!
//! Strict fabric: besides the fabric router's `rp_filter`, the node's ports
//! to the fabric carry only the node's own addresses (port security, as on
//! most data-centre switches and clouds). A reply of the pod's underlay
//! address that took the overlay way out (eth0 -> node -> ens1) is dropped
//! there, so a reply that arrives proves it left through `net1`.
//!
//! Mixed node (underlay pod A: macvlan eth0 + coordinator; overlay pod B: ptp
//! eth0 + macvlan net1 on the same parent), see `mixed_node_pairs` and
//! `mixed_node_overlay_address_pairs`:
//! - A <-> B.net1, both directions, both families: direct on the shared L2,
//!   symmetric.
//! - A -> B.eth0 (overlay address) works only when A's coordinator lists the
//!   overlay pod CIDR (`overlayPodCIDR`, e.g. from the node defaults file):
//!   without it A sends it to its underlay gateway, which knows no overlay
//!   routes. With it the request goes A -> veth0 -> node -> B.eth0, and B's
//!   reply from its eth0 address follows eth0's own table (the first NIC gets
//!   one with `from` rules once a later NIC is attached) back through the
//!   node: symmetric, also with `podRPFilter: 1` in A.
//! - B.eth0-sourced -> A (a socket bound to B's overlay address) takes the
//!   same path the other way round (eth0's table out, A's veth0 and the node
//!   back), again only when A lists the overlay pod CIDR.
//! - Unbound sockets in B towards A pick net1's address (the connected route
//!   to A's subnet is net1's), so ordinary clients in B are symmetric.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cni_tests::{bin_dir, cni_path, conf_example};
use integration::chain::{result_ips, Attachment, Chain, NetConfList};
use integration::lab::{self, Lab, Pod};
use integration::traffic::{ping, reply_peer, tcp_request, TcpServer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
const POD_PORT: u16 = 8080;
const BACKEND_PORT: u16 = 7000;
const HOST_RULE_TABLE: &str = "500";

#[derive(Clone, Copy, Debug)]
struct Fams {
    v4: bool,
    v6: bool,
}

const DUAL: Fams = Fams { v4: true, v6: true };

fn lab(subnets: usize, f: Fams) -> Lab {
    Lab::builder()
        .subnets(subnets)
        .ipv4(f.v4)
        .ipv6(f.v6)
        .build()
        .expect("build lab (needs root)")
}

fn family_of(cidr: &str) -> Option<bool> {
    let ip = cidr.split('/').next()?.parse::<IpAddr>().ok()?;
    Some(ip.is_ipv4())
}

/// A conf-example with only the lab's families, state and logs in the lab,
/// and no node defaults file from the machine.
fn load(lab: &Lab, file: &str, f: Fams) -> NetConfList {
    let mut list = NetConfList::from_file(conf_example(file)).unwrap();
    let keep = |cidr: &str| match family_of(cidr) {
        Some(true) => f.v4,
        Some(false) => f.v6,
        None => true,
    };
    for p in &mut list.plugins {
        if let Some(Value::Object(ipam)) = p.get_mut("ipam") {
            if let Some(Value::Array(ranges)) = ipam.get_mut("ranges") {
                ranges.retain(|r| keep(r[0]["subnet"].as_str().unwrap_or("")));
            }
            if let Some(Value::Array(routes)) = ipam.get_mut("routes") {
                routes.retain(|r| keep(r["dst"].as_str().unwrap_or("")));
            }
        }
        if p.get("type").and_then(Value::as_str) == Some("coordinator") {
            let none = lab.dir().join("no-defaults.json");
            p.insert("defaultsFile".into(), none.display().to_string().into());
        }
    }
    lab.localize(&mut list);
    list
}

fn chain(lab: &Lab, list: NetConfList) -> Chain {
    assert!(
        bin_dir().join("coordinator").is_file(),
        "coordinator binary missing in {} (cargo build -p coordinator)",
        bin_dir().display()
    );
    lab.chain(list).cni_path(cni_path())
}

fn set_coordinator(list: &mut NetConfList, key: &str, value: Value) {
    list.plugin_mut("coordinator")
        .expect("coordinator in the list")
        .insert(key.into(), value);
}

fn pick(ips: &[IpAddr], v4: bool) -> IpAddr {
    *ips.iter()
        .find(|i| i.is_ipv4() == v4)
        .unwrap_or_else(|| panic!("no {} address in {ips:?}", if v4 { "IPv4" } else { "IPv6" }))
}

/// One attached NIC: its chain, attachment and ADD result.
struct Nic {
    chain: Chain,
    att: Attachment,
    result: Value,
    ips: Vec<IpAddr>,
}

fn attach(chain: Chain, pod: &Pod, cid: &str, ifname: &str) -> Nic {
    let att = Attachment::new(cid, &pod.path, ifname);
    let out = chain
        .add(&att)
        .unwrap_or_else(|e| panic!("ADD {ifname} of {}: {e}", pod.name));
    let result = out.result.expect("ADD result");
    let ips = result_ips(&result);
    Nic {
        chain,
        att,
        result,
        ips,
    }
}

/// The ptp host-side veth in an ADD result (the interface without sandbox).
fn host_peer(result: &Value) -> String {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i.get("sandbox").is_none())
        .and_then(|i| i["name"].as_str())
        .expect("ptp reports its host veth")
        .to_string()
}

/// An overlay pod: ptp eth0 (+ coordinator auto) and, optionally, macvlan
/// net1 on ens1 (+ coordinator auto).
struct OverlayPod {
    pod: Pod,
    eth0: Nic,
    net1: Option<Nic>,
    /// eth0's host-side peer (ptp's veth in the node).
    peer: String,
}

impl OverlayPod {
    fn net1(&self) -> &Nic {
        self.net1.as_ref().expect("pod has net1")
    }
}

fn overlay_pod(
    lab: &Lab,
    name: &str,
    f: Fams,
    net1: bool,
    tweak: &dyn Fn(&mut NetConfList),
) -> OverlayPod {
    let pod = lab.pod(name).unwrap();
    let cid = format!("ctr-{name}");
    let mut l0 = load(lab, "ptp-overlay.conflist", f);
    tweak(&mut l0);
    let eth0 = attach(chain(lab, l0), &pod, &cid, "eth0");
    let peer = host_peer(&eth0.result);
    let net1 = net1.then(|| {
        let mut l1 = load(lab, "macvlan-overlay-net1.conflist", f);
        tweak(&mut l1);
        attach(chain(lab, l1), &pod, &cid, "net1")
    });
    OverlayPod {
        pod,
        eth0,
        net1,
        peer,
    }
}

/// The fabric sees only the node's own addresses from the node's ports.
fn strict_node_ports(lab: &Lab) {
    let mut script = String::from(
        "table inet ovl_port {\n chain post { type filter hook postrouting priority 0; policy accept; }\n}\n",
    );
    for s in lab.subnets() {
        if let Some(me) = s.node4 {
            script.push_str(&format!(
                "add rule inet ovl_port post oifname \"{}\" ip saddr != {me} counter drop\n",
                s.parent
            ));
        }
        if let Some(me) = s.node6 {
            script.push_str(&format!(
                "add rule inet ovl_port post oifname \"{}\" ip6 saddr != {me} ip6 saddr != fe80::/10 ip6 saddr != :: counter drop\n",
                s.parent
            ));
        }
    }
    lab.nft(&script).unwrap();
}

/// TCP from `ns` (optionally bound to `src`) to `dst`; the address the server saw.
fn tcp_peer(ns: &str, src: Option<IpAddr>, dst: SocketAddr) -> IpAddr {
    let reply =
        tcp_request(ns, src, dst, T).unwrap_or_else(|e| panic!("{ns} ({src:?}) -> {dst}: {e}"));
    reply_peer(&reply)
        .unwrap_or_else(|| panic!("bad reply {reply:?}"))
        .ip()
}

/// The device `ip route get <dst> [from <src>]` picks in `ns`.
fn route_dev(ns: &str, dst: IpAddr, src: Option<IpAddr>) -> String {
    let (d, s) = (dst.to_string(), src.map(|s| s.to_string()));
    let mut args = vec!["-j", "route", "get", d.as_str()];
    if let Some(s) = &s {
        args.extend(["from", s.as_str()]);
    }
    let out = lab::ip(ns, &args).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["dev"].as_str().unwrap_or_default().to_string()
}

/// Routes of `table`, both families, each tagged with `family`; a family in
/// which the table does not exist (yet, or any more) has none.
fn routes_of(ns: &str, table: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for (flag, family) in [("-4", "inet"), ("-6", "inet6")] {
        let out = match lab::ip(ns, &["-j", flag, "route", "show", "table", table]) {
            Ok(o) => o,
            Err(e) if e.to_string().contains("does not exist") => continue,
            Err(e) => panic!("{e}"),
        };
        if out.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&out).unwrap();
        for mut r in v.as_array().cloned().unwrap_or_default() {
            r["family"] = family.into();
            all.push(r);
        }
    }
    all
}

fn rules_of(ns: &str) -> Vec<Value> {
    lab::rules(ns)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `dst` as `ip -j` prints it: a host route has no `/32` `/128`.
fn host_dst(ip: IpAddr) -> String {
    ip.to_string()
}

fn main_defaults(ns: &str) -> Vec<(String, String)> {
    routes_of(ns, "main")
        .iter()
        .filter(|r| r["dst"] == "default")
        .map(|r| {
            (
                r["dev"].as_str().unwrap_or("").to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The table of the `from <ip>` rule in the pod.
fn from_table(ns: &str, ip: IpAddr) -> Option<String> {
    rules_of(ns).iter().find_map(|r| {
        (r["src"].as_str() == Some(&ip.to_string()) && r["priority"] == 1000)
            .then(|| r["table"].as_str().map(String::from))
            .flatten()
    })
}

fn service(v4: bool) -> SocketAddr {
    if v4 {
        "10.233.0.10:80".parse().unwrap()
    } else {
        "[fd00:233::10]:80".parse().unwrap()
    }
}

fn node_ip(lab: &Lab, subnet: u8, v4: bool) -> IpAddr {
    let s = lab.subnet(subnet).unwrap();
    if v4 {
        s.node4.unwrap().into()
    } else {
        s.node6.unwrap().into()
    }
}

/// Services of both families DNATed in the node to a backend in the node.
fn node_services(lab: &Lab, f: Fams) -> TcpServer {
    let backend = TcpServer::start(
        lab.node(),
        SocketAddr::new("::".parse().unwrap(), BACKEND_PORT),
    )
    .unwrap();
    for v4 in [true, false]
        .into_iter()
        .filter(|v4| if *v4 { f.v4 } else { f.v6 })
    {
        let target = SocketAddr::new(node_ip(lab, 1, v4), BACKEND_PORT);
        lab.node_service(service(v4), target).unwrap();
    }
    backend
}

fn families(f: Fams) -> Vec<bool> {
    [true, false]
        .into_iter()
        .filter(|v4| if *v4 { f.v4 } else { f.v6 })
        .collect()
}

fn client_addrs(
    lab: &Lab,
    subnet: u8,
    n: u8,
) -> (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>) {
    let s = lab.subnet(subnet).unwrap();
    (s.host4(9, n), s.host6(0x9900 + n as u16))
}

// ---------------------------------------------------------------------------
// 1. Overlay default: eth0 keeps the default; cluster traffic through eth0.

fn overlay_default(f: Fams) {
    let lab = lab(2, f);
    strict_node_ports(&lab);
    let o = overlay_pod(&lab, "o", f, true, &|_| {});
    let ns = o.pod.name.clone();
    let net1 = o.net1();

    // auto chose overlay: no veth0, no host veth of ours, default on eth0.
    let links = lab::state::link_names(&ns).unwrap();
    assert!(!links.contains(&"veth0".to_string()), "{links:?}");
    let ours = coordinator::names::host_veth_name(&o.eth0.att.container_id);
    assert!(!lab::state::link_names(lab.node()).unwrap().contains(&ours));
    let defaults = main_defaults(&ns);
    assert_eq!(defaults.len(), families(f).len(), "{defaults:?}");
    assert!(
        defaults.iter().all(|(dev, _)| dev == "eth0"),
        "{defaults:?}"
    );

    prove_overlay_default(&lab, f, &ns, &o.eth0.ips, &net1.ips, &o.peer);
}

/// The traffic of issue 4 item 1 for an overlay pod `ns` with eth0's and
/// net1's addresses, eth0's host peer `peer`, on a strict two-subnet lab.
fn prove_overlay_default(
    lab: &Lab,
    f: Fams,
    ns: &str,
    eth0_ips: &[IpAddr],
    net1_ips: &[IpAddr],
    peer: &str,
) {
    let _backend = node_services(lab, f);
    let _srv = TcpServer::start(ns, SocketAddr::new("::".parse().unwrap(), POD_PORT)).unwrap();
    let (c1v4, c1v6) = client_addrs(lab, 1, 1);
    let (c2v4, c2v6) = client_addrs(lab, 2, 2);
    let same = lab.fabric_client(1, c1v4, c1v6).unwrap();
    let routed = lab.fabric_client(2, c2v4, c2v6).unwrap();

    for v4 in families(f) {
        let eth0_ip = pick(eth0_ips, v4);
        let net1_ip = pick(net1_ips, v4);
        let node = node_ip(lab, 1, v4);

        // Services and the node: through eth0, unsourced and sourced from net1.
        assert_eq!(tcp_peer(ns, None, service(v4)), eth0_ip, "Service {v4}");
        assert_eq!(tcp_peer(ns, Some(net1_ip), service(v4)), net1_ip);
        let node_sock = SocketAddr::new(node, BACKEND_PORT);
        assert_eq!(tcp_peer(ns, None, node_sock), eth0_ip, "node {node}");
        assert_eq!(tcp_peer(ns, Some(net1_ip), node_sock), net1_ip);
        assert!(ping(ns, node, None), "ping node {node}");
        assert!(
            ping(ns, node, Some(net1_ip)),
            "ping node {node} from {net1_ip}"
        );
        assert_eq!(route_dev(ns, node, None), "eth0");
        assert_eq!(route_dev(ns, node, Some(net1_ip)), "eth0");
        assert_eq!(route_dev(ns, service(v4).ip(), Some(net1_ip)), "eth0");

        // Clients on net1's subnet and behind the router: replies symmetric.
        for c in [&same, &routed] {
            let cip: IpAddr = if v4 {
                c.ipv4.unwrap().into()
            } else {
                c.ipv6.unwrap().into()
            };
            let got = tcp_peer(&c.name, None, SocketAddr::new(net1_ip, POD_PORT));
            assert_eq!(got, cip, "client {cip} -> pod {net1_ip}");
            assert_eq!(route_dev(ns, cip, Some(net1_ip)), "net1");
        }

        // The node reaches net1's address through eth0's host peer, and the
        // reply comes back through eth0, from the node's own source and from
        // its fabric address.
        assert!(
            routes_of(lab.node(), HOST_RULE_TABLE)
                .iter()
                .any(|r| r["dst"] == host_dst(net1_ip) && r["dev"] == peer),
            "host route {net1_ip} dev {}",
            peer
        );
        assert_eq!(route_dev(lab.node(), net1_ip, None), peer);
        let seen = tcp_peer(lab.node(), None, SocketAddr::new(net1_ip, POD_PORT));
        assert_eq!(
            route_dev(ns, seen, Some(net1_ip)),
            "eth0",
            "reply to {seen}"
        );
        assert_eq!(
            tcp_peer(lab.node(), Some(node), SocketAddr::new(net1_ip, POD_PORT)),
            node
        );
    }

    // Negative control: the strict fabric does drop a reply that leaves
    // through eth0 (so the successes above prove symmetry).
    if let Some(c) = same.ipv4 {
        let net1_ip = pick(net1_ips, true);
        let table = from_table(ns, net1_ip).expect("net1 table");
        let gw = main_defaults(ns)
            .into_iter()
            .find(|(dev, gw)| dev == "eth0" && gw.parse::<std::net::Ipv4Addr>().is_ok())
            .map(|(_, gw)| gw)
            .expect("IPv4 default via eth0");
        let dst = format!("{c}/32");
        let gws = gw;
        lab::ip(
            ns,
            &[
                "route", "add", &dst, "via", &gws, "dev", "eth0", "table", &table,
            ],
        )
        .unwrap();
        assert!(
            tcp_request(
                &same.name,
                None,
                SocketAddr::new(net1_ip, POD_PORT),
                Duration::from_secs(2)
            )
            .is_err(),
            "an asymmetric reply must not arrive"
        );
        lab::ip(ns, &["route", "del", &dst, "table", &table]).unwrap();
    }
}

#[test]
fn overlay_default_ipv4() {
    overlay_default(Fams {
        v4: true,
        v6: false,
    });
}

#[test]
fn overlay_default_ipv6() {
    overlay_default(Fams {
        v4: false,
        v6: true,
    });
}

#[test]
fn overlay_default_dual_stack() {
    overlay_default(DUAL);
}

/// Calico's own layout, built by hand (no Calico here): eth0 a veth with a
/// /32 (/128), default via the link-local 169.254.1.1 (proxy ARP on the host
/// end) and fe80::ecee:eeff:feee:eeee (the host end's own link-local, from
/// its MAC ee:ee:ee:ee:ee:ee), host routes per pod address on `cali*`. Then
/// macvlan net1 + coordinator auto, and the same traffic as with ptp.
#[test]
fn calico_style_eth0_with_link_local_gateways() {
    let lab = lab(2, DUAL);
    strict_node_ports(&lab);
    let pod = lab.pod("cal").unwrap();
    let ns = pod.name.clone();
    let host = "cali1234567890a";
    let (e4, e6) = ("10.244.7.5", "fd00:244:0:7::5");
    lab::state::ip_batch(
        lab.node(),
        &[
            format!(
                "link add {host} address ee:ee:ee:ee:ee:ee type veth peer name eth0 netns {ns}"
            ),
            format!("link set {host} up"),
            format!("route add {e4}/32 dev {host} scope link"),
            format!("route add {e6}/128 dev {host}"),
        ],
    )
    .unwrap();
    lab::in_netns(lab.node(), || {
        cni::netns::sysctl_set(&format!("net/ipv4/conf/{host}/proxy_arp"), "1")?;
        cni::netns::sysctl_set(&format!("net/ipv6/conf/{host}/accept_dad"), "0")
    })
    .unwrap();
    lab::state::ip_batch(
        &ns,
        &[
            format!("addr add {e4}/32 dev eth0"),
            format!("addr add {e6}/128 dev eth0 nodad"),
            "link set eth0 up".into(),
            "route add 169.254.1.1 dev eth0 scope link".into(),
            "route add default via 169.254.1.1 dev eth0".into(),
            "route add default via fe80::ecee:eeff:feee:eeee dev eth0".into(),
        ],
    )
    .unwrap();
    let mut l1 = load(&lab, "macvlan-overlay-net1.conflist", DUAL);
    set_coordinator(
        &mut l1,
        "overlayPodCIDR",
        json!(["10.244.0.0/16", "fd00:244::/48"]),
    );
    let net1 = attach(chain(&lab, l1), &pod, "ctr-cal", "net1");
    let t = from_table(&ns, pick(&net1.ips, false)).expect("net1 table");
    assert!(
        routes_of(&ns, &t)
            .iter()
            .any(|r| r["gateway"] == "fe80::ecee:eeff:feee:eeee" && r["dev"] == "eth0"),
        "{:#?}",
        routes_of(&ns, &t)
    );
    let eth0_ips: Vec<IpAddr> = vec![e4.parse().unwrap(), e6.parse().unwrap()];
    prove_overlay_default(&lab, DUAL, &ns, &eth0_ips, &net1.ips, host);
    net1.chain
        .del(&net1.att)
        .unwrap_or_else(|e| panic!("DEL net1: {e}"));
    assert_eq!(host_state_of(&lab, &net1.ips), (vec![], vec![]));
}

// ---------------------------------------------------------------------------
// 2. podDefaultRouteNic: net1.

#[test]
fn default_route_nic_net1_keeps_cluster_traffic_on_eth0() {
    let lab = lab(2, DUAL);
    strict_node_ports(&lab);
    let o = overlay_pod(&lab, "o", DUAL, true, &|l| {
        set_coordinator(l, "podDefaultRouteNic", json!("net1"))
    });
    let p = overlay_pod(&lab, "p", DUAL, false, &|_| {});
    let ns = o.pod.name.clone();
    let net1 = o.net1();

    // main's default goes through net1; eth0's default went to table 100,
    // reached by `from` rules of eth0's addresses.
    let defaults = main_defaults(&ns);
    assert_eq!(defaults.len(), 2, "{defaults:?}");
    assert!(
        defaults.iter().all(|(dev, _)| dev == "net1"),
        "{defaults:?}"
    );
    let t100: Vec<Value> = routes_of(&ns, "100");
    for v4 in [true, false] {
        let eth0_ip = pick(&o.eth0.ips, v4);
        assert_eq!(
            from_table(&ns, eth0_ip).as_deref(),
            Some("100"),
            "{:#?}",
            rules_of(&ns)
        );
        assert!(
            t100.iter().any(|r| r["dst"] == "default"
                && r["dev"] == "eth0"
                && r["family"] == if v4 { "inet" } else { "inet6" }),
            "{t100:#?}"
        );
    }

    let _backend = node_services(&lab, DUAL);
    let _srv_o = TcpServer::start(&ns, SocketAddr::new("::".parse().unwrap(), POD_PORT)).unwrap();
    let _srv_p = TcpServer::start(
        &p.pod.name,
        SocketAddr::new("::".parse().unwrap(), POD_PORT),
    )
    .unwrap();
    let (c2v4, c2v6) = client_addrs(&lab, 2, 3);
    let routed = lab.fabric_client(2, c2v4, c2v6).unwrap();
    let _srv_c = TcpServer::start(
        &routed.name,
        SocketAddr::new("::".parse().unwrap(), POD_PORT),
    )
    .unwrap();

    for v4 in [true, false] {
        let eth0_ip = pick(&o.eth0.ips, v4);
        let net1_ip = pick(&net1.ips, v4);
        let node = node_ip(&lab, 1, v4);
        // Services, the node and another overlay pod: still through eth0.
        assert_eq!(tcp_peer(&ns, None, service(v4)), eth0_ip, "Service");
        assert_eq!(
            tcp_peer(&ns, None, SocketAddr::new(node, BACKEND_PORT)),
            eth0_ip,
            "node"
        );
        assert!(ping(&ns, node, None));
        let p_eth0 = pick(&p.eth0.ips, v4);
        assert_eq!(
            tcp_peer(&ns, None, SocketAddr::new(p_eth0, POD_PORT)),
            eth0_ip,
            "pod p"
        );
        assert_eq!(
            tcp_peer(&p.pod.name, None, SocketAddr::new(eth0_ip, POD_PORT)),
            p_eth0
        );
        assert_eq!(route_dev(&ns, service(v4).ip(), None), "eth0");
        // Everything else: net1's gateway, net1's address, symmetric.
        let cip: IpAddr = if v4 {
            routed.ipv4.unwrap().into()
        } else {
            routed.ipv6.unwrap().into()
        };
        assert_eq!(tcp_peer(&ns, None, SocketAddr::new(cip, POD_PORT)), net1_ip);
        assert_eq!(
            tcp_peer(&routed.name, None, SocketAddr::new(net1_ip, POD_PORT)),
            cip
        );
        assert_eq!(route_dev(&ns, cip, None), "net1");
        assert_eq!(route_dev(&ns, cip, Some(eth0_ip)), "eth0");
    }

    // Detaching net1 (dynamic networks) gives main its eth0 default back.
    net1.chain
        .del(&net1.att)
        .unwrap_or_else(|e| panic!("DEL net1: {e}"));
    let defaults = main_defaults(&ns);
    assert_eq!(defaults.len(), 2, "{defaults:?}");
    assert!(
        defaults.iter().all(|(dev, _)| dev == "eth0"),
        "{defaults:?}"
    );
    for v4 in [true, false] {
        let eth0_ip = pick(&o.eth0.ips, v4);
        assert_eq!(from_table(&ns, eth0_ip), None);
        assert_eq!(tcp_peer(&ns, None, service(v4)), eth0_ip, "Service");
        let p_eth0 = pick(&p.eth0.ips, v4);
        assert_eq!(
            tcp_peer(&ns, None, SocketAddr::new(p_eth0, POD_PORT)),
            eth0_ip
        );
    }
    assert_eq!(routes_of(&ns, "100"), Vec::<Value>::new());
    net1.chain
        .del(&net1.att)
        .unwrap_or_else(|e| panic!("second DEL net1: {e}"));
    assert_eq!(main_defaults(&ns).len(), 2);
}

/// A third NIC attached after podDefaultRouteNic moved eth0's default into
/// table 100 still sends cluster traffic through eth0's gateway.
#[test]
fn third_nic_after_default_route_nic_reaches_cluster_through_eth0() {
    let lab = lab(2, DUAL);
    strict_node_ports(&lab);
    let o = overlay_pod(&lab, "o", DUAL, true, &|l| {
        set_coordinator(l, "podDefaultRouteNic", json!("net1"))
    });
    let ns = o.pod.name.clone();
    let mut l2 = load(&lab, "macvlan-underlay-net1.conflist", DUAL);
    set_coordinator(&mut l2, "mode", json!("auto"));
    set_coordinator(&mut l2, "podDefaultRouteNic", json!("net1"));
    set_coordinator(
        &mut l2,
        "overlayPodCIDR",
        json!(["10.244.0.0/16", "fd00:244::/48"]),
    );
    let net2 = attach(chain(&lab, l2), &o.pod, "ctr-o", "net2");
    assert!(
        main_defaults(&ns).iter().all(|(dev, _)| dev == "net1"),
        "{:?}",
        main_defaults(&ns)
    );
    let _backend = node_services(&lab, DUAL);
    let _srv = TcpServer::start(&ns, SocketAddr::new("::".parse().unwrap(), POD_PORT)).unwrap();
    let (c4, c6) = client_addrs(&lab, 2, 4);
    let client = lab.fabric_client(2, c4, c6).unwrap();
    for v4 in [true, false] {
        let n2 = pick(&net2.ips, v4);
        let node = node_ip(&lab, 1, v4);
        assert_eq!(route_dev(&ns, service(v4).ip(), Some(n2)), "eth0");
        assert_eq!(
            tcp_peer(&ns, Some(n2), service(v4)),
            n2,
            "Service from net2"
        );
        assert_eq!(
            tcp_peer(&ns, Some(n2), SocketAddr::new(node, BACKEND_PORT)),
            n2,
            "node from net2"
        );
        let cip: IpAddr = if v4 {
            client.ipv4.unwrap().into()
        } else {
            client.ipv6.unwrap().into()
        };
        assert_eq!(
            tcp_peer(&client.name, None, SocketAddr::new(n2, POD_PORT)),
            cip
        );
    }
}

// ---------------------------------------------------------------------------
// 3. auto picks the layout from the pod.

#[test]
fn auto_mode_follows_the_pod() {
    let lab = lab(2, DUAL);
    // Underlay pod: macvlan eth0 and macvlan net1, coordinator auto on both.
    let u = lab.pod("u").unwrap();
    let mut l0 = load(&lab, "macvlan-underlay.conflist", DUAL);
    set_coordinator(&mut l0, "mode", json!("auto"));
    let mut l1 = load(&lab, "macvlan-underlay-net1.conflist", DUAL);
    set_coordinator(&mut l1, "mode", json!("auto"));
    let _ue = attach(chain(&lab, l0), &u, "ctr-u", "eth0");
    let un = attach(chain(&lab, l1), &u, "ctr-u", "net1");
    // macvlan eth0 -> underlay: veth0 in the pod, our host veth in the node.
    assert!(lab::state::link_names(&u.name)
        .unwrap()
        .contains(&"veth0".to_string()));
    let hv = coordinator::names::host_veth_name("ctr-u");
    assert!(
        lab::state::link_names(lab.node()).unwrap().contains(&hv),
        "{hv}"
    );
    // later NIC with veth0 present -> underlay table: node through veth0.
    let un4 = pick(&un.ips, true);
    let t = from_table(&u.name, un4).expect("net1 table");
    let node4 = node_ip(&lab, 1, true);
    let node_route = |ns: &str, table: &str| {
        routes_of(ns, table)
            .into_iter()
            .find(|r| r["dst"] == host_dst(node4))
            .map(|r| r["dev"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(node_route(&u.name, &t).as_deref(), Some("veth0"));
    assert!(ping(&u.name, node4, Some(un4)), "underlay net1 -> node");

    // Overlay pod: ptp eth0 -> overlay (no veth0); net1 without veth0 ->
    // overlay table: node through eth0.
    let o = overlay_pod(&lab, "o", DUAL, true, &|_| {});
    assert!(!lab::state::link_names(&o.pod.name)
        .unwrap()
        .contains(&"veth0".to_string()));
    let on4 = pick(&o.net1().ips, true);
    let t = from_table(&o.pod.name, on4).expect("net1 table");
    assert_eq!(node_route(&o.pod.name, &t).as_deref(), Some("eth0"));
    assert!(ping(&o.pod.name, node4, Some(on4)), "overlay net1 -> node");
}

// ---------------------------------------------------------------------------
// 4. Mixed node: underlay pod A and overlay pod B (see the module comment).

#[test]
fn mixed_node_pairs() {
    let lab = lab(1, DUAL);
    let a = lab.pod("a").unwrap();
    let mut la = load(&lab, "macvlan-underlay.conflist", DUAL);
    // Underlay pods reach overlay pods through the node (module comment).
    set_coordinator(
        &mut la,
        "overlayPodCIDR",
        json!(["10.244.0.0/16", "fd00:244::/48"]),
    );
    let an = attach(chain(&lab, la), &a, "ctr-a", "eth0");
    let b = overlay_pod(&lab, "b", DUAL, true, &|_| {});
    let bn = &b.net1().ips;
    let any: SocketAddr = SocketAddr::new("::".parse().unwrap(), POD_PORT);
    let _sa = TcpServer::start(&a.name, any).unwrap();
    let _sb = TcpServer::start(&b.pod.name, any).unwrap();
    for v4 in [true, false] {
        let (a_ip, b_net1, b_eth0) = (pick(&an.ips, v4), pick(bn, v4), pick(&b.eth0.ips, v4));
        let at = |ip| SocketAddr::new(ip, POD_PORT);
        // A <-> B.net1: shared L2.
        assert_eq!(tcp_peer(&a.name, None, at(b_net1)), a_ip, "A -> B.net1");
        assert_eq!(tcp_peer(&b.pod.name, None, at(a_ip)), b_net1, "B -> A");
        assert_eq!(tcp_peer(&b.pod.name, Some(b_net1), at(a_ip)), b_net1);
        // A <-> B.eth0: through the node one way, net1 the other.
        assert_eq!(tcp_peer(&a.name, None, at(b_eth0)), a_ip, "A -> B.eth0");
        assert_eq!(
            tcp_peer(&b.pod.name, Some(b_eth0), at(a_ip)),
            b_eth0,
            "B.eth0 -> A"
        );
        // The node reaches both.
        tcp_peer(lab.node(), None, at(a_ip));
        tcp_peer(lab.node(), None, at(b_net1));
        tcp_peer(lab.node(), None, at(b_eth0));
        assert!(ping(&a.name, b_net1, None) && ping(&b.pod.name, a_ip, None));
    }
}

/// The pairs the module comment says cannot work, pinned so the README stays
/// true: an underlay pod without `overlayPodCIDR` cannot reach an overlay
/// address, and with `podRPFilter: 1` it drops the asymmetric replies.
#[test]
fn mixed_node_overlay_address_pairs() {
    let lab = lab(1, DUAL);
    let b = overlay_pod(&lab, "b", DUAL, true, &|_| {});
    let _sb = TcpServer::start(
        &b.pod.name,
        SocketAddr::new("::".parse().unwrap(), POD_PORT),
    )
    .unwrap();
    let short = Duration::from_secs(2);
    for (name, extra) in [
        ("plain", json!({})),
        (
            "strict",
            json!({"overlayPodCIDR": ["10.244.0.0/16", "fd00:244::/48"], "podRPFilter": 1}),
        ),
    ] {
        let a = lab.pod(name).unwrap();
        let mut la = load(&lab, "macvlan-underlay.conflist", DUAL);
        for (k, v) in extra.as_object().unwrap() {
            set_coordinator(&mut la, k, v.clone());
        }
        let an = attach(chain(&lab, la), &a, &format!("ctr-{name}"), "eth0");
        // Still fine: B's underlay address.
        let b_net1 = pick(&b.net1().ips, true);
        assert_eq!(
            tcp_peer(&a.name, None, SocketAddr::new(b_net1, POD_PORT)),
            pick(&an.ips, true)
        );
        let b_eth0 = pick(&b.eth0.ips, true);
        if name == "plain" {
            // Without overlayPodCIDR, A sends B's overlay address to its
            // underlay gateway, which knows no overlay routes.
            assert!(
                tcp_request(&a.name, None, SocketAddr::new(b_eth0, POD_PORT), short).is_err(),
                "{name}: A -> B.eth0 {b_eth0} was expected to fail"
            );
        } else {
            // With it, the request goes A -> veth0 -> node -> B.eth0, and B's
            // reply from its eth0 address follows eth0's own table back
            // through the node: symmetric, so even A's strict rp_filter
            // (IPv4) keeps it.
            let before = rp_filter_drops(&a.name);
            assert_eq!(
                tcp_peer(&a.name, None, SocketAddr::new(b_eth0, POD_PORT)),
                pick(&an.ips, true),
                "{name}: A -> B.eth0 {b_eth0}"
            );
            assert_eq!(
                rp_filter_drops(&a.name),
                before,
                "rp_filter dropped a reply in {name}"
            );
        }
    }
}

/// `TcpExt: IPReversePathFilter` of netns `ns`.
fn rp_filter_drops(ns: &str) -> u64 {
    let text = lab::in_netns(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/netstat")
    })
    .unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (names, values) = (lines[0].split_whitespace(), lines[1].split_whitespace());
    names
        .zip(values)
        .find(|(n, _)| *n == "IPReversePathFilter")
        .and_then(|(_, v)| v.parse().ok())
        .expect("IPReversePathFilter counter")
}

// ---------------------------------------------------------------------------
// 5. DEL.

fn host_state_of(lab: &Lab, ips: &[IpAddr]) -> (Vec<String>, Vec<String>) {
    let routes = routes_of(lab.node(), HOST_RULE_TABLE)
        .iter()
        .filter(|r| ips.iter().any(|ip| r["dst"] == host_dst(*ip)))
        .map(lab::state::route_line)
        .collect();
    let neigh = lab::neighbours(lab.node())
        .unwrap()
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| ips.iter().any(|ip| n["dst"] == ip.to_string()))
        .map(lab::state::neigh_line)
        .collect();
    (routes, neigh)
}

#[test]
fn del_in_overlay_mode_removes_host_routes_and_neighbours() {
    let lab = lab(1, DUAL);
    let o = overlay_pod(&lab, "o", DUAL, true, &|_| {});
    let net1 = o.net1();
    let (routes, neigh) = host_state_of(&lab, &net1.ips);
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert_eq!(neigh.len(), 2, "{neigh:?}");
    assert!(
        neigh
            .iter()
            .all(|n| n.contains(&o.peer) && n.contains("PERMANENT")),
        "{neigh:?}"
    );
    let table = from_table(&o.pod.name, pick(&net1.ips, true)).unwrap();

    net1.chain
        .del(&net1.att)
        .unwrap_or_else(|e| panic!("DEL net1: {e}"));
    assert_eq!(host_state_of(&lab, &net1.ips), (vec![], vec![]));
    // ptp's host veth is ptp's: left alone; eth0 still works.
    assert!(lab::state::link_names(lab.node())
        .unwrap()
        .contains(&o.peer));
    assert!(ping(lab.node(), pick(&o.eth0.ips, true), None));
    for ip in &net1.ips {
        assert_eq!(from_table(&o.pod.name, *ip), None, "rule from {ip}");
    }
    assert_eq!(routes_of(&o.pod.name, &table), Vec::<Value>::new());
    // Idempotent (no cached result, no net1 any more).
    net1.chain
        .del(&net1.att)
        .unwrap_or_else(|e| panic!("second DEL net1: {e}"));
    o.eth0
        .chain
        .del(&o.eth0.att)
        .unwrap_or_else(|e| panic!("DEL eth0: {e}"));
    assert!(!lab::state::link_names(lab.node())
        .unwrap()
        .contains(&o.peer));
    o.eth0
        .chain
        .del(&o.eth0.att)
        .unwrap_or_else(|e| panic!("second DEL eth0: {e}"));

    // The pod netns is gone before DEL: DEL still succeeds (stale path and
    // no path), and nothing of the pod's remains on the node.
    let g = overlay_pod(&lab, "g", DUAL, true, &|_| {});
    let gips = g.net1().ips.clone();
    lab.remove_netns(&g.pod.name).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab::state::link_names(lab.node())
        .unwrap()
        .contains(&g.peer)
    {
        assert!(
            Instant::now() < deadline,
            "the kernel never removed {}",
            g.peer
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gn = g.net1();
    gn.chain
        .del(&gn.att)
        .unwrap_or_else(|e| panic!("DEL net1, netns gone: {e}"));
    let no_ns = Attachment {
        netns: None,
        ..gn.att.clone()
    };
    gn.chain
        .del(&no_ns)
        .unwrap_or_else(|e| panic!("DEL net1, no netns: {e}"));
    g.eth0
        .chain
        .del(&g.eth0.att)
        .unwrap_or_else(|e| panic!("DEL eth0, netns gone: {e}"));
    assert_eq!(host_state_of(&lab, &gips), (vec![], vec![]));
}

// ---------------------------------------------------------------------------
// 6. CHECK.

#[test]
fn check_in_overlay_mode_names_the_missing_piece() {
    let lab = lab(1, DUAL);
    let o = overlay_pod(&lab, "o", DUAL, true, &|_| {});
    let ns = o.pod.name.clone();
    let net1 = o.net1();
    o.eth0
        .chain
        .check(&o.eth0.att)
        .unwrap_or_else(|e| panic!("CHECK eth0: {e}"));
    net1.chain
        .check(&net1.att)
        .unwrap_or_else(|e| panic!("CHECK net1: {e}"));

    let n4 = pick(&net1.ips, true);
    let n6 = pick(&net1.ips, false);
    let node4 = node_ip(&lab, 1, true);
    let table = from_table(&ns, n4).unwrap();
    let fails = |want: &[&str]| {
        let e = net1
            .chain
            .check(&net1.att)
            .expect_err("CHECK must fail after a hand removal");
        assert_eq!(e.plugin.as_deref(), Some("coordinator"), "{e}");
        for w in want {
            assert!(e.msg.contains(w), "{w:?} not in {:?}", e.msg);
        }
    };
    let n4s = n4.to_string();
    // A pod rule.
    lab::ip(
        &ns,
        &[
            "rule", "del", "from", &n4s, "lookup", &table, "priority", "1000",
        ],
    )
    .unwrap();
    fails(&["rule", n4s.as_str(), table.as_str()]);
    lab::ip(
        &ns,
        &[
            "rule", "add", "from", &n4s, "lookup", &table, "priority", "1000",
        ],
    )
    .unwrap();
    net1.chain
        .check(&net1.att)
        .unwrap_or_else(|e| panic!("CHECK after repair: {e}"));
    // A route of net1's table.
    let node4s = node4.to_string();
    let gw = routes_of(&ns, &table)
        .iter()
        .find(|r| r["dst"] == node4s.as_str())
        .and_then(|r| r["gateway"].as_str())
        .expect("node route in net1's table")
        .to_string();
    lab::ip(&ns, &["route", "del", &node4s, "table", &table]).unwrap();
    fails(&["route", node4s.as_str(), table.as_str()]);
    lab::ip(
        &ns,
        &[
            "route", "add", &node4s, "via", &gw, "dev", "eth0", "table", &table, "proto", "222",
        ],
    )
    .unwrap();
    net1.chain
        .check(&net1.att)
        .unwrap_or_else(|e| panic!("CHECK after repair: {e}"));
    // Put back by hand as the main plugin would (protocol boot): not ours,
    // and DEL (which deletes our protocol's routes) would leave it.
    lab::ip(&ns, &["route", "del", &node4s, "table", &table]).unwrap();
    lab::ip(
        &ns,
        &[
            "route", "add", &node4s, "via", &gw, "dev", "eth0", "table", &table,
        ],
    )
    .unwrap();
    let err = net1.chain.check(&net1.att).unwrap_err().to_string();
    assert!(err.contains("protocol 3"), "{err}");
    lab::ip(&ns, &["route", "del", &node4s, "table", &table]).unwrap();
    lab::ip(
        &ns,
        &[
            "route", "add", &node4s, "via", &gw, "dev", "eth0", "table", &table, "proto", "222",
        ],
    )
    .unwrap();
    // A main route through eth0.
    lab::ip(&ns, &["route", "del", "10.233.0.0/18", "table", "main"]).unwrap();
    fails(&["route", "10.233.0.0/18"]);
    lab::ip(
        &ns,
        &[
            "route",
            "add",
            "10.233.0.0/18",
            "via",
            &gw,
            "dev",
            "eth0",
            "proto",
            "222",
        ],
    )
    .unwrap();
    // A host route in hostRuleTable.
    let n6s = n6.to_string();
    lab::ip(
        lab.node(),
        &["-6", "route", "del", &n6s, "table", HOST_RULE_TABLE],
    )
    .unwrap();
    fails(&["host route", n6s.as_str(), HOST_RULE_TABLE]);
}

// ---------------------------------------------------------------------------
// 7. conf-examples for Calico and Cilium (validated, not run: no such CNI here).

/// The JSON under `spec.config: |-` of a NetworkAttachmentDefinition.
fn nad_config(yaml: &str) -> Option<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("config: |"));
    let head = lines.next()?;
    let base = indent(head);
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || indent(l) > base)
        .collect();
    let strip = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min()?;
    Some(
        body.iter()
            .map(|l| l.get(strip..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

fn validate_coordinators(what: &str, list: &Value) -> usize {
    let plugins = list["plugins"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no plugins"));
    assert!(
        list["cniVersion"].is_string() && list["name"].is_string(),
        "{what}"
    );
    let mut n = 0;
    for p in plugins.iter().filter(|p| p["type"] == "coordinator") {
        let mut raw = p.clone();
        raw["cniVersion"] = list["cniVersion"].clone();
        raw["name"] = list["name"].clone();
        raw["defaultsFile"] = conf_example("defaults.json").display().to_string().into();
        coordinator::config::Config::from_raw(&raw)
            .unwrap_or_else(|e| panic!("{what}: coordinator config: {e}"));
        n += 1;
    }
    n
}

#[test]
fn calico_and_cilium_examples_validate() {
    for file in [
        "calico-macvlan.conflist",
        "cilium-macvlan.conflist",
        "ptp-overlay.conflist",
        "macvlan-overlay-net1.conflist",
    ] {
        let text = std::fs::read_to_string(conf_example(file)).unwrap();
        let list: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(validate_coordinators(file, &list), 1, "{file}");
    }
    let dir = conf_example("");
    let mut nads: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with("-nad.yaml"))
        .collect();
    nads.sort();
    for want in ["calico-macvlan-nad.yaml", "cilium-macvlan-nad.yaml"] {
        assert!(nads.iter().any(|n| n == want), "{want} in {nads:?}");
    }
    for file in &nads {
        let yaml = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(yaml.contains("kind: NetworkAttachmentDefinition"), "{file}");
        let json = nad_config(&yaml).unwrap_or_else(|| panic!("{file}: no spec.config"));
        let list: Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{file}: {e}\n{json}"));
        assert_eq!(validate_coordinators(file, &list), 1, "{file}");
    }
}

#[test]
fn nad_config_extraction() {
    let yaml = "spec:\n  config: |-\n    {\n      \"a\": 1\n    }\nother: x\n";
    assert_eq!(nad_config(yaml).as_deref(), Some("{\n  \"a\": 1\n}"));
    assert_eq!(nad_config("spec: {}\n"), None);
}
