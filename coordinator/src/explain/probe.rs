//! The kernel-facing half of `explain`: for each NIC × family × flow, ask the
//! pod's and the node's kernels how they would route the request and its
//! reply (RTM_GETROUTE with source, input interface and mark), then hand the
//! answers to [`verdict::decide`].

use std::net::IpAddr;

use cni::netlink::{
    Family, Link, Lookup, LookupQuery, Netlink, RouteKind, TABLE_LOCAL, TABLE_MAIN,
};
use cni::Result;
use ipnet::IpNet;

use super::verdict::{self, Facts, FlowKind, ReplyNic, Verdict};
use crate::config::Ids;
use crate::names::POD_VETH;
use crate::plan::{is_link_local, PodView, REPLY_MARK};

/// One explained flow.
#[derive(Debug, Clone)]
pub struct Flow {
    pub family: Family,
    pub facts: Facts,
    /// Gateway of the pod's own packet (the first reply; for `service` the
    /// request), when it is routed through one.
    pub reply_gateway: Option<IpAddr>,
    /// The pod table that routed that packet.
    pub pod_table: Option<u32>,
    pub verdict: Verdict,
}

/// Gateway and table of one route the pod's kernel picked.
#[derive(Debug, Clone, Copy, Default)]
struct Via {
    gateway: Option<IpAddr>,
    table: Option<u32>,
}

/// What was read once per run.
pub struct Pod<'a> {
    pub nl: &'a Netlink,
    pub view: PodView,
    /// The reply-mark nftables table of the coordinator is in the pod.
    pub nft_mark: bool,
}

pub struct Node<'a> {
    pub nl: &'a Netlink,
    pub links: Vec<Link>,
    /// The node defaults' ids (`hostRuleTable` as overridden on the command
    /// line); the pod's own rules name its reply table when they exist.
    pub ids: Ids,
    pub service_cidr: Vec<IpNet>,
}

/// A pod NIC and its global addresses.
#[derive(Debug, Clone)]
pub struct Nic {
    pub link: Link,
    pub addrs: Vec<IpNet>,
}

/// The NICs an attachment gave the pod: every interface with a global
/// address, except loopback and the coordinator's `veth0`.
pub fn nics(view: &PodView) -> Vec<Nic> {
    let mut links: Vec<&Link> = view
        .links
        .iter()
        .filter(|l| l.name != "lo" && l.name != POD_VETH)
        .collect();
    links.sort_by_key(|l| l.index);
    links
        .into_iter()
        .filter_map(|l| {
            let addrs: Vec<IpNet> = view
                .addrs_of(l.index)
                .into_iter()
                .filter(|a| !is_link_local(&a.addr()) && !a.addr().is_loopback())
                .collect();
            (!addrs.is_empty()).then(|| Nic {
                link: l.clone(),
                addrs,
            })
        })
        .collect()
}

/// The pod interface facing the node: `veth0` (underlay), else a first NIC
/// that is a veth whose peer lives in another netns (overlay).
pub fn host_iface<'v>(view: &'v PodView, first_nic: &str) -> Option<&'v Link> {
    view.link(POD_VETH).or_else(|| {
        view.link(first_nic)
            .filter(|l| l.kind.as_deref() == Some("veth") && l.link_netnsid.is_some())
    })
}

impl Pod<'_> {
    fn name(&self, index: u32) -> Option<String> {
        self.view
            .links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
    }

    fn index(&self, name: &str) -> Option<u32> {
        self.view.link(name).map(|l| l.index)
    }

    /// Does a packet from `src` arriving on `iif` get delivered to `dst`
    /// here? None when it does, else why not.
    fn refused(&self, dst: IpAddr, src: IpAddr, iif: &str) -> Result<Option<String>> {
        let Some(i) = self.index(iif) else {
            return Ok(Some(format!("{iif} is gone")));
        };
        Ok(
            match self
                .nl
                .lookup(&LookupQuery::to(dst).from(src).arriving_on(i))?
            {
                Lookup::Routed(r) if r.kind == RouteKind::Local => None,
                Lookup::Routed(r) => Some(format!(
                    "not delivered locally (routed on to {})",
                    r.oif.and_then(|o| self.name(o)).unwrap_or_default()
                )),
                Lookup::Unreachable => Some("no route".into()),
                Lookup::Dropped { why, .. } => Some(why),
            },
        )
    }

    /// Where the pod sends `q`: interface, gateway and the table that held
    /// the route.
    fn out(&self, q: LookupQuery) -> Result<(ReplyNic, Via)> {
        Ok(match self.nl.lookup(&q)? {
            Lookup::Routed(r) => (
                r.oif.and_then(|o| self.name(o)),
                Via {
                    gateway: r.gateway,
                    table: Some(r.table),
                },
            ),
            _ => (None, Via::default()),
        })
    }

    /// A `from <ip>` rule exists.
    fn has_from_rule(&self, ip: IpAddr) -> bool {
        self.view.rules.iter().any(|r| {
            r.src
                .is_some_and(|s| s.addr() == ip && s.prefix_len() == s.max_prefix_len())
        })
    }

    /// The pod's policy table (neither main nor local) with routes of `nic`.
    fn nic_table(&self, nic: u32, family: Family) -> Option<u32> {
        self.view
            .routes
            .iter()
            .filter(|r| r.family() == family && r.oif == Some(nic))
            .map(|r| r.table)
            .find(|t| *t != TABLE_MAIN && *t != TABLE_LOCAL)
    }

    /// Clients behind a gateway are reachable through `nic`: a route through
    /// a gateway on it, or a default in its table (a multipath one has no
    /// single oif).
    fn has_gateway(&self, nic: u32, family: Family) -> bool {
        let table = self.nic_table(nic, family);
        self.view.routes.iter().any(|r| {
            r.family() == family
                && ((r.oif == Some(nic) && r.gateway.is_some())
                    || (Some(r.table) == table && r.dst.prefix_len() == 0))
        })
    }

    /// The table the pod's reply-mark rule of `family` leads to.
    fn mark_table(&self, family: Family) -> Option<u32> {
        self.view
            .rules
            .iter()
            .find(|r| r.family == family && r.fwmark == Some(REPLY_MARK))
            .map(|r| r.table)
    }
}

impl Node<'_> {
    /// The node's route toward `q`: its output interface and source.
    fn route(&self, q: LookupQuery) -> Result<Option<(u32, Option<IpAddr>)>> {
        Ok(match self.nl.lookup(&q)? {
            Lookup::Routed(r) if r.kind == RouteKind::Unicast => r.oif.map(|o| (o, r.prefsrc)),
            _ => None,
        })
    }

    /// The pod interface at the other end of the node's veth `index`.
    fn pod_side(&self, pod: &Pod, index: u32) -> Option<String> {
        let host = self.links.iter().find(|l| l.index == index)?;
        if host.kind.as_deref() != Some("veth") {
            return None;
        }
        pod.view
            .links
            .iter()
            .find(|l| l.kind.as_deref() == Some("veth") && l.link == Some(index))
            .map(|l| l.name.clone())
    }
}

/// Every flow of every NIC and family.
pub fn explain(pod: &Pod, node: &Node, first_nic: &str) -> Result<Vec<Flow>> {
    let host = host_iface(&pod.view, first_nic).map(|l| l.name.clone());
    let local: Vec<IpNet> = nics(&pod.view)
        .iter()
        .flat_map(|n| n.addrs.iter().map(IpNet::trunc))
        .collect();
    let mut flows = Vec::new();
    for nic in nics(&pod.view) {
        for family in [Family::V4, Family::V6] {
            let Some(addr) = nic.addrs.iter().find(|a| Family::of_net(a) == family) else {
                continue;
            };
            let ctx = Ctx {
                pod,
                node,
                first: nic.link.name == first_nic,
                nic: &nic,
                family,
                addr: *addr,
                host: host.clone(),
                local: &local,
            };
            flows.extend(ctx.flows()?);
        }
    }
    Ok(flows)
}

struct Ctx<'a> {
    pod: &'a Pod<'a>,
    node: &'a Node<'a>,
    /// This is the pod's first NIC (its address is the pod IP).
    first: bool,
    nic: &'a Nic,
    family: Family,
    addr: IpNet,
    host: Option<String>,
    local: &'a [IpNet],
}

impl Ctx<'_> {
    fn ip(&self) -> IpAddr {
        self.addr.addr()
    }

    fn facts(&self, kind: FlowKind, peer: IpAddr) -> Facts {
        let idx = self.nic.link.index;
        let mark_table = self.pod.mark_table(self.family);
        Facts {
            kind,
            nic: self.nic.link.name.clone(),
            addr: self.ip(),
            peer,
            host_iface: self.host.clone(),
            request_nic: None,
            refused: None,
            replies: Vec::new(),
            nic_table: self.pod.nic_table(idx, self.family),
            from_rule: self.pod.has_from_rule(self.ip()),
            reply_mark: self.pod.nft_mark && mark_table.is_some(),
            reply_table: mark_table.unwrap_or(self.node.ids.reply_table),
            host_rule_table: self.node.ids.host_table,
            service_cidr: self.node.service_cidr.clone(),
        }
    }

    fn done(&self, facts: Facts, via: Via) -> Flow {
        let verdict = verdict::decide(&facts);
        Flow {
            family: self.family,
            facts,
            reply_gateway: via.gateway,
            pod_table: via.table,
            verdict,
        }
    }

    /// Requests through the node's veth are marked by the pod's nftables table.
    fn mark_for(&self, request_nic: &str) -> Option<u32> {
        (request_nic == POD_VETH && self.pod.nft_mark).then_some(REPLY_MARK)
    }

    fn flows(&self) -> Result<Vec<Flow>> {
        let mut out = Vec::new();
        let subnet = self.subnet_client();
        if let Some(c) = subnet {
            out.push(self.direct(FlowKind::Subnet, &[c])?);
        }
        let routed = verdict::routed_clients(self.family == Family::V6, self.local);
        if !routed.is_empty() {
            let flow = self.direct(FlowKind::Routed, &routed)?;
            // A NIC without a gateway of its own serves no routed clients,
            // unless some of the replies leave by it (a multipath nexthop).
            let name = Some(self.nic.link.name.clone());
            if self.pod.has_gateway(self.nic.link.index, self.family)
                || flow.facts.replies.contains(&name)
            {
                out.push(flow);
            }
        }
        out.extend(self.node_probe()?);
        out.extend(self.service()?);
        // NodePorts (and Services) lead to the pod IP, which is the first
        // NIC's address: a later NIC is never a NodePort backend.
        if let Some(c) = subnet.or(routed.first().copied()).filter(|_| self.first) {
            out.extend(self.nodeport(c)?);
        }
        Ok(out)
    }

    fn subnet_client(&self) -> Option<IpAddr> {
        let mut avoid = vec![self.ip()];
        avoid.extend(
            self.pod
                .view
                .routes
                .iter()
                .filter_map(|r| r.gateway)
                .filter(|g| self.addr.contains(g)),
        );
        verdict::subnet_client(&self.addr, &avoid)
    }

    /// A client reaching the NIC's address on the NIC itself (on-link or
    /// through its gateway): the reply must leave by the NIC.
    fn direct(&self, kind: FlowKind, clients: &[IpAddr]) -> Result<Flow> {
        let name = &self.nic.link.name;
        let mut f = self.facts(kind, clients[0]);
        f.request_nic = Some(name.clone());
        f.refused = self.pod.refused(self.ip(), clients[0], name)?;
        let mut first = Via::default();
        for (i, c) in clients.iter().enumerate() {
            let (nic, via) = self.pod.out(LookupQuery::to(*c).from(self.ip()))?;
            if i == 0 {
                first = via;
            }
            f.replies.push(nic);
        }
        Ok(self.done(f, first))
    }

    /// The node (kubelet) probing the NIC's address from its own address.
    fn node_probe(&self) -> Result<Option<Flow>> {
        let Some((oif, Some(node_ip))) = self.node.route(LookupQuery::to(self.ip()))? else {
            return Ok(None);
        };
        let mut f = self.facts(FlowKind::Node, node_ip);
        let via = self.enter_pod(&mut f, oif)?;
        Ok(Some(self.done(f, via)))
    }

    /// The pod calling a Service clusterIP: out through the node, and the
    /// (un-DNATed) reply back in through the same interface.
    fn service(&self) -> Result<Option<Flow>> {
        let Some(svc) = verdict::service_ip(&self.node.service_cidr, self.family == Family::V6)
        else {
            return Ok(None);
        };
        let mut f = self.facts(FlowKind::Service, svc);
        let (req, via) = self.pod.out(LookupQuery::to(svc).from(self.ip()))?;
        f.request_nic = req;
        let back = self.node.route(LookupQuery::to(self.ip()))?;
        let arrives = back.and_then(|(oif, _)| self.node.pod_side(self.pod, oif));
        if let Some(a) = &arrives {
            f.refused = self.pod.refused(self.ip(), svc, a)?;
        }
        f.replies.push(arrives);
        Ok(Some(self.done(f, via)))
    }

    /// A client's NodePort connection DNATed on the node to the NIC's
    /// address: forwarded by the node into the pod, reply back the same way.
    fn nodeport(&self, client: IpAddr) -> Result<Option<Flow>> {
        let Some((uplink, _)) = self.node.route(LookupQuery::to(client))? else {
            return Ok(None);
        };
        let mut f = self.facts(FlowKind::NodePort, client);
        let fwd = LookupQuery::to(self.ip()).from(client).arriving_on(uplink);
        let via = match self.node.route(fwd)? {
            Some((oif, _)) => self.enter_pod(&mut f, oif)?,
            None => Via::default(),
        };
        Ok(Some(self.done(f, via)))
    }

    /// A request the node sends out of its interface `oif`: where it enters
    /// the pod, whether the pod takes it, and where the reply goes (marked
    /// when it came through `veth0`). Returns the reply's route.
    fn enter_pod(&self, f: &mut Facts, oif: u32) -> Result<Via> {
        let Some(req) = self.node.pod_side(self.pod, oif) else {
            return Ok(Via::default());
        };
        f.refused = self.pod.refused(self.ip(), f.peer, &req)?;
        let mut q = LookupQuery::to(f.peer).from(self.ip());
        q.mark = self.mark_for(&req);
        let (nic, via) = self.pod.out(q)?;
        f.replies.push(nic);
        f.request_nic = Some(req);
        Ok(via)
    }
}
