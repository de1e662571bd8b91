//! Conflict and gateway detection, and announcements, against real kernels
//! in network namespaces.
//!
//! Topology per test: a "fabric" netns with bridge `br0` (holding the
//! gateways), a "pod" netns whose `eth0` is a veth into `br0`, and extra
//! hosts (a holder of the pod's address, a noisy neighbour) attached the same
//! way. Needs root; fails loudly without it.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni::netns::NetNs;
use coordinator::announce::announce;
use coordinator::detect::socket::{PacketSocket, ETH_P_ARP, ETH_P_IPV6};
use coordinator::detect::{arp, detect, ndp, DetectOptions, KernelDad, NicProbe, Report};
use integration::lab::Netns;

const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x05];
const HOLDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x05];
const NOISE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x08];
const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 6, 0, 5);
const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 6, 0, 0, 0, 0, 0, 5);
const GW_V4: Ipv4Addr = Ipv4Addr::new(10, 6, 0, 1);
const GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 6, 0, 0, 0, 0, 0, 1);
const NO_GW_V4: Ipv4Addr = Ipv4Addr::new(10, 6, 0, 254);
const NO_GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 6, 0, 0, 0, 0, 0, 0xfe);

fn mac_str(m: [u8; 6]) -> String {
    coordinator::detect::Mac(&m).to_string()
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces of one test (the test kit's, with the kernel's DAD on), deleted
/// on drop (even when the test panics).
struct Lab {
    pod: String,
    fabric: String,
    namespaces: Vec<Netns>,
}

fn scratch(tag: &str) -> Netns {
    Netns::with_kernel_dad(tag).unwrap_or_else(|e| panic!("detect tests: netns {tag}: {e}"))
}

impl Lab {
    /// Fabric with `br0` holding the gateways, pod `eth0` (MAC `POD_MAC`, up,
    /// no addresses yet) plugged into it.
    fn new() -> Lab {
        let (fabric, pod) = (scratch("f"), scratch("p"));
        let lab = Lab {
            pod: pod.name().to_string(),
            fabric: fabric.name().to_string(),
            namespaces: vec![fabric, pod],
        };
        lab.ip(&lab.fabric, "link add br0 type bridge mcast_snooping 0");
        lab.ip(&lab.fabric, "link set br0 address 02:00:00:00:00:01 up");
        lab.ip(&lab.fabric, &format!("addr add {GW_V4}/24 dev br0"));
        lab.ip(&lab.fabric, &format!("addr add {GW_V6}/64 dev br0 nodad"));
        let pod = lab.pod.clone();
        lab.plug(&pod, "pe0", POD_MAC);
        lab
    }

    fn ip(&self, ns: &str, cmd: &str) -> String {
        let mut args = vec!["ip", "-n", ns];
        args.extend(cmd.split_whitespace());
        sh(&args)
    }

    /// Veth `eth0` in `ns` (with `mac`), its peer `fabric_end` in `br0`.
    fn plug(&self, ns: &str, fabric_end: &str, mac: [u8; 6]) {
        self.ip(
            &self.fabric,
            &format!("link add {fabric_end} type veth peer name eth0 netns {ns}"),
        );
        self.ip(
            &self.fabric,
            &format!("link set {fabric_end} master br0 up"),
        );
        self.ip(ns, &format!("link set eth0 address {} up", mac_str(mac)));
    }

    /// Another host on the fabric, with `mac` and the given addresses (no DAD).
    fn host(&mut self, tag: char, mac: [u8; 6], addrs: &[&str]) -> String {
        let host = scratch(&tag.to_string());
        let name = host.name().to_string();
        self.namespaces.push(host);
        self.plug(&name, &format!("h{tag}0"), mac);
        for a in addrs {
            self.add_addr(&name, a, false);
        }
        name
    }

    fn add_addr(&self, ns: &str, cidr: &str, dad: bool) {
        let nodad = if dad || !cidr.contains(':') {
            ""
        } else {
            " nodad"
        };
        self.ip(ns, &format!("addr add {cidr} dev eth0{nodad}"));
    }

    fn netns(&self, name: &str) -> NetNs {
        NetNs::open(format!("/run/netns/{name}")).expect("open netns")
    }

    fn ifindex(&self, ns: &str, dev: &str) -> u32 {
        let out = self.ip(ns, &format!("-j link show dev {dev}"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        v[0]["ifindex"].as_u64().expect("ifindex") as u32
    }

    /// DAD state of `ip` on the pod's eth0, read back from the kernel.
    fn dad_state(&self, ip: IpAddr) -> KernelDad {
        let out = self.ip(&self.pod, "-j addr show dev eth0");
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        let infos = v[0]["addr_info"].as_array().cloned().unwrap_or_default();
        let Some(a) = infos
            .iter()
            .find(|a| a["local"].as_str() == Some(&ip.to_string()))
        else {
            return KernelDad::NotRun;
        };
        if a["dadfailed"].as_bool() == Some(true) {
            KernelDad::Failed
        } else if a["tentative"].as_bool() == Some(true) {
            KernelDad::Tentative
        } else {
            KernelDad::Done
        }
    }

    fn probe(
        &self,
        addrs: &[IpAddr],
        gateways: &[IpAddr],
        conflict: bool,
        gateway: bool,
    ) -> NicProbe {
        NicProbe {
            ifname: "eth0".into(),
            ifindex: self.ifindex(&self.pod, "eth0"),
            mac: POD_MAC,
            addrs: addrs.iter().map(|a| (*a, KernelDad::NotRun)).collect(),
            gateways: gateways.to_vec(),
            check_conflict: conflict,
            check_gateway: gateway,
            announce_v4: false,
            master: None,
        }
    }

    fn detect(&self, nic: &NicProbe) -> Report {
        let ns = self.netns(&self.pod);
        detect(&ns, nic, &DetectOptions::default(), &|_| KernelDad::NotRun).expect("detect runs")
    }
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}
fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

/// Send `frames` from `ns`'s eth0 every 5 ms until `stop`; returns the count.
fn keep_sending(
    lab: &Lab,
    ns: &str,
    proto: u16,
    frames: Vec<Vec<u8>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    let idx = lab.ifindex(ns, "eth0");
    let sock = lab
        .netns(ns)
        .run(|| PacketSocket::open(idx, proto))
        .expect("enter netns")
        .expect("packet socket");
    std::thread::spawn(move || {
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            for f in &frames {
                sock.send(f).expect("send noise");
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    })
}

#[test]
fn ipv4_holder_is_a_conflict_naming_its_mac() {
    let mut lab = Lab::new();
    lab.add_addr(&lab.pod.clone(), "10.6.0.5/24", false);
    lab.host('h', HOLDER_MAC, &["10.6.0.5/24"]);
    let nic = lab.probe(&[v4(POD_V4)], &[], true, false);
    let r = lab.detect(&nic);
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(r.conflicts[0].ip, v4(POD_V4));
    assert_eq!(r.conflicts[0].mac, HOLDER_MAC);
    eprintln!("IPv4 conflict found after {:?}", r.elapsed);
    let e = r.to_result("eth0").unwrap_err();
    assert_eq!(e.code(), cni::error::code::IP_CONFLICT);
    let msg = e.to_string();
    assert!(
        msg.contains("eth0") && msg.contains("10.6.0.5") && msg.contains(&mac_str(HOLDER_MAC)),
        "{msg}"
    );
}

#[test]
fn ipv6_holder_is_a_conflict_naming_its_mac() {
    let mut lab = Lab::new();
    lab.add_addr(&lab.pod.clone(), "fd00:6::5/64", false);
    lab.host('h', HOLDER_MAC, &["fd00:6::5/64"]);
    let nic = lab.probe(&[v6(POD_V6)], &[], true, false);
    let r = lab.detect(&nic);
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(r.conflicts[0].ip, v6(POD_V6));
    assert_eq!(r.conflicts[0].mac, HOLDER_MAC);
    let msg = r.to_result("eth0").unwrap_err().to_string();
    assert!(
        msg.contains("fd00:6::5") && msg.contains(&mac_str(HOLDER_MAC)),
        "{msg}"
    );
}

/// Dual stack, two addresses and two gateways, nobody else holding the
/// addresses: clean, and the whole check costs one window.
#[test]
fn dual_stack_without_holder_is_clean_in_one_window() {
    let lab = Lab::new();
    lab.add_addr(&lab.pod, "10.6.0.5/24", false);
    lab.add_addr(&lab.pod, "fd00:6::5/64", false);
    let nic = lab.probe(
        &[v4(POD_V4), v6(POD_V6)],
        &[v4(GW_V4), v6(GW_V6)],
        true,
        true,
    );
    let r = lab.detect(&nic);
    assert!(r.is_clean(), "{r:?}");
    assert!(r.to_result("eth0").is_ok());
    // Measured, not asserted (see testing.md): printed with --nocapture.
    eprintln!(
        "dual-stack detection: elapsed {:?}, window {:?}",
        r.elapsed,
        DetectOptions::default().window()
    );
}

#[test]
fn gateways_present_and_absent_in_both_families() {
    let lab = Lab::new();
    lab.add_addr(&lab.pod, "10.6.0.5/24", false);
    lab.add_addr(&lab.pod, "fd00:6::5/64", false);
    let gws = [v4(GW_V4), v4(NO_GW_V4), v6(GW_V6), v6(NO_GW_V6)];
    let nic = lab.probe(&[v4(POD_V4), v6(POD_V6)], &gws, false, true);
    let r = lab.detect(&nic);
    assert!(r.conflicts.is_empty(), "{r:?}");
    let mut missing = r.unreachable_gateways.clone();
    missing.sort();
    assert_eq!(missing, vec![v4(NO_GW_V4), v6(NO_GW_V6)]);
    let e = r.to_result("eth0").unwrap_err();
    assert_eq!(e.code(), cni::error::code::GATEWAY_UNREACHABLE);
    assert!(e.to_string().contains("10.6.0.254"), "{e}");

    // Only the present ones: clean.
    let nic = lab.probe(
        &[v4(POD_V4), v6(POD_V6)],
        &[v4(GW_V4), v6(GW_V6)],
        false,
        true,
    );
    let r = lab.detect(&nic);
    assert!(r.is_clean(), "{r:?}");
    eprintln!("two gateways answered after {:?}", r.elapsed);
}

/// A NIC without an address of the gateway's family probes from 0.0.0.0
/// (the gateway answers an RFC 5227 probe too).
#[test]
fn gateway_probe_without_address_of_its_family() {
    let lab = Lab::new();
    lab.add_addr(&lab.pod, "fd00:6::5/64", false);
    let nic = lab.probe(&[v6(POD_V6)], &[v4(GW_V4), v4(NO_GW_V4)], false, true);
    let r = lab.detect(&nic);
    assert_eq!(r.unreachable_gateways, vec![v4(NO_GW_V4)], "{r:?}");
}

/// Gratuitous ARPs and unsolicited NAs for another address, another
/// host's probes for other addresses, and a neighbour resolving the pod's
/// addresses are not conflicts.
#[test]
fn neighbour_noise_is_not_a_conflict() {
    let mut lab = Lab::new();
    lab.add_addr(&lab.pod.clone(), "10.6.0.5/24", false);
    lab.add_addr(&lab.pod.clone(), "fd00:6::5/64", false);
    let noisy = lab.host('n', NOISE_MAC, &["10.6.0.8/24", "fd00:6::8/64"]);
    let n8 = Ipv4Addr::new(10, 6, 0, 8);
    let n8v6: Ipv6Addr = "fd00:6::8".parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let arps = vec![
        arp::gratuitous(NOISE_MAC, n8).unwrap(),
        arp::ask(NOISE_MAC, n8, POD_V4).unwrap(),
        arp::probe(NOISE_MAC, Ipv4Addr::new(10, 6, 0, 9)).unwrap(),
    ];
    let nds = vec![
        ndp::unsolicited_advert(NOISE_MAC, n8v6).unwrap(),
        ndp::ask(NOISE_MAC, n8v6, POD_V6).unwrap(),
        ndp::dad_probe(NOISE_MAC, "fd00:6::9".parse().unwrap()).unwrap(),
    ];
    let t1 = keep_sending(&lab, &noisy, ETH_P_ARP, arps, stop.clone());
    let t2 = keep_sending(&lab, &noisy, ETH_P_IPV6, nds, stop.clone());
    std::thread::sleep(Duration::from_millis(20));
    let nic = lab.probe(&[v4(POD_V4), v6(POD_V6)], &[], true, false);
    let r = lab.detect(&nic);
    stop.store(true, Ordering::SeqCst);
    let sent = t1.join().unwrap() + t2.join().unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert!(sent > 6, "noise was sent during the window ({sent} frames)");
    // The noise really reached the pod: its kernel learnt the noisy MAC.
    let neigh = lab.ip(&lab.pod, "-j neigh show dev eth0");
    assert!(
        neigh.contains(&mac_str(NOISE_MAC)),
        "pod never heard the noise: {neigh}"
    );
}

/// With hairpin on the bridge port, the pod receives its own broadcast and
/// multicast probes back from the wire: they must not count as conflicts.
#[test]
fn own_probes_reflected_back_are_not_a_conflict() {
    let lab = Lab::new();
    lab.ip(&lab.fabric, "link set pe0 type bridge_slave hairpin on");
    lab.add_addr(&lab.pod, "10.6.0.5/24", false);
    lab.add_addr(&lab.pod, "fd00:6::5/64", false);
    let idx = lab.ifindex(&lab.pod, "eth0");
    let listener = lab
        .netns(&lab.pod)
        .run(|| PacketSocket::open(idx, ETH_P_ARP))
        .expect("enter pod")
        .expect("listener");
    let nic = lab.probe(&[v4(POD_V4), v6(POD_V6)], &[], true, false);
    let r = lab.detect(&nic);
    assert!(r.is_clean(), "{r:?}");
    // The fixture really reflected our probes back to us as incoming frames.
    let mut buf = vec![0u8; 2048];
    let mut reflected = 0;
    while let Some((n, dir)) = listener.try_recv(&mut buf).expect("recv") {
        let own = arp::parse(&buf[..n]).is_some_and(|a| a.is_probe() && a.sender_mac == POD_MAC);
        if own && dir == coordinator::detect::socket::Direction::Incoming {
            reflected += 1;
        }
    }
    assert!(reflected > 0, "hairpin did not reflect any probe");
}

/// RFC 5227 §2.1.1 / RFC 4862 §5.4.3: another host probing for the same
/// address at the same time is a conflict too.
#[test]
fn simultaneous_probe_by_another_host_is_a_conflict() {
    for family in [4, 6] {
        let mut lab = Lab::new();
        let other = lab.host('o', HOLDER_MAC, &[]);
        let (proto, frame, ip) = if family == 4 {
            (
                ETH_P_ARP,
                arp::probe(HOLDER_MAC, POD_V4).unwrap(),
                v4(POD_V4),
            )
        } else {
            (
                ETH_P_IPV6,
                ndp::dad_probe(HOLDER_MAC, POD_V6).unwrap(),
                v6(POD_V6),
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let t = keep_sending(&lab, &other, proto, vec![frame], stop.clone());
        let nic = lab.probe(&[ip], &[], true, false);
        let r = lab.detect(&nic);
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        assert_eq!(r.conflicts.len(), 1, "IPv{family}: {r:?}");
        assert_eq!(r.conflicts[0].ip, ip);
        assert_eq!(r.conflicts[0].mac, HOLDER_MAC);
    }
}

/// The realistic pod NIC: a macvlan on a node uplink. A macvlan filters
/// multicast, so hearing another host's DAD probe for an address the kernel
/// has not configured yet depends on joining its solicited-node group.
#[test]
fn macvlan_nic_hears_conflicts_through_its_multicast_filter() {
    let mut lab = Lab::new();
    let node = lab.host('m', [0x02, 0, 0, 0, 0x0d, 0x01], &[]);
    lab.ip(&node, "link set eth0 name ens1");
    lab.ip(
        &node,
        &format!(
            "link add link ens1 name net1 netns {} type macvlan mode bridge",
            lab.pod
        ),
    );
    lab.ip(&lab.pod, "link set net1 address 02:00:00:00:0e:05 up");
    let mac = [0x02, 0, 0, 0, 0x0e, 0x05];
    let other = lab.host('o', HOLDER_MAC, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let frames = vec![ndp::dad_probe(HOLDER_MAC, POD_V6).unwrap()];
    let t = keep_sending(&lab, &other, ETH_P_IPV6, frames, stop.clone());
    let nic = NicProbe {
        ifname: "net1".into(),
        ifindex: lab.ifindex(&lab.pod, "net1"),
        mac,
        addrs: vec![
            (v6(POD_V6), KernelDad::NotRun),
            (v4(POD_V4), KernelDad::NotRun),
        ],
        gateways: vec![v4(GW_V4), v6(GW_V6)],
        check_conflict: true,
        check_gateway: true,
        announce_v4: false,
        master: None,
    };
    let r = detect(
        &lab.netns(&lab.pod),
        &nic,
        &DetectOptions::default(),
        &|_| KernelDad::NotRun,
    )
    .expect("detect runs");
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(r.conflicts[0].ip, v6(POD_V6));
    assert_eq!(r.conflicts[0].mac, HOLDER_MAC);

    // Same NIC, no competing host: clean, gateways of both families reached.
    let r = detect(
        &lab.netns(&lab.pod),
        &nic,
        &DetectOptions::default(),
        &|_| KernelDad::NotRun,
    )
    .expect("detect runs");
    assert!(r.is_clean(), "{r:?}");
}

#[test]
fn kernel_dad_tentative_is_probed_and_polled() {
    // With a holder: our own probes (or the kernel) find it within the window.
    let mut lab = Lab::new();
    lab.host('h', HOLDER_MAC, &["fd00:6::5/64"]);
    lab.add_addr(&lab.pod.clone(), "fd00:6::5/64", true);
    // The holder defends at once: on a loaded machine the kernel may have
    // failed DAD before we look. Either way detect() is told "tentative" and
    // must poll the kernel and find the conflict.
    let fixture = lab.dad_state(v6(POD_V6));
    assert!(
        matches!(fixture, KernelDad::Tentative | KernelDad::Failed),
        "fixture: DAD running or failed, not {fixture:?}"
    );
    let mut nic = lab.probe(&[v6(POD_V6)], &[], true, false);
    nic.addrs[0].1 = KernelDad::Tentative;
    let polls = Cell::new(0);
    let state = |ip| {
        polls.set(polls.get() + 1);
        lab.dad_state(ip)
    };
    let r = detect(
        &lab.netns(&lab.pod),
        &nic,
        &DetectOptions::default(),
        &state,
    )
    .unwrap();
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(r.conflicts[0].ip, v6(POD_V6));
    assert!(polls.get() >= 1, "the kernel's verdict was consulted");
    drop(lab);

    // Without a holder: no conflict, although the kernel has not finished.
    let lab = Lab::new();
    lab.add_addr(&lab.pod, "fd00:6::5/64", true);
    let mut nic = lab.probe(&[v6(POD_V6)], &[], true, false);
    nic.addrs[0].1 = KernelDad::Tentative;
    polls.set(0);
    let state = |ip| {
        polls.set(polls.get() + 1);
        lab.dad_state(ip)
    };
    let r = detect(
        &lab.netns(&lab.pod),
        &nic,
        &DetectOptions::default(),
        &state,
    )
    .unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert!(
        polls.get() >= 2,
        "polled while waiting ({} polls)",
        polls.get()
    );
}

#[test]
fn kernel_dad_failure_is_a_conflict() {
    let mut lab = Lab::new();
    lab.host('h', HOLDER_MAC, &["fd00:6::5/64"]);
    lab.add_addr(&lab.pod.clone(), "fd00:6::5/64", true);
    // Fixture: wait (bounded) for the kernel's DAD to fail.
    let until = Instant::now() + Duration::from_secs(10);
    while lab.dad_state(v6(POD_V6)) != KernelDad::Failed {
        assert!(Instant::now() < until, "kernel DAD never failed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut nic = lab.probe(&[v6(POD_V6)], &[], true, false);
    nic.addrs[0].1 = lab.dad_state(v6(POD_V6));
    let r = lab.detect(&nic);
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(r.conflicts[0].mac, [0; 6]);
    assert!(r
        .to_result("eth0")
        .unwrap_err()
        .to_string()
        .contains("fd00:6::5"));
}

#[test]
fn down_missing_or_addressless_nic_is_a_clear_error() {
    let lab = Lab::new();
    lab.add_addr(&lab.pod, "10.6.0.5/24", false);
    let ns = lab.netns(&lab.pod);
    let opts = DetectOptions::default();
    let nic = lab.probe(&[v4(POD_V4)], &[v4(GW_V4)], true, true);

    lab.ip(&lab.pod, "link set eth0 down");
    let e = detect(&ns, &nic, &opts, &|_| KernelDad::NotRun).unwrap_err();
    assert!(e.to_string().contains("eth0 is down"), "{e}");
    lab.ip(&lab.pod, "link set eth0 up");

    let mut missing = nic.clone();
    missing.ifname = "net9".into();
    let e = detect(&ns, &missing, &opts, &|_| KernelDad::NotRun).unwrap_err();
    assert!(e.to_string().contains("no interface net9"), "{e}");

    let mut wrong = nic.clone();
    wrong.ifindex = 9999;
    assert!(detect(&ns, &wrong, &opts, &|_| KernelDad::NotRun).is_err());

    let mut other_mac = nic.clone();
    other_mac.mac = HOLDER_MAC;
    let e = detect(&ns, &other_mac, &opts, &|_| KernelDad::NotRun).unwrap_err();
    assert!(e.to_string().contains("has MAC 02:00:00:00:0a:05"), "{e}");

    let mut bare = nic.clone();
    bare.addrs.clear();
    let e = detect(&ns, &bare, &opts, &|_| KernelDad::NotRun).unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.to_string().contains("eth0"), "{e}");

    // Still works once the NIC is back up.
    assert!(lab.detect(&nic).is_clean());
}

/// Frames the fabric's bridge receives while `f` runs, plus a bounded grace
/// period for frames in flight (not a timing assertion). Listens on `br0`:
/// a bridge port hands frames to the bridge before protocol sockets on the
/// port itself would see them.
fn capture(lab: &Lab, f: impl FnOnce()) -> Vec<Vec<u8>> {
    let idx = lab.ifindex(&lab.fabric, "br0");
    let fab = lab.netns(&lab.fabric);
    let socks = fab
        .run(|| {
            (
                PacketSocket::open(idx, ETH_P_ARP),
                PacketSocket::open(idx, ETH_P_IPV6),
            )
        })
        .expect("enter fabric");
    let (a, b) = (socks.0.expect("arp socket"), socks.1.expect("ipv6 socket"));
    f();
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 9216];
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        let _ = coordinator::detect::socket::wait_readable(&[&a, &b], until).expect("poll");
        for s in [&a, &b] {
            while let Some((n, _)) = s.try_recv(&mut buf).expect("recv") {
                frames.push(buf[..n].to_vec());
            }
        }
    }
    frames
}

#[test]
fn announce_sends_garp_and_unsolicited_na() {
    let lab = Lab::new();
    let new_mac = [0x0a, 0x1b, 10, 6, 0, 5];
    let idx = lab.ifindex(&lab.pod, "eth0");
    let pod = lab.netns(&lab.pod);
    // As in ADD: the NIC already carries the MAC it announces.
    lab.ip(&lab.pod, "link set eth0 address 0a:1b:0a:06:00:05");
    let frames = capture(&lab, || {
        announce(&pod, idx, new_mac, &[v4(POD_V4), v6(POD_V6)]).expect("announce");
    });
    let garp = frames
        .iter()
        .filter(|f| f[..6] == [0xff; 6])
        .filter_map(|f| arp::parse(f))
        .find(|a| a.sender_ip == POD_V4)
        .expect("gratuitous ARP seen on the fabric");
    assert_eq!(garp.target_ip, POD_V4);
    assert_eq!(garp.sender_mac, new_mac);

    let na = frames
        .iter()
        .filter(|f| f[..6] == [0x33, 0x33, 0, 0, 0, 1])
        .filter_map(|f| ndp::parse(f))
        .find(|n| matches!(n, ndp::Nd::Advert { target, .. } if *target == POD_V6))
        .expect("unsolicited NA to ff02::1 seen on the fabric");
    let ndp::Nd::Advert {
        flags,
        lladdr,
        eth_src,
        ..
    } = na
    else {
        unreachable!()
    };
    assert_eq!(flags & 0x20, 0x20, "override set");
    assert_eq!(flags & 0x40, 0, "solicited clear");
    assert_eq!(lladdr, new_mac, "target link-layer option");
    assert_eq!(eth_src, new_mac);

    // Announcing nothing is a no-op, an unknown ifindex an error.
    announce(&pod, idx, new_mac, &[]).unwrap();
    assert!(announce(&pod, 9999, new_mac, &[v4(POD_V4)]).is_err());
}
