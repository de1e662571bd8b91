//! Decision logic of detection, without sockets.

use super::arp::Arp;
use super::ndp::Nd;
use super::*;
use pnet_packet::arp::ArpOperations;
use std::net::Ipv6Addr;

const OURS: [u8; 6] = [2, 0, 0, 0, 0, 1];
const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 9];

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn nic(addrs: Vec<(IpAddr, KernelDad)>, gateways: Vec<IpAddr>) -> NicProbe {
    NicProbe {
        ifname: "net1".into(),
        ifindex: 3,
        mac: OURS,
        addrs,
        gateways,
        check_conflict: true,
        check_gateway: true,
        announce_v4: false,
        master: None,
    }
}

fn arp_frame(op: pnet_packet::arp::ArpOperation, mac: [u8; 6], sip: &str, tip: &str) -> Arp {
    Arp {
        operation: op,
        sender_mac: mac,
        sender_ip: v4(sip),
        target_ip: v4(tip),
    }
}

#[test]
fn window_is_rounds_times_interval_plus_timeout() {
    let o = DetectOptions::default();
    assert_eq!(o.window(), Duration::from_millis(130));
    let zero = DetectOptions {
        retries: 0,
        ..o.clone()
    };
    assert_eq!(zero.window(), Duration::from_millis(110));
    let huge = DetectOptions {
        retries: u32::MAX,
        interval: Duration::MAX,
        timeout: Duration::MAX,
    };
    assert_eq!(huge.window(), Duration::MAX);
}

#[test]
fn plan_sorts_addresses_by_kernel_state() {
    let n = nic(
        vec![
            (IpAddr::V4(v4("10.6.0.5")), KernelDad::NotRun),
            (IpAddr::V6(v6("fe80::1")), KernelDad::Done),
            (IpAddr::V6(v6("fd00::5")), KernelDad::Tentative),
            (IpAddr::V6(v6("fd00::6")), KernelDad::NotRun),
            (IpAddr::V6(v6("fd00::7")), KernelDad::Done),
        ],
        vec![IpAddr::V4(v4("10.6.0.1")), IpAddr::V6(v6("fd00::1"))],
    );
    let w = Watch::plan(&n).unwrap();
    assert_eq!(w.v4_probe, vec![v4("10.6.0.5")]);
    assert_eq!(w.v6_probe, vec![v6("fd00::5"), v6("fd00::6")]);
    assert_eq!(w.tentative, vec![v6("fd00::5")]);
    assert_eq!(w.v4_src, v4("10.6.0.5"));
    assert_eq!(
        w.v6_src,
        v6("fd00::5"),
        "a global address, not the link-local one"
    );
    assert!(w.conflicts.is_empty());
}

#[test]
fn kernel_dad_failure_is_a_conflict_with_unknown_mac() {
    let n = nic(vec![(IpAddr::V6(v6("fd00::5")), KernelDad::Failed)], vec![]);
    let w = Watch::plan(&n).unwrap();
    assert_eq!(
        w.conflicts,
        vec![Conflict {
            ip: IpAddr::V6(v6("fd00::5")),
            mac: [0; 6]
        }]
    );
    let err = w.report(Duration::ZERO).to_result("net1").unwrap_err();
    assert_eq!(err.code(), 101);
    assert!(err.to_string().contains("kernel DAD failed"), "{err}");
}

#[test]
fn nothing_to_check_is_finished_and_no_addresses_is_an_error() {
    let mut n = nic(vec![(IpAddr::V6(v6("fd00::5")), KernelDad::Done)], vec![]);
    assert!(Watch::plan(&n).unwrap().finished());
    n.addrs.clear();
    let e = Watch::plan(&n).unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.to_string().contains("net1"), "{e}");
    n.check_conflict = false;
    n.gateways = vec![IpAddr::V4(v4("10.6.0.1"))];
    assert!(Watch::plan(&n)
        .unwrap_err()
        .to_string()
        .contains("detectGateway"));
    n.check_gateway = false;
    assert!(Watch::plan(&n).unwrap().finished());
}

#[test]
fn gateway_without_address_of_its_family_is_probed_from_unspecified() {
    let n = nic(
        vec![(IpAddr::V6(v6("fd00::5")), KernelDad::Done)],
        vec![IpAddr::V4(v4("10.6.0.1"))],
    );
    let w = Watch::plan(&n).unwrap();
    assert!(w.v4_src.is_unspecified());
    assert_eq!(w.v4_gw, vec![v4("10.6.0.1")]);
}

#[test]
fn arp_claims_and_probes_are_conflicts_noise_is_not() {
    let n = nic(
        vec![(IpAddr::V4(v4("10.6.0.5")), KernelDad::NotRun)],
        vec![],
    );
    let mut w = Watch::plan(&n).unwrap();
    // our own looped-back probe, a GARP for another address, someone resolving us
    w.see_arp(&arp_frame(
        ArpOperations::Request,
        OURS,
        "0.0.0.0",
        "10.6.0.5",
    ));
    w.see_arp(&arp_frame(
        ArpOperations::Request,
        OTHER,
        "10.6.0.8",
        "10.6.0.8",
    ));
    w.see_arp(&arp_frame(
        ArpOperations::Request,
        OTHER,
        "10.6.0.8",
        "10.6.0.5",
    ));
    w.see_arp(&arp_frame(
        ArpOperations::Request,
        OTHER,
        "0.0.0.0",
        "10.6.0.7",
    ));
    assert!(w.conflicts.is_empty());
    // another host probing for the same address
    w.see_arp(&arp_frame(
        ArpOperations::Request,
        OTHER,
        "0.0.0.0",
        "10.6.0.5",
    ));
    assert_eq!(w.conflicts[0].mac, OTHER);

    let mut w = Watch::plan(&n).unwrap();
    w.see_arp(&arp_frame(
        ArpOperations::Reply,
        OTHER,
        "10.6.0.5",
        "0.0.0.0",
    ));
    assert_eq!(
        w.conflicts,
        vec![Conflict {
            ip: IpAddr::V4(v4("10.6.0.5")),
            mac: OTHER
        }]
    );
    let e = w.report(Duration::ZERO).to_result("net1").unwrap_err();
    assert_eq!(e.code(), 101);
    let s = e.to_string();
    assert!(
        s.contains("net1") && s.contains("10.6.0.5") && s.contains("02:00:00:00:00:09"),
        "{s}"
    );
}

#[test]
fn gateway_answers_clear_the_gateway() {
    let mut n = nic(
        vec![(IpAddr::V4(v4("10.6.0.5")), KernelDad::NotRun)],
        vec![IpAddr::V4(v4("10.6.0.1")), IpAddr::V6(v6("fd00::1"))],
    );
    n.check_conflict = false;
    let mut w = Watch::plan(&n).unwrap();
    w.see_arp(&arp_frame(
        ArpOperations::Reply,
        OTHER,
        "10.6.0.1",
        "10.6.0.5",
    ));
    assert!(w.v4_gw.is_empty());
    assert!(!w.finished());
    let r = w.report(Duration::from_millis(130));
    assert_eq!(r.unreachable_gateways, vec![IpAddr::V6(v6("fd00::1"))]);
    let e = r.to_result("net1").unwrap_err();
    assert_eq!(e.code(), 102);
    assert!(e.to_string().contains("fd00::1"), "{e}");
    w.see_nd(&Nd::Advert {
        target: v6("fd00::1"),
        flags: 0x60,
        lladdr: OTHER,
        eth_src: OTHER,
    });
    assert!(w.finished());
    assert!(w.report(Duration::ZERO).to_result("net1").is_ok());
}

#[test]
fn nd_conflicts_and_noise() {
    let n = nic(vec![(IpAddr::V6(v6("fd00::5")), KernelDad::NotRun)], vec![]);
    let mut w = Watch::plan(&n).unwrap();
    w.see_nd(&Nd::Solicit {
        src: Ipv6Addr::UNSPECIFIED,
        target: v6("fd00::5"),
        eth_src: OURS,
    });
    w.see_nd(&Nd::Solicit {
        src: v6("fd00::9"),
        target: v6("fd00::5"),
        eth_src: OTHER,
    });
    w.see_nd(&Nd::Advert {
        target: v6("fd00::9"),
        flags: 0x20,
        lladdr: OTHER,
        eth_src: OTHER,
    });
    assert!(w.conflicts.is_empty());
    w.see_nd(&Nd::Solicit {
        src: Ipv6Addr::UNSPECIFIED,
        target: v6("fd00::5"),
        eth_src: OTHER,
    });
    assert_eq!(w.conflicts.len(), 1);

    let mut w = Watch::plan(&n).unwrap();
    w.see_nd(&Nd::Advert {
        target: v6("fd00::5"),
        flags: 0x20,
        lladdr: [2, 2, 2, 2, 2, 2],
        eth_src: OTHER,
    });
    assert_eq!(w.conflicts[0].mac, [2, 2, 2, 2, 2, 2]);
}

#[test]
fn tentative_addresses_follow_the_kernel() {
    let n = nic(
        vec![
            (IpAddr::V6(v6("fd00::5")), KernelDad::Tentative),
            (IpAddr::V6(v6("fd00::6")), KernelDad::Tentative),
        ],
        vec![],
    );
    let mut w = Watch::plan(&n).unwrap();
    w.poll_kernel(&|_| KernelDad::Tentative);
    assert_eq!(w.tentative.len(), 2);
    w.poll_kernel(&|ip| {
        if ip == IpAddr::V6(v6("fd00::5")) {
            KernelDad::Done
        } else {
            KernelDad::Tentative
        }
    });
    assert_eq!(w.tentative, vec![v6("fd00::6")]);
    assert_eq!(w.v6_probe, vec![v6("fd00::6")]);
    w.poll_kernel(&|_| KernelDad::Failed);
    assert!(w.tentative.is_empty());
    assert_eq!(w.conflicts[0].mac, [0; 6]);
}

/// Issue 24: both families conflicting are both reported. The kernel's DAD
/// fails the IPv6 address first; the check goes on until the IPv4 holder is
/// heard too, and only then is it done (not at the first conflict).
#[test]
fn every_conflicting_address_is_reported_not_only_the_first() {
    let n = nic(
        vec![
            (IpAddr::V4(v4("10.6.0.5")), KernelDad::NotRun),
            (IpAddr::V6(v6("fd00::5")), KernelDad::Tentative),
        ],
        vec![IpAddr::V4(v4("10.6.0.1"))],
    );
    let mut w = Watch::plan(&n).unwrap();
    assert!(!w.done());
    w.poll_kernel(&|_| KernelDad::Failed);
    assert_eq!(w.conflicts.len(), 1);
    assert!(!w.done(), "10.6.0.5 is still under probe");
    w.see_arp(&arp_frame(
        ArpOperations::Reply,
        OTHER,
        "10.6.0.5",
        "0.0.0.0",
    ));
    assert!(
        w.done(),
        "every address decided; the gateway no longer matters"
    );
    let ips: Vec<IpAddr> = w.conflicts.iter().map(|c| c.ip).collect();
    assert_eq!(ips, [IpAddr::V6(v6("fd00::5")), IpAddr::V4(v4("10.6.0.5"))]);
    // A second reply for a decided address changes nothing.
    w.see_arp(&arp_frame(
        ArpOperations::Reply,
        [9; 6],
        "10.6.0.5",
        "0.0.0.0",
    ));
    assert_eq!(w.conflicts.len(), 2);
    let report = w.report(Duration::from_millis(5));
    let err = report.to_result("net1").unwrap_err().to_string();
    for part in ["net1", "10.6.0.5", "fd00::5", &Mac(&OTHER).to_string()] {
        assert!(err.contains(part), "{err} should name {part}");
    }
    // One clean address keeps the check open until the window ends.
    let mut w = Watch::plan(&nic(
        vec![
            (IpAddr::V4(v4("10.6.0.5")), KernelDad::NotRun),
            (IpAddr::V4(v4("10.6.0.6")), KernelDad::NotRun),
        ],
        vec![],
    ))
    .unwrap();
    w.see_arp(&arp_frame(
        ArpOperations::Reply,
        OTHER,
        "10.6.0.5",
        "0.0.0.0",
    ));
    assert!(!w.done());
}
