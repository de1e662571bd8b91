//! IPv6 neighbour discovery frames (RFC 4861/4862): DAD probes, solicitations,
//! unsolicited advertisements, and parsing of what comes back.
//!
//! NDP options are read by hand: pnet's option iterator multiplies the
//! 8-bit length field in `u8` and panics on lengths above 31.

use std::net::Ipv6Addr;

use pnet_base::MacAddr;
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::MutableNeighborSolicitPacket;
use pnet_packet::icmpv6::{self, Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};

const ETH_LEN: usize = 14;
const IP6_LEN: usize = 40;
const ICMP_OFF: usize = ETH_LEN + IP6_LEN;
/// Type, code, checksum, flags/reserved, target.
const ND_LEN: usize = 24;
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// NDP messages must carry hop limit 255 (RFC 4861 §7.1): proof they were not routed.
const HOP_LIMIT: u8 = 255;

pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Solicited-node multicast group of `ip` (ff02::1:ffXX:XXXX).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// Ethernet address of an IPv6 multicast group (33:33 + its last 4 bytes).
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn mac(m: [u8; 6]) -> MacAddr {
    MacAddr::new(m[0], m[1], m[2], m[3], m[4], m[5])
}

/// Ethernet + IPv6 header + zeroed ICMPv6 body of `icmp_len` bytes.
fn frame(ours: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, icmp_len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; ICMP_OFF + icmp_len];
    let mut eth = MutableEthernetPacket::new(&mut buf)?;
    eth.set_destination(mac(multicast_mac(dst)));
    eth.set_source(mac(ours));
    eth.set_ethertype(EtherTypes::Ipv6);
    let mut ip = MutableIpv6Packet::new(&mut buf[ETH_LEN..])?;
    ip.set_version(6);
    ip.set_payload_length(u16::try_from(icmp_len).ok()?);
    ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
    ip.set_hop_limit(HOP_LIMIT);
    ip.set_source(src);
    ip.set_destination(dst);
    Some(buf)
}

/// Write a link-layer address option at `at` (8 bytes).
fn put_lladdr_option(buf: &mut [u8], at: usize, kind: u8, ours: [u8; 6]) -> Option<()> {
    let opt = buf.get_mut(at..at + 8)?;
    opt[0] = kind;
    opt[1] = 1; // in units of 8 bytes
    opt[2..].copy_from_slice(&ours);
    Some(())
}

/// Fill the ICMPv6 checksum (covers the IPv6 pseudo-header).
fn seal(buf: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) -> Option<()> {
    let sum = icmpv6::checksum(&Icmpv6Packet::new(buf.get(ICMP_OFF..)?)?, &src, &dst);
    buf.get_mut(ICMP_OFF + 2..ICMP_OFF + 4)?
        .copy_from_slice(&sum.to_be_bytes());
    Some(())
}

fn solicitation(ours: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Option<Vec<u8>> {
    // RFC 4861 §4.3: a DAD probe (source ::) must not carry a source link-layer option.
    let with_option = !src.is_unspecified();
    let len = if with_option { ND_LEN + 8 } else { ND_LEN };
    let dst = solicited_node(target);
    let mut buf = frame(ours, src, dst, len)?;
    let mut ns = MutableNeighborSolicitPacket::new(&mut buf[ICMP_OFF..])?;
    ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
    ns.set_target_addr(target);
    if with_option {
        put_lladdr_option(&mut buf, ICMP_OFF + ND_LEN, OPT_SOURCE_LL, ours)?;
    }
    seal(&mut buf, src, dst)?;
    Some(buf)
}

/// RFC 4862 DAD probe for `target`: source `::`, to its solicited-node group.
pub fn dad_probe(ours: [u8; 6], target: Ipv6Addr) -> Option<Vec<u8>> {
    solicitation(ours, Ipv6Addr::UNSPECIFIED, target)
}

/// Address resolution of `target` from `src` (with our link-layer address, so
/// the target can answer by unicast). `src` = `::` degrades to a DAD probe,
/// which a holder answers to all-nodes: still an answer.
pub fn ask(ours: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Option<Vec<u8>> {
    solicitation(ours, src, target)
}

/// The ICMPv6 message of an unsolicited advertisement of `target`:
/// override set, solicited clear, target link-layer option = `ours`,
/// checksum left 0 (a raw ICMPv6 socket has the kernel fill it in).
pub fn advert_body(ours: [u8; 6], target: Ipv6Addr) -> [u8; ND_LEN + 8] {
    let mut msg = [0u8; ND_LEN + 8];
    msg[0] = 136; // neighbour advertisement
    msg[4] = 0x20; // override
    msg[8..24].copy_from_slice(&target.octets());
    msg[24] = OPT_TARGET_LL;
    msg[25] = 1; // length in units of 8 octets
    msg[26..32].copy_from_slice(&ours);
    msg
}

/// [`advert_body`] as a whole Ethernet frame to all nodes, checksummed,
/// for a packet socket.
pub fn unsolicited_advert(ours: [u8; 6], target: Ipv6Addr) -> Option<Vec<u8>> {
    let body = advert_body(ours, target);
    let mut buf = frame(ours, target, ALL_NODES, body.len())?;
    buf.get_mut(ICMP_OFF..)?.copy_from_slice(&body);
    seal(&mut buf, target, ALL_NODES)?;
    Some(buf)
}

/// A neighbour discovery message that detection looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nd {
    Solicit {
        src: Ipv6Addr,
        target: Ipv6Addr,
        eth_src: [u8; 6],
    },
    Advert {
        target: Ipv6Addr,
        flags: u8,
        /// Target link-layer option if present, else the Ethernet source.
        lladdr: [u8; 6],
        eth_src: [u8; 6],
    },
}

/// Parse an Ethernet frame; `None` unless it is a well-formed NS or NA with a
/// valid checksum and hop limit 255.
pub fn parse(frame: &[u8]) -> Option<Nd> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Ipv6 {
        return None;
    }
    let eth_src = eth.get_source().octets();
    let ip = Ipv6Packet::new(frame.get(ETH_LEN..)?)?;
    if ip.get_version() != 6
        || ip.get_next_header() != IpNextHeaderProtocols::Icmpv6
        || ip.get_hop_limit() != HOP_LIMIT
    {
        return None;
    }
    let body_end = ICMP_OFF.checked_add(usize::from(ip.get_payload_length()))?;
    let body = frame.get(ICMP_OFF..body_end)?;
    if body.len() < ND_LEN {
        return None;
    }
    let icmp = Icmpv6Packet::new(body)?;
    let (src, dst) = (ip.get_source(), ip.get_destination());
    if icmp.get_icmpv6_code().0 != 0 || icmpv6::checksum(&icmp, &src, &dst) != icmp.get_checksum() {
        return None;
    }
    let mut t = [0u8; 16];
    t.copy_from_slice(&body[8..24]);
    let target = Ipv6Addr::from(t);
    let kind = icmp.get_icmpv6_type();
    if kind == Icmpv6Types::NeighborSolicit {
        Some(Nd::Solicit {
            src,
            target,
            eth_src,
        })
    } else if kind == Icmpv6Types::NeighborAdvert {
        Some(Nd::Advert {
            target,
            flags: body[4],
            lladdr: find_lladdr(&body[ND_LEN..], OPT_TARGET_LL).unwrap_or(eth_src),
            eth_src,
        })
    } else {
        None
    }
}

/// First link-layer address option of `kind` in an NDP option list.
fn find_lladdr(mut opts: &[u8], kind: u8) -> Option<[u8; 6]> {
    while opts.len() >= 2 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None; // RFC 4861 §4.6: length 0 is invalid, stop
        }
        if opts[0] == kind && len >= 8 {
            let mut m = [0u8; 6];
            m.copy_from_slice(&opts[2..8]);
            return Some(m);
        }
        opts = &opts[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OURS: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn solicited_node_group() {
        assert_eq!(
            solicited_node(ip("fd00:6::12:3456")),
            ip("ff02::1:ff12:3456")
        );
        assert_eq!(
            multicast_mac(ip("ff02::1:ff12:3456")),
            [0x33, 0x33, 0xff, 0x12, 0x34, 0x56]
        );
    }

    #[test]
    fn dad_probe_has_no_option_and_parses() {
        let t = ip("fd00:6::5");
        let f = dad_probe(OURS, t).unwrap();
        assert_eq!(f.len(), ICMP_OFF + ND_LEN);
        assert_eq!(&f[..6], &[0x33, 0x33, 0xff, 0, 0, 5]);
        match parse(&f).unwrap() {
            Nd::Solicit {
                src,
                target,
                eth_src,
            } => {
                assert!(src.is_unspecified());
                assert_eq!(target, t);
                assert_eq!(eth_src, OURS);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn solicitation_carries_source_lladdr() {
        let f = ask(OURS, ip("fd00:6::5"), ip("fd00:6::1")).unwrap();
        assert_eq!(
            find_lladdr(&f[ICMP_OFF + ND_LEN..], OPT_SOURCE_LL),
            Some(OURS)
        );
        assert!(matches!(parse(&f), Some(Nd::Solicit { .. })));
    }

    #[test]
    fn advert_flags_and_target_lladdr() {
        let t = ip("fd00:6::5");
        let f = unsolicited_advert(OURS, t).unwrap();
        assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        match parse(&f).unwrap() {
            Nd::Advert {
                target,
                flags,
                lladdr,
                ..
            } => {
                assert_eq!(target, t);
                assert_eq!(
                    flags,
                    pnet_packet::icmpv6::ndp::NeighborAdvertFlags::Override
                );
                assert_eq!(lladdr, OURS);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_checksum_or_hop_limit_is_ignored() {
        let mut f = unsolicited_advert(OURS, ip("fd00::5")).unwrap();
        f[ICMP_OFF + 2] ^= 0xff;
        assert!(parse(&f).is_none());
        let mut g = unsolicited_advert(OURS, ip("fd00::5")).unwrap();
        g[ETH_LEN + 7] = 64;
        assert!(parse(&g).is_none());
        let h = unsolicited_advert(OURS, ip("fd00::5")).unwrap();
        assert!(parse(&h[..h.len() - 1]).is_none());
    }

    #[test]
    fn option_walk_stops_on_bad_lengths() {
        assert_eq!(find_lladdr(&[2, 0, 1, 2, 3, 4, 5, 6], 2), None);
        assert_eq!(find_lladdr(&[2, 40, 1, 2, 3, 4, 5, 6], 2), None);
        let opts = [1, 1, 9, 9, 9, 9, 9, 9, 2, 1, 1, 2, 3, 4, 5, 6];
        assert_eq!(find_lladdr(&opts, 2), Some([1, 2, 3, 4, 5, 6]));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mangled_ndp(pos in 0usize..86, val in any::<u8>(), cut in 0usize..86) {
            let mut f = unsolicited_advert(OURS, ip("fd00::5")).unwrap();
            let n = f.len();
            f[pos % n] = val;
            let _ = parse(&f[..n - (cut % n)]);
        }
    }
}
