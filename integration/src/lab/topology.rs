//! Wiring a lab: the node and fabric namespaces, their links and bridges,
//! outside clients on the fabric, and further nodes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;

use cni::netns::sysctl_set;

use super::{check_name, in_netns, state, Client, Lab, Node, NodeNic};
use crate::nsexec;

impl Lab {
    /// A machine on subnet `subnet`'s bridge: `eth0` with the given addresses
    /// and default routes via the subnet gateways.
    pub fn fabric_client(
        &self,
        subnet: u8,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    ) -> io::Result<Client> {
        let sn = self.subnet(subnet).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("no subnet {subnet}"))
        })?;
        let n = self.clients.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{}-cli{n}", self.prefix);
        self.add_netns(&ns)?;
        let port = format!("c{n}");
        state::ip_batch(
            &self.fabric,
            &[
                format!("link add {port} type veth peer name eth0 netns {ns}"),
                format!("link set {port} master {} up", sn.bridge),
            ],
        )?;
        let mut lines = Vec::new();
        if let (Some(a), Some(net), Some(gw)) = (v4, sn.v4, sn.gateway4) {
            lines.push(format!("addr add {a}/{} dev eth0", net.prefix_len()));
            lines.push("link set eth0 up".into());
            lines.push(format!("route add default via {gw}"));
        }
        if let (Some(a), Some(net), Some(gw)) = (v6, sn.v6, sn.gateway6) {
            lines.push(format!("addr add {a}/{} dev eth0 nodad", net.prefix_len()));
            lines.push("link set eth0 up".into());
            lines.push(format!("route add default via {gw}"));
        }
        lines.push("link set eth0 up".into());
        state::ip_batch(&ns, &lines)?;
        wait_up(&self.fabric, &[port])?;
        Ok(Client {
            path: nsexec::netns_path(&ns),
            name: ns,
            subnet,
            ipv4: v4,
            ipv6: v6,
        })
    }

    /// Another node on the same fabric (a second rack, say): netns
    /// `<prefix>-<name>` whose `ens<k>` is wired to subnet `subnets[k-1]`, with
    /// node address `.0.<2+n>` / `::<2+n>` (`n` counts extra nodes from 1, so
    /// never the main node's `.2`), forwarding on and default routes via the
    /// gateways of its first NIC's subnet, like the main node.
    pub fn extra_node(&self, name: &str, subnets: &[u8]) -> io::Result<Node> {
        check_name(name)?;
        if subnets.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an extra node needs at least one subnet",
            ));
        }
        let n = self.extra_nodes.fetch_add(1, Ordering::Relaxed) + 1;
        let host = u8::try_from(2 + n)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many extra nodes"))?;
        let ns = format!("{}-{name}", self.prefix);
        self.add_netns(&ns)?;
        in_netns(&ns, || {
            sysctl_set("net.ipv4.ip_forward", "1")?;
            sysctl_set("net.ipv6.conf.all.forwarding", "1")
        })?;
        let (mut node, mut fabric, mut ports, mut nics) = (vec![], vec![], vec![], vec![]);
        for (k, &index) in subnets.iter().enumerate() {
            let sn = self.subnet(index).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no subnet {index}"))
            })?;
            let nic = format!("ens{}", k + 1);
            let port = format!("x{n}n{index}");
            node.push(format!(
                "link add {nic} type veth peer name {port} netns {}",
                self.fabric
            ));
            fabric.push(format!("link set {port} master {} up", sn.bridge));
            let v4 = sn.host4(0, host);
            let v6 = sn.host6(u16::from(host));
            if let (Some(net), Some(a)) = (sn.v4, v4) {
                node.push(format!("addr add {a}/{} dev {nic}", net.prefix_len()));
            }
            if let (Some(net), Some(a)) = (sn.v6, v6) {
                node.push(format!("addr add {a}/{} dev {nic} nodad", net.prefix_len()));
            }
            node.push(format!("link set {nic} up"));
            if k == 0 {
                for gw in [sn.gateway4.map(IpAddr::from), sn.gateway6.map(IpAddr::from)]
                    .into_iter()
                    .flatten()
                {
                    node.push(format!("route add default via {gw}"));
                }
            }
            ports.push(port);
            nics.push(NodeNic {
                name: nic,
                subnet: index,
                ipv4: v4,
                ipv6: v6,
            });
        }
        // Route lines need the NICs up with their addresses: node lines go in order.
        state::ip_batch(&ns, &node)?;
        state::ip_batch(&self.fabric, &fabric)?;
        wait_up(&self.fabric, &ports)?;
        Ok(Node {
            path: nsexec::netns_path(&ns),
            name: ns,
            nics,
        })
    }

    pub(super) fn setup(&self) -> io::Result<()> {
        self.add_netns(&self.node)?;
        self.add_netns(&self.fabric)?;
        in_netns(&self.node, || {
            sysctl_set("net.ipv4.ip_forward", "1")?;
            sysctl_set("net.ipv6.conf.all.forwarding", "1")
        })?;
        in_netns(&self.fabric, || {
            sysctl_set("net.ipv4.ip_forward", "1")?;
            sysctl_set("net.ipv6.conf.all.forwarding", "1")?;
            sysctl_set("net.ipv4.conf.all.rp_filter", "1")?;
            sysctl_set("net.ipv4.conf.default.rp_filter", "1")
        })?;
        let mut node = Vec::new();
        let mut fabric = Vec::new();
        let mut ready = Vec::new();
        for s in &self.subnets {
            let (p, b) = (&s.parent, &s.bridge);
            fabric.push(format!(
                "link add {b} type bridge forward_delay 0 mcast_snooping 0"
            ));
            for port in uplink_lines(s, &self.fabric, &mut node, &mut fabric) {
                fabric.push(format!("link set {port} master {b} up"));
                ready.push(port);
            }
            fabric.push(format!("link set {b} up"));
            if let (Some(net), Some(gw), Some(me)) = (s.v4, s.gateway4, s.node4) {
                fabric.push(format!("addr add {gw}/{} dev {b}", net.prefix_len()));
                node.push(format!("addr add {me}/{} dev {p}", net.prefix_len()));
            }
            if let (Some(net), Some(gw), Some(me)) = (s.v6, s.gateway6, s.node6) {
                fabric.push(format!("addr add {gw}/{} dev {b} nodad", net.prefix_len()));
                node.push(format!("addr add {me}/{} dev {p} nodad", net.prefix_len()));
            }
            node.push(format!("link set {p} up"));
        }
        if let Some(first) = self.subnets.first() {
            if let Some(gw) = first.gateway4 {
                node.push(format!("route add default via {gw}"));
            }
            if let Some(gw) = first.gateway6 {
                node.push(format!("route add default via {gw}"));
            }
        }
        state::ip_batch(&self.node, &node)?;
        state::ip_batch(&self.fabric, &fabric)?;
        let bridges: Vec<String> = self.subnets.iter().map(|s| s.bridge.clone()).collect();
        ready.extend(bridges.iter().cloned());
        in_netns(&self.fabric, move || {
            for b in &bridges {
                sysctl_set(&format!("net/ipv4/conf/{b}/rp_filter"), "1")?;
            }
            Ok(())
        })?;
        wait_up(&self.fabric, &ready)
    }
}

/// Adds to `node` and `fabric` the `ip` lines that build subnet `s`'s uplink
/// up to its parent link (not yet up, no address) and returns the fabric
/// links to put on the subnet's bridge. The node end of a veth is `ens<i>`
/// (`ens<i>a`/`b` under a bond), the fabric end `n<i>` (`n<i>a`/`b`); a VLAN
/// is matched on the fabric side by the same VLAN on each end.
fn uplink_lines(
    s: &super::Subnet,
    fabric_ns: &str,
    node: &mut Vec<String>,
    fabric: &mut Vec<String>,
) -> Vec<String> {
    use super::Uplink;
    let i = s.index;
    let veth = |node: &mut Vec<String>, n: &str, f: &str| {
        node.push(format!(
            "link add {n} type veth peer name {f} netns {fabric_ns}"
        ));
    };
    let vlan = |lines: &mut Vec<String>, lower: &str, vid: u16| -> String {
        let name = format!("{lower}.{vid}");
        lines.push(format!(
            "link add link {lower} name {name} type vlan id {vid}"
        ));
        lines.push(format!("link set {lower} up"));
        name
    };
    match s.uplink {
        Uplink::Veth => {
            veth(node, &s.parent, &format!("n{i}"));
            vec![format!("n{i}")]
        }
        Uplink::Vlan(vid) => {
            let (n, f) = (format!("ens{i}"), format!("n{i}"));
            veth(node, &n, &f);
            vlan(node, &n, vid);
            vec![vlan(fabric, &f, vid)]
        }
        Uplink::Bond | Uplink::BondVlan(_) => {
            let bond = format!("bond{i}");
            // miimon: the bond picks its active port by carrier, as on a node.
            node.push(format!(
                "link add {bond} type bond mode active-backup miimon 50"
            ));
            let mut ports = Vec::new();
            for leg in ["a", "b"] {
                let (n, f) = (format!("ens{i}{leg}"), format!("n{i}{leg}"));
                veth(node, &n, &f);
                node.push(format!("link set {n} master {bond}"));
                ports.push(f);
            }
            match s.uplink {
                Uplink::BondVlan(vid) => {
                    vlan(node, &bond, vid);
                    ports.iter().map(|f| vlan(fabric, f, vid)).collect()
                }
                _ => ports,
            }
        }
    }
}

/// Wait until every link in `names` has carrier (operstate UP) in `ns`. The
/// kernel reports carrier through linkwatch, which may batch events for up to
/// a second; until then a bridge port does not forward, and the first frames
/// of a test (an ARP probe, a DAD probe) would be lost.
fn wait_up(ns: &str, names: &[String]) -> io::Result<()> {
    let deadline = std::time::Instant::now() + super::slow(std::time::Duration::from_secs(5));
    loop {
        let links = state::links(ns)?;
        let up = |name: &String| {
            links
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["ifname"] == name.as_str() && l["operstate"] == "UP")
        };
        if names.iter().all(up) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "links {names:?} in {ns} have no carrier after {:?}",
                super::slow(std::time::Duration::from_secs(5))
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
