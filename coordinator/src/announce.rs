//! Tell the segment who owns the pod's addresses now: after its MAC changed
//! (`podMACPrefix`) peers and the gateway would otherwise keep sending to the
//! old MAC until their neighbour entries expire.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use cni::netns::NetNs;
use cni::Error;

use crate::detect::socket::{PacketSocket, ETH_P_ARP};
use crate::detect::{arp, ndp};

/// Send a gratuitous ARP for each IPv4 address and an unsolicited neighbour
/// advertisement (to ff02::1, override flag, target link-layer address `mac`)
/// for each IPv6 address, out of `ifindex` in netns `ns`. One frame each.
pub fn announce(ns: &NetNs, ifindex: u32, mac: [u8; 6], addrs: &[IpAddr]) -> cni::Result<()> {
    let v4: Vec<Ipv4Addr> = addrs
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<Ipv6Addr> = addrs
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
        .collect();
    if v4.is_empty() && v6.is_empty() {
        return Ok(());
    }
    let socks = ns
        .run(|| -> std::io::Result<_> {
            let arp_sock = match v4.is_empty() {
                true => None,
                false => Some(PacketSocket::open(ifindex, ETH_P_ARP)?),
            };
            let icmp = match v6.is_empty() {
                true => None,
                false => Some(icmpv6_socket(ifindex)?),
            };
            Ok((arp_sock, icmp))
        })
        .map_err(|e| Error::kernel(format!("enter netns {}", ns.path().display()), e))?
        .map_err(|e| Error::kernel(format!("open announce socket on ifindex {ifindex}"), e))?;
    if let Some(sock) = &socks.0 {
        arp::send_gratuitous(sock, mac, &v4)?;
    }
    if let Some(sock) = &socks.1 {
        for a in &v6 {
            send_unsolicited_na(sock, ifindex, mac, *a)
                .map_err(|e| Error::kernel(format!("announce {a} on ifindex {ifindex}"), e))?;
            tracing::debug!(%a, ifindex, "unsolicited NA sent");
        }
    }
    // Closing a packet socket waits out an RCU grace period: not on our path.
    crate::detect::close_in_background(socks.0);
    Ok(())
}

/// A raw ICMPv6 socket: the kernel fills in the source address and the
/// checksum, and closing it costs nothing (unlike a packet socket).
fn icmpv6_socket(ifindex: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // RFC 4861 §7.1.2: neighbour discovery messages carry hop limit 255.
    let hops: libc::c_int = 255;
    let ifx = ifindex as libc::c_int;
    for (opt, val) in [
        (libc::IPV6_MULTICAST_HOPS, hops),
        (libc::IPV6_MULTICAST_IF, ifx),
    ] {
        // SAFETY: an int option with its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Unsolicited NA to all-nodes: override set, solicited clear, target
/// link-layer address option = `mac`.
fn send_unsolicited_na(
    sock: &OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
    target: Ipv6Addr,
) -> std::io::Result<()> {
    // The advertisement comes from the address it announces (the kernel would
    // otherwise pick a source, and there may be none usable yet); FREEBIND
    // lets the bind succeed before the address is fully configured.
    let one: libc::c_int = 1;
    // SAFETY: an int option with its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_FREEBIND,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_in6 is a valid value.
    let mut src: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    src.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    src.sin6_addr.s6_addr = target.octets();
    src.sin6_scope_id = ifindex;
    // SAFETY: a valid sockaddr_in6 with its size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&src as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The kernel fills in the checksum of a raw ICMPv6 socket's message.
    let msg = ndp::advert_body(mac, target);
    // SAFETY: zeroed sockaddr_in6 is a valid value.
    let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    dst.sin6_addr.s6_addr = ndp::ALL_NODES.octets();
    dst.sin6_scope_id = ifindex;
    loop {
        // SAFETY: valid buffer and sockaddr with their sizes.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&dst as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
