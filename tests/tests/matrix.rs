//! The scenario matrix (issue 10): every route layout that real main plugins
//! and IPAMs produce, each cell a real chain (main plugin + IPAM + our
//! coordinator in `auto` mode) run by the project's chain runner in a netns
//! lab, proven with traffic through a fabric that drops asymmetric replies
//! (IPv4 `rp_filter=1` on the fabric router, an nftables `fib` reverse-path
//! check for IPv6).
//!
//! Per cell two pods get the same NICs. For every NIC x family of pod A:
//! a client on the NIC's subnet and a routed client (behind the fabric router)
//! reach it when the layout gives the NIC a way out; the node's probe; a
//! Service (DNAT on the node) sourced from that address; a NodePort reply
//! (underlay pods, and an overlay pod's `eth0`); pod A to pod B on every NIC
//! (and across NICs where both have a way out). Then CHECK passes, fails when
//! one piece is removed, a repeated ADD changes nothing, and after DEL nothing
//! is left on the node or in the pods.
//!
//! Cells share labs: a few worker threads, each with its own lab, take cells
//! from one queue. Needs root; never skips.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cni_tests::{bin_dir, cni_path};
use integration::chain::{result_ips, Attachment, Chain, NetConfList};
use integration::lab::{self, state, Client, Lab, Pod};
use integration::nsexec::{self, Enter};
use integration::traffic::{reply_peer, tcp_request, TcpServer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
const POD_PORT: u16 = 8080;
const BACKEND_PORT: u16 = 7000;
/// Subnets 1-3 carry pod NICs; subnet 4 only routed clients.
const CLIENT_SUBNET: u8 = 4;
const WORKERS: usize = 3;

/// Waits for one TCP exchange. No exec is involved (the client runs on a
/// thread of the test inside the netns), so in a kernel-lab guest 3x covers
/// the emulated stack; 20x would make each failing check cost 100 s.
fn t() -> Duration {
    match std::env::var_os("LAB_KERNEL") {
        Some(_) => T * 3,
        None => T,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Main {
    Macvlan,
    /// A veth whose other end is a port of the fabric bridge, moved into the
    /// pod by `host-device` (how an SR-IOV VF arrives).
    HostDevice,
    /// Calico-like: a veth to the node, /32 and an on-link gateway.
    Ptp,
    /// A node bridge `cni0` with the gateway on it.
    Bridge,
    /// ipvlan on the NIC's uplink (kernel lab only: the host has no ipvlan).
    Ipvlan(IpvlanMode),
    /// host-device of a VLAN link over a veth to the fabric: an SR-IOV VF
    /// with a VLAN, as far as the pod can tell (kernel lab only).
    HostDeviceVlan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpvlanMode {
    L2,
    L3,
    L3s,
}

impl Main {
    fn overlay(self) -> bool {
        matches!(self, Main::Ptp | Main::Bridge)
    }
    fn host_device(self) -> bool {
        matches!(self, Main::HostDevice | Main::HostDeviceVlan)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipam {
    HostLocal,
    Static,
    CoordinatorIpam,
}

/// Which routes the underlay NICs' IPAM gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// No routes (host-local still reports its gateway).
    NoRoutes,
    /// A default on the first NIC only.
    DefaultOnly,
    /// A default on every NIC: IPv6 defaults merge into one multipath route.
    DefaultEvery,
    /// A default on the first NIC, extra prefixes on the others.
    Extra,
    /// Gateways, no routes.
    GatewayOnly,
    /// /32 and /128 addresses without gateway (static).
    HostPrefix,
    /// A default on every NIC, the IPv6 gateway link-local ([`LL_GW6`], as
    /// routers announce it): the fabric's gateway holds it on every bridge.
    /// Static IPAM gives it as the address's gateway and the route's.
    LinkLocalGateway,
}

/// The IPv6 gateway of [`Style::LinkLocalGateway`]; the same address on
/// every subnet, so only the device tells the NICs' routes apart.
const LL_GW6: &str = "fe80::1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fams {
    v4: bool,
    v6: bool,
}

const V4: Fams = Fams {
    v4: true,
    v6: false,
};
const V6: Fams = Fams {
    v4: false,
    v6: true,
};
const DUAL: Fams = Fams { v4: true, v6: true };

impl Fams {
    fn list(self) -> Vec<bool> {
        [(true, self.v4), (false, self.v6)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(v4, _)| v4)
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct Cell {
    nics: Vec<Main>,
    ipam: Ipam,
    style: Style,
    fams: Fams,
    /// `podDefaultRouteNic`: index of the NIC.
    default_nic: Option<usize>,
    /// The subnet of each underlay NIC in order, when not 1, 2, 3 (the
    /// kernel lab's VLAN and bond uplinks are further subnets).
    subnets: Vec<u8>,
}

impl Cell {
    fn name(&self) -> String {
        let nics: Vec<String> = self.nics.iter().map(|m| format!("{m:?}")).collect();
        let on: Vec<String> = self.subnets.iter().map(|s| format!(" s{s}")).collect();
        format!(
            "{}{} {:?} {:?} {} default={}",
            nics.join("+"),
            on.concat(),
            self.ipam,
            self.style,
            match (self.fams.v4, self.fams.v6) {
                (true, true) => "dual",
                (true, false) => "IPv4",
                _ => "IPv6",
            },
            self.default_nic
                .map(ifname)
                .unwrap_or_else(|| "first".into())
        )
    }
    fn overlay(&self) -> bool {
        self.nics[0].overlay()
    }
    /// Does underlay NIC `i` have a gateway in its IPAM result?
    fn has_gateway(&self, i: usize) -> bool {
        match self.style {
            Style::HostPrefix => false,
            // host-local reports the range's gateway even when not given.
            Style::NoRoutes => self.ipam == Ipam::HostLocal && !self.nics[i].overlay(),
            _ => true,
        }
    }
    fn default_routes(&self, i: usize) -> bool {
        match self.style {
            Style::DefaultEvery | Style::LinkLocalGateway => true,
            Style::DefaultOnly | Style::Extra => i == 0,
            _ => false,
        }
    }
    /// Does `main` hold a default route? (A NodePort reply does not need
    /// one: its SYN-ACK carries the reply mark from the start.)
    fn main_default(&self) -> bool {
        self.overlay()
            || self.default_routes(0)
            || self
                .default_nic
                .is_some_and(|d| self.default_routes(d) || self.has_gateway(d))
    }
    /// Replies from NIC `i`'s address reach a client behind the fabric
    /// router: the NIC has a default somewhere (main, or its own table).
    fn routed(&self, i: usize) -> bool {
        if self.nics[i].overlay() {
            return false;
        }
        let later = i > 0;
        self.default_routes(i) || (later && self.has_gateway(i))
    }
}

pub fn ifname(i: usize) -> String {
    match i {
        0 => "eth0".into(),
        n => format!("net{n}"),
    }
}

/// The cells: see the README's table.
fn cells() -> Vec<Cell> {
    use Ipam::*;
    use Main::*;
    use Style::*;
    let c = |nics: &[Main], ipam, style, fams, default_nic| Cell {
        nics: nics.to_vec(),
        ipam,
        style,
        fams,
        default_nic,
        subnets: Vec::new(),
    };
    vec![
        // Underlay, the issue's first reproduction and its variants.
        c(&[Macvlan, Macvlan], HostLocal, DefaultEvery, DUAL, None),
        c(&[Macvlan, Macvlan], HostLocal, DefaultEvery, DUAL, Some(1)),
        c(
            &[Macvlan, Macvlan, Macvlan],
            HostLocal,
            DefaultEvery,
            DUAL,
            Some(2),
        ),
        c(&[Macvlan], HostLocal, DefaultOnly, V4, None),
        c(&[Macvlan], HostLocal, DefaultOnly, V6, None),
        c(&[Macvlan, Macvlan, Macvlan], HostLocal, Extra, DUAL, None),
        c(&[Macvlan, Macvlan], HostLocal, GatewayOnly, DUAL, Some(1)),
        c(&[Macvlan, Macvlan], HostLocal, NoRoutes, V4, None),
        // Issue 24: one NIC whose IPAM gives no default (routes only for its
        // subnet): NodePort replies have no way out of main.
        c(&[Macvlan], HostLocal, NoRoutes, DUAL, None),
        c(&[Macvlan, Macvlan], Static, DefaultEvery, V6, None),
        c(&[Macvlan, Macvlan], Static, HostPrefix, DUAL, None),
        c(&[Macvlan, Macvlan], Static, NoRoutes, DUAL, None),
        c(&[Macvlan, Macvlan], Static, LinkLocalGateway, DUAL, None),
        c(
            &[Macvlan, Macvlan],
            CoordinatorIpam,
            DefaultEvery,
            DUAL,
            None,
        ),
        c(
            &[Macvlan, Macvlan, Macvlan],
            CoordinatorIpam,
            DefaultOnly,
            V4,
            Some(1),
        ),
        c(&[HostDevice, Macvlan], Static, DefaultEvery, DUAL, None),
        c(&[HostDevice], HostLocal, DefaultOnly, V6, None),
        c(
            &[Macvlan, HostDevice],
            CoordinatorIpam,
            GatewayOnly,
            DUAL,
            None,
        ),
        // Overlay, the issue's second reproduction and its variants.
        c(&[Ptp, Macvlan], HostLocal, DefaultEvery, DUAL, None),
        c(&[Ptp, Macvlan], HostLocal, DefaultEvery, DUAL, Some(1)),
        c(&[Ptp, Macvlan], HostLocal, DefaultOnly, V4, None),
        c(&[Ptp, Macvlan, Macvlan], HostLocal, Extra, V6, None),
        c(&[Ptp, HostDevice], Static, GatewayOnly, DUAL, None),
        c(&[Ptp, Macvlan], Static, HostPrefix, DUAL, None),
        c(&[Ptp], HostLocal, DefaultOnly, V4, None),
        c(&[Bridge, Macvlan], HostLocal, DefaultEvery, DUAL, None),
        c(&[Bridge, Macvlan], CoordinatorIpam, DefaultOnly, V6, None),
    ]
}

// ------------------------------------------------------------------ a worker

/// A lab shared by the cells one thread runs, with its clients, node
/// backend and Services.
struct Worker {
    lab: Lab,
    /// A client on each pod subnet (1-3) and the routed one (subnet 4).
    local: Vec<Client>,
    routed: Client,
    _backend: TcpServer,
    /// Distinct static addresses and host-device names within the lab.
    counter: AtomicU16,
}

fn service(v4: bool) -> SocketAddr {
    if v4 {
        "10.233.0.10:80".parse().unwrap()
    } else {
        "[fd00:233::10]:80".parse().unwrap()
    }
}

impl Worker {
    fn new() -> Worker {
        Worker::with_uplinks(&[])
    }

    /// A worker whose lab's subnet `i` has uplink `uplinks[i-1]` (plain veth
    /// past the end); every subnet but the routed clients' has a local client.
    fn with_uplinks(uplinks: &[lab::Uplink]) -> Worker {
        assert!(
            bin_dir().join("coordinator").is_file(),
            "coordinator binary missing in {} (cargo build --workspace --bins)",
            bin_dir().display()
        );
        let n = uplinks.len().max(usize::from(CLIENT_SUBNET));
        let lab = Lab::builder()
            .subnets(n)
            .uplinks(uplinks)
            .build()
            .expect("build lab (needs root)");
        strict_ipv6_router(&lab);
        let backend = TcpServer::start(
            lab.node(),
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), BACKEND_PORT),
        )
        .unwrap();
        for v4 in [true, false] {
            let node = node_addr(&lab, 1, v4);
            lab.node_service(service(v4), SocketAddr::new(node, BACKEND_PORT))
                .unwrap();
        }
        let client = |s: u8| {
            let sn = lab.subnet(s).unwrap().clone();
            lab.fabric_client(s, sn.host4(9, 1), sn.host6(0x9901))
                .unwrap()
        };
        // Index = subnet - 1; the routed clients' subnet has one too (unused).
        let local = (1..=n as u8).map(client).collect();
        let routed = client(CLIENT_SUBNET);
        Worker {
            local,
            routed,
            _backend: backend,
            counter: AtomicU16::new(1),
            lab,
        }
    }

    fn next(&self) -> u16 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }
}

/// IPv6 has no rp_filter: the fabric router drops routed packets whose
/// source is not reachable through their input port (bridged frames stay L2).
fn strict_ipv6_router(lab: &Lab) {
    lab::in_netns(lab.fabric(), || {
        for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
            let path = format!("net/bridge/{key}");
            if std::path::Path::new("/proc/sys").join(&path).exists() {
                cni::netns::sysctl_set(&path, "0")?;
            }
        }
        Ok(())
    })
    .unwrap();
    lab::nft_in(
        lab.fabric(),
        "table ip6 matrix_rpf {\n chain pre {\n  type filter hook prerouting priority -150; policy accept;\n  \
         ip6 saddr != { ::, fe80::/10 } fib saddr . iif oif missing drop\n }\n}\n",
    )
    .expect("IPv6 reverse-path filter in the fabric");
}

fn node_addr(lab: &Lab, subnet: u8, v4: bool) -> IpAddr {
    let s = lab.subnet(subnet).unwrap();
    match v4 {
        true => s.node4.unwrap().into(),
        false => s.node6.unwrap().into(),
    }
}

// ------------------------------------------------------------------ conflists

/// Extra prefixes name their gateway: the reference plugins' CHECK compares
/// the route's gateway with the result's, which is empty otherwise.
fn routes_json(cell: &Cell, i: usize, s: u8, lab: &Lab) -> Vec<Value> {
    let mut out = Vec::new();
    let sn = lab.subnet(s).unwrap();
    for v4 in cell.fams.list() {
        if cell.style == Style::LinkLocalGateway && !v4 {
            // Named on the route too, as an IPAM that learnt it from a router
            // reports it; the v4 default stays on the subnet's gateway.
            out.push(json!({"dst": "::/0", "gw": LL_GW6}));
        } else if cell.default_routes(i) {
            out.push(json!({"dst": if v4 { "0.0.0.0/0" } else { "::/0" }}));
        } else if cell.style == Style::Extra {
            let (dst, gw) = match v4 {
                true => (
                    format!("10.{}.0.0/16", 90 + s),
                    sn.gateway4.unwrap().to_string(),
                ),
                false => (
                    format!("fd00:{}::/64", 90 + s),
                    sn.gateway6.unwrap().to_string(),
                ),
            };
            out.push(json!({ "dst": dst, "gw": gw }));
        }
    }
    out
}

fn ipam_json(w: &Worker, cell: &Cell, i: usize, s: u8) -> Value {
    let sn = w.lab.subnet(s).unwrap().clone();
    let routes = routes_json(cell, i, s, &w.lab);
    let gw = cell.has_gateway(i);
    let nets = |v4: bool| match v4 {
        true => (sn.v4.unwrap().to_string(), sn.gateway4.unwrap().to_string()),
        false if cell.style == Style::LinkLocalGateway => {
            (sn.v6.unwrap().to_string(), LL_GW6.to_string())
        }
        false => (sn.v6.unwrap().to_string(), sn.gateway6.unwrap().to_string()),
    };
    match cell.ipam {
        Ipam::HostLocal => {
            let ranges: Vec<Value> = cell
                .fams
                .list()
                .into_iter()
                .map(|v4| {
                    let (subnet, gateway) = nets(v4);
                    let (start, end) = match v4 {
                        true => (sn.host4(20, 1).unwrap().to_string(), sn.host4(20, 250).unwrap().to_string()),
                        false => (sn.host6(0x2001).unwrap().to_string(), sn.host6(0x20ff).unwrap().to_string()),
                    };
                    json!([{"subnet": subnet, "rangeStart": start, "rangeEnd": end, "gateway": gateway}])
                })
                .collect();
            json!({"type": "host-local", "ranges": ranges, "routes": routes})
        }
        Ipam::Static => {
            let n = w.next();
            let addrs: Vec<Value> = cell
                .fams
                .list()
                .into_iter()
                .map(|v4| {
                    let (subnet, gateway) = nets(v4);
                    let len = subnet.split('/').nth(1).unwrap().to_string();
                    let (addr, host_len) = match v4 {
                        true => (sn.host4(30, n as u8).unwrap().to_string(), "32"),
                        false => (sn.host6(0x3000 + n).unwrap().to_string(), "128"),
                    };
                    match cell.style {
                        Style::HostPrefix => json!({ "address": format!("{addr}/{host_len}") }),
                        Style::NoRoutes => json!({ "address": format!("{addr}/{len}") }),
                        _ if gw => json!({"address": format!("{addr}/{len}"), "gateway": gateway}),
                        _ => json!({ "address": format!("{addr}/{len}") }),
                    }
                })
                .collect();
            json!({"type": "static", "addresses": addrs, "routes": routes})
        }
        Ipam::CoordinatorIpam => {
            let pools: Vec<Value> = cell
                .fams
                .list()
                .into_iter()
                .map(|v4| {
                    let (subnet, gateway) = nets(v4);
                    let range = match v4 {
                        true => format!(
                            "{}-{}",
                            sn.host4(40, 1).unwrap(),
                            sn.host4(40, 250).unwrap()
                        ),
                        false => format!(
                            "{}-{}",
                            sn.host6(0x4001).unwrap(),
                            sn.host6(0x40ff).unwrap()
                        ),
                    };
                    let mine: Vec<&Value> = routes
                        .iter()
                        .filter(|r| r["dst"].as_str().unwrap().contains('.') == v4)
                        .collect();
                    let mut p = json!({"name": format!("s{s}-{}", if v4 { 4 } else { 6 }),
                        "subnet": subnet, "ranges": [range], "routes": mine});
                    if gw {
                        p["gateway"] = gateway.into();
                    }
                    p
                })
                .collect();
            let dir = w.lab.dir().join("coordinator-ipam");
            json!({"type": "coordinator-ipam", "nodeName": "node1",
                "store": {"kind": "file", "dataDir": dir.display().to_string()}, "pools": pools})
        }
    }
}

/// The overlay first NIC's own IPAM: a node-local subnet with defaults.
fn overlay_ipam(cell: &Cell, main: Main) -> Value {
    let third = if main == Main::Ptp { 244 } else { 245 };
    let mut ranges = Vec::new();
    if cell.fams.v4 {
        ranges.push(json!([{ "subnet": format!("10.{third}.1.0/24") }]));
    }
    if cell.fams.v6 {
        ranges.push(json!([{ "subnet": format!("fd00:{third}:0:1::/64") }]));
    }
    let routes: Vec<Value> = cell
        .fams
        .list()
        .into_iter()
        .map(|v4| json!({"dst": if v4 { "0.0.0.0/0" } else { "::/0" }}))
        .collect();
    json!({"type": "host-local", "ranges": ranges, "routes": routes})
}

fn coordinator_json(w: &Worker, cell: &Cell) -> Value {
    let mut c = json!({
        "type": "coordinator",
        "mode": "auto",
        "serviceCIDR": ["10.233.0.0/18", "fd00:233::/110"],
        "overlayPodCIDR": ["10.244.0.0/16", "fd00:244::/48", "10.245.0.0/16", "fd00:245::/48"],
        "defaultsFile": w.lab.dir().join("no-defaults.json").display().to_string(),
    });
    if let Some(d) = cell.default_nic {
        c["podDefaultRouteNic"] = ifname(d).into();
    }
    c
}

/// `ipvlan(l2)` would make an odd network name (host-local's directory).
fn network_name(main: Main) -> String {
    format!("{main:?}")
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
}

/// The subnet of NIC `i` (underlay NICs take subnets 1, 2, 3 in order, or
/// the cell's `subnets`).
fn subnet_of(cell: &Cell, i: usize) -> u8 {
    let first_underlay = usize::from(cell.overlay());
    match cell.subnets.get(i - first_underlay) {
        Some(&s) => s,
        None => (i + 1 - first_underlay) as u8,
    }
}

/// The conflist of NIC `i` of a pod; `hd` names a host-device to move in.
fn conflist(w: &Worker, cell: &Cell, i: usize, hd: Option<&str>) -> NetConfList {
    let main = cell.nics[i];
    let plugin = match main {
        Main::Macvlan | Main::HostDevice | Main::HostDeviceVlan | Main::Ipvlan(_) => {
            let s = subnet_of(cell, i);
            let ipam = ipam_json(w, cell, i, s);
            let master = w.lab.subnet(s).unwrap().parent.clone();
            match main {
                Main::Macvlan => {
                    json!({"type": "macvlan", "master": master, "mode": "bridge", "ipam": ipam})
                }
                Main::Ipvlan(mode) => {
                    let mode = format!("{mode:?}").to_lowercase();
                    json!({"type": "ipvlan", "master": master, "mode": mode, "ipam": ipam})
                }
                _ => json!({"type": "host-device", "device": hd.unwrap(), "ipam": ipam}),
            }
        }
        Main::Ptp => json!({"type": "ptp", "ipam": overlay_ipam(cell, main)}),
        Main::Bridge => json!({"type": "bridge", "bridge": "cni0", "isGateway": true,
            "ipam": overlay_ipam(cell, main)}),
    };
    let mut list = NetConfList::from_value(json!({
        "cniVersion": "1.0.0",
        "name": format!("m-{}-{}", ifname(i), network_name(main)),
        "plugins": [plugin, coordinator_json(w, cell)],
    }))
    .unwrap();
    w.lab.localize(&mut list);
    list
}

// ------------------------------------------------------------------ state

/// Everything ADD/DEL may touch in a netns, as sorted lines. Left out: `cni0`
/// (the bridge plugin's node bridge, which it keeps) and the node's `from all
/// lookup 500` rule (added once per node and shared by every pod).
fn snapshot(ns: &str) -> Vec<String> {
    let mut out: Vec<String> = state::link_names(ns)
        .unwrap()
        .into_iter()
        .filter(|l| l != "cni0")
        .map(|l| format!("link {l}"))
        .collect();
    let rows = |v: Value| v.as_array().cloned().unwrap_or_default();
    for r in rows(state::rules(ns).unwrap()) {
        if r["table"] == "500" && r["src"] == "all" {
            continue;
        }
        out.push(format!("rule {} {}", r["family"], state::rule_line(&r)));
    }
    for r in rows(state::routes(ns, "all").unwrap()) {
        let line = state::route_line(&r);
        if r["table"] != "local" && r["dst"] != "multicast" && !line.contains("cni0") {
            out.push(format!("route {line}"));
        }
    }
    for n in rows(state::neighbours(ns).unwrap()) {
        let permanent = n["state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"));
        if permanent && n["dev"] != "cni0" {
            out.push(format!("neigh {}", state::neigh_line(&n)));
        }
    }
    let nft = nsexec::command_in(ns, "nft", Enter::NetOnly)
        .and_then(|mut c| c.args(["list", "ruleset"]).output())
        .expect("nft list ruleset");
    out.push(String::from_utf8_lossy(&nft.stdout).into_owned());
    out.sort();
    out
}

/// [`snapshot`] plus what the kill and panic sweeps must also find restored:
/// each link's MTU, MAC, txqueuelen and up/down, and per link (and `all`,
/// `default`) the sysctls we write (`rp_filter`, `arp_notify`,
/// `accept_dad`, `addr_gen_mode`; cni_tests::kstate). A value the main
/// plugin sets on its own is in both snapshots alike.
fn full_snapshot(ns: &str) -> Vec<String> {
    let mut out = snapshot(ns);
    out.extend(cni_tests::kstate::tuning_lines(ns));
    out.sort();
    out
}

/// The coordinator settings that make the sweeps' snapshots see our MAC,
/// txqueuelen and rp_filter writes (none is the kernel's default).
fn tuned(list: &mut NetConfList) {
    let c = &mut list.plugins[1];
    c.insert("podMACPrefix".into(), json!("0a:0b"));
    c.insert("txQueueLen".into(), json!(1234));
    c.insert("podRPFilter".into(), json!(1));
}

// ------------------------------------------------------------------ a cell

struct Nic {
    chain: Chain,
    att: Attachment,
    ips: Vec<IpAddr>,
    /// The main plugin's stdout, replayed for a repeated ADD.
    main_stdout: String,
    result: Value,
}

struct CellPod {
    pod: Pod,
    nics: Vec<Nic>,
    _srv: TcpServer,
}

impl CellPod {
    fn ip(&self, i: usize, v4: bool) -> IpAddr {
        *self.nics[i]
            .ips
            .iter()
            .find(|a| a.is_ipv4() == v4)
            .unwrap_or_else(|| panic!("{} has no {v4} address: {:?}", ifname(i), self.nics[i].ips))
    }
}

/// A veth whose `hf<n>` end is a port of subnet `s`'s fabric bridge and
/// whose `hd<n>` end waits in the node for host-device. With `vlan`, the
/// device handed over is `hv<n>`, VLAN `vid` on `hd<n>` (which stays in
/// the node), and the fabric bridges VLAN `vid` of `hf<n>`: an SR-IOV VF
/// with a VLAN as far as the pod and the fabric can tell.
fn host_device(w: &Worker, s: u8, vlan: Option<u16>) -> String {
    let n = w.next();
    let (node_end, fabric_end) = (format!("hd{n}"), format!("hf{n}"));
    let mut node = vec![format!(
        "link add {node_end} type veth peer name {fabric_end} netns {}",
        w.lab.fabric()
    )];
    let mut fabric = Vec::new();
    let (device, port) = match vlan {
        Some(vid) => {
            let (dev, port) = (format!("hv{n}"), format!("hf{n}v"));
            // The lower goes up first: a lower coming up takes its VLANs up
            // with it, and host-device gives the VLAN back down.
            node.push(format!("link set {node_end} up"));
            node.push(format!(
                "link add link {node_end} name {dev} type vlan id {vid}"
            ));
            fabric.push(format!(
                "link add link {fabric_end} name {port} type vlan id {vid}"
            ));
            fabric.push(format!("link set {fabric_end} up"));
            (dev, port)
        }
        None => (node_end, fabric_end),
    };
    state::ip_batch(w.lab.node(), &node).unwrap();
    let bridge = w.lab.subnet(s).unwrap().bridge.clone();
    fabric.push(format!("link set {port} master {bridge} up"));
    state::ip_batch(w.lab.fabric(), &fabric).unwrap();
    device
}

fn attach_pod(w: &Worker, cell: &Cell, name: &str, devices: &[Option<String>]) -> CellPod {
    let pod = w.lab.pod(name).unwrap();
    // DAD is not what this matrix tests; it would cost ~2 s per NIC.
    lab::in_netns(&pod.name, || {
        cni::netns::sysctl_set("net/ipv6/conf/default/accept_dad", "0")?;
        cni::netns::sysctl_set("net/ipv6/conf/all/accept_dad", "0")
    })
    .unwrap();
    let cid = format!("ctr-{}", pod.name);
    let mut nics = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        let list = conflist(w, cell, i, device.as_deref());
        let chain = w.lab.chain(list).cni_path(cni_path());
        let att = Attachment::new(&cid, &pod.path, &ifname(i));
        let out = chain.add(&att).unwrap_or_else(|e| {
            let stderr = e.runs.last().map(|r| r.stderr.clone()).unwrap_or_default();
            panic!(
                "[{}] ADD {} of {name}: {e}\n{stderr}",
                cell.name(),
                ifname(i)
            )
        });
        let result = out.result.clone().unwrap();
        nics.push(Nic {
            ips: result_ips(&result),
            main_stdout: out.runs[0].stdout.clone(),
            result,
            chain,
            att,
        });
    }
    let srv = TcpServer::start(
        &pod.name,
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), POD_PORT),
    )
    .unwrap();
    CellPod {
        pod,
        nics,
        _srv: srv,
    }
}

/// The address the server at `dst` saw, or the error.
fn peer(ns: &str, src: Option<IpAddr>, dst: SocketAddr) -> Result<IpAddr, String> {
    let reply = tcp_request(ns, src, dst, t()).map_err(|e| e.to_string())?;
    reply_peer(&reply)
        .map(|p| p.ip())
        .ok_or_else(|| format!("bad reply {reply:?}"))
}

struct Failures(Vec<String>);

impl Failures {
    fn expect(&mut self, what: String, got: Result<IpAddr, String>, want: IpAddr) {
        match got {
            Ok(ip) if ip == want => {}
            Ok(ip) => self.0.push(format!("{what}: server saw {ip}, not {want}")),
            Err(e) => self.0.push(format!("{what}: {e}")),
        }
    }
}

fn client_ip(c: &Client, v4: bool) -> IpAddr {
    match v4 {
        true => c.ipv4.unwrap().into(),
        false => c.ipv6.unwrap().into(),
    }
}

/// NodePort: `node:port` on the routed client's subnet DNATed to `backend`.
fn node_port(w: &Worker, backend: IpAddr, port: u16) -> SocketAddr {
    let node = node_addr(&w.lab, CLIENT_SUBNET, backend.is_ipv4());
    let (family, target) = match backend {
        IpAddr::V4(b) => ("ip", format!("{b}:{POD_PORT}")),
        IpAddr::V6(b) => ("ip6", format!("[{b}]:{POD_PORT}")),
    };
    let script = format!(
        "table {family} matrix_np {{\n chain pre {{ type nat hook prerouting priority -100; }}\n}}\n\
         add rule {family} matrix_np pre {family} daddr {node} tcp dport {port} dnat to {target}\n"
    );
    w.lab.nft(&script).unwrap();
    SocketAddr::new(node, port)
}

/// `main` holds one default per family, through the default NIC alone
/// (`podDefaultRouteNic`, else the first NIC): never a multipath route.
fn main_defaults(cell: &Cell, p: &CellPod, f: &mut Failures) {
    let want = ifname(cell.default_nic.unwrap_or(0));
    for (flag, v4) in [("-4", true), ("-6", false)] {
        let out = lab::ip(
            &p.pod.name,
            &["-j", flag, "route", "show", "table", "main", "default"],
        )
        .unwrap();
        let defaults: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
        let expected = usize::from(cell.main_default() && cell.fams.list().contains(&v4));
        // Else the cell could pass through the global gateway it never named.
        let gw_ok =
            |d: &Value| v4 || cell.style != Style::LinkLocalGateway || d["gateway"] == LL_GW6;
        let ok = defaults.len() == expected
            && defaults
                .iter()
                .all(|d| d["dev"] == want.as_str() && gw_ok(d));
        if !ok {
            f.0.push(format!(
                "[{}] main's {flag} defaults should be {expected} via {want}: {out}",
                cell.name()
            ));
        }
    }
}

fn traffic(w: &Worker, cell: &Cell, a: &CellPod, b: &CellPod, f: &mut Failures) {
    let name = cell.name();
    main_defaults(cell, a, f);
    for i in 0..cell.nics.len() {
        let nic = ifname(i);
        let underlay = !cell.nics[i].overlay();
        for v4 in cell.fams.list() {
            let ip = a.ip(i, v4);
            let dst = SocketAddr::new(ip, POD_PORT);
            if underlay && cell.style != Style::HostPrefix {
                let c = &w.local[usize::from(subnet_of(cell, i)) - 1];
                let what = format!("[{name}] client on {nic}'s subnet -> {ip}");
                f.expect(what, peer(&c.name, None, dst), client_ip(c, v4));
            }
            if cell.routed(i) {
                let what = format!("[{name}] routed client -> {nic} {ip}");
                f.expect(
                    what,
                    peer(&w.routed.name, None, dst),
                    client_ip(&w.routed, v4),
                );
            }
            let what = format!("[{name}] node probe -> {nic} {ip}");
            let node_seen = peer(w.lab.node(), None, dst);
            if let Err(e) = node_seen {
                f.0.push(format!("{what}: {e}"));
            }
            let what = format!("[{name}] {nic} {ip} -> Service");
            f.expect(what, peer(&a.pod.name, Some(ip), service(v4)), ip);
            if !cell.overlay() || i == 0 {
                let port = 30000 + w.next();
                let np = node_port(w, ip, port);
                let what = format!("[{name}] NodePort {np} -> {nic} {ip}");
                f.expect(
                    what,
                    peer(&w.routed.name, None, np),
                    client_ip(&w.routed, v4),
                );
            }
            // Pod to pod: the same NIC of the other pod, and other NICs
            // where both ends have a way out.
            for j in 0..cell.nics.len() {
                let same = i == j && (!underlay || cell.style != Style::HostPrefix);
                let across = i != j && cell.routed(i) && cell.routed(j);
                if !(same || across) {
                    continue;
                }
                let to = SocketAddr::new(b.ip(j, v4), POD_PORT);
                let what = format!("[{name}] A.{nic} {ip} -> B.{} {to}", ifname(j));
                f.expect(what, peer(&a.pod.name, Some(ip), to), ip);
            }
        }
    }
    lab::nft_in(w.lab.node(), "delete table ip matrix_np\n").ok();
    lab::nft_in(w.lab.node(), "delete table ip6 matrix_np\n").ok();
}

/// A chain whose main plugin prints the saved result: a repeated ADD of the
/// coordinator with the same prevResult.
fn replay(w: &Worker, nic: &Nic, tag: &str) -> Chain {
    let dir = w.lab.dir().join(format!("replay-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("result.json");
    std::fs::write(&saved, &nic.main_stdout).unwrap();
    let plugin = dir.join("matrix-replay");
    // ADD prints the saved result; CHECK and DEL have nothing to do.
    let script = format!(
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && cat '{}'\nexit 0\n",
        saved.display()
    );
    std::fs::write(&plugin, script).unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let coordinator = nic
        .chain
        .list()
        .plugins
        .iter()
        .find(|p| p["type"] == "coordinator")
        .unwrap()
        .clone();
    let list = NetConfList::from_value(json!({
        "cniVersion": "1.0.0", "name": nic.chain.list().name,
        "plugins": [{"type": "matrix-replay"}, Value::Object(coordinator)],
    }))
    .unwrap();
    let mut path = vec![dir];
    path.extend(cni_path());
    w.lab.chain(list).cni_path(path)
}

/// CHECK passes; without one piece it fails with code 103; repeated ADDs
/// change nothing.
fn check_and_repeat(w: &Worker, cell: &Cell, a: &CellPod, f: &mut Failures) -> Vec<Chain> {
    let name = cell.name();
    let replays: Vec<Chain> = a
        .nics
        .iter()
        .enumerate()
        .map(|(i, nic)| replay(w, nic, &format!("{}-{i}", a.pod.name)))
        .collect();
    let ns = a.pod.name.as_str();
    let (pod_before, node_before) = (snapshot(ns), snapshot(w.lab.node()));
    for (nic, again) in a.nics.iter().zip(&replays) {
        match again.add(&nic.att) {
            Ok(out) if out.result.as_ref() == Some(&nic.result) => {}
            Ok(out) => f.0.push(format!(
                "[{name}] repeated ADD {}: result {:?}",
                nic.att.ifname, out.result
            )),
            Err(e) => {
                f.0.push(format!("[{name}] repeated ADD {}: {e}", nic.att.ifname))
            }
        }
    }
    if snapshot(ns) != pod_before {
        f.0.push(format!(
            "[{name}] repeated ADD changed the pod: {:#?} -> {:#?}",
            pod_before,
            snapshot(ns)
        ));
    }
    if snapshot(w.lab.node()) != node_before {
        f.0.push(format!("[{name}] repeated ADD changed the node"));
    }
    for (nic, only_ours) in a.nics.iter().zip(&replays) {
        // The reference macvlan's own CHECK fails for an address without a
        // gateway ("Failed to find Gateway <nil>"): there only ours is run.
        let whole =
            cell.style != Style::HostPrefix || cell.nics[0].overlay() && nic.att.ifname == "eth0";
        for (what, chain) in [("chain", &nic.chain), ("coordinator", only_ours)] {
            if what == "chain" && !whole {
                continue;
            }
            if let Err(e) = chain.check(&nic.att) {
                f.0.push(format!("[{name}] CHECK ({what}) {}: {e}", nic.att.ifname));
            }
        }
    }
    let last = a.nics.len() - 1;
    // One piece: the last NIC's `from` rule, or the underlay first NIC's
    // fwmark rule; put back by hand afterwards.
    let piece: Option<(Vec<String>, Vec<String>)> = if last > 0 {
        let ip = a.nics[last].ips[0];
        let fam = if ip.is_ipv4() { "-4" } else { "-6" };
        let rules = state::rules(ns).unwrap();
        let table = rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["src"] == ip.to_string() && r["priority"] == 1000)
            .and_then(|r| r["table"].as_str().map(String::from));
        table.map(|t| {
            let sel = |verb: &str| {
                [
                    fam,
                    "rule",
                    verb,
                    "priority",
                    "1000",
                    "from",
                    &ip.to_string(),
                    "lookup",
                    &t,
                ]
                .map(String::from)
                .to_vec()
            };
            (sel("del"), sel("add"))
        })
    } else if !cell.overlay() {
        let fam = if cell.fams.v4 { "-4" } else { "-6" };
        let sel = |verb: &str| {
            [
                fam, "rule", verb, "priority", "900", "fwmark", "0xc0de", "lookup", "100",
            ]
            .map(String::from)
            .to_vec()
        };
        Some((sel("del"), sel("add")))
    } else {
        None
    };
    if let Some((del, add)) = piece {
        fn args(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        lab::ip(ns, &args(&del)).unwrap();
        let nic = &a.nics[last];
        match replays[last].check(&nic.att) {
            Err(e) if e.code == 103 => {}
            other => f.0.push(format!(
                "[{name}] CHECK {} without `{}` should fail with 103: {:?}",
                nic.att.ifname,
                del.join(" "),
                other.map(|_| ()).map_err(|e| e.to_string())
            )),
        }
        lab::ip(ns, &args(&add)).unwrap();
    }
    replays
}

/// An ipvlan L3/L3S slave answers no ARP or ND: as a real fabric in front of
/// one must, the lab routes the pod's addresses to the node, in the fabric
/// router and in the subnet's local client. And the kernel routes a slave's
/// IPv4 packets in the node's netns restricted to the master (`oif`): the
/// node needs a way out through the master (here a default via the subnet's
/// gateway, behind the node's own), as a node with an L3 ipvlan uplink that
/// is not its default NIC does. (netns, `ip` line) pairs.
fn l3_routes(w: &Worker, cell: &Cell, pods: &[&CellPod]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, main) in cell.nics.iter().enumerate() {
        if !matches!(main, Main::Ipvlan(IpvlanMode::L3 | IpvlanMode::L3s)) {
            continue;
        }
        let s = subnet_of(cell, i);
        let sn = w.lab.subnet(s).unwrap();
        if let Some(gw) = sn.gateway4 {
            let line = format!(
                "route replace default via {gw} dev {} metric 4242",
                sn.parent
            );
            out.push((w.lab.node().to_string(), line));
        }
        let client = &w.local[usize::from(s) - 1];
        for p in pods {
            for ip in &p.nics[i].ips {
                let line = format!(
                    "route replace {ip} via {}",
                    node_addr(&w.lab, s, ip.is_ipv4())
                );
                out.push((w.lab.fabric().to_string(), line.clone()));
                out.push((client.name.clone(), line));
            }
        }
    }
    out
}

/// The fabric's `ip` lines that give the gateway [`LL_GW6`] on the bridge
/// of each underlay NIC's subnet, for a [`Style::LinkLocalGateway`] cell.
fn link_local_gateway(w: &Worker, cell: &Cell) -> Vec<String> {
    if cell.style != Style::LinkLocalGateway || !cell.fams.v6 {
        return Vec::new();
    }
    let mut subnets: Vec<u8> = (0..cell.nics.len())
        .filter(|&i| !cell.nics[i].overlay())
        .map(|i| subnet_of(cell, i))
        .collect();
    subnets.sort_unstable();
    subnets.dedup();
    subnets
        .into_iter()
        .map(|s| {
            let bridge = &w.lab.subnet(s).unwrap().bridge;
            format!("addr add {LL_GW6}/64 dev {bridge} nodad")
        })
        .collect()
}

/// DEL in reverse order; afterwards the pod holds nothing but `lo` and the
/// node is as before the cell.
fn del_all(cell: &Cell, p: &CellPod, f: &mut Failures) {
    for nic in p.nics.iter().rev() {
        if let Err(e) = nic.chain.del(&nic.att) {
            f.0.push(format!("[{}] DEL {}: {e}", cell.name(), nic.att.ifname));
        }
    }
    let left: Vec<String> = snapshot(&p.pod.name)
        .into_iter()
        .filter(|l| {
            !(l == "link lo" || l.trim().is_empty() || l.starts_with("rule ") && is_default_rule(l))
        })
        .collect();
    if !left.is_empty() {
        f.0.push(format!(
            "[{}] left in pod after DEL: {left:#?}",
            cell.name()
        ));
    }
}

fn is_default_rule(line: &str) -> bool {
    ["lookup local", "lookup main", "lookup default"]
        .iter()
        .any(|t| line.ends_with(t))
}

fn run_cell(w: &Worker, cell: &Cell, n: usize) -> Vec<String> {
    let mut f = Failures(Vec::new());
    let devices = |w: &Worker| -> Vec<Option<String>> {
        (0..cell.nics.len())
            .map(|i| {
                let vlan = (cell.nics[i] == Main::HostDeviceVlan).then_some(HOST_DEVICE_VID);
                (cell.nics[i].host_device()).then(|| host_device(w, subnet_of(cell, i), vlan))
            })
            .collect()
    };
    let (da, db) = (devices(w), devices(w));
    // An address of an earlier cell comes back on another MAC; host-device
    // (like an SR-IOV VF) announces nothing, so forget the old entries.
    for ns in w
        .local
        .iter()
        .chain([&w.routed])
        .map(|c| c.name.as_str())
        .chain([w.lab.fabric()])
    {
        lab::ip(ns, &["neigh", "flush", "all"]).unwrap();
    }
    let ll_gw = link_local_gateway(w, cell);
    for line in &ll_gw {
        state::ip_batch(w.lab.fabric(), std::slice::from_ref(line)).unwrap();
    }
    let node_before = snapshot(w.lab.node());
    let a = attach_pod(w, cell, &format!("a{n}"), &da);
    let b = attach_pod(w, cell, &format!("b{n}"), &db);
    let l3 = l3_routes(w, cell, &[&a, &b]);
    for (ns, line) in &l3 {
        state::ip_batch(ns, std::slice::from_ref(line)).unwrap();
    }
    traffic(w, cell, &a, &b, &mut f);
    let replays = check_and_repeat(w, cell, &a, &mut f);
    del_all(cell, &a, &mut f);
    del_all(cell, &b, &mut f);
    // The next cell may hand these addresses to a NIC that answers ARP.
    for (ns, line) in &l3 {
        let del = line.replacen("route replace", "route del", 1);
        state::ip_batch(ns, &[del]).ok();
    }
    // Later cells of this lab expect the bridges as the lab built them.
    for line in &ll_gw {
        let del = line.replacen("addr add", "addr del", 1);
        state::ip_batch(w.lab.fabric(), &[del]).ok();
    }
    // A second DEL of the coordinator still succeeds (the reference
    // host-device's does not: it looks for the link it gave back).
    for (nic, again) in a.nics.iter().zip(&replays) {
        if let Err(e) = again.del(&nic.att) {
            f.0.push(format!(
                "[{}] repeated DEL {}: {e}",
                cell.name(),
                nic.att.ifname
            ));
        }
    }
    let node_after = snapshot(w.lab.node());
    if node_after != node_before {
        let gone: Vec<&String> = node_before
            .iter()
            .filter(|l| !node_after.contains(l))
            .collect();
        let new: Vec<&String> = node_after
            .iter()
            .filter(|l| !node_before.contains(l))
            .collect();
        f.0.push(format!(
            "[{}] node after DEL: missing {gone:?}, left {new:?}",
            cell.name()
        ));
    }
    for p in [a, b] {
        w.lab.remove_netns(&p.pod.name).ok();
    }
    f.0
}

/// Run `cells` on `workers` labs (built with `uplinks`) in parallel; every
/// failure of every cell.
fn run_matrix(cells: Vec<Cell>, workers: usize, uplinks: &[lab::Uplink]) -> Vec<String> {
    let queue = Mutex::new(cells.into_iter().enumerate().collect::<VecDeque<_>>());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let w = Worker::with_uplinks(uplinks);
                loop {
                    let Some((n, cell)) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_cell(&w, &cell, n)
                    }))
                    .unwrap_or_else(|_| vec![format!("[{}] panicked (see above)", cell.name())]);
                    failures.lock().unwrap().extend(out);
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

#[test]
fn scenario_matrix() {
    // MATRIX_CELL=<part of a cell's name> runs the matching cells only.
    let only = std::env::var("MATRIX_CELL").unwrap_or_default();
    let cells: Vec<Cell> = cells()
        .into_iter()
        .filter(|c| c.name().contains(&only))
        .collect();
    let n = cells.len();
    let failures = run_matrix(cells, WORKERS, &[]);
    assert!(
        failures.is_empty(),
        "{} failures in {n} cells:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------------ kernel lab

/// The kernel lab's uplinks (issue 20): subnets 1-3 plain veths, 4 the
/// routed clients', 5 a VLAN, 6 an active-backup bond, 7 a VLAN over it.
const LAB_UPLINKS: [lab::Uplink; 7] = {
    use lab::Uplink::*;
    [Veth, Veth, Veth, Veth, Vlan(100), Bond, BondVlan(200)]
};
/// The VLAN of `HostDeviceVlan` (over a plain veth of subnet 1-3).
const HOST_DEVICE_VID: u16 = 300;

/// Cells for links this host's kernel cannot build: ipvlan, VLAN and bond
/// uplinks. The same cell code as the host matrix, run inside a Debian
/// kernel by [`kernel_lab_cells`]. See the README's kernel-lab table.
fn lab_cells() -> Vec<Cell> {
    use Ipam::*;
    use IpvlanMode::*;
    use Main::*;
    use Style::*;
    let c = |nics: &[Main], subnets: &[u8], ipam, style, fams, default_nic| Cell {
        nics: nics.to_vec(),
        ipam,
        style,
        fams,
        default_nic,
        subnets: subnets.to_vec(),
    };
    vec![
        // ipvlan L2: the first NIC in underlay mode, beside macvlan, beside ptp.
        c(&[Ipvlan(L2)], &[], HostLocal, DefaultOnly, DUAL, None),
        c(
            &[Macvlan, Ipvlan(L2)],
            &[],
            HostLocal,
            DefaultEvery,
            DUAL,
            None,
        ),
        c(&[Ptp, Ipvlan(L2)], &[], HostLocal, DefaultEvery, DUAL, None),
        // VLAN and bond uplinks.
        c(&[Macvlan], &[5], HostLocal, DefaultOnly, DUAL, None),
        c(
            &[Macvlan, Macvlan],
            &[6, 7],
            HostLocal,
            DefaultEvery,
            DUAL,
            None,
        ),
        c(&[Ipvlan(L2)], &[7], Static, DefaultOnly, V4, None),
        c(
            &[HostDeviceVlan, Macvlan],
            &[],
            Static,
            DefaultEvery,
            DUAL,
            None,
        ),
        // ipvlan L3 and L3S as net1: the lab routes the pod's addresses.
        c(
            &[Macvlan, Ipvlan(L3)],
            &[],
            HostLocal,
            DefaultEvery,
            DUAL,
            None,
        ),
        c(
            &[Macvlan, Ipvlan(L3s)],
            &[],
            HostLocal,
            DefaultEvery,
            DUAL,
            None,
        ),
        // Host matrix cells on the distribution kernels: IPv6 defaults of
        // every NIC merged into one multipath route, the default on a later
        // NIC, IPv6 only, and ptp's on-link gateway beside ipvlan.
        c(
            &[Macvlan, Macvlan],
            &[],
            HostLocal,
            DefaultEvery,
            DUAL,
            Some(1),
        ),
        c(&[Macvlan], &[], HostLocal, DefaultOnly, V6, None),
        // A link-local IPv6 gateway (what routers announce) on macvlan and on
        // ipvlan L2, whose pod shares the node's MAC: fe80::1 on both NICs,
        // their routes told apart by the device alone.
        c(
            &[Macvlan, Ipvlan(L2)],
            &[],
            Static,
            LinkLocalGateway,
            DUAL,
            None,
        ),
        c(
            &[Ptp, Ipvlan(L2)],
            &[],
            HostLocal,
            DefaultEvery,
            DUAL,
            Some(1),
        ),
    ]
}

/// The kernel lab's cells, in one guest per kernel: scripts/test.sh runs
/// this test binary inside scripts/kernel-lab.sh on Debian 6.1 and 6.12.
/// `MATRIX_CELL=<part of a name>` picks cells, as for the host matrix.
#[test]
#[ignore = "needs ipvlan, vlan and bond links: scripts/test.sh runs it in scripts/kernel-lab.sh"]
fn kernel_lab_cells() {
    let only = std::env::var("MATRIX_CELL").unwrap_or_default();
    let cells: Vec<Cell> = lab_cells()
        .into_iter()
        .filter(|c| c.name().contains(&only))
        .collect();
    let n = cells.len();
    assert!(n > 0, "no kernel-lab cell matches {only:?}");
    for c in &cells {
        eprintln!("kernel lab cell: {}", c.name());
    }
    // One lab: a guest has one (emulated) CPU.
    let failures = run_matrix(cells, 1, &LAB_UPLINKS);
    assert!(
        failures.is_empty(),
        "{} failures in {n} kernel-lab cells:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Issue 20's cells are all there: every ipvlan mode, ipvlan as eth0 and
/// beside macvlan and ptp, each VLAN/bond uplink, host-device of a VLAN.
#[test]
fn lab_cells_cover_issue_20() {
    use IpvlanMode::*;
    let cells = lab_cells();
    let has = |f: &dyn Fn(&Cell) -> bool| cells.iter().any(f);
    for mode in [L2, L3, L3s] {
        assert!(has(&|c| c.nics.contains(&Main::Ipvlan(mode))), "{mode:?}");
    }
    assert!(has(
        &|c| c.nics == [Main::Ipvlan(L2)] && c.subnets.is_empty()
    ));
    assert!(has(&|c| c.nics == [Main::Macvlan, Main::Ipvlan(L2)]));
    assert!(has(&|c| c.nics == [Main::Ptp, Main::Ipvlan(L2)]));
    assert!(has(&|c| c.nics.contains(&Main::HostDeviceVlan)));
    assert!(has(&|c| c.style == Style::LinkLocalGateway
        && c.fams == DUAL
        && c.nics.contains(&Main::Ipvlan(L2))));
    for (i, uplink) in LAB_UPLINKS.iter().enumerate() {
        let s = i as u8 + 1;
        if *uplink != lab::Uplink::Veth {
            assert!(has(&|c| c.subnets.contains(&s)), "{uplink:?}");
        }
    }
}

#[test]
fn matrix_cells_cover_the_issue() {
    let cells = cells();
    for m in [Main::Macvlan, Main::HostDevice, Main::Ptp, Main::Bridge] {
        assert!(cells.iter().any(|c| c.nics.contains(&m)), "{m:?}");
    }
    for i in [Ipam::HostLocal, Ipam::Static, Ipam::CoordinatorIpam] {
        assert!(cells.iter().any(|c| c.ipam == i), "{i:?}");
    }
    for s in [
        Style::NoRoutes,
        Style::DefaultOnly,
        Style::DefaultEvery,
        Style::Extra,
        Style::GatewayOnly,
        Style::HostPrefix,
        Style::LinkLocalGateway,
    ] {
        assert!(cells.iter().any(|c| c.style == s), "{s:?}");
    }
    for f in [V4, V6, DUAL] {
        assert!(cells.iter().any(|c| c.fams == f));
    }
    for n in 1..=3 {
        assert!(cells.iter().any(|c| c.nics.len() == n));
    }
    for d in [None, Some(1), Some(2)] {
        assert!(cells.iter().any(|c| c.default_nic == d));
    }
    // Issue 24: NodePort to a one-NIC underlay pod without a default in
    // main, both families (every underlay cell gets its NodePort check).
    assert!(cells
        .iter()
        .any(|c| c.nics == [Main::Macvlan] && !c.main_default() && c.fams == DUAL));
}

// ------------------------------------------------------------------ kill sweeps

/// Attach NICs `0..i` of `cell` to a fresh pod (no fault), returning the pod
/// and the chains (for the final clean-up).
fn sweep_pod(w: &Worker, cell: &Cell, name: &str, upto: usize) -> (Pod, Vec<(Chain, Attachment)>) {
    let pod = w.lab.pod(name).unwrap();
    lab::in_netns(&pod.name, || {
        cni::netns::sysctl_set("net/ipv6/conf/default/accept_dad", "0")
    })
    .unwrap();
    let mut done = Vec::new();
    for i in 0..upto {
        let chain = w.lab.chain(conflist(w, cell, i, None)).cni_path(cni_path());
        let att = Attachment::new(&format!("ctr-{}", pod.name), &pod.path, &ifname(i));
        chain
            .add(&att)
            .unwrap_or_else(|e| panic!("ADD {}: {e}", ifname(i)));
        done.push((chain, att));
    }
    (pod, done)
}

/// For every N: the coordinator killed (SIGKILL) just before its Nth netlink
/// request of an ADD (or of a DEL) of NIC `i`, then the runtime's DEL (and a
/// re-ADD + DEL): the pod and the node are exactly as before the NIC's ADD,
/// link attributes and sysctls included ([`full_snapshot`], with the MAC,
/// txqueuelen and rp_filter settings of [`tuned`]). Returns the number of
/// kill points of the ADD and of the DEL.
fn kill_sweep(w: &Worker, cell: &Cell, i: usize, tag: &str, f: &mut Failures) -> (u32, u32) {
    let (pod, earlier) = sweep_pod(w, cell, tag, i);
    let ns = pod.name.clone();
    let before = (full_snapshot(&ns), full_snapshot(w.lab.node()));
    let chain = |fault: Option<u32>| {
        let mut list = conflist(w, cell, i, None);
        tuned(&mut list);
        let c = w.lab.chain(list).cni_path(cni_path());
        match fault {
            Some(n) => c.env(cni::netlink::fault::ENV, &n.to_string()),
            None => c,
        }
    };
    let att = Attachment::new(&format!("ctr-{ns}"), &pod.path, &ifname(i));
    let name = format!("{} {} kill", cell.name(), ifname(i));
    let same = |what: String, f: &mut Failures| {
        let now = (full_snapshot(&ns), full_snapshot(w.lab.node()));
        if now != before {
            let diff = |a: &[String], b: &[String]| -> Vec<String> {
                b.iter().filter(|l| !a.contains(l)).cloned().collect()
            };
            f.0.push(format!(
                "[{name}] {what}: left in pod {:?}, node {:?}; gone from pod {:?}",
                diff(&before.0, &now.0),
                diff(&before.1, &now.1),
                diff(&now.0, &before.0)
            ));
        }
    };
    let (mut add_points, mut del_points) = (0, 0);
    for n in 1.. {
        let killed = chain(Some(n)).add(&att).is_err();
        if let Err(e) = chain(None).del(&att) {
            f.0.push(format!("[{name}] runtime DEL after ADD killed at {n}: {e}"));
        }
        same(format!("ADD killed at request {n}, then DEL"), f);
        if !killed {
            break;
        }
        add_points = n;
        if let Err(e) = chain(None).add(&att).and_then(|_| chain(None).del(&att)) {
            f.0.push(format!(
                "[{name}] re-ADD + DEL after ADD killed at {n}: {e}"
            ));
        }
        same(format!("ADD killed at request {n}, DEL, re-ADD, DEL"), f);
    }
    for n in 1.. {
        chain(None)
            .add(&att)
            .unwrap_or_else(|e| panic!("[{name}] ADD: {e}"));
        let killed = chain(Some(n)).del(&att).is_err();
        if killed {
            if let Err(e) = chain(None).del(&att) {
                f.0.push(format!("[{name}] runtime DEL after DEL killed at {n}: {e}"));
            }
        }
        same(format!("DEL killed at request {n}, then DEL"), f);
        if !killed {
            break;
        }
        del_points = n;
    }
    for (c, a) in earlier.iter().rev() {
        c.del(a).ok();
    }
    w.lab.remove_netns(&ns).ok();
    (add_points, del_points)
}

/// (family, device) of every default route (each nexthop) in the netns's main.
fn default_devs(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let text = state::ip(ns, &[fam, "-j", "route", "show", "default"]).unwrap_or_default();
        let routes: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        for r in routes.as_array().cloned().unwrap_or_default() {
            let hops = r["nexthops"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![r.clone()]);
            for h in hops {
                out.push(format!("{fam} {}", h["dev"].as_str().unwrap_or("?")));
            }
        }
    }
    out
}

/// For every N: the coordinator panics just before its Nth netlink request
/// of an ADD of NIC `i`, with `podMACPrefix`, `txQueueLen` and `podRPFilter`
/// on ([`tuned`]; the MAC change is the ADD's first step, before anything
/// the plan names). Snapshots include link attributes and sysctls
/// ([`full_snapshot`]). The ADD fails and, before
/// any DEL, the undo journal has taken back every change of ours: the node is
/// as before, the pod lost nothing and gained only the main plugin's link and
/// routes (none of our protocol, no rule, no veth, the same nftables ruleset),
/// and the NIC's MAC is not the prefix's. The runtime's DEL then leaves both
/// exactly as before. Returns the number of panic points.
fn panic_sweep(w: &Worker, cell: &Cell, i: usize, tag: &str, f: &mut Failures) -> u32 {
    let (pod, earlier) = sweep_pod(w, cell, tag, i);
    let ns = pod.name.clone();
    let before = (full_snapshot(&ns), full_snapshot(w.lab.node()));
    let before_defaults = default_devs(&ns);
    let chain = |fault: Option<u32>| {
        let mut list = conflist(w, cell, i, None);
        tuned(&mut list);
        let c = w.lab.chain(list).cni_path(cni_path());
        match fault {
            Some(n) => c.env(cni::netlink::fault::PANIC_ENV, &n.to_string()),
            None => c,
        }
    };
    let nic = ifname(i);
    let att = Attachment::new(&format!("ctr-{ns}"), &pod.path, &nic);
    let name = format!("{} {nic} panic", cell.name());
    let mut points = 0;
    for n in 1.. {
        let res = chain(Some(n)).add(&att);
        let Err(e) = res else {
            chain(None).del(&att).ok();
            break;
        };
        points = n;
        let e = e.to_string();
        if !e.contains("injected panic") {
            f.0.push(format!("[{name}] ADD at {n} failed otherwise: {e}"));
        }
        let now = (full_snapshot(&ns), full_snapshot(w.lab.node()));
        // Defaults are compared by their devices below: the main plugin's
        // IPv6 default merges with the others into one multipath line.
        let plain = |l: &&String| !l.starts_with("route default");
        let gone: Vec<&String> = before
            .0
            .iter()
            .filter(|l| !now.0.contains(l))
            .filter(plain)
            .collect();
        let added: Vec<&String> = now
            .0
            .iter()
            .filter(|l| !before.0.contains(l))
            .filter(plain)
            .collect();
        let now_defaults = default_devs(&ns);
        let lost_defaults: Vec<&String> = before_defaults
            .iter()
            .filter(|d| !now_defaults.contains(d))
            .collect();
        if !lost_defaults.is_empty() {
            f.0.push(format!(
                "[{name}] ADD panicked at request {n}: main lost the defaults {lost_defaults:?}"
            ));
        }
        let ours = |l: &str| {
            l.starts_with("rule")
                || l.contains("proto 222")
                || l.contains("proto 0xde")
                || l.contains("veth0")
                || l.contains("table ")
        };
        if now.1 != before.1 || !gone.is_empty() || added.iter().any(|l| ours(l)) {
            f.0.push(format!(
                "[{name}] ADD panicked at request {n}, no DEL yet: pod lost {gone:?}, \
                 gained {added:?}; node changed: {}",
                now.1 != before.1
            ));
        }
        let link = state::ip(&ns, &["-j", "link", "show", "dev", &nic]).expect("ip link show");
        let link: Value = serde_json::from_str(&link).expect("ip -j link");
        let mac = link[0]["address"].as_str().expect("the NIC has a MAC");
        if mac.starts_with("0a:0b") {
            f.0.push(format!(
                "[{name}] ADD panicked at request {n}: {nic} kept the prefix MAC"
            ));
        }
        if let Err(e) = chain(None).del(&att) {
            f.0.push(format!("[{name}] runtime DEL after the panic at {n}: {e}"));
        }
        let after = (full_snapshot(&ns), full_snapshot(w.lab.node()));
        if after != before {
            let diff = |a: &[String], b: &[String]| -> Vec<String> {
                b.iter().filter(|l| !a.contains(l)).cloned().collect()
            };
            f.0.push(format!(
                "[{name}] panic at {n}, then DEL: not as before: left in pod {:?}, node {:?}; \
                 gone from pod {:?}, node {:?}",
                diff(&before.0, &after.0),
                diff(&before.1, &after.1),
                diff(&after.0, &before.0),
                diff(&after.1, &before.1)
            ));
        }
    }
    for (c, a) in earlier.iter().rev() {
        c.del(a).ok();
    }
    w.lab.remove_netns(&ns).ok();
    points
}

type Sweep<T> = fn(&Worker, &Cell, usize, &str, &mut Failures) -> T;

/// The underlay cell and the overlay (ptp + macvlan) cell the sweeps use.
fn sweep_cells() -> (Cell, Cell) {
    let underlay = cells().remove(0);
    let overlay = cells()
        .into_iter()
        .find(|c| c.nics == [Main::Ptp, Main::Macvlan] && c.style == Style::DefaultEvery)
        .unwrap();
    (underlay, overlay)
}

/// Run `sweep` over `runs` (cell, NIC, netns tag) on two labs in parallel:
/// every failure, and each run's points as "cell NIC: points".
fn run_sweeps<T: std::fmt::Debug + Send>(
    runs: &[(&Cell, usize, &str)],
    sweep: Sweep<T>,
) -> (Vec<String>, Vec<(String, T)>) {
    let failures = Mutex::new(Vec::new());
    let points = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for chunk in runs.chunks(2) {
            let (failures, points) = (&failures, &points);
            s.spawn(move || {
                let w = Worker::new();
                for (cell, i, tag) in chunk {
                    let mut f = Failures(Vec::new());
                    let p = sweep(&w, cell, *i, tag, &mut f);
                    let what = format!("{} {}", cell.name(), ifname(*i));
                    points.lock().unwrap().push((what, p));
                    failures.lock().unwrap().extend(f.0);
                }
            });
        }
    });
    (failures.into_inner().unwrap(), points.into_inner().unwrap())
}

/// The sweeps need the binary the test build made with the hooks: a
/// coordinator without them never fails, and each sweep would find no point.
fn require_fault_hooks() {
    let bin = bin_dir().join("coordinator");
    for name in [cni::netlink::fault::ENV, cni::netlink::fault::PANIC_ENV] {
        assert!(
            cni_tests::file_contains(&bin, name),
            "{} has no {name}: build it with `scripts/build.sh --profile dev --fault-injection` \
             (as scripts/test.sh does; `cargo test -p coordinator` relinks it without)",
            bin.display()
        );
    }
}

#[test]
fn a_panic_mid_add_is_undone_before_any_del() {
    require_fault_hooks();
    let (underlay, overlay) = sweep_cells();
    let runs = [
        (&underlay, 0, "pu0"),
        (&underlay, 1, "pu1"),
        (&overlay, 1, "po1"),
    ];
    let (failures, points) = run_sweeps(&runs, panic_sweep);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("panic points: {points:#?}");
    // Every sweep panicked at several points (MAC change, plan steps).
    assert!(
        points.len() == 3 && points.iter().all(|p| p.1 >= 5),
        "{points:?}"
    );
}

#[test]
fn kill_sweeps_leave_nothing_after_the_runtimes_del() {
    require_fault_hooks();
    let (underlay, overlay) = sweep_cells();
    let runs = [
        (&underlay, 0, "ku0"),
        (&underlay, 1, "ku1"),
        (&overlay, 0, "ko0"),
        (&overlay, 1, "ko1"),
    ];
    let (failures, points) = run_sweeps(&runs, kill_sweep);
    eprintln!("kill points (ADD, DEL): {points:#?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The sweeps did kill: every ADD and every DEL had kill points, but the
    // overlay pod's first NIC's DEL: its record holds only sysctls (written
    // back through /proc), so it sends no netlink request at all.
    assert_eq!(points.len(), 4, "{points:?}");
    assert!(
        points.iter().all(|(name, (add, del))| *add > 0
            && (*del > 0 || (name.starts_with("Ptp") && name.ends_with("eth0")))),
        "{points:?}"
    );
}

/// Two later NICs of one pod attached at once (Multus may run them in
/// parallel) never share a table: the coordinator takes a lock on the pod's
/// netns before it reads the pod (five pods, so an unlocked race shows).
#[test]
fn concurrent_adds_pick_distinct_tables() {
    let cell = cells()
        .into_iter()
        .find(|c| c.nics.len() == 3 && c.style == Style::DefaultEvery)
        .unwrap();
    let w = Worker::new();
    for round in 0..5 {
        let (pod, _earlier) = sweep_pod(&w, &cell, &format!("cc{round}"), 1);
        let cid = format!("ctr-{}", pod.name);
        std::thread::scope(|s| {
            for i in [1, 2] {
                let (w, cell, pod, cid) = (&w, &cell, &pod, &cid);
                s.spawn(move || {
                    let chain = w.lab.chain(conflist(w, cell, i, None)).cni_path(cni_path());
                    let att = Attachment::new(cid, &pod.path, &ifname(i));
                    chain
                        .add(&att)
                        .unwrap_or_else(|e| panic!("ADD {}: {e}", ifname(i)));
                });
            }
        });
        let rules = state::rules(&pod.name).unwrap();
        let mut tables: Vec<String> = rules
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["priority"] == 1000 && r["src"] != "all")
            .map(|r| format!("{} {}", r["src"], r["table"]))
            .collect();
        tables.sort();
        // eth0, net1, net2: three tables, each address's rule in its NIC's.
        let distinct: std::collections::BTreeSet<&str> =
            tables.iter().filter_map(|t| t.split(' ').nth(1)).collect();
        assert_eq!(distinct.len(), 3, "round {round}: {tables:#?}");
        w.lab.remove_netns(&pod.name).ok();
    }
}
