//! The node-size fixture: a node that already hosts many pods, i.e. one /32
//! route and one neighbour per pod in the coordinator's host table, on a
//! veth inside the node netns (no dummy links on this kernel). And the
//! packet filter every Kubernetes node runs.

use std::io;

use super::confs::HOST_RULE_TABLE;
use super::NodeFill;
use crate::lab::{state, Lab};

pub fn fill(lab: &Lab, pods: usize) -> io::Result<NodeFill> {
    let (dev, peer) = ("bnsz0", "bnsz1");
    let mut lines = vec![
        format!("link add {dev} type veth peer name {peer}"),
        format!("link set {peer} up"),
        format!("link set {dev} up"),
    ];
    for i in 0..pods {
        // 10.99.0.1 .. 10.99.250.250: outside every lab subnet.
        let ip = format!("10.99.{}.{}", i / 250, i % 250 + 1);
        let mac = format!("02:00:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff);
        lines.push(format!(
            "route add {ip}/32 dev {dev} table {HOST_RULE_TABLE}"
        ));
        lines.push(format!(
            "neigh add {ip} lladdr {mac} dev {dev} nud permanent"
        ));
    }
    state::ip_batch(lab.node(), &lines)?;
    let routes = state::ip(
        lab.node(),
        &["-4", "route", "show", "table", &HOST_RULE_TABLE.to_string()],
    )?
    .lines()
    .count();
    let neighbours = state::ip(lab.node(), &["-4", "neigh", "show", "dev", dev])?
        .lines()
        .count();
    if routes < pods || neighbours < pods {
        return Err(io::Error::other(format!(
            "node fill: {routes} routes, {neighbours} neighbours, wanted {pods}"
        )));
    }
    Ok(NodeFill {
        routes,
        neighbours,
        table: HOST_RULE_TABLE,
    })
}

/// What kube-proxy (iptables or nftables mode) or any CNI's policy engine
/// leaves on a real node: conntrack and filter chains on the prerouting and
/// output hooks of both families. The kernel's netfilter hook switches are
/// global static keys: on a node without any hook, the pod table each ADD
/// creates flips them on (code patching with IPIs to every CPU) and its DEL
/// off again, a cost no real node has (and whose size depended on what else
/// this shared machine ran). Accept-only: no packet is changed.
pub fn packet_filter(lab: &Lab) -> io::Result<()> {
    lab.nft(
        "table inet bench_node_filter {\n\
         chain prerouting { type filter hook prerouting priority 0; ct state new accept; }\n\
         chain input { type filter hook input priority 0; ct state new accept; }\n\
         chain output { type route hook output priority 0; ct state new accept; }\n\
         chain postrouting { type filter hook postrouting priority 0; accept; }\n\
         }\n",
    )
}
