//! The plugin binary speaking CNI: every spec version, every verb.

mod common;

/// Each test runs once on the file store and once on a real one-member etcd.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn file() {
                super::$name(&Lab::new())
            }
            #[test]
            fn etcd() {
                super::$name(&Lab::etcd())
            }
        }
    )*};
}

on_both_stores!(
    add_check_del_in_every_spec_version,
    del_of_unknown_attachment_is_ok_and_touches_nothing,
    rotation_exhaustion_and_status,
    gc_releases_only_this_nodes_unlisted_attachments,
    requested_addresses_from_each_source,
    quarantined_addresses_are_skipped,
    sticky_pod_keeps_its_address_across_sandboxes_and_nodes,
    bad_config_names_the_field,
);

#[test]
fn del_with_an_invalid_ipam_config_still_releases_from_the_file_store() {
    del_with_an_invalid_ipam_config_still_releases(&Lab::new())
}

use common::*;
use serde_json::{json, Value};

fn dual_pools() -> Value {
    json!([
        {"name": "v4", "subnet": "10.6.0.0/16", "ranges": ["10.6.1.10-10.6.1.20"], "gateway": "10.6.0.1",
         "routes": [{"dst": "10.233.0.0/18"}, {"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]},
        {"name": "v6", "subnet": "fd00:6::/64", "gateway": "fd00:6::1", "routes": [{"dst": "fd00:233::/112"}]}
    ])
}

fn add_check_del_in_every_spec_version(lab: &Lab) {
    for (i, version) in VERSIONS.iter().enumerate() {
        let conf = lab.conf(version, dual_pools(), json!({}));
        let cid = format!("ctr{i}");
        let r = Call::new("ADD", &cid).ok(&conf);
        assert_eq!(r["cniVersion"], *version);
        let ips = r["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "{r}");
        assert!(
            ips[0]["address"].as_str().unwrap().starts_with("10.6.1."),
            "{r}"
        );
        assert!(ips[0]["address"].as_str().unwrap().ends_with("/16"), "{r}");
        assert_eq!(ips[0]["gateway"], "10.6.0.1");
        assert!(ips[1]["address"].as_str().unwrap().ends_with("/64"), "{r}");
        assert_eq!(ips[1]["gateway"], "fd00:6::1");
        if version.starts_with("0.") {
            assert_eq!(ips[0]["version"], "4", "{r}");
            assert_eq!(ips[1]["version"], "6", "{r}");
        } else {
            assert!(ips[0].get("version").is_none(), "{r}");
        }
        let routes: Vec<&str> = r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["dst"].as_str().unwrap())
            .collect();
        assert_eq!(routes, vec!["10.233.0.0/18", "0.0.0.0/0", "fd00:233::/112"]);
        assert_eq!(r["routes"][1]["gw"], "10.6.0.1");

        // Idempotent per attachment.
        let again = Call::new("ADD", &cid).ok(&conf);
        assert_eq!(result_ips(&again), result_ips(&r));

        if *version != "0.3.0" && *version != "0.3.1" {
            let mut with_prev = conf.clone();
            with_prev["prevResult"] = r.clone();
            Call::new("CHECK", &cid).ok(&with_prev);
            // A prevResult that differs from the reservation fails.
            let mut wrong = with_prev.clone();
            wrong["prevResult"]["ips"][0]["address"] = json!("10.6.1.99/16");
            Call::new("CHECK", &cid).fails(&wrong, 103);
            // No reservation at all fails.
            Call::new("CHECK", "nobody").fails(&with_prev, 103);
        }
        Call::new("DEL", &cid).ok(&conf);
        Call::new("DEL", &cid).ok(&conf);
        assert!(!lab
            .recorded_ips("net1")
            .iter()
            .any(|ip| result_ips(&r).contains(ip)));
    }
}

fn del_of_unknown_attachment_is_ok_and_touches_nothing(lab: &Lab) {
    let conf = lab.conf("1.0.0", dual_pools(), json!({}));
    Call::new("DEL", "never-added").ok(&conf);
    assert!(
        !lab.data_dir().exists(),
        "DEL with nothing recorded must not create state"
    );
    assert!(lab.recorded_ips("net1").is_empty());
}

fn rotation_exhaustion_and_status(lab: &Lab) {
    let pools = json!([{"name": "tiny", "subnet": "10.7.0.0/29", "gateway": "10.7.0.1"}]);
    let conf = lab.conf("1.1.0", pools, json!({}));
    Call::new("STATUS", "").ok(&conf);
    let mut got = Vec::new();
    for i in 0..5 {
        got.extend(result_ips(&Call::new("ADD", &format!("c{i}")).ok(&conf)));
    }
    assert_eq!(
        got,
        vec!["10.7.0.2", "10.7.0.3", "10.7.0.4", "10.7.0.5", "10.7.0.6"]
    );
    let msg = Call::new("ADD", "c5").fails(&conf, 110);
    assert!(msg.contains("tiny"), "{msg}");
    let msg = Call::new("STATUS", "").fails(&conf, 50);
    assert!(msg.contains("tiny"), "{msg}");
    Call::new("DEL", "c1").ok(&conf);
    Call::new("STATUS", "").ok(&conf);
    // Rotation: the freed .3 comes back only because it is the only one left.
    assert_eq!(
        result_ips(&Call::new("ADD", "c6").ok(&conf)),
        vec!["10.7.0.3"]
    );
}

fn gc_releases_only_this_nodes_unlisted_attachments(lab: &Lab) {
    let pools = json!([{"name": "p", "subnet": "10.8.0.0/24"}]);
    let conf = lab.conf("1.1.0", pools.clone(), json!({}));
    let other_node = lab.conf("1.1.0", pools, json!({"nodeName": "node2"}));
    let keep = result_ips(&Call::new("ADD", "keep").ok(&conf));
    let stale = result_ips(&Call::new("ADD", "stale").ok(&conf));
    let remote = result_ips(&Call::new("ADD", "remote").ok(&other_node));
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "net1"}]);
    Call::new("GC", "").ok(&gc);
    let left = lab.recorded_ips("net1");
    assert!(left.contains(&keep[0]));
    assert!(
        left.contains(&remote[0]),
        "another node's record must survive this node's GC"
    );
    assert!(!left.contains(&stale[0]));
}

fn requested_addresses_from_each_source(lab: &Lab) {
    let pools = json!([{"name": "p", "subnet": "10.9.0.0/24", "gateway": "10.9.0.1"},
                       {"name": "p6", "subnet": "fd00:9::/64"}]);
    let base = lab.conf("1.0.0", pools, json!({}));

    let mut rc = base.clone();
    rc["runtimeConfig"] = json!({"ips": ["10.9.0.50/24", "fd00:9::50/64"]});
    assert_eq!(
        result_ips(&Call::new("ADD", "a").ok(&rc)),
        vec!["10.9.0.50", "fd00:9::50"]
    );

    let mut args = base.clone();
    args["args"] = json!({"cni": {"ips": ["10.9.0.51"]}});
    let got = result_ips(&Call::new("ADD", "b").ok(&args));
    assert_eq!(got[0], "10.9.0.51");
    assert_eq!(
        got.len(),
        2,
        "the family not asked for is allocated dynamically"
    );

    assert_eq!(
        result_ips(
            &Call::new("ADD", "c")
                .args("IP=10.9.0.52,fd00:9::52")
                .ok(&base)
        ),
        vec!["10.9.0.52", "fd00:9::52"]
    );
    // Taken, gateway, outside every pool.
    let msg = Call::new("ADD", "d").args("IP=10.9.0.50").fails(&base, 111);
    assert!(msg.contains("container a"), "{msg}");
    Call::new("ADD", "d").args("IP=10.9.0.1").fails(&base, 111);
    Call::new("ADD", "d").args("IP=10.99.0.1").fails(&base, 111);
    Call::new("ADD", "d").args("IP=banana").fails(&base, 4);
}

fn quarantined_addresses_are_skipped(lab: &Lab) {
    let pools =
        json!([{"name": "p", "subnet": "10.10.0.0/24", "ranges": ["10.10.0.10-10.10.0.13"]}]);
    let conf = lab.conf("1.0.0", pools, json!({}));
    let ttl = std::time::Duration::from_secs(600);
    cni::quarantine::record(
        &lab.quarantine(),
        "10.10.0.10".parse().unwrap(),
        ttl,
        "arp reply",
    )
    .unwrap();
    cni::quarantine::record(
        &lab.quarantine(),
        "10.10.0.11".parse().unwrap(),
        ttl,
        "arp reply",
    )
    .unwrap();
    assert_eq!(
        result_ips(&Call::new("ADD", "a").ok(&conf)),
        vec!["10.10.0.12"]
    );
    let msg = Call::new("ADD", "b")
        .args("IP=10.10.0.11")
        .fails(&conf, 111);
    assert!(msg.contains("quarantined"), "{msg}");
}

fn sticky_pod_keeps_its_address_across_sandboxes_and_nodes(lab: &Lab) {
    let pools = json!([{"name": "p", "subnet": "10.11.0.0/24"}]);
    let sticky = json!({"sticky": [{"namespace": "db", "pod": "mysql-*"}]});
    let node1 = lab.conf("1.1.0", pools.clone(), sticky.clone());
    let mut node2 = lab.conf("1.1.0", pools, sticky);
    node2["ipam"]["nodeName"] = json!("node2");
    let pod = "K8S_POD_NAMESPACE=db;K8S_POD_NAME=mysql-0;K8S_POD_UID=u1";
    let first = result_ips(&Call::new("ADD", "sb1").args(pod).ok(&node1));
    // Others move the rotation on.
    Call::new("ADD", "w1")
        .args("K8S_POD_NAMESPACE=web;K8S_POD_NAME=w")
        .ok(&node1);
    Call::new("DEL", "sb1").args(pod).ok(&node1);
    Call::new("ADD", "w2")
        .args("K8S_POD_NAMESPACE=web;K8S_POD_NAME=w2")
        .ok(&node1);
    // Recreated (new UID, new sandbox) on another node: same address.
    let pod2 = "K8S_POD_NAMESPACE=db;K8S_POD_NAME=mysql-0;K8S_POD_UID=u2";
    assert_eq!(
        result_ips(&Call::new("ADD", "sb2").args(pod2).ok(&node2)),
        first
    );
    // The old sandbox's late DEL frees nothing the new one holds.
    Call::new("DEL", "sb1").args(pod).ok(&node1);
    let mut gc = node1.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    Call::new("GC", "").ok(&gc); // node1's GC does not see node2's sandbox
    assert!(lab.recorded_ips("net1").contains(&first[0]));
    let mut prev = node2.clone();
    prev["prevResult"] =
        json!({"cniVersion": "1.1.0", "ips": [{"address": format!("{}/24", first[0])}]});
    Call::new("CHECK", "sb2").args(pod2).ok(&prev);
}

fn bad_config_names_the_field(lab: &Lab) {
    let conf = lab.conf("1.0.0", json!([{"subnet": "10.12.0.0/24"}, {"subnet": "10.13.0.0/24", "ranges": ["10.13.0.9-10.13.0.2"]}]), json!({}));
    let msg = Call::new("ADD", "a").fails(&conf, 7);
    assert!(msg.contains("ipam.pools[1].ranges[0]"), "{msg}");
    let mut no_ipam = conf.clone();
    no_ipam.as_object_mut().unwrap().remove("ipam");
    assert!(Call::new("ADD", "a").fails(&no_ipam, 7).contains("ipam"));
}

fn del_with_an_invalid_ipam_config_still_releases(lab: &Lab) {
    let conf = lab.conf("1.0.0", dual_pools(), json!({}));
    let held = result_ips(&Call::new("ADD", "bad-conf").ok(&conf));
    let other = result_ips(&Call::new("ADD", "bystander").ok(&conf));
    assert_eq!(held.len(), 2);
    // The config was edited into something invalid after the ADD; DEL
    // succeeds and still frees the attachment's addresses (only its own).
    let mut broken = conf.clone();
    broken["ipam"]["pools"] = json!([{"subnet": "10.6.0.0/33", "bogus": 1}]);
    broken["ipam"]["sticky"] = json!("nope");
    Call::new("DEL", "bad-conf").ok(&broken);
    let left = lab.recorded_ips("net1");
    assert!(held.iter().all(|ip| !left.contains(ip)), "{left:?}");
    assert!(other.iter().all(|ip| left.contains(ip)), "{left:?}");
    // ADD with that config is still refused.
    Call::new("ADD", "bad-conf").fails(&broken, 7);
    // A store of another kind cannot be searched: DEL succeeds, frees nothing.
    let mut etcd = broken.clone();
    etcd["ipam"]["store"] = json!({"kind": "etcd", "endpoints": []});
    Call::new("DEL", "bystander").ok(&etcd);
    assert_eq!(lab.recorded_ips("net1").len(), 2);
    // A broken store is still an error, never a silent success.
    std::fs::write(lab.state_file("net1"), b"{garbage").unwrap();
    Call::new("DEL", "bystander").fails(&broken, 112);
}
