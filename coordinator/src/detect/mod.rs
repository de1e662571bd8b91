//! IP conflict and gateway reachability detection for one pod NIC.
//!
//! Every probe of a call (ARP probes, DAD probes, gateway requests, for all
//! addresses and gateways) runs at once over two packet sockets opened inside
//! the pod netns, so a whole check costs one window
//! (`retries × interval + timeout`) whatever the number of addresses.
//!
//! The sockets are created on a short-lived thread inside the netns and then
//! driven from the calling thread, which never changes namespace.
//!
//! An ipvlan slave shares its master's MAC, and ipvlan hands a unicast frame
//! to a slave by destination IP: a holder's reply to our probe (target IP
//! 0.0.0.0) is delivered to the master in the node's netns, never to the pod.
//! So for an ipvlan NIC we also listen on the master (see [`Master`]); a
//! packet socket there sees every frame the master receives, before ipvlan
//! dispatches it. An L3/L3S slave sends no ARP or ND at all (`NOARP`): its
//! probes go out from the master, which carries the same MAC. Answers are
//! heard on both sides: one addressed to the slave's IP (a gateway's reply)
//! is handed to the slave in L3 mode, and a packet socket only sees frames
//! of a device in its own netns.

pub mod arp;
pub mod ndp;
pub mod release;
pub mod socket;
mod watch;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use cni::error::code;
use cni::netns::NetNs;
use cni::Error;

use self::socket::{Direction, PacketSocket, ETH_P_ARP, ETH_P_IPV6};
use self::watch::Watch;

/// Probe count, spacing and wait after the last round (`detectOptions`).
/// `retries` 0 is treated as 1: a check that sends nothing proves nothing.
pub use crate::config::DetectOptions;

fn rounds(o: &DetectOptions) -> u32 {
    o.retries.max(1)
}

/// What the kernel's own IPv6 duplicate address detection says of an address.
/// IPv4 addresses are always probed; pass `NotRun` for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelDad {
    /// No kernel DAD (`nodad`, `accept_dad=0`): probe ourselves.
    NotRun,
    /// Kernel DAD in progress: probe ourselves and watch the kernel's verdict.
    Tentative,
    /// Kernel DAD passed: nothing to probe.
    Done,
    /// Kernel DAD failed (`dadfailed`): a conflict, other MAC unknown.
    Failed,
}

/// One NIC to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicProbe {
    pub ifname: String,
    pub ifindex: u32,
    /// The NIC's current MAC (checked): answers are addressed to it.
    pub mac: [u8; 6],
    pub addrs: Vec<(IpAddr, KernelDad)>,
    pub gateways: Vec<IpAddr>,
    pub check_conflict: bool,
    pub check_gateway: bool,
    /// After a clean check, send a gratuitous ARP for each IPv4 address
    /// through the check's own ARP socket (RFC 5227: probe, then announce).
    /// Saves opening, and waiting out the close of, another packet socket.
    pub announce_v4: bool,
    /// For an ipvlan slave: its master in the netns the plugin runs in.
    pub master: Option<Master>,
}

/// The master of an ipvlan slave, a link of the calling thread's netns (the
/// node), with the slave's MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub ifname: String,
    pub ifindex: u32,
    /// Send the probes from the master (L3/L3S: nothing leaves the slave);
    /// otherwise only listen there.
    pub send: bool,
}

/// Another host uses `ip`. `mac` is all zeros when only the kernel's DAD
/// failure is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// Outcome of [`detect`]. When a conflict is found the check stops as soon
/// as no other address is still under probe (the ADD fails anyway, but
/// every conflicting address is named): `unreachable_gateways` then lists
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub conflicts: Vec<Conflict>,
    pub unreachable_gateways: Vec<IpAddr>,
    pub elapsed: Duration,
    /// The IPv4 addresses announced after the check (see
    /// [`NicProbe::announce_v4`]); empty when no ARP socket was needed.
    pub announced: Vec<Ipv4Addr>,
}

/// `aa:bb:cc:dd:ee:ff`.
pub struct Mac<'a>(pub &'a [u8; 6]);

impl fmt::Display for Mac<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mac == [0; 6] {
            write!(
                f,
                "{} is already in use (kernel DAD failed, other MAC unknown)",
                self.ip
            )
        } else {
            write!(f, "{} is already in use by {}", self.ip, Mac(&self.mac))
        }
    }
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.conflicts.is_empty() && self.unreachable_gateways.is_empty()
    }

    /// The ADD error for this report: a conflict (code 101) wins over an
    /// unreachable gateway (code 102). `Ok` when clean.
    pub fn to_result(&self, ifname: &str) -> cni::Result<()> {
        if !self.conflicts.is_empty() {
            let all: Vec<String> = self.conflicts.iter().map(|c| c.to_string()).collect();
            return Err(Error::plugin_details(
                code::IP_CONFLICT,
                format!("IP conflict on {ifname}: {}", all.join("; ")),
                all.join("; "),
            ));
        }
        if !self.unreachable_gateways.is_empty() {
            let gws: Vec<String> = self
                .unreachable_gateways
                .iter()
                .map(|g| g.to_string())
                .collect();
            return Err(Error::plugin(
                code::GATEWAY_UNREACHABLE,
                format!(
                    "gateway {} unreachable from {ifname}: no ARP/NDP answer within {:?}",
                    gws.join(", "),
                    self.elapsed
                ),
            ));
        }
        Ok(())
    }
}

/// Run every requested probe for `nic` at once inside netns `ns`; costs one
/// window (`retries × interval + timeout`), less when every answer is in early.
///
/// `dad_state` re-reads the kernel's DAD flags of an address; it is polled
/// every `interval` for addresses passed as [`KernelDad::Tentative`].
///
/// Errors: the NIC is missing or down, the NIC has no address to check or to
/// probe from, a socket cannot be opened or a probe cannot be sent. A
/// conflict or a silent gateway is not an error here but in the [`Report`]
/// (see [`Report::to_result`]).
pub fn detect(
    ns: &NetNs,
    nic: &NicProbe,
    opts: &DetectOptions,
    dad_state: &dyn Fn(IpAddr) -> KernelDad,
) -> cni::Result<Report> {
    let start = Instant::now();
    let mut watch = Watch::plan(nic)?;
    if watch.done() {
        return Ok(watch.report(start.elapsed()));
    }
    let socks = open_sockets(ns, nic, &watch)?;
    run(&socks, &mut watch, nic, opts, dad_state, start)?;
    let mut report = watch.report(start.elapsed());
    if let (true, true, Some(sock)) = (nic.announce_v4, report.is_clean(), &socks.v4) {
        let v4: Vec<Ipv4Addr> = nic
            .addrs
            .iter()
            .filter_map(|(a, _)| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .collect();
        arp::send_gratuitous(sock, nic.mac, &v4)?;
        report.announced = v4;
    }
    close_in_background(
        [socks.v4, socks.v6, socks.master_v4, socks.master_v6]
            .into_iter()
            .flatten(),
    );
    Ok(report)
}

/// Closing a packet socket waits out an RCU grace period in the kernel
/// (`packet_release` calls `synchronize_net`), and the plugin's exit would
/// wait for it: a child process takes the last reference (see [`release`]).
pub(crate) fn close_in_background(socks: impl IntoIterator<Item = PacketSocket>) {
    release::release_detached(socks.into_iter().map(PacketSocket::into_fd).collect());
}

#[derive(Debug)]
struct Sockets {
    v4: Option<PacketSocket>,
    v6: Option<PacketSocket>,
    /// On the ipvlan master (see [`Master`]).
    master_v4: Option<PacketSocket>,
    master_v6: Option<PacketSocket>,
    /// The probes leave from the master sockets.
    from_master: bool,
}

impl Sockets {
    fn senders(&self) -> (Option<&PacketSocket>, Option<&PacketSocket>) {
        match self.from_master {
            true => (self.master_v4.as_ref(), self.master_v6.as_ref()),
            false => (self.v4.as_ref(), self.v6.as_ref()),
        }
    }

    fn all(&self) -> Vec<&PacketSocket> {
        [&self.v4, &self.v6, &self.master_v4, &self.master_v6]
            .into_iter()
            .flatten()
            .collect()
    }
}

fn open_sockets(ns: &NetNs, nic: &NicProbe, watch: &Watch) -> cni::Result<Sockets> {
    let ifname = nic.ifname.as_str();
    let ifindex = nic.ifindex;
    let (need_v4, need_v6) = (watch.needs_v4(), watch.needs_v6());
    // Groups whose frames we must hear: answers to DAD probes go to all-nodes,
    // another host's DAD probe to the solicited-node group of the address.
    let mut groups: BTreeSet<[u8; 6]> = BTreeSet::new();
    if need_v6 {
        groups.insert(ndp::multicast_mac(ndp::ALL_NODES));
        for a in &watch.v6_probe {
            groups.insert(ndp::multicast_mac(ndp::solicited_node(*a)));
        }
    }
    let from_master = nic.master.as_ref().is_some_and(|m| m.send);
    let opened = ns.run(|| -> cni::Result<Sockets> {
        check_ifindex(ifname, ifindex)?;
        // Opened even when the probes leave from the master: in L3 mode
        // ipvlan hands an answer addressed to the slave's IP (a gateway's
        // reply) to the slave, where only a socket of the pod's netns sees it.
        let open = |proto| {
            PacketSocket::open(ifindex, proto)
                .map_err(|e| Error::kernel(format!("open packet socket on {ifname}"), e))
        };
        let v4 = if need_v4 { Some(open(ETH_P_ARP)?) } else { None };
        let v6 = if need_v6 { Some(open(ETH_P_IPV6)?) } else { None };
        if let Some(s) = v4.as_ref().or(v6.as_ref()) {
            let flags = s
                .if_flags(ifname)
                .map_err(|e| Error::kernel(format!("read flags of {ifname}"), e))?;
            if flags & libc::IFF_UP as u32 == 0 {
                return Err(Error::plugin(
                    code::KERNEL,
                    format!("{ifname} is down: cannot probe for IP conflicts or gateways"),
                ));
            }
            if flags & libc::IFF_RUNNING as u32 == 0 {
                tracing::warn!(ifname, "no carrier: probes are likely lost");
            }
            // Answers go to the MAC inside our probes: a MAC the NIC does not
            // own (macvlan, VFs filter unicast) would hide every conflict.
            let actual = s
                .if_hwaddr(ifname)
                .map_err(|e| Error::kernel(format!("read MAC of {ifname}"), e))?;
            if actual != nic.mac {
                return Err(Error::plugin(
                    code::KERNEL,
                    format!(
                        "{ifname} has MAC {}, not {}: probe with the NIC's current MAC",
                        Mac(&actual),
                        Mac(&nic.mac)
                    ),
                ));
            }
        }
        if let Some(s) = &v6 {
            for g in &groups {
                if let Err(e) = s.join_multicast(*g) {
                    tracing::warn!(ifname, group = %Mac(g), error = %e, "cannot join multicast group");
                }
            }
        }
        Ok(Sockets {
            v4,
            v6,
            master_v4: None,
            master_v6: None,
            from_master,
        })
    });
    let mut socks =
        opened.map_err(|e| Error::kernel(format!("enter netns {}", ns.path().display()), e))??;
    if let Some(m) = &nic.master {
        // The calling thread is in the node's netns, where the master lives.
        check_ifindex(&m.ifname, m.ifindex)?;
        let open = |proto| {
            PacketSocket::open(m.ifindex, proto).map_err(|e| {
                Error::kernel(
                    format!("open packet socket on ipvlan master {}", m.ifname),
                    e,
                )
            })
        };
        socks.master_v4 = if need_v4 {
            Some(open(ETH_P_ARP)?)
        } else {
            None
        };
        socks.master_v6 = if need_v6 {
            Some(open(ETH_P_IPV6)?)
        } else {
            None
        };
        if let Some(s) = &socks.master_v6 {
            for g in &groups {
                if let Err(e) = s.join_multicast(*g) {
                    tracing::warn!(ifname = %m.ifname, group = %Mac(g), error = %e, "cannot join multicast group");
                }
            }
        }
    }
    Ok(socks)
}

/// The NIC must exist in the netns with the index we were given.
fn check_ifindex(ifname: &str, ifindex: u32) -> cni::Result<()> {
    let c = CString::new(ifname)
        .map_err(|_| Error::plugin(code::KERNEL, format!("invalid interface name {ifname:?}")))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let found = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if found == 0 {
        return Err(Error::plugin(
            code::KERNEL,
            format!("no interface {ifname} in the pod netns: cannot probe"),
        ));
    }
    if found != ifindex {
        return Err(Error::plugin(
            code::KERNEL,
            format!("interface {ifname} has index {found}, not {ifindex}"),
        ));
    }
    Ok(())
}

/// Send one round: a probe per address under test, a request per silent gateway.
fn send_round(socks: &Sockets, w: &Watch) -> cni::Result<()> {
    let mut frames: Vec<(&PacketSocket, Option<Vec<u8>>)> = Vec::new();
    let (v4, v6) = socks.senders();
    if let Some(s) = v4 {
        frames.extend(w.v4_probe.iter().map(|a| (s, arp::probe(w.mac, *a))));
        frames.extend(w.v4_gw.iter().map(|g| (s, arp::ask(w.mac, w.v4_src, *g))));
    }
    if let Some(s) = v6 {
        frames.extend(w.v6_probe.iter().map(|a| (s, ndp::dad_probe(w.mac, *a))));
        frames.extend(w.v6_gw.iter().map(|g| (s, ndp::ask(w.mac, w.v6_src, *g))));
    }
    for (s, frame) in frames {
        let frame = frame.ok_or_else(|| Error::plugin(code::KERNEL, "cannot build probe frame"))?;
        if let Err(e) = s.send(&frame) {
            if e.raw_os_error() == Some(libc::ENETDOWN) {
                return Err(Error::plugin(
                    code::KERNEL,
                    format!("{} is down: cannot send probes", w.ifname),
                ));
            }
            // A full queue loses one probe; the next round sends again.
            if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
            {
                tracing::debug!(ifname = %w.ifname, error = %e, "probe dropped");
                continue;
            }
            return Err(Error::kernel(format!("send probe on {}", w.ifname), e));
        }
    }
    Ok(())
}

fn run(
    socks: &Sockets,
    w: &mut Watch,
    nic: &NicProbe,
    opts: &DetectOptions,
    dad_state: &dyn Fn(IpAddr) -> KernelDad,
    start: Instant,
) -> cni::Result<()> {
    let hour = later(start, Duration::from_secs(3600), start);
    let deadline = later(start, opts.window(), hour);
    let poll_every = opts.interval.max(Duration::from_millis(1));
    let mut rounds_sent = 0u32;
    let mut next_round = start;
    let mut next_poll = start;
    let mut buf = vec![0u8; 9216];
    let list = socks.all();
    loop {
        let now = Instant::now();
        if rounds_sent < rounds(opts) && now >= next_round {
            send_round(socks, w)?;
            rounds_sent += 1;
            next_round = later(start, opts.interval.saturating_mul(rounds_sent), deadline);
        }
        if !w.tentative.is_empty() && now >= next_poll {
            w.poll_kernel(dad_state);
            next_poll = later(now, poll_every, deadline);
        }
        if w.done() {
            return Ok(());
        }
        if now >= deadline {
            // Last word of the kernel on addresses still tentative; if it
            // has not decided, our own probes met silence: no conflict.
            if !w.tentative.is_empty() {
                w.poll_kernel(dad_state);
            }
            return Ok(());
        }
        let mut wake = deadline;
        if rounds_sent < rounds(opts) {
            wake = wake.min(next_round);
        }
        if !w.tentative.is_empty() {
            wake = wake.min(next_poll);
        }
        let ready = socket::wait_readable(&list, wake)
            .map_err(|e| Error::kernel(format!("wait for answers on {}", nic.ifname), e))?;
        for i in ready {
            let Some(s) = list.get(i) else { continue };
            drain(s, &mut buf, w, &nic.ifname)?;
        }
    }
}

/// `t + d`, or `otherwise` if that is past what `Instant` can hold.
fn later(t: Instant, d: Duration, otherwise: Instant) -> Instant {
    t.checked_add(d).unwrap_or(otherwise)
}

fn drain(s: &PacketSocket, buf: &mut [u8], w: &mut Watch, ifname: &str) -> cni::Result<()> {
    loop {
        let got = s
            .try_recv(buf)
            .map_err(|e| Error::kernel(format!("receive on {ifname}"), e))?;
        let Some((n, dir)) = got else { return Ok(()) };
        if dir == Direction::Outgoing {
            continue;
        }
        let frame = &buf[..n];
        if let Some(a) = arp::parse(frame) {
            w.see_arp(&a);
        } else if let Some(nd) = ndp::parse(frame) {
            w.see_nd(&nd);
        }
    }
}

#[cfg(test)]
mod tests;
