//! A raw `AF_PACKET` socket bound to one interface and one EtherType.
//!
//! Probes must leave with exact Ethernet and ARP/NDP headers (sender IP
//! 0.0.0.0, source `::`), which only a packet socket allows. The socket is
//! created inside the pod netns (see [`cni::netns::NetNs::run`]) and then used
//! from any thread: a socket stays in the netns it was created in.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

/// One frame received, with the kernel's packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by this host (the kernel loops every outgoing frame back to packet sockets).
    Outgoing,
    /// Received from the wire.
    Incoming,
}

#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
    protocol: u16,
}

impl PacketSocket {
    /// Open a non-blocking packet socket for `protocol` frames of `ifindex`,
    /// in the calling thread's netns.
    pub fn open(ifindex: u32, protocol: u16) -> io::Result<PacketSocket> {
        let ifindex_c = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
        // Protocol 0 at creation: the socket receives nothing until bind()
        // narrows it to one interface, so no frame of another NIC slips in.
        // SAFETY: plain syscall, the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = PacketSocket {
            fd,
            ifindex,
            protocol,
        };
        let addr = sock.sockaddr(ifindex_c, [0; 6]);
        // SAFETY: `addr` is a valid sockaddr_ll and its size is passed.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    /// The descriptor, for [`super::release::release_detached`].
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn sockaddr(&self, ifindex: i32, dst: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = self.protocol.to_be();
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst);
        addr
    }

    /// Receive link-layer multicast `mac` on this interface while the socket
    /// lives. Needed where the NIC filters multicast (macvlan, SR-IOV VFs):
    /// another host's DAD probe goes to the solicited-node group of the address.
    pub fn join_multicast(&self, mac: [u8; 6]) -> io::Result<()> {
        // SAFETY: packet_mreq is plain old data.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = self.ifindex as i32;
        mreq.mr_type = libc::PACKET_MR_MULTICAST as u16;
        mreq.mr_alen = 6;
        mreq.mr_address[..6].copy_from_slice(&mac);
        // SAFETY: valid pointer and size of a packet_mreq.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mreq as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// An `ifreq` naming `ifname`, for the interface ioctls below.
    fn ifreq(ifname: &str) -> io::Result<libc::ifreq> {
        // SAFETY: ifreq is plain old data.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        let name = ifname.as_bytes();
        if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {ifname:?}"),
            ));
        }
        for (d, s) in req.ifr_name.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        Ok(req)
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: the interface ioctls used here read ifr_name and write the
        // ifr_ifru union of a valid ifreq.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, req as *mut libc::ifreq) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Interface flags (`IFF_UP`, `IFF_RUNNING`, ...) of `ifname`, looked up
    /// in the socket's netns.
    pub fn if_flags(&self, ifname: &str) -> io::Result<u32> {
        let mut req = Self::ifreq(ifname)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: the kernel filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        Ok(u32::from(flags as u16))
    }

    /// Current MAC address of `ifname`, looked up in the socket's netns.
    pub fn if_hwaddr(&self, ifname: &str) -> io::Result<[u8; 6]> {
        let mut req = Self::ifreq(ifname)?;
        self.ioctl(libc::SIOCGIFHWADDR, &mut req)?;
        // SAFETY: the kernel filled the hwaddr member of the union.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(data.iter()) {
            *d = *s as u8;
        }
        Ok(mac)
    }

    /// Send one complete Ethernet frame (destination taken from its header).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut dst = [0u8; 6];
        if let Some(d) = frame.get(..6) {
            dst.copy_from_slice(d);
        }
        let addr = self.sockaddr(self.ifindex as i32, dst);
        loop {
            // SAFETY: valid buffer and sockaddr_ll with their sizes.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Receive one frame into `buf` without waiting. `Ok(None)` when nothing
    /// is queued. Frames longer than `buf` are dropped (ARP and NDP are small).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Direction)>> {
        loop {
            // SAFETY: sockaddr_ll is plain old data.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: valid buffer, sockaddr storage and length pointer.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut addr as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(err),
                }
            }
            let n = n as usize;
            if n > buf.len() {
                continue; // truncated: not a frame we care about
            }
            let dir = if addr.sll_pkttype == libc::PACKET_OUTGOING {
                Direction::Outgoing
            } else {
                Direction::Incoming
            };
            return Ok(Some((n, dir)));
        }
    }
}

/// Wait until one of `socks` is readable or `until` passes. Returns the
/// indexes of the readable sockets (empty on timeout). EINTR restarts the wait
/// with the time that is left.
pub fn wait_readable(socks: &[&PacketSocket], until: Instant) -> io::Result<Vec<usize>> {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let ms = timeout_ms(left);
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let ready: Vec<usize> = fds
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents != 0)
            .map(|(i, _)| i)
            .collect();
        if !ready.is_empty() || Instant::now() >= until {
            return Ok(ready);
        }
    }
}

/// poll(2) takes whole milliseconds: round up so we never wake before `until`
/// and spin.
fn timeout_ms(left: Duration) -> i32 {
    let us = left.as_micros();
    let ms = us.div_ceil(1000);
    i32::try_from(ms).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_rounds_up() {
        assert_eq!(timeout_ms(Duration::ZERO), 0);
        assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(timeout_ms(Duration::from_millis(10)), 10);
        assert_eq!(timeout_ms(Duration::from_secs(u64::MAX / 4)), i32::MAX);
    }
}
