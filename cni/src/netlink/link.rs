//! Links: lookup, veth creation, attribute changes, moves between netns.

use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoIpVlan, InfoKind, InfoVeth, IpVlanMode, LinkAttribute, LinkExtentMask, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{IpvlanMode, Link, Mac, Netlink, NlError, NlResult, VethSpec};
use crate::netns::NetNs;

impl Netlink {
    /// The link called `name`, None when there is none.
    pub fn link(&self, name: &str) -> NlResult<Option<Link>> {
        // No such name can exist (IFNAMSIZ); the kernel would say EINVAL.
        if name.is_empty() || name.len() >= IFNAMSIZ {
            return Ok(None);
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(skip_stats());
        self.get_link(msg)
    }

    pub fn link_by_index(&self, index: u32) -> NlResult<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(skip_stats());
        self.get_link(msg)
    }

    pub fn links(&self) -> NlResult<Vec<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(skip_stats());
        let out = self.dump(RouteNetlinkMessage::GetLink(msg))?;
        Ok(out
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })
            .collect())
    }

    /// Create a veth pair. The peer is created directly inside
    /// `spec.peer_netns`, so it never shows up (or collides) in this netns.
    pub fn add_veth(&self, spec: &VethSpec) -> NlResult<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.clone()));
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = spec.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(ns) = spec.peer_netns {
            peer.attributes
                .push(LinkAttribute::NetNsFd(ns.file().as_raw_fd()));
        }
        // One queue each way, what the kernel cuts a veth down to anyway:
        // asked for at creation, it skips the cut and the two expedited RCU
        // grace periods (IPIs to every CPU) that cutting a live device costs.
        peer.attributes.push(LinkAttribute::NumTxQueues(1));
        peer.attributes.push(LinkAttribute::NumRxQueues(1));

        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.clone()));
        if let Some(mac) = spec.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::NumTxQueues(1));
        msg.attributes.push(LinkAttribute::NumRxQueues(1));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// NotFound when the link is gone.
    pub fn del_link(&self, index: u32) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(RouteNetlinkMessage::DelLink(msg), 0)
    }

    pub fn set_link_up(&self, index: u32) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(msg)
    }

    pub fn set_link_down(&self, index: u32) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(msg)
    }

    pub fn set_link_mtu(&self, index: u32, mtu: u32) -> NlResult<()> {
        self.set_link_attr(index, LinkAttribute::Mtu(mtu))
    }

    pub fn set_link_mac(&self, index: u32, mac: Mac) -> NlResult<()> {
        self.set_link_attr(index, LinkAttribute::Address(mac.to_vec()))
    }

    pub fn set_link_txqlen(&self, index: u32, qlen: u32) -> NlResult<()> {
        self.set_link_attr(index, LinkAttribute::TxQueueLen(qlen))
    }

    /// Move a link into another namespace (it keeps its name; `Exists` when
    /// the target already has a link of that name).
    pub fn move_link(&self, index: u32, ns: &NetNs) -> NlResult<()> {
        self.set_link_attr(index, LinkAttribute::NetNsFd(ns.file().as_raw_fd()))
    }

    fn set_link_attr(&self, index: u32, attr: LinkAttribute) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(attr);
        self.set_link(msg)
    }

    fn set_link(&self, msg: LinkMessage) -> NlResult<()> {
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    fn get_link(&self, msg: LinkMessage) -> NlResult<Option<Link>> {
        match self.get(RouteNetlinkMessage::GetLink(msg)) {
            Ok(RouteNetlinkMessage::NewLink(l)) => Ok(Some(parse_link(l))),
            Ok(other) => Err(NlError::Io(format!(
                "unexpected reply to RTM_GETLINK: {other:?}"
            ))),
            Err(NlError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

const IFNAMSIZ: usize = 16;

/// Counters are large and never used here; leaving them out halves the replies.
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

pub(super) fn mac_of(bytes: &[u8]) -> Option<Mac> {
    bytes.try_into().ok()
}

fn ipvlan_mode(m: IpVlanMode) -> IpvlanMode {
    match m {
        IpVlanMode::L2 => IpvlanMode::L2,
        IpVlanMode::L3 => IpvlanMode::L3,
        IpVlanMode::L3S => IpvlanMode::L3s,
        other => IpvlanMode::Other(u16::from(other)),
    }
}

fn parse_link(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        link: None,
        link_netnsid: None,
        txqlen: 0,
        ipvlan_mode: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) => link.mac = mac_of(&a),
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Link(l) => link.link = Some(l),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(id),
            LinkAttribute::TxQueueLen(q) => link.txqlen = q,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::IpVlan(data)) => {
                            link.ipvlan_mode = data.iter().find_map(|d| match d {
                                InfoIpVlan::Mode(m) => Some(ipvlan_mode(*m)),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_link_fields() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        msg.attributes = vec![
            LinkAttribute::IfName("veth0".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Mtu(1400),
            LinkAttribute::Link(3),
            LinkAttribute::LinkNetNsId(1),
            LinkAttribute::TxQueueLen(500),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let l = parse_link(msg);
        assert_eq!(
            l,
            Link {
                index: 7,
                name: "veth0".into(),
                kind: Some("veth".into()),
                mac: Some([2, 0, 0, 0, 0, 1]),
                mtu: 1400,
                up: true,
                link: Some(3),
                link_netnsid: Some(1),
                txqlen: 500,
                ipvlan_mode: None,
            }
        );
        let mut ipvlan = LinkMessage::default();
        ipvlan.attributes = vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::IpVlan),
            LinkInfo::Data(InfoData::IpVlan(vec![InfoIpVlan::Mode(IpVlanMode::L3S)])),
        ])];
        let l = parse_link(ipvlan);
        assert_eq!(l.ipvlan(), Some(IpvlanMode::L3s));
        assert!(l.ipvlan().unwrap().is_l3());
        // A hardware address that is not Ethernet (e.g. loopback's is, but
        // tunnels have 4 bytes) is not a MAC.
        assert_eq!(mac_of(&[1, 2, 3, 4]), None);
    }
}
