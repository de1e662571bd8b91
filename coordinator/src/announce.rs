//! Tell the segment who owns the pod's addresses now: after its MAC changed
//! (`podMACPrefix`) peers and the gateway would otherwise keep sending to the
//! old MAC until their neighbour entries expire.

use std::net::IpAddr;

use cni::error::code;
use cni::netns::NetNs;
use cni::Error;

use crate::detect::socket::{PacketSocket, ETH_P_ARP, ETH_P_IPV6};
use crate::detect::{arp, ndp};

/// Send a gratuitous ARP for each IPv4 address and an unsolicited neighbour
/// advertisement (to ff02::1, override flag, target link-layer address `mac`)
/// for each IPv6 address, out of `ifindex` in netns `ns`. One frame each.
pub fn announce(ns: &NetNs, ifindex: u32, mac: [u8; 6], addrs: &[IpAddr]) -> cni::Result<()> {
    let has_v4 = addrs.iter().any(IpAddr::is_ipv4);
    let has_v6 = addrs.iter().any(IpAddr::is_ipv6);
    if !has_v4 && !has_v6 {
        return Ok(());
    }
    let socks = ns
        .run(|| -> std::io::Result<_> {
            let v4 = if has_v4 {
                Some(PacketSocket::open(ifindex, ETH_P_ARP)?)
            } else {
                None
            };
            let v6 = if has_v6 {
                Some(PacketSocket::open(ifindex, ETH_P_IPV6)?)
            } else {
                None
            };
            Ok((v4, v6))
        })
        .map_err(|e| Error::kernel(format!("enter netns {}", ns.path().display()), e))?
        .map_err(|e| Error::kernel(format!("open packet socket on ifindex {ifindex}"), e))?;
    for ip in addrs {
        let (sock, frame) = match ip {
            IpAddr::V4(a) => (socks.0.as_ref(), arp::gratuitous(mac, *a)),
            IpAddr::V6(a) => (socks.1.as_ref(), ndp::unsolicited_advert(mac, *a)),
        };
        let (Some(sock), Some(frame)) = (sock, frame) else {
            return Err(Error::plugin(
                code::KERNEL,
                format!("cannot build announcement for {ip}"),
            ));
        };
        sock.send(&frame)
            .map_err(|e| Error::kernel(format!("announce {ip} on ifindex {ifindex}"), e))?;
        tracing::debug!(%ip, ifindex, "announced");
    }
    // Two sockets closed in a row would wait out two RCU grace periods.
    crate::detect::close_in_background([socks.0, socks.1].into_iter().flatten());
    Ok(())
}
