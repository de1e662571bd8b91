//! Issue 20: the coordinator on ipvlan, proven inside Debian 6.1 and 6.12
//! guests (this host's kernel has no ipvlan). scripts/lab-test.sh runs these
//! ignored tests in scripts/kernel-lab.sh; on the host they are ignored.
//!
//! - L2: a holder's reply to our ARP probe goes to the master in the node's
//!   netns (ipvlan dispatches unicast by destination IP, and the reply's is
//!   0.0.0.0): the coordinator listens there too and sees the conflict.
//! - L3/L3S: the slave is NOARP (no ARP, no ND, no kernel DAD): probes and
//!   gateway requests leave from the master, which has the same MAC; a clean
//!   ADD passes, a holder fails it, and nothing is announced from the slave.
//! - `podMACPrefix` on an ipvlan NIC is refused with code 7 naming it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cni_tests::{cni_path, conf_example, coordinator_entry, mac_of};
use integration::chain::{Attachment, Chain, ChainError, NetConfList, Outcome};
use integration::lab::{self, Lab};
use integration::traffic::ping;
use serde_json::{json, Value};

/// host-local hands out the start of each range first.
const POD4: Ipv4Addr = Ipv4Addr::new(10, 6, 1, 1);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 6, 0, 0, 0, 0, 1, 1);

/// The shipped dual-stack underlay conflist with ipvlan in `mode` in front.
fn chain(lab: &Lab, mode: &str, coordinator: Value) -> Chain {
    let mut list =
        NetConfList::from_file(conf_example("macvlan-underlay-dualstack.conflist")).unwrap();
    list.name = format!("ipvlan-{mode}");
    let main = list.plugin_mut("macvlan").unwrap();
    main.insert("type".into(), json!("ipvlan"));
    main.insert("mode".into(), json!(mode));
    lab.localize(&mut list);
    let c = coordinator_entry(&mut list, &coordinator, lab.dir());
    // Probes and answers cross an emulated machine: a wider window.
    c.insert(
        "detectOptions".into(),
        json!({"retries": 3, "interval": "50ms", "timeout": "500ms"}),
    );
    lab.chain(list)
        .cni_path(cni_path())
        .timeout(lab::slow(std::time::Duration::from_secs(60)))
}

fn detection_on() -> Value {
    json!({"detectIPConflict": true, "detectGateway": true})
}

fn expect_failure(res: Result<Outcome, Box<ChainError>>) -> Box<ChainError> {
    match res {
        Ok(o) => panic!("ADD should fail, got {:?}", o.result),
        Err(e) => {
            assert_eq!(e.plugin.as_deref(), Some("coordinator"), "{e:?}");
            e
        }
    }
}

/// The L3/L3S lab: the fabric routes the pod's addresses to the node, as a
/// real fabric in front of L3 ipvlan must (the slaves answer no ARP/ND).
fn route_pod_to_node(lab: &Lab) {
    let sn = lab.subnet(1).unwrap();
    let lines = vec![
        format!("route replace {POD4}/32 via {}", sn.node4.unwrap()),
        format!("route replace {POD6}/128 via {}", sn.node6.unwrap()),
    ];
    lab::state::ip_batch(lab.fabric(), &lines).unwrap();
}

/// A holder of the pod's address (one family) on the fabric: ADD fails with
/// 101 naming the NIC, the address and the holder's MAC, never the node's
/// own (the master's) MAC; the runtime's DEL then succeeds.
fn holder_fails_the_add(mode: &str, v6: bool) {
    let lab = Lab::new().unwrap();
    let (h4, h6) = if v6 {
        (None, Some(POD6))
    } else {
        (Some(POD4), None)
    };
    let taken: IpAddr = if v6 { POD6.into() } else { POD4.into() };
    let holder = lab.fabric_client(1, h4, h6).unwrap();
    let holder_mac = mac_of(&holder.name, "eth0");
    let node_mac = mac_of(lab.node(), "ens1");
    let chain = chain(&lab, mode, detection_on());
    let pod = lab.pod("p").unwrap();
    let att = Attachment::new(&format!("c-{mode}-{}", u8::from(v6)), &pod.path, "eth0");
    let err = expect_failure(chain.add(&att));
    assert_eq!(err.code, 101, "{mode} v6={v6}: {err:?}");
    for part in ["eth0", &taken.to_string(), &holder_mac] {
        assert!(err.msg.contains(part), "{} should name {part}", err.msg);
    }
    assert!(!err.msg.contains(&node_mac), "the node's MAC: {}", err.msg);
    chain.del(&att).unwrap();
    let left = lab::state::link_names(lab.node()).unwrap();
    assert!(
        !left.iter().any(|l| l.starts_with("veth")),
        "host veth left: {left:?}"
    );
}

/// No holder: detection runs, finds no conflict (not even the node's own
/// MAC, which the slave shares) and the gateways answer: ADD passes, the pod
/// reaches its gateway, nothing is announced from an L3 slave.
fn clean_add_passes(mode: &str) {
    let lab = Lab::new().unwrap();
    if mode != "l2" {
        route_pod_to_node(&lab);
    }
    let chain = chain(&lab, mode, detection_on());
    let pod = lab.pod("p").unwrap();
    let att = Attachment::new(&format!("c-clean-{mode}"), &pod.path, "eth0");
    let out = chain
        .add(&att)
        .unwrap_or_else(|e| panic!("{mode}: ADD with detection: {e}"));
    let log = std::fs::read_to_string(lab.dir().join("coordinator.log")).unwrap_or_default();
    assert!(
        log.contains("detection"),
        "{mode}: detection did not run:\n{log}"
    );
    if mode != "l2" {
        assert!(
            !log.contains("announcing the MAC"),
            "{mode}: an L3 slave announced its MAC:\n{log}"
        );
    }
    assert!(
        !log.contains("WARN"),
        "{mode}: a clean ADD logged a warning:\n{log}"
    );
    assert!(out.result.is_some());
    assert!(
        ping(&pod.name, "10.6.0.1".parse().unwrap(), None),
        "{mode}: pod cannot reach its gateway"
    );
    chain.check(&att).unwrap();
    chain.del(&att).unwrap();
}

#[test]
#[ignore = "needs ipvlan: scripts/lab-test.sh runs it in a Debian guest"]
fn ipvlan_l2_ipv4_holder_is_seen_on_the_master() {
    holder_fails_the_add("l2", false);
}

#[test]
#[ignore = "needs ipvlan: scripts/lab-test.sh runs it in a Debian guest"]
fn ipvlan_l2_ipv6_holder_fails_the_add() {
    holder_fails_the_add("l2", true);
}

#[test]
#[ignore = "needs ipvlan: scripts/lab-test.sh runs it in a Debian guest"]
fn ipvlan_l3_ipv4_holder_is_probed_from_the_master() {
    holder_fails_the_add("l3", false);
}

#[test]
#[ignore = "needs ipvlan: scripts/lab-test.sh runs it in a Debian guest"]
fn ipvlan_l3s_ipv6_holder_is_probed_from_the_master() {
    holder_fails_the_add("l3s", true);
}

#[test]
#[ignore = "needs ipvlan: scripts/lab-test.sh runs it in a Debian guest"]
fn ipvlan_l2_clean_add_with_detection_passes() {
    clean_add_passes("l2");
}

#[test]
#[ignore = "needs ipvlan: scripts/lab-test.sh runs it in a Debian guest"]
fn ipvlan_l3_clean_add_with_detection_passes() {
    clean_add_passes("l3");
}

#[test]
#[ignore = "needs ipvlan: scripts/lab-test.sh runs it in a Debian guest"]
fn ipvlan_l3s_clean_add_with_detection_passes() {
    clean_add_passes("l3s");
}

#[test]
#[ignore = "needs ipvlan: scripts/lab-test.sh runs it in a Debian guest"]
fn ipvlan_refuses_pod_mac_prefix() {
    let lab = Lab::new().unwrap();
    let refused = chain(&lab, "l2", json!({"podMACPrefix": "0a:0b"}));
    let pod = lab.pod("p").unwrap();
    let att = Attachment::new("c-macprefix", &pod.path, "eth0");
    let err = expect_failure(refused.add(&att));
    assert_eq!(err.code, 7, "{err:?}");
    assert!(err.msg.contains("podMACPrefix"), "{}", err.msg);
    refused.del(&att).unwrap();
    // A network opts out of a node-wide prefix with "".
    let defaults = lab.dir().join("defaults.json");
    std::fs::write(&defaults, r#"{"podMACPrefix": "0a:0b"}"#).unwrap();
    let opted_out = chain(
        &lab,
        "l2",
        json!({"podMACPrefix": "", "defaultsFile": defaults}),
    );
    opted_out
        .add(&att)
        .unwrap_or_else(|e| panic!("ADD opting out of the defaults' prefix: {e}"));
    opted_out.del(&att).unwrap();
}

/// `conf-examples/ipvlan-underlay.conflist` as shipped (coordinator-ipam
/// with its default store: in a guest that is the guest's tmpfs overlay):
/// ADD, the pod reaches its gateway and the node reaches the pod through
/// the underlay veth, CHECK passes, DEL leaves no host veth.
#[test]
#[ignore = "needs ipvlan: scripts/lab-test.sh runs it in a Debian guest"]
fn ipvlan_underlay_example_runs_as_shipped() {
    let lab = Lab::new().unwrap();
    let mut list = NetConfList::from_file(conf_example("ipvlan-underlay.conflist")).unwrap();
    // Only the log is moved next to the lab; the rest is as shipped.
    lab.localize(&mut list);
    let chain = lab
        .chain(list)
        .cni_path(cni_path())
        .timeout(lab::slow(std::time::Duration::from_secs(60)));
    let pod = lab.pod("p").unwrap();
    let att = Attachment::new("c-shipped", &pod.path, "eth0");
    let out = chain
        .add(&att)
        .unwrap_or_else(|e| panic!("ADD of the shipped ipvlan conflist: {e}"));
    let ip = integration::chain::result_ips(out.result.as_ref().unwrap())[0];
    assert!(ping(&pod.name, "10.6.0.1".parse().unwrap(), None));
    assert!(ping(lab.node(), ip, None), "node cannot reach {ip}");
    chain.check(&att).unwrap();
    chain.del(&att).unwrap();
    let left = lab::state::link_names(lab.node()).unwrap();
    assert!(
        !left.iter().any(|l| l.starts_with("veth")),
        "host veth left: {left:?}"
    );
}
