//! Interface addresses.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{AddrFlags, Address, Netlink, NlResult};

impl Netlink {
    /// All addresses (of one link when `index` is set; NotFound when that
    /// link does not exist).
    pub fn addresses(&self, index: Option<u32>) -> NlResult<Vec<Address>> {
        let mut msg = AddressMessage::default();
        // With strict checking the kernel filters on the header's index.
        msg.header.index = index.unwrap_or(0);
        let out = self.dump(RouteNetlinkMessage::GetAddress(msg))?;
        Ok(out
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_address(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    /// Add `addr` (with its prefix length) to link `index`; `nodad` skips
    /// IPv6 duplicate address detection. `Exists` when already present.
    pub fn add_address(&self, index: u32, addr: IpNet, nodad: bool) -> NlResult<()> {
        let mut msg = address_message(index, addr);
        msg.header.scope = match addr.addr() {
            IpAddr::V4(a) if a.is_loopback() => AddressScope::Host,
            _ => AddressScope::Universe,
        };
        if let IpNet::V4(net) = addr {
            // Like the reference plugins: a broadcast address unless /31, /32.
            if net.prefix_len() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(net.broadcast()));
            }
        }
        if nodad {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `NotFound` when absent.
    pub fn del_address(&self, index: u32, addr: IpNet) -> NlResult<()> {
        self.ack(
            RouteNetlinkMessage::DelAddress(address_message(index, addr)),
            0,
        )
    }
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match addr {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    if addr.addr().is_ipv4() {
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's
        // (the same on non point-to-point links).
        msg.attributes.push(AddressAttribute::Local(addr.addr()));
    }
    msg.attributes.push(AddressAttribute::Address(addr.addr()));
    msg
}

fn parse_address(msg: AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut flags = msg.header.flags.bits() as u32;
    let mut label = None;
    for attr in msg.attributes {
        match attr {
            AddressAttribute::Label(l) => label = Some(l),
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            // The header has only 8 bits of flags; IFA_FLAGS has them all.
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let addr = IpNet::new(ip, msg.header.prefix_len).ok()?;
    let has = |f: AddressFlags| flags & f.bits() != 0;
    Some(Address {
        index: msg.header.index,
        addr,
        flags: AddrFlags {
            tentative: has(AddressFlags::Tentative),
            dadfailed: has(AddressFlags::Dadfailed),
            nodad: has(AddressFlags::Nodad),
            permanent: has(AddressFlags::Permanent),
        },
        scope: msg.header.scope.into(),
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_prefers_local_and_flags_attr() {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 24;
        msg.header.index = 4;
        msg.header.scope = AddressScope::Link;
        msg.attributes = vec![
            AddressAttribute::Address("10.0.0.9".parse().unwrap()),
            AddressAttribute::Local("10.0.0.1".parse().unwrap()),
            AddressAttribute::Flags(AddressFlags::Nodad | AddressFlags::Permanent),
            AddressAttribute::Label("ens1:a".into()),
        ];
        let a = parse_address(msg).unwrap();
        assert_eq!(a.label.as_deref(), Some("ens1:a"));
        assert_eq!(a.addr, "10.0.0.1/24".parse::<IpNet>().unwrap());
        assert_eq!(a.index, 4);
        assert_eq!(a.scope, 253);
        assert_eq!(
            a.flags,
            AddrFlags {
                nodad: true,
                permanent: true,
                ..Default::default()
            }
        );

        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.prefix_len = 64;
        msg.header.flags = AddressHeaderFlags::Tentative;
        msg.attributes = vec![AddressAttribute::Address("fd00::1".parse().unwrap())];
        let a = parse_address(msg).unwrap();
        assert!(a.flags.tentative && !a.flags.dadfailed);

        // No address at all, or an impossible prefix: skipped, no panic.
        assert!(parse_address(AddressMessage::default()).is_none());
        let mut msg = AddressMessage::default();
        msg.header.prefix_len = 99;
        msg.attributes = vec![AddressAttribute::Address("10.0.0.1".parse().unwrap())];
        assert!(parse_address(msg).is_none());
    }
}
