//! CNI protocol conformance of the built binaries, exec'd as a runtime does:
//! cleared environment, explicit `CNI_*` variables, config on stdin. Needs
//! `cargo build --workspace --bins` first. No network namespace is created:
//! every ADD here either runs in `mode: disabled` or fails before touching
//! the kernel, and DEL only looks up links named after unique container ids.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use cni_tests::exec::{bin_path, Exec, Run};
use cni_tests::samples::sample_result;
use serde_json::{json, Value};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn coordinator() -> PathBuf {
    bin_path("coordinator")
}

/// A container id no other test (or process) uses.
fn unique_id(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "conf{}x{}{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A netns path that does not exist.
fn gone_netns(dir: &Path) -> String {
    dir.join("netns-that-never-existed").display().to_string()
}

/// A coordinator config isolated from the node: no defaults file, logs to
/// stderr at debug level, quarantine file in `dir`.
fn coord_conf(version: &str, dir: &Path, mode: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "confnet",
        "type": "coordinator",
        "mode": mode,
        "defaultsFile": dir.join("no-such-defaults.json"),
        "quarantineFile": dir.join("quarantine.json"),
        "logOptions": {"logLevel": "debug", "logFile": "-"},
    })
}

fn with_prev(mut conf: Value, prev: Value) -> Value {
    conf["prevResult"] = prev;
    conf
}

/// A valid chained ADD of a disabled coordinator in `version`.
fn good_add(version: &str, dir: &Path) -> Exec {
    let conf = with_prev(
        coord_conf(version, dir, "disabled"),
        sample_result(version, false),
    );
    Exec::cni(coordinator(), "ADD", &unique_id("a"), &gone_netns(dir)).stdin_json(&conf)
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

// ---------------------------------------------------------------- results

#[test]
fn disabled_add_prints_prev_result_in_config_version() {
    let dir = tmp();
    for conf_v in VERSIONS {
        for prev_v in VERSIONS {
            let prev = sample_result(prev_v, prev_v == "1.1.0");
            let conf = with_prev(coord_conf(conf_v, dir.path(), "disabled"), prev);
            let run = Exec::cni(
                coordinator(),
                "ADD",
                &unique_id("r"),
                &gone_netns(dir.path()),
            )
            .stdin_json(&conf)
            .run();
            let got = run.ok_json();
            let want = sample_result(conf_v, prev_v == "1.1.0" && conf_v == "1.1.0");
            assert_eq!(
                got, want,
                "config {conf_v}, prevResult {prev_v}:\n got {got}\nwant {want}"
            );
        }
    }
}

#[test]
fn add_result_has_only_what_the_version_defines() {
    // The same assertions as above, spelled out field by field so a failure
    // says which rule broke.
    let dir = tmp();
    let prev = sample_result("1.1.0", true);
    for v in VERSIONS {
        let conf = with_prev(coord_conf(v, dir.path(), "disabled"), prev.clone());
        let r = Exec::cni(
            coordinator(),
            "ADD",
            &unique_id("f"),
            &gone_netns(dir.path()),
        )
        .stdin_json(&conf)
        .run()
        .ok_json();
        assert_eq!(r["cniVersion"], v);
        let old = v < "1.0.0";
        for (i, fam) in [(0, "4"), (1, "6")] {
            assert_eq!(
                r["ips"][i].get("version").and_then(Value::as_str),
                old.then_some(fam),
                "{v}: ips[{i}].version"
            );
        }
        let eleven = v == "1.1.0";
        for f in ["mtu", "socketPath", "pciID"] {
            assert_eq!(
                r["interfaces"][0].get(f).is_some(),
                eleven,
                "{v}: interfaces[0].{f}"
            );
        }
        for f in ["mtu", "advmss", "priority", "table", "scope"] {
            assert_eq!(
                r["routes"][0].get(f).is_some(),
                eleven,
                "{v}: routes[0].{f}"
            );
        }
        assert_eq!(r["vendorField"], json!({"k": [1, 2]}), "{v}");
        assert_eq!(r["interfaces"][0]["x-vendor"], json!({"a": 1}), "{v}");
        assert_eq!(r["ips"][0]["x-ip"], "keep", "{v}");
        assert_eq!(r["routes"][0]["x-rt"], true, "{v}");
        assert_eq!(r["dns"]["search"][0], "svc.cluster.local", "{v}");
    }
}

#[test]
fn check_of_disabled_coordinator_succeeds_silently() {
    let dir = tmp();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let conf = with_prev(
            coord_conf(v, dir.path(), "disabled"),
            sample_result(v, false),
        );
        Exec::cni(
            coordinator(),
            "CHECK",
            &unique_id("c"),
            &gone_netns(dir.path()),
        )
        .stdin_json(&conf)
        .run()
        .ok_silent();
    }
}

// ---------------------------------------------------------------- VERSION

fn assert_version_info(run: &Run, want_version: &str) {
    let v = run.ok_json();
    assert_eq!(v["cniVersion"], want_version, "{v}");
    assert_eq!(v["supportedVersions"], json!(VERSIONS), "{v}");
}

#[test]
fn version_echoes_request_and_lists_all_versions() {
    let bin = coordinator();
    for v in VERSIONS {
        let run = Exec::new(&bin)
            .env("CNI_COMMAND", "VERSION")
            .stdin_json(&json!({"cniVersion": v}))
            .run();
        assert_version_info(&run, v);
    }
    // Empty stdin: the newest version.
    let run = Exec::new(&bin).env("CNI_COMMAND", "VERSION").run();
    assert_version_info(&run, "1.1.0");
    // A whole network config, as libcni sends it, with per-attachment vars
    // that VERSION must not need or validate.
    let run = Exec::new(&bin)
        .env("CNI_COMMAND", "VERSION")
        .env("CNI_IFNAME", "a/b")
        .env("CNI_NETNS", "relative")
        .env("CNI_ARGS", "novalue")
        .env("CNI_CONTAINERID", "bad/id")
        .stdin_json(&json!({"cniVersion": "0.4.0", "name": "n", "type": "coordinator"}))
        .run();
    assert_version_info(&run, "0.4.0");
}

// ---------------------------------------------------------------- errors

/// (what, exec) of a call whose environment is invalid; `base` is a valid
/// ADD. Missing CNI_COMMAND is left to the caller (coordinator-ipam is its
/// operator CLI then).
fn env_error_cases(base: &dyn Fn() -> Exec) -> Vec<(String, Exec)> {
    let mut cases: Vec<(String, Exec)> = vec![
        ("empty CNI_COMMAND".into(), base().env("CNI_COMMAND", "")),
        ("unknown command".into(), base().env("CNI_COMMAND", "FROB")),
        (
            "lower-case command".into(),
            base().env("CNI_COMMAND", "add"),
        ),
        (
            "relative netns".into(),
            base().env("CNI_NETNS", "var/run/netns/x"),
        ),
    ];
    for var in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH", "CNI_NETNS"] {
        cases.push((format!("ADD without {var}"), base().unset(var)));
        cases.push((format!("ADD with empty {var}"), base().env(var, "")));
    }
    for id in ["bad/id", "-leading-dash", "has space", "semi;colon", "é"] {
        cases.push((
            format!("container id {id:?}"),
            base().env("CNI_CONTAINERID", id),
        ));
    }
    for name in ["0123456789abcdef", "..", ".", "a/b", "a:b", "a b"] {
        cases.push((format!("ifname {name:?}"), base().env("CNI_IFNAME", name)));
    }
    for args in ["novalue", "FOO=bar", "=x", "K8S_POD_NAME=p;BOGUS=1"] {
        cases.push((format!("CNI_ARGS {args:?}"), base().env("CNI_ARGS", args)));
    }
    for var in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"] {
        let del = base().env("CNI_COMMAND", "DEL").unset(var);
        cases.push((format!("DEL without {var}"), del));
        let check = base().env("CNI_COMMAND", "CHECK").unset(var);
        cases.push((format!("CHECK without {var}"), check));
    }
    cases
}

/// Each case fails with code 4 and answers in the config's version.
fn assert_env_errors(cases: Vec<(String, Exec)>, version: &str) {
    for (what, exec) in cases {
        let run = exec.run();
        let e = std::panic::catch_unwind(|| run.err(4))
            .unwrap_or_else(|_| panic!("case {what}: see above"));
        assert_eq!(e["cniVersion"], version, "{what}: {e}");
    }
}

#[test]
fn invalid_environment_is_code_4() {
    let dir = tmp();
    // The config is written in 0.4.0 so the error's cniVersion can be told
    // apart from the newest version.
    let base = || good_add("0.4.0", dir.path());
    let mut cases = env_error_cases(&base);
    cases.push(("no CNI_COMMAND".into(), base().unset("CNI_COMMAND")));
    assert_env_errors(cases, "0.4.0");
}

#[test]
fn well_formed_cni_args_are_accepted() {
    let dir = tmp();
    for args in [
        "",
        "K8S_POD_NAMESPACE=db;K8S_POD_NAME=mysql-0;K8S_POD_UID=u;K8S_POD_INFRA_CONTAINER_ID=c",
        "IgnoreUnknown=1;FOO=bar",
        "IgnoreUnknown=true;FOO=bar;;",
    ] {
        let run = good_add("1.0.0", dir.path()).env("CNI_ARGS", args).run();
        assert_eq!(run.ok_json()["cniVersion"], "1.0.0", "CNI_ARGS {args:?}");
    }
}

#[test]
fn undecodable_config_is_code_6() {
    let dir = tmp();
    let base = || good_add("1.0.0", dir.path());
    let docs: [&[u8]; 9] = [
        b"",
        b"{",
        b"{\"cniVersion\": \"1.0.0\",}",
        b"[]",
        b"42",
        b"\"str\"",
        b"null",
        b"\xff\xfe{}",
        b"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"coordinator\"} trailing",
    ];
    for doc in docs {
        let run = base().stdin(doc.to_vec()).run();
        let e = run.err(6);
        // Nothing trustworthy names a version: the newest.
        assert_eq!(
            e["cniVersion"],
            "1.1.0",
            "{:?}",
            String::from_utf8_lossy(doc)
        );
    }
}

#[test]
fn missing_or_unsupported_cni_version_is_code_1() {
    let dir = tmp();
    for v in [
        None,
        Some(""),
        Some("0.2.0"),
        Some("0.1.0"),
        Some("1.2.0"),
        Some("9.9.9"),
    ] {
        let mut conf = with_prev(
            coord_conf("1.0.0", dir.path(), "disabled"),
            sample_result("1.0.0", false),
        );
        match v {
            None => {
                conf.as_object_mut().map(|o| o.remove("cniVersion"));
            }
            Some(s) => conf["cniVersion"] = json!(s),
        }
        let run = Exec::cni(
            coordinator(),
            "ADD",
            &unique_id("v"),
            &gone_netns(dir.path()),
        )
        .stdin_json(&conf)
        .run();
        let e = run.err(1);
        assert!(
            VERSIONS.contains(&e["cniVersion"].as_str().unwrap_or("")),
            "{v:?}: an error must be written in a version we speak: {e}"
        );
    }
}

#[test]
fn missing_name_or_type_is_code_7() {
    let dir = tmp();
    for (field, val) in [
        ("name", None),
        ("name", Some("")),
        ("name", Some("bad name")),
        ("type", None),
        ("type", Some("")),
    ] {
        let mut conf = with_prev(
            coord_conf("1.0.0", dir.path(), "disabled"),
            sample_result("1.0.0", false),
        );
        match val {
            None => {
                conf.as_object_mut().map(|o| o.remove(field));
            }
            Some(s) => conf[field] = json!(s),
        }
        let run = Exec::cni(
            coordinator(),
            "ADD",
            &unique_id("n"),
            &gone_netns(dir.path()),
        )
        .stdin_json(&conf)
        .run();
        let msg = run.err_msg(7);
        assert!(msg.contains(field), "{field}={val:?}: {msg}");
        assert_eq!(run.json()["cniVersion"], "1.0.0");
    }
}

#[test]
fn chained_add_without_prev_result_is_code_7() {
    let dir = tmp();
    for mode in ["disabled", "underlay", "auto"] {
        for v in VERSIONS {
            let conf = coord_conf(v, dir.path(), mode);
            let run = Exec::cni(
                coordinator(),
                "ADD",
                &unique_id("p"),
                &gone_netns(dir.path()),
            )
            .stdin_json(&conf)
            .run();
            let e = run.err(7);
            assert!(
                e["msg"].as_str().unwrap_or("").contains("prevResult"),
                "{e}"
            );
            assert_eq!(e["cniVersion"], v, "{e}");
        }
    }
}

#[test]
fn malformed_prev_result_is_code_6() {
    let dir = tmp();
    let bad = [
        json!([]),
        json!("result"),
        json!({"ips": [{"address": "not-an-ip"}]}),
        json!({"ips": [{"address": "10.0.0.1/8", "interface": 4}]}),
        json!({"ips": [{"gateway": "10.0.0.1"}]}),
        json!({"interfaces": [{"mac": "aa:bb:cc:dd:ee:ff"}]}),
        json!({"routes": [{"dst": "0.0.0.0/99"}]}),
        json!({"cniVersion": 7}),
    ];
    for prev in bad {
        let conf = with_prev(coord_conf("1.0.0", dir.path(), "disabled"), prev.clone());
        let run = Exec::cni(
            coordinator(),
            "ADD",
            &unique_id("m"),
            &gone_netns(dir.path()),
        )
        .stdin_json(&conf)
        .run();
        let msg = run.err_msg(6);
        assert!(msg.contains("prevResult"), "{prev}: {msg}");
    }
    // A prevResult in a version we do not speak is an incompatibility.
    let conf = with_prev(
        coord_conf("1.0.0", dir.path(), "disabled"),
        json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}),
    );
    Exec::cni(
        coordinator(),
        "ADD",
        &unique_id("m"),
        &gone_netns(dir.path()),
    )
    .stdin_json(&conf)
    .run()
    .err(1);
}

#[test]
fn verbs_outside_their_version_are_code_1() {
    let dir = tmp();
    for (cmd, versions) in [
        ("CHECK", &["0.3.0", "0.3.1"][..]),
        ("STATUS", &["0.3.1", "0.4.0", "1.0.0"][..]),
        ("GC", &["0.3.0", "0.4.0", "1.0.0"][..]),
    ] {
        for v in versions {
            let conf = with_prev(
                coord_conf(v, dir.path(), "disabled"),
                sample_result(v, false),
            );
            let run = Exec::cni(coordinator(), cmd, &unique_id("g"), &gone_netns(dir.path()))
                .stdin_json(&conf)
                .run();
            let e = run.err(1);
            assert_eq!(e["cniVersion"], *v, "{cmd} {v}: {e}");
            assert!(
                e["msg"].as_str().unwrap_or("").contains(cmd),
                "{cmd} {v}: {e}"
            );
        }
    }
}

#[test]
fn invalid_coordinator_field_is_code_7_naming_it() {
    let dir = tmp();
    let cases = [
        ("mode", json!("fancy")),
        ("mode", json!(1)),
        ("hostRuleTable", json!(254)),
        ("hostRuleTable", json!(0)),
        ("hostRuleTable", json!("500")),
        ("hostRulePriority", json!(0)),
        ("podReplyTable", json!(255)),
        ("podRuleTableFirst", json!(50)),
        ("podRulePriority", json!(32766)),
        ("podReplyRulePriority", json!(2000)),
        ("podMACPrefix", json!("0b:00")),
        ("podMACPrefix", json!("zz:zz")),
        ("podRPFilter", json!(7)),
        ("vethMTU", json!(20)),
        ("vethLinkAddress", json!("10.0.0.1")),
        ("serviceCIDR", json!("10.233.0.0/18")),
        ("hijackCIDR", json!(["300.0.0.0/8"])),
        ("policyRoutes", json!([{"dst": "10.0.0.0/8"}])),
        ("detectGateway", json!("yes")),
        ("podDefaultCniNic", json!("way-too-long-ifname")),
        ("quarantineTTL", json!("soon")),
        ("defaultsFile", json!(5)),
    ];
    for (field, val) in cases {
        let mut conf = with_prev(
            coord_conf("1.0.0", dir.path(), "underlay"),
            sample_result("1.0.0", false),
        );
        if field != "mode" {
            conf["mode"] = json!("disabled");
        }
        conf[field] = val.clone();
        let run = Exec::cni(
            coordinator(),
            "ADD",
            &unique_id("i"),
            &gone_netns(dir.path()),
        )
        .stdin_json(&conf)
        .run();
        let msg = run.err_msg(7);
        assert!(msg.contains(field), "{field}={val}: {msg}");
    }
    // Nested fields are named by their path.
    for (outer, inner, val, name) in [
        (
            "detectOptions",
            "retries",
            json!(0),
            "detectOptions.retries",
        ),
        (
            "detectOptions",
            "timeout",
            json!("1h"),
            "detectOptions.timeout",
        ),
        (
            "logOptions",
            "logLevel",
            json!("loud"),
            "logOptions.logLevel",
        ),
    ] {
        let mut conf = with_prev(
            coord_conf("1.0.0", dir.path(), "disabled"),
            sample_result("1.0.0", false),
        );
        conf[outer][inner] = val;
        let run = Exec::cni(
            coordinator(),
            "ADD",
            &unique_id("i"),
            &gone_netns(dir.path()),
        )
        .stdin_json(&conf)
        .run();
        let msg = run.err_msg(7);
        assert!(msg.contains(name), "{name}: {msg}");
    }
}

#[test]
fn add_into_missing_netns_is_code_3() {
    let dir = tmp();
    for v in VERSIONS {
        let conf = with_prev(
            coord_conf(v, dir.path(), "underlay"),
            sample_result(v, false),
        );
        let run = Exec::cni(
            coordinator(),
            "ADD",
            &unique_id("3"),
            &gone_netns(dir.path()),
        )
        .stdin_json(&conf)
        .run();
        let e = run.err(3);
        assert_eq!(e["cniVersion"], v, "{e}");
    }
}

#[test]
fn check_errors_are_reported_in_the_config_version() {
    let dir = tmp();
    let netns = gone_netns(dir.path());
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        // CHECK needs the result it checks.
        let e = Exec::cni(coordinator(), "CHECK", &unique_id("k"), &netns)
            .stdin_json(&coord_conf(v, dir.path(), "underlay"))
            .run()
            .err(7);
        assert!(
            e["msg"].as_str().unwrap_or("").contains("prevResult"),
            "{e}"
        );
        assert_eq!(e["cniVersion"], v);
        // A pod whose netns is gone is an unknown container.
        let conf = with_prev(
            coord_conf(v, dir.path(), "underlay"),
            sample_result(v, false),
        );
        let e = Exec::cni(coordinator(), "CHECK", &unique_id("k"), &netns)
            .stdin_json(&conf)
            .run()
            .err(3);
        assert_eq!(e["cniVersion"], v);
    }
}

// ---------------------------------------------------------------- DEL

#[test]
fn repeated_del_succeeds_with_and_without_prev_result() {
    let dir = tmp();
    let netns = gone_netns(dir.path());
    for mode in ["underlay", "auto", "overlay", "disabled"] {
        for v in VERSIONS {
            let id = unique_id("d");
            let bare = coord_conf(v, dir.path(), mode);
            let chained = with_prev(bare.clone(), sample_result(v, false));
            for conf in [&chained, &bare, &chained] {
                Exec::cni(coordinator(), "DEL", &id, &netns)
                    .stdin_json(conf)
                    .run()
                    .ok_silent();
            }
            // The runtime may no longer know the netns at all.
            Exec::cni(coordinator(), "DEL", &id, &netns)
                .unset("CNI_NETNS")
                .stdin_json(&chained)
                .run()
                .ok_silent();
        }
    }
}

/// A node netns of the test's own, holding what an ADD of `id` left on the
/// host: the host veth named after the container ID, and host routes to the
/// sample result's addresses in the default `hostRuleTable`.
struct Node(String);

impl Node {
    fn with_attachment_of(id: &str) -> Node {
        let node = Node(format!("cnode{}-{}", std::process::id(), unique_id("n")));
        let veth = coordinator::names::host_veth_name(id);
        node.ip(&["netns", "add", &node.0]);
        for args in [
            vec!["link", "add", &veth, "type", "veth", "peer", "name", "p0"],
            vec!["link", "set", &veth, "up"],
            vec!["link", "set", "p0", "up"],
            vec!["route", "add", "10.6.0.5/32", "dev", &veth, "table", "500"],
            vec![
                "-6",
                "route",
                "add",
                "fd00:6::5/128",
                "dev",
                &veth,
                "table",
                "500",
            ],
        ] {
            node.ip(&[&["-n", &node.0][..], &args].concat());
        }
        node
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }

    /// What is left of the attachment: links besides lo, routes in 500.
    fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .ip(&["-n", &self.0, "-o", "link", "show"])
            .lines()
            .filter(|l| !l.contains(" lo:"))
            .map(str::to_string)
            .collect();
        for family in ["-4", "-6"] {
            left.extend(
                self.ip(&["-n", &self.0, family, "route", "show", "table", "500"])
                    .lines()
                    .map(str::to_string),
            );
        }
        left
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// DEL with a config that no longer validates still succeeds, twice, and
/// still removes what the pod had on the node (its host veth and host
/// routes), with the defaults: a config edited after ADD must not strand
/// them.
#[test]
fn del_with_an_invalid_config_still_succeeds_and_cleans_up() {
    let dir = tmp();
    let cases = [
        ("mode", json!("fancy")),
        ("hostRuleTable", json!(254)),
        ("podMACPrefix", json!("zz:zz")),
        ("detectOptions", json!({"retries": -3})),
        ("logOptions", json!({"logLevel": "loud"})),
        ("defaultsFile", json!(5)),
        // Not a config error, but a prevResult that cannot be read must not
        // block deletion either.
        ("prevResult", json!({"ips": [{"address": "garbage"}]})),
    ];
    for (field, val) in cases {
        let mut conf = with_prev(
            coord_conf("1.0.0", dir.path(), "underlay"),
            sample_result("1.0.0", false),
        );
        conf[field] = val;
        let id = unique_id("x");
        let node = Node::with_attachment_of(&id);
        assert_eq!(node.leftovers().len(), 4, "{:?}", node.leftovers());
        for _ in 0..2 {
            Exec::cni(coordinator(), "DEL", &id, &gone_netns(dir.path()))
                .in_netns(node.path())
                .stdin_json(&conf)
                .run()
                .ok_silent();
            assert_eq!(node.leftovers(), Vec::<String>::new(), "{field}");
        }
    }
}

// ---------------------------------------------------------------- STATUS, GC

#[test]
fn status_and_gc_on_1_1_succeed() {
    let dir = tmp();
    for mode in ["disabled", "underlay", "auto"] {
        let conf = coord_conf("1.1.0", dir.path(), mode);
        Exec::new(coordinator())
            .env("CNI_COMMAND", "STATUS")
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin_json(&conf)
            .run()
            .ok_silent();
        let mut gc = conf.clone();
        // A network of its own: GC undoes every record of its network that
        // the list leaves out, and other tests attach pods meanwhile.
        gc["name"] = json!(unique_id("gcnet"));
        gc["cni.dev/valid-attachments"] =
            json!([{"containerID": unique_id("gc"), "ifname": "eth0"}]);
        Exec::new(coordinator())
            .env("CNI_COMMAND", "GC")
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin_json(&gc)
            .run()
            .ok_silent();
        // An empty list of attachments is a valid GC too.
        gc["cni.dev/valid-attachments"] = json!([]);
        Exec::new(coordinator())
            .env("CNI_COMMAND", "GC")
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin_json(&gc)
            .run()
            .ok_silent();
    }
}

// ---------------------------------------------------------------- logs

#[test]
fn logs_never_reach_stdout() {
    let dir = tmp();
    // Success with debug logs on stderr: stdout is the result alone.
    let run = good_add("1.0.0", dir.path()).run();
    assert_eq!(run.ok_json()["cniVersion"], "1.0.0");
    // A failure after logging started: the reason is on stderr, stdout is
    // the error alone.
    let conf = with_prev(
        coord_conf("1.0.0", dir.path(), "underlay"),
        sample_result("1.0.0", false),
    );
    let netns = gone_netns(dir.path());
    let run = Exec::cni(coordinator(), "ADD", &unique_id("l"), &netns)
        .stdin_json(&conf)
        .run();
    run.err(3);
    assert!(
        run.stderr().contains("netns-that-never-existed"),
        "the failure should be logged on stderr: {:?}",
        run.stderr()
    );
    // DEL logs its work at debug/info level, and prints nothing.
    let run = Exec::cni(coordinator(), "DEL", &unique_id("l"), &netns)
        .stdin_json(&conf)
        .run();
    run.ok_silent();
    assert!(
        !run.stderr().trim().is_empty(),
        "DEL at debug level should log something on stderr"
    );
}

#[test]
fn log_file_gets_the_logs() {
    let dir = tmp();
    let log = dir.path().join("logs/nested/coordinator.log");
    let mut conf = with_prev(
        coord_conf("1.0.0", dir.path(), "underlay"),
        sample_result("1.0.0", false),
    );
    conf["logOptions"] = json!({"logLevel": "debug", "logFile": log, "logMaxSize": 1});
    // A full log (1 MiB, logMaxSize) is rotated by the next exec.
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let old = format!("{}\n", "o".repeat(1023)).repeat(1024);
    std::fs::write(&log, &old).unwrap();
    let id = unique_id("f");
    let run = Exec::cni(coordinator(), "ADD", &id, &gone_netns(dir.path()))
        .stdin_json(&conf)
        .run();
    run.err(3);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("netns-that-never-existed"),
        "log file {} should hold the failure: {text:?}",
        log.display()
    );
    // Every line says which call wrote it.
    for line in text.lines() {
        assert!(line.contains(&format!(" ADD {id} eth0: ")), "{line:?}");
    }
    let backups: Vec<_> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("coordinator-") && n.ends_with(".log"))
        .collect();
    assert_eq!(backups.len(), 1, "one backup after one rotation");
    let kept = log.parent().unwrap().join(&backups[0]);
    assert_eq!(std::fs::read_to_string(kept).unwrap(), old);
    assert!(
        !run.stderr().contains("netns-that-never-existed"),
        "with a log file, logs go there, not to stderr: {:?}",
        run.stderr()
    );
}

// ================================================================ coordinator-ipam
//
// Called as an IPAM plugin: stdin is the main plugin's config with an
// `ipam` block. The store and quarantine file live in a temp dir.

fn ipam() -> PathBuf {
    bin_path("coordinator-ipam")
}

fn dual_pools() -> Value {
    json!([
        {"name": "v4", "subnet": "10.6.0.0/16", "ranges": ["10.6.1.10-10.6.1.200"],
         "gateway": "10.6.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]},
        {"name": "v6", "subnet": "fd00:6::/64", "gateway": "fd00:6::1"}
    ])
}

fn ipam_conf(version: &str, dir: &Path, pools: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": "confipam",
        "type": "macvlan",
        "master": "ens1",
        "ipam": {
            "type": "coordinator-ipam",
            "nodeName": "conf-node",
            "store": {"kind": "file", "dataDir": dir.join("data")},
            "quarantineFile": dir.join("quarantine.json"),
            "pools": pools,
        }
    })
}

/// A per-attachment call of coordinator-ipam logging at debug level on stderr.
fn ipam_call(cmd: &str, id: &str, dir: &Path) -> Exec {
    Exec::cni(ipam(), cmd, id, &gone_netns(dir)).env("COORDINATOR_IPAM_LOG_LEVEL", "debug")
}

#[test]
fn ipam_version_echoes_request_and_lists_all_versions() {
    for v in VERSIONS {
        let run = Exec::new(ipam())
            .env("CNI_COMMAND", "VERSION")
            .stdin_json(&json!({"cniVersion": v}))
            .run();
        assert_version_info(&run, v);
    }
    assert_version_info(
        &Exec::new(ipam()).env("CNI_COMMAND", "VERSION").run(),
        "1.1.0",
    );
    let run = Exec::new(ipam())
        .env("CNI_COMMAND", "VERSION")
        .env("CNI_ARGS", "novalue")
        .env("CNI_NETNS", "relative")
        .stdin_json(&json!({"cniVersion": "0.3.1", "name": "n", "type": "macvlan"}))
        .run();
    assert_version_info(&run, "0.3.1");
}

#[test]
fn ipam_add_prints_its_result_in_the_config_version() {
    let dir = tmp();
    for v in VERSIONS {
        let id = unique_id("ia");
        let conf = ipam_conf(v, dir.path(), dual_pools());
        let run = ipam_call("ADD", &id, dir.path()).stdin_json(&conf).run();
        // Debug logs went to stderr; stdout is the result alone.
        let r = run.ok_json();
        assert!(
            !run.stderr().trim().is_empty(),
            "debug logs expected on stderr"
        );
        assert_eq!(r["cniVersion"], v, "{r}");
        let ips = r["ips"].as_array().cloned().unwrap_or_default();
        assert_eq!(ips.len(), 2, "{r}");
        let old = v < "1.0.0";
        for (ip, fam, gw) in [(&ips[0], "4", "10.6.0.1"), (&ips[1], "6", "fd00:6::1")] {
            assert_eq!(
                ip.get("version").and_then(Value::as_str),
                old.then_some(fam),
                "{r}"
            );
            assert_eq!(ip["gateway"], gw, "{r}");
        }
        let a4 = ips[0]["address"].as_str().unwrap_or("");
        assert!(a4.starts_with("10.6.1.") && a4.ends_with("/16"), "{r}");
        assert!(
            ips[1]["address"].as_str().unwrap_or("").ends_with("/64"),
            "{r}"
        );
        assert_eq!(
            r["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]),
            "{r}"
        );
        ipam_call("DEL", &id, dir.path())
            .stdin_json(&conf)
            .run()
            .ok_silent();
    }
}

#[test]
fn ipam_invalid_environment_is_code_4() {
    let dir = tmp();
    let conf = ipam_conf("0.4.0", dir.path(), dual_pools());
    let base = || ipam_call("ADD", &unique_id("ie"), dir.path()).stdin_json(&conf);
    let mut cases = env_error_cases(&base);
    cases.push((
        "CNI_ARGS IP not an address".into(),
        base().env("CNI_ARGS", "IP=nope"),
    ));
    assert_env_errors(cases, "0.4.0");
    // IP is an argument coordinator-ipam knows.
    let r = base().env("CNI_ARGS", "IP=10.6.1.77").run().ok_json();
    assert_eq!(r["ips"][0]["address"], "10.6.1.77/16", "{r}");
}

#[test]
fn ipam_without_cni_command_is_its_cli_not_a_crash() {
    // Not a CNI call: the operator CLI prints its usage and exits 2.
    let dir = tmp();
    let conf = ipam_conf("1.0.0", dir.path(), dual_pools());
    let run = ipam_call("ADD", &unique_id("cli"), dir.path())
        .unset("CNI_COMMAND")
        .stdin_json(&conf)
        .run();
    assert_eq!(run.code, Some(2), "{run:?}");
}

#[test]
fn ipam_undecodable_or_incompatible_config() {
    let dir = tmp();
    let call = || ipam_call("ADD", &unique_id("ic"), dir.path());
    for doc in [&b""[..], b"{", b"[]", b"7", b"{\"cniVersion\":\"1.0.0\"} x"] {
        call().stdin(doc.to_vec()).run().err(6);
    }
    for v in ["", "0.2.0", "2.0.0"] {
        let mut conf = ipam_conf("1.0.0", dir.path(), dual_pools());
        conf["cniVersion"] = json!(v);
        call().stdin_json(&conf).run().err(1);
    }
    for field in ["name", "type"] {
        let mut conf = ipam_conf("1.0.0", dir.path(), dual_pools());
        conf.as_object_mut().map(|o| o.remove(field));
        let msg = call().stdin_json(&conf).run().err_msg(7);
        assert!(msg.contains(field), "{msg}");
    }
    for (cmd, v) in [("CHECK", "0.3.1"), ("STATUS", "1.0.0"), ("GC", "1.0.0")] {
        let conf = ipam_conf(v, dir.path(), dual_pools());
        let e = ipam_call(cmd, &unique_id("ic"), dir.path())
            .stdin_json(&conf)
            .run()
            .err(1);
        assert_eq!(e["cniVersion"], v, "{e}");
    }
}

#[test]
fn ipam_invalid_ipam_config_is_code_7_naming_it() {
    let dir = tmp();
    let pool = |extra: Value| {
        let mut p = json!({"subnet": "10.6.0.0/24"});
        if let (Some(o), Value::Object(e)) = (p.as_object_mut(), extra) {
            o.extend(e);
        }
        json!([p])
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "ipam.pools"),
        (json!("10.6.0.0/24"), "ipam.pools"),
        (json!([{"subnet": "10.6.0.0/33"}]), "ipam.pools[0].subnet"),
        (json!([{"gateway": "10.6.0.1"}]), "ipam.pools[0]"),
        (
            pool(json!({"gateway": "10.7.0.1"})),
            "ipam.pools[0].gateway",
        ),
        (
            pool(json!({"ranges": ["10.7.0.1-10.7.0.5"]})),
            "ipam.pools[0].ranges[0]",
        ),
        (pool(json!({"exclude": ["x"]})), "ipam.pools[0].exclude[0]"),
        (pool(json!({"bogus": 1})), "ipam.pools[0].bogus"),
        (
            pool(json!({"routes": [{"dst": "nope"}]})),
            "ipam.pools[0].routes[0]",
        ),
    ];
    for (pools, field) in cases {
        let conf = ipam_conf("1.0.0", dir.path(), pools.clone());
        let msg = ipam_call("ADD", &unique_id("i7"), dir.path())
            .stdin_json(&conf)
            .run()
            .err_msg(7);
        assert!(msg.contains(field), "{pools}: {msg} should name {field}");
    }
    let blocks: Vec<(&str, Value, &str)> = vec![
        ("store", json!({"kind": "nfs"}), "ipam.store.kind"),
        ("store", json!({"kind": "etcd"}), "ipam.store.endpoints"),
        (
            "store",
            json!({"kind": "file", "dataDir": ""}),
            "ipam.store.dataDir",
        ),
        (
            "store",
            json!({"kind": "file", "dataDir": "/d", "x": 1}),
            "ipam.store.x",
        ),
        (
            "sticky",
            json!([{"namespace": "[", "pod": "x"}]),
            "ipam.sticky[0].namespace",
        ),
        ("quarantineFile", json!(""), "ipam.quarantineFile"),
    ];
    for (key, val, field) in blocks {
        let mut conf = ipam_conf("1.0.0", dir.path(), dual_pools());
        conf["ipam"][key] = val;
        for cmd in ["ADD", "STATUS"] {
            let mut conf = conf.clone();
            if cmd == "STATUS" {
                conf["cniVersion"] = json!("1.1.0");
            }
            let msg = ipam_call(cmd, &unique_id("i7"), dir.path())
                .stdin_json(&conf)
                .run()
                .err_msg(7);
            assert!(
                msg.contains(field),
                "{cmd} {key}: {msg} should name {field}"
            );
        }
    }
    for ipam_block in [json!(null), json!([]), json!("coordinator-ipam")] {
        let mut conf = ipam_conf("1.0.0", dir.path(), dual_pools());
        conf["ipam"] = ipam_block;
        let msg = ipam_call("ADD", &unique_id("i7"), dir.path())
            .stdin_json(&conf)
            .run()
            .err_msg(7);
        assert!(msg.contains("ipam"), "{msg}");
    }
}

/// A pool of exactly one address: whether it is free tells whether DEL/GC
/// released it.
fn one_address_pool() -> Value {
    json!([{"name": "one", "subnet": "10.9.0.0/24", "ranges": ["10.9.0.7-10.9.0.7"]}])
}

#[test]
fn ipam_repeated_del_succeeds_and_releases_once() {
    let dir = tmp();
    let conf = ipam_conf("1.0.0", dir.path(), one_address_pool());
    let (a, b) = (unique_id("da"), unique_id("db"));
    let r = ipam_call("ADD", &a, dir.path())
        .stdin_json(&conf)
        .run()
        .ok_json();
    assert_eq!(r["ips"][0]["address"], "10.9.0.7/24", "{r}");
    // The pool is full now: the proof that DEL below really frees.
    ipam_call("ADD", &b, dir.path())
        .stdin_json(&conf)
        .run()
        .err(110);
    let mut chained = conf.clone();
    chained["prevResult"] = r.clone();
    for c in [&chained, &conf, &chained] {
        ipam_call("DEL", &a, dir.path())
            .stdin_json(c)
            .run()
            .ok_silent();
    }
    // DEL of an attachment never added, and without CNI_NETNS.
    ipam_call("DEL", &unique_id("dn"), dir.path())
        .unset("CNI_NETNS")
        .stdin_json(&conf)
        .run()
        .ok_silent();
    let r = ipam_call("ADD", &b, dir.path())
        .stdin_json(&conf)
        .run()
        .ok_json();
    assert_eq!(r["ips"][0]["address"], "10.9.0.7/24", "{r}");
    // A repeated DEL of the first owner must not free the second's address.
    ipam_call("DEL", &a, dir.path())
        .stdin_json(&conf)
        .run()
        .ok_silent();
    ipam_call("ADD", &unique_id("dc"), dir.path())
        .stdin_json(&conf)
        .run()
        .err(110);
}

#[test]
fn ipam_status_and_gc_on_1_1() {
    let dir = tmp();
    let conf = ipam_conf("1.1.0", dir.path(), one_address_pool());
    let nonattach = |cmd: &str, c: &Value| {
        Exec::new(ipam())
            .env("CNI_COMMAND", cmd)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin_json(c)
            .run()
    };
    nonattach("STATUS", &conf).ok_silent();
    let a = unique_id("ga");
    ipam_call("ADD", &a, dir.path())
        .stdin_json(&conf)
        .run()
        .ok_json();
    // The only address is taken: the plugin cannot serve an ADD (code 50).
    nonattach("STATUS", &conf).err(50);
    // GC that still lists the attachment keeps it.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": a, "ifname": "eth0"}]);
    nonattach("GC", &gc).ok_silent();
    nonattach("STATUS", &conf).err(50);
    // GC without it releases it.
    gc["cni.dev/valid-attachments"] = json!([]);
    nonattach("GC", &gc).ok_silent();
    nonattach("STATUS", &conf).ok_silent();
    ipam_call("ADD", &unique_id("gb"), dir.path())
        .stdin_json(&conf)
        .run()
        .ok_json();
}
