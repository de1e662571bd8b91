//! The state of one check: what is being waited for (addresses under probe,
//! silent gateways, tentative addresses) and what the frames seen so far say.
//! Plain data, driven by [`super::run`] and unit-tested without sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use cni::Error;

use super::arp::Arp;
use super::ndp::Nd;
use super::{Conflict, KernelDad, Mac, NicProbe, Report};

/// What is being waited for, and what has been seen so far.
#[derive(Debug)]
pub(super) struct Watch {
    pub(super) ifname: String,
    pub(super) mac: [u8; 6],
    /// Addresses under our own probing (IPv4 always; IPv6 NotRun/Tentative).
    pub(super) v4_probe: Vec<Ipv4Addr>,
    pub(super) v6_probe: Vec<Ipv6Addr>,
    /// IPv6 addresses whose kernel verdict is awaited.
    pub(super) tentative: Vec<Ipv6Addr>,
    pub(super) v4_src: Ipv4Addr,
    pub(super) v6_src: Ipv6Addr,
    /// Gateways not heard from yet.
    pub(super) v4_gw: Vec<Ipv4Addr>,
    pub(super) v6_gw: Vec<Ipv6Addr>,
    pub(super) conflicts: Vec<Conflict>,
}

impl Watch {
    pub(super) fn plan(nic: &NicProbe) -> cni::Result<Watch> {
        let want_gw = nic.check_gateway && !nic.gateways.is_empty();
        if (nic.check_conflict || want_gw) && nic.addrs.is_empty() {
            let field = if nic.check_conflict {
                "detectIPConflict"
            } else {
                "detectGateway"
            };
            return Err(Error::config(
                field,
                format!(
                    "interface {} has no IP address to check or probe from",
                    nic.ifname
                ),
            ));
        }
        let mut w = Watch {
            ifname: nic.ifname.clone(),
            mac: nic.mac,
            v4_probe: Vec::new(),
            v6_probe: Vec::new(),
            tentative: Vec::new(),
            v4_src: Ipv4Addr::UNSPECIFIED,
            v6_src: Ipv6Addr::UNSPECIFIED,
            v4_gw: Vec::new(),
            v6_gw: Vec::new(),
            conflicts: Vec::new(),
        };
        let mut v6_link_local = None;
        for (ip, dad) in &nic.addrs {
            match ip {
                IpAddr::V4(a) => {
                    if w.v4_src.is_unspecified() {
                        w.v4_src = *a;
                    }
                    if nic.check_conflict {
                        push_unique(&mut w.v4_probe, *a);
                    }
                }
                IpAddr::V6(a) => {
                    if crate::plan::is_link_local(&IpAddr::V6(*a)) {
                        v6_link_local.get_or_insert(*a);
                    } else if w.v6_src.is_unspecified() {
                        w.v6_src = *a;
                    }
                    if !nic.check_conflict {
                        continue;
                    }
                    match dad {
                        KernelDad::Done => {}
                        KernelDad::Failed => w.conflicts.push(Conflict {
                            ip: *ip,
                            mac: [0; 6],
                        }),
                        KernelDad::NotRun => push_unique(&mut w.v6_probe, *a),
                        KernelDad::Tentative => {
                            push_unique(&mut w.v6_probe, *a);
                            push_unique(&mut w.tentative, *a);
                        }
                    }
                }
            }
        }
        if w.v6_src.is_unspecified() {
            w.v6_src = v6_link_local.unwrap_or(Ipv6Addr::UNSPECIFIED);
        }
        if nic.check_gateway {
            for gw in &nic.gateways {
                match gw {
                    IpAddr::V4(g) => push_unique(&mut w.v4_gw, *g),
                    IpAddr::V6(g) => push_unique(&mut w.v6_gw, *g),
                }
            }
        }
        Ok(w)
    }

    pub(super) fn needs_v4(&self) -> bool {
        !self.v4_probe.is_empty() || !self.v4_gw.is_empty()
    }

    pub(super) fn needs_v6(&self) -> bool {
        !self.v6_probe.is_empty() || !self.v6_gw.is_empty()
    }

    /// Nothing left that an answer could change: no address under probe
    /// (silence is the only "no conflict") and every gateway answered.
    pub(super) fn finished(&self) -> bool {
        self.v4_probe.is_empty()
            && self.v6_probe.is_empty()
            && self.tentative.is_empty()
            && self.v4_gw.is_empty()
            && self.v6_gw.is_empty()
    }

    /// Every address has its verdict as far as the ADD is concerned: nothing
    /// left to hear ([`Watch::finished`]), or a conflict found and no other
    /// address still under probe (a conflict fails the ADD, so gateways no
    /// longer matter, but every conflicting address is reported and
    /// quarantined, not only the first one heard).
    pub(super) fn done(&self) -> bool {
        self.finished()
            || (!self.conflicts.is_empty()
                && self.v4_probe.is_empty()
                && self.v6_probe.is_empty()
                && self.tentative.is_empty())
    }

    fn conflict(&mut self, ip: IpAddr, mac: [u8; 6]) {
        if self.conflicts.iter().any(|c| c.ip == ip) {
            return;
        }
        tracing::warn!(ifname = %self.ifname, %ip, mac = %Mac(&mac), "IP conflict detected");
        self.conflicts.push(Conflict { ip, mac });
        // Decided: no more probing of it, no more waiting for it.
        match ip {
            IpAddr::V4(a) => self.v4_probe.retain(|p| *p != a),
            IpAddr::V6(a) => {
                self.v6_probe.retain(|p| *p != a);
                self.tentative.retain(|p| *p != a);
            }
        }
    }

    /// Account for one ARP frame received from the wire.
    pub(super) fn see_arp(&mut self, a: &Arp) {
        if a.sender_mac == self.mac {
            return; // our own probe or the pod kernel's traffic
        }
        if self.v4_probe.contains(&a.sender_ip) {
            // A reply to our probe, or any ARP claiming the address.
            self.conflict(IpAddr::V4(a.sender_ip), a.sender_mac);
        } else if a.is_probe() && self.v4_probe.contains(&a.target_ip) {
            // RFC 5227 §2.1.1: another host probing for the same address.
            self.conflict(IpAddr::V4(a.target_ip), a.sender_mac);
        }
        if let Some(i) = self.v4_gw.iter().position(|g| *g == a.sender_ip) {
            tracing::debug!(ifname = %self.ifname, gateway = %a.sender_ip, "gateway answered");
            self.v4_gw.swap_remove(i);
        }
    }

    /// Account for one neighbour discovery frame received from the wire.
    pub(super) fn see_nd(&mut self, nd: &Nd) {
        match *nd {
            Nd::Advert {
                target,
                lladdr,
                eth_src,
                ..
            } => {
                if eth_src == self.mac || lladdr == self.mac {
                    return;
                }
                if self.v6_probe.contains(&target) {
                    self.conflict(IpAddr::V6(target), lladdr);
                }
                if let Some(i) = self.v6_gw.iter().position(|g| *g == target) {
                    tracing::debug!(ifname = %self.ifname, gateway = %target, "gateway answered");
                    self.v6_gw.swap_remove(i);
                }
            }
            Nd::Solicit {
                src,
                target,
                eth_src,
            } => {
                // Only a DAD probe (source ::) for our address is a claim;
                // ordinary address resolution of it is just a neighbour asking.
                if eth_src != self.mac && src.is_unspecified() && self.v6_probe.contains(&target) {
                    self.conflict(IpAddr::V6(target), eth_src);
                }
            }
        }
    }

    /// Take the kernel's verdict on tentative addresses.
    pub(super) fn poll_kernel(&mut self, dad_state: &dyn Fn(IpAddr) -> KernelDad) {
        let pending = std::mem::take(&mut self.tentative);
        for a in pending {
            match dad_state(IpAddr::V6(a)) {
                KernelDad::Failed => {
                    self.v6_probe.retain(|p| *p != a);
                    self.conflict(IpAddr::V6(a), [0; 6]);
                }
                // The kernel's DAD passed: it saw no answer for its own probes.
                KernelDad::Done => self.v6_probe.retain(|p| *p != a),
                KernelDad::Tentative | KernelDad::NotRun => self.tentative.push(a),
            }
        }
    }

    pub(super) fn report(&self, elapsed: Duration) -> Report {
        if !self.conflicts.is_empty() {
            return Report {
                conflicts: self.conflicts.clone(),
                unreachable_gateways: Vec::new(),
                elapsed,
                announced: Vec::new(),
            };
        }
        let mut gws: Vec<IpAddr> = self.v4_gw.iter().map(|g| IpAddr::V4(*g)).collect();
        gws.extend(self.v6_gw.iter().map(|g| IpAddr::V6(*g)));
        Report {
            conflicts: Vec::new(),
            unreachable_gateways: gws,
            elapsed,
            announced: Vec::new(),
        }
    }
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}
