//! ARP frames: RFC 5227 probes, plain requests, gratuitous ARP, and parsing
//! of what comes back.

use std::net::Ipv4Addr;

use pnet_base::MacAddr;
use pnet_packet::arp::{
    ArpHardwareTypes, ArpOperation, ArpOperations, ArpPacket, MutableArpPacket,
};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::Packet;

const ETH_LEN: usize = 14;
const ARP_LEN: usize = 28;
const BROADCAST: [u8; 6] = [0xff; 6];

fn mac(m: [u8; 6]) -> MacAddr {
    MacAddr::new(m[0], m[1], m[2], m[3], m[4], m[5])
}

/// A broadcast ARP request from `ours`.
fn request(ours: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; ETH_LEN + ARP_LEN];
    let mut eth = MutableEthernetPacket::new(&mut buf)?;
    eth.set_destination(mac(BROADCAST));
    eth.set_source(mac(ours));
    eth.set_ethertype(EtherTypes::Arp);
    let mut arp = MutableArpPacket::new(&mut buf[ETH_LEN..])?;
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(ArpOperations::Request);
    arp.set_sender_hw_addr(mac(ours));
    arp.set_sender_proto_addr(sender);
    arp.set_target_hw_addr(MacAddr::zero());
    arp.set_target_proto_addr(target);
    Some(buf)
}

/// RFC 5227 probe: "who has `target`", sender IP 0.0.0.0 so no neighbour
/// cache learns an address we may not own.
pub fn probe(ours: [u8; 6], target: Ipv4Addr) -> Option<Vec<u8>> {
    request(ours, Ipv4Addr::UNSPECIFIED, target)
}

/// Ordinary request from the pod's address, used to see whether a gateway answers.
pub fn ask(ours: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Option<Vec<u8>> {
    request(ours, sender, target)
}

/// Gratuitous ARP (a request with sender = target = `ip`): peers update their cache.
pub fn gratuitous(ours: [u8; 6], ip: Ipv4Addr) -> Option<Vec<u8>> {
    request(ours, ip, ip)
}

/// The fields of an Ethernet/IPv4 ARP frame that detection looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub operation: ArpOperation,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

impl Arp {
    /// Another host's RFC 5227 probe.
    pub fn is_probe(&self) -> bool {
        self.operation == ArpOperations::Request && self.sender_ip.is_unspecified()
    }
}

/// Parse an Ethernet frame; `None` for anything that is not a well-formed
/// Ethernet/IPv4 ARP request or reply.
pub fn parse(frame: &[u8]) -> Option<Arp> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
        || arp.get_hw_addr_len() != 6
        || arp.get_proto_addr_len() != 4
    {
        return None;
    }
    let op = arp.get_operation();
    if op != ArpOperations::Request && op != ArpOperations::Reply {
        return None;
    }
    Some(Arp {
        operation: op,
        sender_mac: arp.get_sender_hw_addr().octets(),
        sender_ip: arp.get_sender_proto_addr(),
        target_ip: arp.get_target_proto_addr(),
    })
}

/// One gratuitous ARP request (sender = target = the address) per address,
/// from `mac`, through the packet socket `sock`.
pub fn send_gratuitous(
    sock: &super::socket::PacketSocket,
    mac: [u8; 6],
    addrs: &[Ipv4Addr],
) -> cni::Result<()> {
    let ifindex = sock.ifindex();
    for a in addrs {
        let frame = gratuitous(mac, *a).ok_or_else(|| {
            cni::Error::plugin(
                cni::error::code::KERNEL,
                format!("cannot build announcement for {a}"),
            )
        })?;
        sock.send(&frame)
            .map_err(|e| cni::Error::kernel(format!("announce {a} on ifindex {ifindex}"), e))?;
        tracing::debug!(%a, ifindex, "gratuitous ARP sent");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OURS: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn probe_round_trip() {
        let t = Ipv4Addr::new(10, 6, 0, 5);
        let f = probe(OURS, t).unwrap();
        assert_eq!(&f[..6], &BROADCAST);
        assert_eq!(&f[6..12], &OURS);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        let a = parse(&f).unwrap();
        assert!(a.is_probe());
        assert_eq!(a.sender_mac, OURS);
        assert_eq!(a.target_ip, t);
    }

    #[test]
    fn gratuitous_has_sender_equal_target() {
        let ip = Ipv4Addr::new(10, 6, 0, 9);
        let a = parse(&gratuitous(OURS, ip).unwrap()).unwrap();
        assert_eq!((a.sender_ip, a.target_ip), (ip, ip));
        assert_eq!(a.operation, ArpOperations::Request);
        assert!(!a.is_probe());
    }

    #[test]
    fn rejects_other_protocols_and_short_frames() {
        let mut f = probe(OURS, Ipv4Addr::new(1, 2, 3, 4)).unwrap();
        assert!(parse(&f[..30]).is_none());
        f[12] = 0x86;
        f[13] = 0xdd;
        assert!(parse(&f).is_none());
        let mut g = probe(OURS, Ipv4Addr::new(1, 2, 3, 4)).unwrap();
        g[ETH_LEN + 7] = 9; // operation 9
        assert!(parse(&g).is_none());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes);
        }
    }
}
