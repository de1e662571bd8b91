//! The datapath lab: two node netns joined by one veth wire, and a pod pair
//! (one pod on each node) per way of connecting pods:
//!
//! - `host`: node to node over the wire, the ceiling;
//! - `macvlan`: pods attached by our plugins (macvlan + coordinator-ipam +
//!   coordinator, underlay mode) on the wire;
//! - `routed`: a Calico-like routed veth pair: pod `/32`, default via
//!   169.254.1.1 on-link, proxy ARP on the host end, a route per remote pod
//!   subnet via the other node;
//! - `vxlan`: a Flannel-like VXLAN overlay: pods on a `cni0` bridge, a
//!   `flannel.1` VTEP (MTU 1450), a route, a neighbour and an FDB entry per
//!   remote node;
//! - `vxlan-mtu`: the same overlay with a pod MTU of 1500, above the VTEP's,
//!   for the failure mode (see [`super::mtu_blackhole`]).

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use cni::netns::sysctl_set;
use serde_json::Value;

use crate::bench::confs::{self, Ipam};
use crate::chain::{Attachment, Chain};
use crate::lab::{in_netns, state, Lab};

/// Node addresses on the wire (subnet 1 of the bench confs: `ens1`, 10.6/16).
const NODE_IP: [&str; 2] = ["10.6.0.2", "10.6.0.3"];
const CALI_MAC: &str = "ee:ee:ee:ee:ee:ee";
const VTEP_MAC: [&str; 2] = ["02:fa:00:00:00:01", "02:fa:00:00:00:02"];

/// One way of connecting the two sides: where the client runs, where the
/// server runs and the server's address.
#[derive(Clone, Debug)]
pub struct Path2 {
    pub name: &'static str,
    pub label: &'static str,
    pub client: String,
    pub server: String,
    pub server_ip: Ipv4Addr,
}

pub struct Topology {
    pub nodes: [String; 2],
    pub paths: Vec<Path2>,
    /// The `vxlan-mtu` pair (not among `paths`: it is not a speed row).
    pub mtu_pair: Path2,
}

pub fn build(lab: &Lab, bin_dir: &Path) -> io::Result<Topology> {
    let nodes = [lab.pod("dpn1")?.name, lab.pod("dpn2")?.name];
    state::ip(
        &nodes[0],
        &[
            "link", "add", "ens1", "type", "veth", "peer", "name", "ens1", "netns", &nodes[1],
        ],
    )?;
    for (k, n) in nodes.iter().enumerate() {
        state::ip_batch(
            n,
            &[
                format!("addr add {}/16 dev ens1", NODE_IP[k]),
                "link set ens1 up".into(),
            ],
        )?;
        in_netns(n, || sysctl_set("net.ipv4.ip_forward", "1"))?;
    }
    let host = Path2 {
        name: "host",
        label: "host to host (ceiling)",
        client: nodes[0].clone(),
        server: nodes[1].clone(),
        server_ip: ip(NODE_IP[1]),
    };
    let macvlan = macvlan_pair(lab, &nodes, bin_dir)?;
    let routed = routed_pair(lab, &nodes)?;
    vxlan_nodes(&nodes)?;
    let vxlan = vxlan_pair(lab, &nodes, "vx", 2, 1450)?;
    let mtu_pair = vxlan_pair(lab, &nodes, "vm", 3, 1500)?;
    Ok(Topology {
        nodes,
        paths: vec![host, macvlan, routed, vxlan],
        mtu_pair: Path2 {
            name: "vxlan-mtu",
            label: "VXLAN overlay, pod MTU 1500 over a 1450 VTEP",
            ..mtu_pair
        },
    })
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// Our plugins on each node, each node with its own coordinator-ipam store
/// and range; the server's address comes from its ADD result.
fn macvlan_pair(lab: &Lab, nodes: &[String; 2], bin_dir: &Path) -> io::Result<Path2> {
    let mut ends = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        let dir = lab.dir().join(format!("dp-ipam{k}"));
        let ipam = Ipam::Coordinator {
            v6: false,
            data_dir: dir.join("store").display().to_string(),
            quarantine: dir.join("quarantine.json").display().to_string(),
        };
        let third = 31 + k as u8;
        let mut list = confs::list(
            &format!("dp-macvlan{k}"),
            vec![
                confs::macvlan(1, third, &ipam),
                confs::coordinator(false, false),
            ],
        )?;
        lab.localize(&mut list);
        let chain = Chain::new(list)
            .node_netns(Some(n))
            .cni_path(vec!["/usr/lib/cni".into(), bin_dir.to_path_buf()])
            .cache_dir(dir.join("cache"));
        let pod = lab.pod(&format!("dpm{k}"))?;
        let out = chain
            .add(&Attachment::new(&format!("dp-m{k}"), &pod.path, "eth0"))
            .map_err(|e| io::Error::other(format!("datapath macvlan pod ADD: {e}")))?;
        let addr = out
            .result
            .as_ref()
            .and_then(first_ipv4)
            .ok_or_else(|| io::Error::other("datapath macvlan pod: no IPv4 in the result"))?;
        ends.push((pod.name, addr));
    }
    Ok(Path2 {
        name: "macvlan",
        label: "macvlan pods, our plugins (underlay)",
        client: ends[0].0.clone(),
        server: ends[1].0.clone(),
        server_ip: ends[1].1,
    })
}

fn first_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"].as_array()?.iter().find_map(|i| {
        let a = i["address"].as_str()?;
        a.split('/').next()?.parse().ok()
    })
}

/// Calico's layout: pod 10.245.<k+1>.1/32, default via 169.254.1.1 on-link,
/// host end `ee:ee:ee:ee:ee:ee` with proxy ARP and a /32 route; the other
/// node's pod block via that node's wire address. The pod's neighbour entry
/// for 169.254.1.1 is made permanent: proxy ARP answers only when the node
/// has a route to the address, and these nodes have no default route.
fn routed_pair(lab: &Lab, nodes: &[String; 2]) -> io::Result<Path2> {
    let mut pods = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        let pod = lab.pod(&format!("dpr{k}"))?;
        let me = format!("10.245.{}.1", k + 1);
        let other = format!("10.245.{}.0/24", 2 - k);
        state::ip_batch(
            n,
            &[
                format!(
                    "link add cali{k} address {CALI_MAC} type veth peer name eth0 netns {}",
                    pod.name
                ),
                format!("link set cali{k} up"),
                format!("route add {me}/32 dev cali{k}"),
                format!("route add {other} via {}", NODE_IP[1 - k]),
            ],
        )?;
        in_netns(n, || {
            sysctl_set(&format!("net/ipv4/conf/cali{k}/proxy_arp"), "1")
        })?;
        state::ip_batch(
            &pod.name,
            &[
                format!("addr add {me}/32 dev eth0"),
                "link set eth0 up".into(),
                "route add 169.254.1.1 dev eth0 scope link".into(),
                "route add default via 169.254.1.1 dev eth0".into(),
                format!("neigh add 169.254.1.1 lladdr {CALI_MAC} dev eth0 nud permanent"),
            ],
        )?;
        pods.push((pod.name, me));
    }
    Ok(Path2 {
        name: "routed",
        label: "routed veth pods (Calico-like)",
        client: pods[0].0.clone(),
        server: pods[1].0.clone(),
        server_ip: ip(&pods[1].1),
    })
}

/// Flannel's VXLAN backend on each node: `flannel.1` (VNI 1, port 8472,
/// MTU 1450) with 10.244.<k+1>.0/32, `cni0` bridge 10.244.<k+1>.1/24 for the
/// local pods; the other node's block via its VTEP address on-link, with a
/// permanent neighbour (VTEP MAC) and an FDB entry (VTEP MAC → node IP).
fn vxlan_nodes(nodes: &[String; 2]) -> io::Result<()> {
    for (k, n) in nodes.iter().enumerate() {
        let o = 1 - k;
        state::ip_batch(
            n,
            &[
                format!(
                    "link add flannel.1 address {} type vxlan id 1 local {} dev ens1 dstport 8472 nolearning",
                    VTEP_MAC[k], NODE_IP[k]
                ),
                format!("addr add 10.244.{}.0/32 dev flannel.1", k + 1),
                "link set flannel.1 up".into(),
                "link add cni0 type bridge".into(),
                format!("addr add 10.244.{}.1/24 dev cni0", k + 1),
                "link set cni0 up".into(),
                format!(
                    "route add 10.244.{}.0/24 via 10.244.{}.0 dev flannel.1 onlink",
                    o + 1,
                    o + 1
                ),
                format!(
                    "neigh add 10.244.{}.0 lladdr {} dev flannel.1 nud permanent",
                    o + 1,
                    VTEP_MAC[o]
                ),
            ],
        )?;
        let out = std::process::Command::new("bridge")
            .args(["-n", n, "fdb", "append", VTEP_MAC[o], "dev", "flannel.1"])
            .args(["dst", NODE_IP[o]])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "bridge fdb append in {n}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// A pod on each node's `cni0`: 10.244.<k+1>.<host>/24, default via cni0,
/// both veth ends at `mtu`.
fn vxlan_pair(lab: &Lab, nodes: &[String; 2], tag: &str, host: u8, mtu: u32) -> io::Result<Path2> {
    let mut pods = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        let pod = lab.pod(&format!("dp{tag}{k}"))?;
        let me = format!("10.244.{}.{host}", k + 1);
        let port = format!("{tag}{k}");
        state::ip_batch(
            n,
            &[
                format!(
                    "link add {port} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {}",
                    pod.name
                ),
                format!("link set {port} master cni0 up"),
            ],
        )?;
        state::ip_batch(
            &pod.name,
            &[
                format!("addr add {me}/24 dev eth0"),
                "link set eth0 up".into(),
                format!("route add default via 10.244.{}.1", k + 1),
            ],
        )?;
        pods.push((pod.name, me));
    }
    Ok(Path2 {
        name: "vxlan",
        label: "VXLAN overlay pods (Flannel-like)",
        client: pods[0].0.clone(),
        server: pods[1].0.clone(),
        server_ip: ip(&pods[1].1),
    })
}
