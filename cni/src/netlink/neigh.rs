//! Neighbour (ARP / NDP) entries.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::mac_of;
use super::{Family, Mac, Neighbour, Netlink, NlError, NlResult, NUD_PERMANENT};

impl Netlink {
    /// Neighbours of one family (of one link when `index` is set).
    pub fn neighbours(&self, family: Family, index: Option<u32>) -> NlResult<Vec<Neighbour>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = address_family(family);
        // Strict dumps take the link filter as NDA_IFINDEX, not in the header.
        if let Some(i) = index {
            msg.attributes.push(NeighbourAttribute::IfIndex(i));
        }
        let out = self.dump(RouteNetlinkMessage::GetNeighbour(msg))?;
        Ok(out
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => parse_neighbour(n),
                _ => None,
            })
            .filter(|n| index.is_none_or(|i| n.index == i))
            .collect())
    }

    /// One entry, by a non-dump RTM_GETNEIGH (kernel >= 5.0).
    pub fn neighbour(&self, index: u32, ip: IpAddr) -> NlResult<Option<Neighbour>> {
        let msg = neighbour_message(index, ip);
        match self.get(RouteNetlinkMessage::GetNeighbour(msg)) {
            Ok(RouteNetlinkMessage::NewNeighbour(n)) => Ok(parse_neighbour(n)),
            Ok(other) => Err(NlError::Io(format!(
                "unexpected reply to RTM_GETNEIGH: {other:?}"
            ))),
            Err(NlError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Add or replace a permanent entry.
    pub fn set_permanent_neighbour(&self, index: u32, ip: IpAddr, mac: Mac) -> NlResult<()> {
        let mut msg = neighbour_message(index, ip);
        msg.header.state = NeighbourState::from(NUD_PERMANENT);
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.ack(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `NotFound` when absent.
    pub fn del_neighbour(&self, index: u32, ip: IpAddr) -> NlResult<()> {
        self.ack(
            RouteNetlinkMessage::DelNeighbour(neighbour_message(index, ip)),
            0,
        )
    }
}

fn address_family(f: Family) -> AddressFamily {
    match f {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = address_family(Family::of(&ip));
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    msg
}

fn parse_neighbour(msg: NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    for attr in msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => ip = Some(IpAddr::V6(a)),
            NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(&l),
            _ => {}
        }
    }
    Some(Neighbour {
        index: msg.header.ifindex,
        ip: ip?,
        mac,
        state: msg.header.state.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_fields() {
        let mut msg = neighbour_message(5, "fd00::1".parse().unwrap());
        msg.header.state = NeighbourState::Reachable;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 1, 2, 3, 4, 5]));
        let n = parse_neighbour(msg).unwrap();
        assert_eq!(n.index, 5);
        assert_eq!(n.ip, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(n.mac, Some([2, 1, 2, 3, 4, 5]));
        assert_eq!(n.state, 0x02);
        assert!(parse_neighbour(NeighbourMessage::default()).is_none());
    }
}
