//! A node-local network lab in namespaces (see shared/design/testing.md):
//!
//! ```text
//!  pod netns ──macvlan on ens1──┐
//!                        node netns: ens1 10.6.0.2/16 ─veth─ n1 ┐ fabric netns:
//!                                    ens2 10.7.0.2/16 ─veth─ n2 ┤  br1 10.6.0.1/16 (+ clients)
//!                                                               └  br2 10.7.0.1/16 ...
//! ```
//!
//! Every name starts with a per-lab prefix `cl-<pid>x<n><rand>-`, so labs of
//! parallel tests never meet, and a crashed run is swept with
//! [`sweep`]`(`[`PREFIX`]`)`. All links live inside lab namespaces: removing
//! the namespaces removes every link, and the root netns is never touched.

mod cleanup;
mod netns;
pub mod state;
mod topology;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cni::netns::NetNs;
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;

pub use cleanup::{
    install_signal_handler, list_netns, process_prefix, remove_netns, sweep, NETNS_DIR, PREFIX,
};
pub use netns::Netns;
pub use state::{addrs, ip, links, neighbours, routes, rules};

use crate::chain::{Chain, NetConfList};
use crate::nsexec::{self, Enter};

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// How the node's uplink to one subnet is built: the link that carries the
/// node's address there and that macvlan/ipvlan use as their parent.
/// Everything but `Veth` needs a kernel with `8021q` / `bonding` (a
/// distribution kernel: see scripts/kernel-lab.sh).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Uplink {
    /// `ens<i>`: one veth to the fabric bridge.
    #[default]
    Veth,
    /// `ens<i>.<vid>`: a VLAN on the veth; the fabric bridges the tagged
    /// VLAN of its end, so only tagged frames reach the subnet.
    Vlan(u16),
    /// `bond<i>`: an active-backup bond of two veths (`ens<i>a`, `ens<i>b`),
    /// both ends ports of the fabric bridge.
    Bond,
    /// `bond<i>.<vid>`: a VLAN over that bond.
    BondVlan(u16),
}

/// Options of a lab.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    subnets: usize,
    ipv4: bool,
    ipv6: bool,
    uplinks: Vec<Uplink>,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            subnets: 1,
            ipv4: true,
            ipv6: true,
            uplinks: Vec::new(),
        }
    }
}

impl LabBuilder {
    /// Number of underlay subnets (1..=9): subnet `i` is 10.(5+i).0.0/16 and
    /// fd00:(5+i)::/64, gateway `.1`/`::1` on the fabric, node `.2`/`::2` on `ens<i>`.
    pub fn subnets(mut self, n: usize) -> Self {
        self.subnets = n;
        self
    }

    pub fn ipv4(mut self, on: bool) -> Self {
        self.ipv4 = on;
        self
    }

    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// The uplink of subnet `i` is `uplinks[i-1]` (`Veth` past the end).
    pub fn uplinks(mut self, uplinks: &[Uplink]) -> Self {
        self.uplinks = uplinks.to_vec();
        self
    }

    pub fn build(self) -> io::Result<Lab> {
        if !(1..=9).contains(&self.subnets) || !(self.ipv4 || self.ipv6) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a lab needs 1..=9 subnets and at least one family",
            ));
        }
        require_root()?;
        install_signal_handler();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{}{n}{}", process_prefix(), random_hex());
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let subnets = (1..=self.subnets)
            .map(|i| {
                let uplink = self.uplinks.get(i - 1).copied().unwrap_or_default();
                Subnet::new(i as u8, self.ipv4, self.ipv6, uplink)
            })
            .collect();
        let lab = Lab {
            node: format!("{prefix}-node"),
            fabric: format!("{prefix}-fab"),
            prefix,
            subnets,
            dir,
            namespaces: Mutex::new(Vec::new()),
            removed: Mutex::new(Vec::new()),
            clients: AtomicUsize::new(0),
            extra_nodes: AtomicUsize::new(0),
        };
        // From here on a failure drops `lab`, which removes what was made.
        lab.setup()?;
        Ok(lab)
    }
}

/// One underlay subnet: a bridge in the fabric, a parent NIC in the node.
#[derive(Clone, Debug)]
pub struct Subnet {
    /// 1-based.
    pub index: u8,
    /// The node's NIC on this subnet (macvlan parent): `ens<index>`, or the
    /// VLAN / bond of [`Uplink`].
    pub parent: String,
    pub uplink: Uplink,
    /// The fabric bridge: `br<index>`.
    pub bridge: String,
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub node4: Option<Ipv4Addr>,
    pub node6: Option<Ipv6Addr>,
}

impl Subnet {
    fn new(index: u8, ipv4: bool, ipv6: bool, uplink: Uplink) -> Subnet {
        let octet = 5 + index;
        let v4 = ipv4
            .then(|| Ipv4Net::new(Ipv4Addr::new(10, octet, 0, 0), 16).ok())
            .flatten();
        let v6 = ipv6
            .then(|| Ipv6Net::new(Ipv6Addr::new(0xfd00, octet as u16, 0, 0, 0, 0, 0, 0), 64).ok())
            .flatten();
        Subnet {
            index,
            parent: match uplink {
                Uplink::Veth => format!("ens{index}"),
                Uplink::Vlan(vid) => format!("ens{index}.{vid}"),
                Uplink::Bond => format!("bond{index}"),
                Uplink::BondVlan(vid) => format!("bond{index}.{vid}"),
            },
            uplink,
            bridge: format!("br{index}"),
            gateway4: v4.map(|_| Ipv4Addr::new(10, octet, 0, 1)),
            gateway6: v6.map(|_| Ipv6Addr::new(0xfd00, octet as u16, 0, 0, 0, 0, 0, 1)),
            node4: v4.map(|_| Ipv4Addr::new(10, octet, 0, 2)),
            node6: v6.map(|_| Ipv6Addr::new(0xfd00, octet as u16, 0, 0, 0, 0, 0, 2)),
            v4,
            v6,
        }
    }

    /// Address `host` of the IPv4 subnet (e.g. `host(1, 50)` = 10.6.1.50).
    pub fn host4(&self, third: u8, fourth: u8) -> Option<Ipv4Addr> {
        let o = self.v4?.addr().octets();
        Some(Ipv4Addr::new(o[0], o[1], third, fourth))
    }

    /// Address `::<low>` of the IPv6 subnet (`host6(0x100)` = fd00:6::100).
    pub fn host6(&self, low: u16) -> Option<Ipv6Addr> {
        let s = self.v6?.addr().segments();
        Some(Ipv6Addr::new(s[0], s[1], 0, 0, 0, 0, 0, low))
    }
}

/// A pod netns made by [`Lab::pod`].
#[derive(Clone, Debug)]
pub struct Pod {
    /// Netns name (also accepted by [`crate::traffic`] and [`state`]).
    pub name: String,
    /// `/var/run/netns/<name>`: the `CNI_NETNS` of the pod.
    pub path: PathBuf,
}

/// An outside machine on a fabric subnet, made by [`Lab::fabric_client`].
#[derive(Clone, Debug)]
pub struct Client {
    pub name: String,
    pub path: PathBuf,
    pub subnet: u8,
    /// Its NIC (`eth0`) addresses.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// A running lab. Dropping it removes every namespace (and so every link) it
/// made, and its state directory.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    node: String,
    fabric: String,
    subnets: Vec<Subnet>,
    dir: PathBuf,
    namespaces: Mutex<Vec<String>>,
    /// Namespaces removed early: their coordinator records go at drop.
    removed: Mutex<Vec<String>>,
    clients: AtomicUsize,
    extra_nodes: AtomicUsize,
}

/// A further node made by [`Lab::extra_node`]: its own netns whose NICs
/// `ens1`, `ens2`, ... are wired to the fabric subnets it was given.
#[derive(Clone, Debug)]
pub struct Node {
    /// Netns name.
    pub name: String,
    pub path: PathBuf,
    /// Its NICs in order.
    pub nics: Vec<NodeNic>,
}

/// One NIC of an extra node.
#[derive(Clone, Debug)]
pub struct NodeNic {
    /// `ens<k>`, counted from 1 on this node (not the subnet index).
    pub name: String,
    pub subnet: u8,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl Node {
    /// A chain runner that execs plugins inside this node.
    pub fn chain(&self, list: NetConfList) -> Chain {
        Chain::new(list).node_netns(Some(&self.name))
    }
}

impl Lab {
    /// One subnet, dual-stack.
    pub fn new() -> io::Result<Lab> {
        LabBuilder::default().build()
    }

    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The common prefix of all this lab's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Node netns name.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn node_path(&self) -> PathBuf {
        nsexec::netns_path(&self.node)
    }

    /// Fabric netns name.
    pub fn fabric(&self) -> &str {
        &self.fabric
    }

    pub fn subnets(&self) -> &[Subnet] {
        &self.subnets
    }

    /// Subnet by 1-based index.
    pub fn subnet(&self, index: u8) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.index == index)
    }

    /// A scratch directory removed with the lab (IPAM state, result cache).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Namespaces made so far (names).
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default()
    }

    /// A new pod netns `<prefix>-pod-<name>` with `lo` up and DAD off.
    pub fn pod(&self, name: &str) -> io::Result<Pod> {
        check_name(name)?;
        let ns = format!("{}-pod-{name}", self.prefix);
        self.add_netns(&ns)?;
        Ok(Pod {
            path: nsexec::netns_path(&ns),
            name: ns,
        })
    }

    /// A Service: DNAT `cluster` → `backend` in the node netns, for traffic
    /// routed through the node (prerouting) and from the node itself (output).
    pub fn node_service(&self, cluster: SocketAddr, backend: SocketAddr) -> io::Result<()> {
        let (family, match_kw, target) = match (cluster.ip(), backend.ip()) {
            (IpAddr::V4(_), IpAddr::V4(b)) => ("ip", "ip", format!("{b}:{}", backend.port())),
            (IpAddr::V6(_), IpAddr::V6(b)) => ("ip6", "ip6", format!("[{b}]:{}", backend.port())),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "cluster and backend must be of one family",
                ))
            }
        };
        let m = format!(
            "{match_kw} daddr {} tcp dport {} dnat to {target}",
            cluster.ip(),
            cluster.port()
        );
        let script = format!(
            "table {family} lab_svc {{\n\
             chain prerouting {{ type nat hook prerouting priority -100; }}\n\
             chain output {{ type nat hook output priority -100; }}\n\
             }}\n\
             add rule {family} lab_svc prerouting {m}\n\
             add rule {family} lab_svc output {m}\n"
        );
        self.nft(&script)
    }

    /// Masquerade DNATed Service traffic leaving the node (kube-proxy's
    /// `--masquerade-all`), so backend replies come back through the node.
    pub fn node_service_masquerade(&self) -> io::Result<()> {
        let mut script = String::new();
        for family in ["ip", "ip6"] {
            script.push_str(&format!(
                "table {family} lab_svc {{\n\
                 chain postrouting {{ type nat hook postrouting priority 100; ct status dnat masquerade; }}\n\
                 }}\n"
            ));
        }
        self.nft(&script)
    }

    /// Run an nft script in the node netns.
    pub fn nft(&self, script: &str) -> io::Result<()> {
        nft_in(&self.node, script).map(drop)
    }

    /// A chain runner for `list` that execs plugins inside this lab's node.
    pub fn chain(&self, list: NetConfList) -> Chain {
        Chain::new(list).node_netns(Some(&self.node))
    }

    /// Point plugin state that would land on the machine (host-local's
    /// `dataDir` under `/var/lib/cni`, the coordinator's log file) at this
    /// lab's directory, so parallel labs never share or leave behind records.
    pub fn localize(&self, list: &mut NetConfList) {
        let dir = self.dir.join("host-local");
        for p in &mut list.plugins {
            // Our plugins log to /var/log by default; keep a lab's logs with the lab.
            if p.get("type").and_then(Value::as_str) == Some("coordinator")
                && p.get("logOptions").is_none()
            {
                let file = self.dir.join("coordinator.log").display().to_string();
                p.insert("logOptions".into(), serde_json::json!({ "logFile": file }));
            }
            if let Some(Value::Object(ipam)) = p.get_mut("ipam") {
                if ipam.get("type").and_then(Value::as_str) == Some("host-local") {
                    ipam.insert("dataDir".into(), dir.display().to_string().into());
                }
            }
        }
    }

    /// host-local's data directory for network `name` after [`localize`](Self::localize).
    pub fn host_local_dir(&self, network: &str) -> PathBuf {
        self.dir.join("host-local").join(network)
    }

    /// Remove one of this lab's namespaces early (a pod, a client).
    pub fn remove_netns(&self, name: &str) -> io::Result<()> {
        remove_netns(name)?;
        if let Ok(mut n) = self.namespaces.lock() {
            n.retain(|x| x != name);
        }
        if let Ok(mut r) = self.removed.lock() {
            r.push(name.to_string());
        }
        Ok(())
    }

    /// A lab netns ([`netns::create`]), recorded for clean-up first.
    fn add_netns(&self, name: &str) -> io::Result<()> {
        if let Ok(mut n) = self.namespaces.lock() {
            n.push(name.to_string());
        }
        netns::create(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names = self.namespaces();
        let mut gone = names.clone();
        if let Ok(r) = self.removed.lock() {
            gone.extend(r.iter().cloned());
        }
        cleanup::remove_records_of(&gone);
        // Pods and clients first, then fabric and node.
        for n in names.iter().rev() {
            if let Err(e) = remove_netns(n) {
                eprintln!("lab clean-up: netns {n}: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run an nft script (test-side fixture) inside netns `ns`; its stdout.
pub fn nft_in(ns: &str, script: &str) -> io::Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = nsexec::command_in(ns, "nft", Enter::NetOnly)?;
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `t` stretched for where execs are slow: inside a kernel-lab guest (QEMU
/// TCG, `LAB_KERNEL` set by scripts/kernel-lab.sh) an exec costs ~20x the
/// host's, so every wait that covers execs or packet round trips gets 20x.
pub fn slow(t: std::time::Duration) -> std::time::Duration {
    match std::env::var_os("LAB_KERNEL") {
        Some(_) => t * 20,
        None => t,
    }
}

/// Run `f` on a thread inside netns `ns` (name or path).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    NetNs::open(nsexec::netns_path(ns))?.run(f)?
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty()
        || name.len() > 40
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pod name {name:?}: use 1-40 of [A-Za-z0-9-]"),
        ));
    }
    Ok(())
}

fn require_root() -> io::Result<()> {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the netns lab needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)",
        ));
    }
    Ok(())
}

fn random_hex() -> String {
    let mut b = [0u8; 2];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        b = [(t >> 8) as u8, t as u8];
    }
    format!("{:02x}{:02x}", b[0], b[1])
}
