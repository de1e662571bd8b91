//! Issue 5 in the lab: IPv4/IPv6 conflict detection, gateway detection, the
//! quarantine file and the fixed MAC prefix, with the real macvlan +
//! host-local in front of the coordinator and real peers on the fabric.
//! Needs root; never skips.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use cni_tests::{cni_path, conf_example, coordinator_entry, ifindex, mac_of};
use coordinator::detect::arp;
use coordinator::detect::ndp::{self, Nd};
use coordinator::detect::socket::{wait_readable, PacketSocket, ETH_P_ARP, ETH_P_IPV6};
use integration::chain::{Attachment, Chain, ChainError, NetConfList};
use integration::lab::{self, in_netns, Lab};
use integration::traffic::ping;
use serde_json::{json, Value};

/// host-local hands out the start of each range first.
const POD4: Ipv4Addr = Ipv4Addr::new(10, 6, 1, 1);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 6, 0, 0, 0, 0, 1, 1);

fn chain(lab: &Lab, file: &str, coordinator: Value) -> Chain {
    let mut list = NetConfList::from_file(conf_example(file)).unwrap();
    lab.localize(&mut list);
    coordinator_entry(&mut list, &coordinator, lab.dir());
    lab.chain(list).cni_path(cni_path())
}

fn detection_on() -> Value {
    json!({"detectIPConflict": true, "detectGateway": true})
}

fn expect_failure(res: Result<integration::chain::Outcome, Box<ChainError>>) -> Box<ChainError> {
    match res {
        Ok(o) => panic!("ADD should fail, got {:?}", o.result),
        Err(e) => {
            assert_eq!(e.plugin.as_deref(), Some("coordinator"), "{e:?}");
            e
        }
    }
}

/// After a failed coordinator ADD: no host veth, no host route or neighbour
/// for the pod's addresses, no veth0 in the pod.
fn assert_nothing_configured(lab: &Lab, pod: &str, ips: &[IpAddr]) {
    let node_links = lab::state::link_names(lab.node()).unwrap();
    assert!(
        !node_links.iter().any(|l| l.starts_with("veth")),
        "host veth left: {node_links:?}"
    );
    assert!(
        !lab::state::link_names(pod)
            .unwrap()
            .contains(&"veth0".to_string()),
        "pod veth0 left"
    );
    let routes = lab::routes(lab.node(), "all").unwrap().to_string();
    let neigh = lab::neighbours(lab.node()).unwrap().to_string();
    for ip in ips {
        assert!(
            !routes.contains(&format!("\"{ip}\"")),
            "host route to {ip} left: {routes}"
        );
        assert!(
            !neigh.contains(&format!("\"{ip}\"")),
            "host neighbour {ip} left: {neigh}"
        );
    }
    let rules = lab::rules(pod).unwrap().to_string();
    assert!(!rules.contains("fwmark"), "pod rules left: {rules}");
}

fn quarantined(lab: &Lab) -> Vec<String> {
    let text = std::fs::read_to_string(lab.dir().join("quarantine.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["ip"].as_str().map(str::to_string))
        .collect()
}

/// An outside machine already uses the address host-local will hand out
/// (IPv4, IPv6, or both): ADD fails naming the NIC, every taken address and
/// the holder's MAC, every taken address is quarantined, nothing stays
/// configured, and the runtime's DEL then succeeds.
fn conflict_fails_the_add_and_is_quarantined(v4: bool, v6: bool) {
    let lab = Lab::new().unwrap();
    let v4_holder = v4.then_some(POD4);
    let v6_holder = v6.then_some(POD6);
    let mut taken: Vec<IpAddr> = Vec::new();
    if v4 {
        taken.push(POD4.into());
    }
    if v6 {
        taken.push(POD6.into());
    }
    let holder = lab.fabric_client(1, v4_holder, v6_holder).unwrap();
    let holder_mac = mac_of(&holder.name, "eth0");
    let chain = chain(&lab, "macvlan-underlay.conflist", detection_on());
    let pod = lab.pod("p").unwrap();
    let att = Attachment::new(&format!("c-conflict{v4}{v6}"), &pod.path, "eth0");
    let err = expect_failure(chain.add(&att));
    assert_eq!(err.code, 101, "{err:?}");
    let mut parts = vec!["eth0".to_string(), holder_mac.clone()];
    parts.extend(taken.iter().map(IpAddr::to_string));
    for part in &parts {
        assert!(
            err.msg.contains(part.as_str()),
            "{} should name {part}",
            err.msg
        );
    }
    let mut q = quarantined(&lab);
    q.sort();
    let mut want: Vec<String> = taken.iter().map(IpAddr::to_string).collect();
    want.sort();
    assert_eq!(q, want);
    assert_nothing_configured(&lab, &pod.name, &[POD4.into(), POD6.into()]);
    chain.del(&att).unwrap();
}

#[test]
fn ipv4_conflict_fails_the_add_and_is_quarantined() {
    conflict_fails_the_add_and_is_quarantined(true, false);
}

#[test]
fn ipv6_conflict_fails_the_add_and_is_quarantined() {
    conflict_fails_the_add_and_is_quarantined(false, true);
}

/// Issue 24: both addresses held is both reported and both quarantined
/// (the kernel's DAD used to end the check before the ARP reply counted).
#[test]
fn conflicts_in_both_families_are_all_reported_and_quarantined() {
    conflict_fails_the_add_and_is_quarantined(true, true);
}

#[test]
fn no_conflict_and_reachable_gateways_pass() {
    let lab = Lab::new().unwrap();
    let chain = chain(&lab, "macvlan-underlay.conflist", detection_on());
    let pod = lab.pod("p").unwrap();
    let att = Attachment::new("c-clean", &pod.path, "eth0");
    let gw4: Ipv4Addr = "10.6.0.1".parse().unwrap();
    let fabric = lab.fabric().to_string();
    let listener = start_listen(&fabric, "br1", move |h| {
        h.arp.iter().any(|a| a.is_probe() && a.target_ip == POD4)
            && h.arp
                .iter()
                .any(|a| a.sender_ip == POD4 && a.target_ip == gw4)
    });
    chain.add(&att).unwrap();
    let heard = listener.join().unwrap();
    // The checks really ran: a conflict probe for the address and a request
    // from it to the gateway crossed the fabric, and the ADD still passed.
    assert!(
        heard
            .arp
            .iter()
            .any(|a| a.is_probe() && a.target_ip == POD4),
        "no ARP probe for {POD4}: {heard:?}"
    );
    assert!(
        heard
            .arp
            .iter()
            .any(|a| a.sender_ip == POD4 && a.target_ip == gw4),
        "no gateway request from {POD4} to {gw4}: {heard:?}"
    );
    assert!(quarantined(&lab).is_empty());
    assert!(ping(&pod.name, "10.6.0.1".parse().unwrap(), None));
    chain.del(&att).unwrap();
}

#[test]
fn missing_gateway_fails_the_add() {
    let lab = Lab::new().unwrap();
    let mut list = NetConfList::from_file(conf_example("macvlan-underlay.conflist")).unwrap();
    // A gateway nobody holds.
    list.plugin_mut("macvlan").unwrap()["ipam"]["ranges"][0][0]["gateway"] = json!("10.6.0.99");
    lab.localize(&mut list);
    list.plugin_mut("coordinator")
        .unwrap()
        .insert("detectGateway".into(), json!(true));
    let chain = lab.chain(list).cni_path(cni_path());
    let pod = lab.pod("p").unwrap();
    let att = Attachment::new("c-nogw", &pod.path, "eth0");
    let err = expect_failure(chain.add(&att));
    assert_eq!(err.code, 102, "{err:?}");
    assert!(err.msg.contains("10.6.0.99"), "{}", err.msg);
    assert!(
        !err.msg.contains("fd00:6::1 "),
        "the IPv6 gateway answers: {}",
        err.msg
    );
    assert_nothing_configured(&lab, &pod.name, &[POD4.into(), POD6.into()]);
    chain.del(&att).unwrap();
}

/// Frames a fabric listener heard on a bridge.
#[derive(Default, Debug)]
struct Heard {
    arp: Vec<arp::Arp>,
    nd: Vec<Nd>,
}

/// Listen on `bridge` in the fabric until `stop` says so or 5 s pass.
/// Returns once the listener's sockets are open, so nothing sent after it
/// returns can be missed.
fn start_listen(
    fabric: &str,
    bridge: &str,
    stop: impl Fn(&Heard) -> bool + Send + 'static,
) -> std::thread::JoinHandle<Heard> {
    let (fabric, bridge) = (fabric.to_string(), bridge.to_string());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = std::thread::spawn(move || listen(&fabric, &bridge, ready_tx, stop));
    // An error (the sender dropped) surfaces at join.
    let _ = ready_rx.recv();
    listener
}

fn listen(
    fabric: &str,
    bridge: &str,
    ready: std::sync::mpsc::Sender<()>,
    stop: impl Fn(&Heard) -> bool + Send,
) -> Heard {
    let (fabric, bridge) = (fabric.to_string(), bridge.to_string());
    in_netns(&fabric, move || {
        // sysfs shows the mount's netns, not this thread's: ask the kernel.
        let idx = ifindex(&bridge)?;
        let socks = [
            PacketSocket::open(idx, ETH_P_ARP)?,
            PacketSocket::open(idx, ETH_P_IPV6)?,
        ];
        let _ = ready.send(());
        let mut heard = Heard::default();
        let until = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 4096];
        while Instant::now() < until && !stop(&heard) {
            let refs: Vec<&PacketSocket> = socks.iter().collect();
            for i in wait_readable(&refs, until.min(Instant::now() + Duration::from_millis(50)))? {
                while let Some((n, _)) = socks[i].try_recv(&mut buf)? {
                    if let Some(a) = arp::parse(&buf[..n]) {
                        heard.arp.push(a);
                    } else if let Some(nd) = ndp::parse(&buf[..n]) {
                        heard.nd.push(nd);
                    }
                }
            }
        }
        Ok(heard)
    })
    .unwrap()
}

#[test]
fn mac_prefix_sets_the_mac_and_announces_it() {
    let lab = Lab::new().unwrap();
    let chain = chain(
        &lab,
        "macvlan-underlay.conflist",
        json!({"podMACPrefix": "0a:1b"}),
    );
    let pod = lab.pod("p").unwrap();
    let att = Attachment::new("c-mac", &pod.path, "eth0");
    let want: [u8; 6] = [0x0a, 0x1b, 10, 6, 1, 1];
    let want_s = "0a:1b:0a:06:01:01";
    let fabric = lab.fabric().to_string();
    let listener = start_listen(&fabric, "br1", move |h| {
        h.arp
            .iter()
            .any(|a| a.sender_mac == want && a.sender_ip == POD4)
            && h.nd
                .iter()
                .any(|n| matches!(n, Nd::Advert { target, .. } if *target == POD6))
    });
    let out = chain.add(&att).unwrap();
    let heard = listener.join().unwrap();

    assert_eq!(mac_of(&pod.name, "eth0"), want_s);
    let result = out.result.unwrap();
    assert_eq!(result["interfaces"][0]["mac"], want_s, "{result}");
    // Gratuitous ARP: sender = target = the pod address, with the new MAC.
    assert!(
        heard
            .arp
            .iter()
            .any(|a| a.sender_mac == want && a.sender_ip == POD4 && a.target_ip == POD4),
        "no GARP for {POD4} from {want_s}: {heard:?}"
    );
    // Unsolicited NA: override set, solicited clear, target link-layer = new MAC.
    assert!(
        heard.nd.iter().any(|n| matches!(n,
            Nd::Advert { target, flags, lladdr, .. }
                if *target == POD6 && *lladdr == want && flags & 0x20 != 0 && flags & 0x40 == 0)),
        "no unsolicited NA for {POD6} with {want_s}: {heard:?}"
    );
    // The fabric reaches the pod at its new MAC.
    assert!(ping(lab.fabric(), POD4.into(), None));
    assert!(ping(lab.fabric(), POD6.into(), None));
    chain.del(&att).unwrap();
}

/// With detection on, the new MAC is announced only once the probes found
/// no conflict (RFC 5227: probe, then announce), through the check's socket.
#[test]
fn mac_prefix_with_detection_announces_after_the_probes() {
    let lab = Lab::new().unwrap();
    let mut coordinator = detection_on();
    coordinator["podMACPrefix"] = json!("0a:1b");
    let chain = chain(&lab, "macvlan-underlay.conflist", coordinator);
    let pod = lab.pod("p").unwrap();
    let att = Attachment::new("c-mac-det", &pod.path, "eth0");
    let want: [u8; 6] = [0x0a, 0x1b, 10, 6, 1, 1];
    let fabric = lab.fabric().to_string();
    let is_garp =
        move |a: &arp::Arp| a.sender_mac == want && a.sender_ip == POD4 && a.target_ip == POD4;
    let listener = start_listen(&fabric, "br1", move |h| {
        h.arp.iter().any(is_garp) && h.arp.iter().any(|a| a.is_probe() && a.target_ip == POD4)
    });
    chain.add(&att).unwrap();
    let heard = listener.join().unwrap();

    assert_eq!(mac_of(&pod.name, "eth0"), "0a:1b:0a:06:01:01");
    let probe = heard
        .arp
        .iter()
        .position(|a| a.is_probe() && a.target_ip == POD4 && a.sender_mac == want);
    let garp = heard.arp.iter().position(is_garp);
    match (probe, garp) {
        (Some(p), Some(g)) => assert!(p < g, "announced before probing: {heard:?}"),
        _ => panic!("probe {probe:?} and announcement {garp:?} from the new MAC: {heard:?}"),
    }
    // Held off for the MAC change only: macvlan's arp_notify is back.
    let notify = in_netns(&pod.name, || {
        cni::netns::sysctl_get("net/ipv4/conf/eth0/arp_notify")
    })
    .unwrap();
    assert_eq!(notify, "1");
    assert!(ping(lab.fabric(), POD4.into(), None));
    chain.del(&att).unwrap();
}

/// A conflict found with podMACPrefix: after the probe nothing claims the
/// address, neither from the new MAC nor from the old one put back (the
/// kernel would announce both MAC changes with macvlan's arp_notify on).
#[test]
fn mac_prefix_conflict_is_not_announced() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let lab = Lab::new().unwrap();
    let holder = lab.fabric_client(1, Some(POD4), None).unwrap();
    let holder_mac = mac_of(&holder.name, "eth0");
    let mut coordinator = detection_on();
    coordinator["podMACPrefix"] = json!("0a:1b");
    let chain = chain(&lab, "macvlan-underlay.conflist", coordinator);
    let pod = lab.pod("p").unwrap();
    let att = Attachment::new("c-mac-conflict", &pod.path, "eth0");
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let fabric = lab.fabric().to_string();
    let listener = start_listen(&fabric, "br1", move |_| stop.load(Ordering::SeqCst));
    let err = expect_failure(chain.add(&att));
    // Frames still in flight reach the listener before it stops.
    std::thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::SeqCst);
    let heard = listener.join().unwrap();
    assert_eq!(err.code, 101, "{err:?}");

    let new_mac: [u8; 6] = [0x0a, 0x1b, 10, 6, 1, 1];
    let probe = heard
        .arp
        .iter()
        .position(|a| a.is_probe() && a.target_ip == POD4)
        .unwrap_or_else(|| panic!("no probe for {POD4}: {heard:?}"));
    let ours = |a: &&arp::Arp| format!("{}", coordinator::detect::Mac(&a.sender_mac)) != holder_mac;
    let claims: Vec<&arp::Arp> = heard.arp[probe..]
        .iter()
        .filter(|a| a.sender_ip == POD4 && a.target_ip == POD4)
        .filter(ours)
        .collect();
    assert!(
        claims.is_empty(),
        "{POD4} announced after the probe: {claims:?}"
    );
    assert!(
        !heard.arp[..probe].iter().any(|a| a.sender_mac == new_mac),
        "the new MAC was announced before the probe: {heard:?}"
    );
    chain.del(&att).unwrap();
}

#[test]
fn dual_stack_two_nics_probe_on_both_fabrics() {
    let lab = Lab::builder().subnets(2).build().unwrap();
    let eth0 = chain(&lab, "macvlan-underlay.conflist", detection_on());
    let net1 = chain(&lab, "macvlan-underlay-net1.conflist", detection_on());
    let pod = lab.pod("p").unwrap();
    let pod1_v4: Ipv4Addr = "10.7.1.1".parse().unwrap();
    let pod1_v6: Ipv6Addr = "fd00:7::1:1".parse().unwrap();
    let fab = lab.fabric().to_string();
    let l1 = start_listen(&fab, "br1", |h| {
        h.arp.iter().any(|a| a.is_probe() && a.target_ip == POD4)
            && h.nd.iter().any(|n| {
                matches!(n, Nd::Solicit { src, target, .. } if src.is_unspecified() && *target == POD6)
            })
    });
    let l2 = start_listen(&fab, "br2", move |h| {
        h.arp.iter().any(|a| a.is_probe() && a.target_ip == pod1_v4)
                && h.nd.iter().any(|n| {
                    matches!(n, Nd::Solicit { src, target, .. } if src.is_unspecified() && *target == pod1_v6)
                })
    });
    let a0 = Attachment::new("c-two", &pod.path, "eth0");
    let a1 = Attachment::new("c-two", &pod.path, "net1");
    let o0 = eth0.add(&a0).unwrap();
    let o1 = net1.add(&a1).unwrap();
    let (h1, h2) = (l1.join().unwrap(), l2.join().unwrap());
    assert!(
        h1.arp.iter().any(|a| a.is_probe() && a.target_ip == POD4),
        "{h1:?}"
    );
    assert!(
        h2.arp
            .iter()
            .any(|a| a.is_probe() && a.target_ip == pod1_v4),
        "{h2:?}"
    );
    assert!(
        h1.nd.iter().any(|n| matches!(n, Nd::Solicit { src, target, .. } if src.is_unspecified() && *target == POD6)),
        "{h1:?}"
    );
    assert!(
        h2.nd.iter().any(|n| matches!(n, Nd::Solicit { src, target, .. } if src.is_unspecified() && *target == pod1_v6)),
        "{h2:?}"
    );
    for o in [&o0, &o1] {
        let c = o.runs.iter().find(|r| r.plugin == "coordinator").unwrap();
        eprintln!("coordinator ADD with detection: {:?}", c.wall);
    }
    net1.del(&a1).unwrap();
    eth0.del(&a0).unwrap();
}
