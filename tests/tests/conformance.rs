//! CNI protocol conformance of the built binaries, exec'd as a runtime does:
//! cleared environment, explicit `CNI_*` variables, config on stdin. Needs
//! `cargo build --workspace --bins` first. No network namespace is created:
//! every ADD here either runs in `mode: disabled` or fails before touching
//! the kernel, and DEL only looks up links named after unique container ids.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use cni_tests::exec::{bin_path, one_json, Exec, Run};
use serde_json::{json, Map, Value};

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

/// A main plugin's result written in `version`, with every optional field
/// that version defines (1.1 ones only when `eleven`) and vendor fields at
/// each level that a pass-through must keep.
fn sample_result(version: &str, eleven: bool) -> Value {
    let old = matches!(version, "0.3.0" | "0.3.1" | "0.4.0");
    let mut iface = json!({
        "name": "eth0", "mac": "0a:58:0a:06:00:05", "sandbox": "/var/run/netns/pod1",
        "x-vendor": {"a": 1}
    });
    let mut ip4 =
        json!({"address": "10.6.0.5/16", "gateway": "10.6.0.1", "interface": 0, "x-ip": "keep"});
    let mut ip6 = json!({"address": "fd00:6::5/64", "gateway": "fd00:6::1", "interface": 0});
    let mut rt4 = json!({"dst": "0.0.0.0/0", "gw": "10.6.0.1", "x-rt": true});
    let rt6 = json!({"dst": "::/0", "gw": "fd00:6::1"});
    if old {
        ip4["version"] = json!("4");
        ip6["version"] = json!("6");
    }
    if eleven {
        iface["mtu"] = json!(1400);
        iface["socketPath"] = json!("/run/vhost/pod1.sock");
        iface["pciID"] = json!("0000:00:1f.6");
        rt4["mtu"] = json!(1400);
        rt4["advmss"] = json!(1360);
        rt4["priority"] = json!(5);
        rt4["table"] = json!(100);
        rt4["scope"] = json!(0);
    }
    json!({
        "cniVersion": version,
        "interfaces": [iface],
        "ips": [ip4, ip6],
        "routes": [rt4, rt6],
        "dns": {"nameservers": ["10.6.0.10"], "domain": "cluster.local",
                "search": ["svc.cluster.local"], "options": ["ndots:5"]},
        "vendorField": {"k": [1, 2]}
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

#[test]
fn del_with_an_invalid_config_still_succeeds() {
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
        let mut conf = coord_conf("1.0.0", dir.path(), "underlay");
        conf[field] = val;
        let id = unique_id("x");
        for _ in 0..2 {
            Exec::cni(coordinator(), "DEL", &id, &gone_netns(dir.path()))
                .stdin_json(&conf)
                .run()
                .ok_silent();
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
    conf["logOptions"] = json!({"logLevel": "debug", "logFile": log});
    let run = Exec::cni(
        coordinator(),
        "ADD",
        &unique_id("f"),
        &gone_netns(dir.path()),
    )
    .stdin_json(&conf)
    .run();
    run.err(3);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("netns-that-never-existed"),
        "log file {} should hold the failure: {text:?}",
        log.display()
    );
    assert!(
        !run.stderr().contains("netns-that-never-existed"),
        "with a log file, logs go there, not to stderr: {:?}",
        run.stderr()
    );
}

// ---------------------------------------------------------------- fuzz

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 2 { 9 } else { 11 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(rng.next() as i64),
        3 => json!(-(rng.below(1000) as i64)),
        4 => json!(rng.below(70000)),
        5 => json!(1.5e300),
        6 => json!(*rng.pick(&[
            "",
            "underlay",
            "disabled",
            "10.6.0.5/16",
            "fd00::1",
            "::/0",
            "0b:00",
            "eth0",
            "1h",
            "10ms",
            "\u{0}",
            "é/..",
            "9999999999999999999999"
        ])),
        7 => {
            let n = rng.below(12);
            json!((0..n)
                .map(|_| (b'!' + rng.below(90) as u8) as char)
                .collect::<String>())
        }
        8 => json!("0.0.0.0/0"),
        9 => {
            let n = rng.below(3);
            Value::Array((0..n).map(|_| random_value(rng, depth + 1)).collect())
        }
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(3) {
                let k = rng.pick(&["address", "dst", "gw", "retries", "x", "ips", "name"]);
                m.insert(k.to_string(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

const CONF_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "mode",
    "prevResult",
    "hostRuleTable",
    "podMACPrefix",
    "podRPFilter",
    "vethMTU",
    "vethLinkAddress",
    "serviceCIDR",
    "overlayPodCIDR",
    "hijackCIDR",
    "policyRoutes",
    "detectIPConflict",
    "detectGateway",
    "detectOptions",
    "podDefaultCniNic",
    "podDefaultRouteNic",
    "tunePodRoutes",
    "txQueueLen",
    "quarantineTTL",
    "ipam",
    "dns",
    "runtimeConfig",
    "capabilities",
    "args",
    "cni.dev/valid-attachments",
];

const PREV_PATHS: &[&[&str]] = &[
    &["cniVersion"],
    &["ips"],
    &["interfaces"],
    &["routes"],
    &["dns"],
];

/// Mutate a JSON config structurally.
fn mutate_value(rng: &mut Rng, conf: &mut Value) {
    match rng.below(4) {
        0 => {
            let k = *rng.pick(CONF_KEYS);
            conf[k] = random_value(rng, 0);
        }
        1 => {
            let k = *rng.pick(CONF_KEYS);
            if let Some(o) = conf.as_object_mut() {
                o.remove(k);
            }
        }
        2 => {
            let path = *rng.pick(PREV_PATHS);
            if conf["prevResult"].is_object() {
                conf["prevResult"][path[0]] = random_value(rng, 0);
            }
        }
        _ => {
            // Reach into the first IP or route entry.
            let (list, keys): (&str, &[&str]) = if rng.chance(50) {
                ("ips", &["address", "gateway", "interface", "version"])
            } else {
                ("routes", &["dst", "gw", "mtu", "table", "scope"])
            };
            let k = *rng.pick(keys);
            if let Some(first) = conf
                .get_mut("prevResult")
                .and_then(|p| p.get_mut(list))
                .and_then(|l| l.get_mut(0))
                .filter(|f| f.is_object())
            {
                first[k] = random_value(rng, 1);
            }
        }
    }
}

/// Mutate the bytes of a document.
fn mutate_bytes(rng: &mut Rng, doc: &mut Vec<u8>) {
    if doc.is_empty() {
        doc.push(b'{');
        return;
    }
    let at = rng.below(doc.len());
    match rng.below(4) {
        0 => doc[at] = rng.next() as u8,
        1 => doc.truncate(at),
        2 => doc.insert(at, *rng.pick(b"{}[]\",:\\0\xff")),
        _ => {
            let end = (at + rng.below(16)).min(doc.len());
            let chunk = doc[at..end].to_vec();
            doc.splice(at..at, chunk);
        }
    }
}

/// Keep whatever a fuzz case writes inside `dir`: logs, node defaults and
/// the quarantine file are pinned in any document the plugin can decode.
fn pin_paths(doc: Vec<u8>, dir: &Path, rng: &mut Rng) -> Vec<u8> {
    match serde_json::from_slice::<Value>(&doc) {
        Ok(Value::Object(mut o)) => {
            let level = random_log_level(rng);
            o.insert(
                "logOptions".into(),
                json!({"logLevel": level, "logFile": dir.join("fuzz.log")}),
            );
            o.insert("defaultsFile".into(), json!(dir.join("defaults.json")));
            o.insert("quarantineFile".into(), json!(dir.join("quarantine.json")));
            Value::Object(o).to_string().into_bytes()
        }
        _ => doc,
    }
}

fn random_log_level(rng: &mut Rng) -> Value {
    // Mostly valid, so the rest of the config is reached.
    match rng.below(10) {
        0 => json!("loud"),
        1 => json!(3),
        _ => json!(*rng.pick(&["debug", "trace", "info", "warn", "error", "off"])),
    }
}

/// (CNI_COMMAND, exit code, CNI error code) of one fuzz case.
type FuzzOutcome = (&'static str, Option<i32>, Option<u64>);

#[test]
fn no_input_makes_the_coordinator_panic() {
    let dir = tmp();
    let bin = coordinator();
    let mut rng = Rng(0x5eed_c0de_2026_1122);
    // Node defaults are fuzzed too: they merge under the config.
    let defaults = dir.path().join("defaults.json");
    let mut seen: std::collections::BTreeMap<FuzzOutcome, u32> = Default::default();
    for i in 0..200 {
        let cmd = *rng.pick(&[
            "ADD", "ADD", "ADD", "DEL", "DEL", "CHECK", "VERSION", "STATUS", "GC", "", "add",
            "FROB", "-",
        ]);
        let mut exec = Exec::new(&bin);
        if cmd != "-" {
            exec = exec.env("CNI_COMMAND", cmd);
        }
        let envs: [(&str, &[&str]); 5] = [
            // The first value of each list is a valid one.
            (
                "CNI_CONTAINERID",
                &["conf-fuzz-a", "", "bad/id", "conf-fuzz-b", "-x"],
            ),
            (
                "CNI_NETNS",
                &[
                    "/nonexistent-conf-fuzz/ns",
                    "",
                    "relative",
                    "/dev/null",
                    "/tmp/conf-fuzz-gone",
                ],
            ),
            (
                "CNI_IFNAME",
                &["eth0", "net1", "", "0123456789abcdef", "a/b", ".."],
            ),
            ("CNI_PATH", &["/opt/cni/bin", "", ":::"]),
            (
                "CNI_ARGS",
                &[
                    "",
                    "IgnoreUnknown=1;FOO=bar",
                    "K8S_POD_NAME=x;K8S_POD_NAMESPACE=y",
                    "novalue",
                    "=",
                    ";;",
                    "FOO=bar",
                ],
            ),
        ];
        // Most cases get a valid environment so the config is fuzzed too;
        // the rest drop or spoil some variables.
        let spoil = rng.chance(30);
        for (k, vals) in envs {
            if spoil && rng.chance(20) {
                continue;
            }
            let valid = !spoil || rng.chance(60);
            let mut v = if valid {
                vals[0].to_string()
            } else {
                rng.pick(vals).to_string()
            };
            if k == "CNI_CONTAINERID" && v.starts_with("conf-fuzz") {
                v = format!("{v}{}x{i}", std::process::id());
            }
            exec = exec.env(k, &v);
        }
        let version = *rng.pick(&VERSIONS);
        let mode = *rng.pick(&[
            "disabled", "disabled", "disabled", "disabled", "underlay", "overlay", "auto", "bogus",
        ]);
        let mut conf = coord_conf(version, dir.path(), mode);
        if rng.chance(90) {
            let pv = *rng.pick(&VERSIONS);
            conf["prevResult"] = sample_result(pv, pv == "1.1.0");
        }
        for _ in 0..rng.below(3) {
            mutate_value(&mut rng, &mut conf);
        }
        let mut doc = conf.to_string().into_bytes();
        match rng.below(20) {
            0 => doc.clear(),
            1 => doc = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            2..=4 => {
                for _ in 0..=rng.below(3) {
                    mutate_bytes(&mut rng, &mut doc);
                }
            }
            _ => {}
        }
        let doc = pin_paths(doc, dir.path(), &mut rng);
        let mut d = coord_conf("1.0.0", dir.path(), "underlay");
        mutate_value(&mut rng, &mut d);
        let _ = std::fs::write(&defaults, d.to_string());
        let run = exec.stdin(doc.clone()).run();
        assert_no_crash(&run, cmd, &doc, i);
        let code = one_json(&run.stdout)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_u64));
        *seen.entry((cmd, run.code, code)).or_insert(0) += 1;
    }
    eprintln!("fuzz outcomes (command, exit, error code): {seen:?}");
    // The loop must have reached past the protocol layer, or it proves little.
    let count = |f: &dyn Fn(&FuzzOutcome) -> bool| -> u32 {
        seen.iter().filter(|(k, _)| f(k)).map(|(_, n)| n).sum()
    };
    assert!(count(&|k| k.0 == "ADD" && k.1 == Some(0)) >= 2, "{seen:?}");
    assert!(count(&|k| k.0 == "DEL" && k.1 == Some(0)) >= 5, "{seen:?}");
    let codes: std::collections::BTreeSet<u64> = seen.keys().filter_map(|k| k.2).collect();
    assert!(codes.len() >= 5, "too few distinct error codes: {codes:?}");
}

/// Exit 0 or 1 only; stdout one JSON value, or nothing after a verb that
/// has no result; an error object carries a code, and never the code of a
/// caught panic.
fn assert_no_crash(run: &Run, cmd: &str, doc: &[u8], i: usize) {
    let ctx = || {
        format!(
            "case {i}: CNI_COMMAND={cmd:?} stdin={:?}\nexit {:?}\nstdout {:?}\nstderr {:?}",
            String::from_utf8_lossy(doc),
            run.code,
            run.stdout,
            run.stderr
        )
    };
    assert!(matches!(run.code, Some(0) | Some(1)), "{}", ctx());
    if run.stdout.is_empty() {
        assert_eq!(
            run.code,
            Some(0),
            "a failure must print an error: {}",
            ctx()
        );
        assert!(
            matches!(cmd, "DEL" | "CHECK" | "STATUS" | "GC"),
            "only verbs without a result may print nothing: {}",
            ctx()
        );
        return;
    }
    let v = one_json(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", ctx()));
    if run.code == Some(1) {
        let code = v.get("code").and_then(Value::as_u64);
        assert!(code.is_some(), "error without a code: {}", ctx());
        assert_ne!(code, Some(999), "a caught panic: {}", ctx());
        assert!(
            v.get("msg")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty()),
            "error without msg: {}",
            ctx()
        );
    } else {
        assert!(
            matches!(cmd, "ADD" | "VERSION"),
            "only ADD and VERSION print on success: {}",
            ctx()
        );
    }
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
        ("store", json!({"kind": "etcd"}), "ipam.store.kind"),
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

const IPAM_KEYS: &[&str] = &[
    "type",
    "nodeName",
    "pools",
    "sticky",
    "quarantineFile",
    "bogus",
];
const POOL_KEYS: &[&str] = &[
    "name", "subnet", "ranges", "exclude", "gateway", "routes", "nodes", "pods",
];

fn mutate_ipam(rng: &mut Rng, conf: &mut Value) {
    match rng.below(5) {
        0 => {
            let k = *rng.pick(IPAM_KEYS);
            let v = random_value(rng, 0);
            if let Some(o) = conf.get_mut("ipam").and_then(Value::as_object_mut) {
                o.insert(k.into(), v);
            }
        }
        1 => {
            let k = *rng.pick(POOL_KEYS);
            if let Some(p) = conf["ipam"]["pools"]
                .get_mut(rng.below(2))
                .filter(|p| p.is_object())
            {
                p[k] = random_value(rng, 1);
            }
        }
        2 => {
            let k = *rng.pick(&[
                "cniVersion",
                "name",
                "type",
                "ipam",
                "runtimeConfig",
                "args",
            ]);
            conf[k] = random_value(rng, 0);
        }
        3 => {
            // Requested addresses, inside and outside the pools.
            let ip = *rng.pick(&["10.6.1.50", "10.6.1.50/16", "10.7.0.1", "fd00:6::99", "x"]);
            conf["runtimeConfig"] = json!({"ips": [ip]});
        }
        _ => {
            let k = *rng.pick(POOL_KEYS);
            if let Some(p) = conf["ipam"]["pools"]
                .get_mut(0)
                .and_then(Value::as_object_mut)
            {
                p.remove(k);
            }
        }
    }
}

/// The store and quarantine file stay in `dir` whatever the fuzz wrote.
fn pin_ipam_paths(doc: Vec<u8>, dir: &Path) -> Vec<u8> {
    match serde_json::from_slice::<Value>(&doc) {
        Ok(Value::Object(mut o)) => {
            if let Some(Value::Object(ipam)) = o.get_mut("ipam") {
                ipam.insert(
                    "store".into(),
                    json!({"kind": "file", "dataDir": dir.join("data")}),
                );
                ipam.insert("quarantineFile".into(), json!(dir.join("quarantine.json")));
            }
            Value::Object(o).to_string().into_bytes()
        }
        _ => doc,
    }
}

#[test]
fn no_input_makes_coordinator_ipam_panic() {
    let dir = tmp();
    let bin = ipam();
    let mut rng = Rng(0x1bad_5eed_0000_0007);
    let mut seen: std::collections::BTreeMap<FuzzOutcome, u32> = Default::default();
    for i in 0..200 {
        // CNI_COMMAND is always set: without it this binary is its CLI.
        let cmd = *rng.pick(&[
            "ADD", "ADD", "ADD", "DEL", "DEL", "CHECK", "VERSION", "STATUS", "GC", "", "FROB",
        ]);
        let mut exec = Exec::new(&bin).env("CNI_COMMAND", cmd);
        let envs: [(&str, &[&str]); 5] = [
            (
                "CNI_CONTAINERID",
                &["ipam-fuzz", "", "bad/id", "ipam-fuzz-same"],
            ),
            ("CNI_NETNS", &["/nonexistent-conf-fuzz/ns", "", "relative"]),
            ("CNI_IFNAME", &["eth0", "net1", "", "a/b"]),
            ("CNI_PATH", &["/opt/cni/bin", ""]),
            (
                "CNI_ARGS",
                &[
                    "",
                    "IP=10.6.1.60",
                    "IP=bogus",
                    "K8S_POD_NAMESPACE=db;K8S_POD_NAME=m-0",
                    "X=1",
                ],
            ),
        ];
        let spoil = rng.chance(30);
        for (k, vals) in envs {
            if spoil && rng.chance(20) {
                continue;
            }
            let valid = !spoil || rng.chance(60);
            let mut v = if valid {
                vals[0].to_string()
            } else {
                rng.pick(vals).to_string()
            };
            if v == "ipam-fuzz" {
                v = format!("{v}{}x{i}", std::process::id());
            }
            exec = exec.env(k, &v);
        }
        let version = *rng.pick(&VERSIONS);
        let mut conf = ipam_conf(version, dir.path(), dual_pools());
        if cmd == "CHECK" || rng.chance(20) {
            conf["prevResult"] = sample_result(version, false);
        }
        for _ in 0..rng.below(3) {
            mutate_ipam(&mut rng, &mut conf);
        }
        let mut doc = conf.to_string().into_bytes();
        match rng.below(20) {
            0 => doc.clear(),
            1 => doc = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            2..=4 => {
                for _ in 0..=rng.below(3) {
                    mutate_bytes(&mut rng, &mut doc);
                }
            }
            _ => {}
        }
        let doc = pin_ipam_paths(doc, dir.path());
        let run = exec.stdin(doc.clone()).run();
        assert_no_crash(&run, cmd, &doc, i);
        let code = one_json(&run.stdout)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_u64));
        *seen.entry((cmd, run.code, code)).or_insert(0) += 1;
    }
    eprintln!("ipam fuzz outcomes (command, exit, error code): {seen:?}");
    let count = |f: &dyn Fn(&FuzzOutcome) -> bool| -> u32 {
        seen.iter().filter(|(k, _)| f(k)).map(|(_, n)| n).sum()
    };
    assert!(count(&|k| k.0 == "ADD" && k.1 == Some(0)) >= 5, "{seen:?}");
    assert!(count(&|k| k.0 == "DEL" && k.1 == Some(0)) >= 5, "{seen:?}");
    let codes: std::collections::BTreeSet<u64> = seen.keys().filter_map(|k| k.2).collect();
    assert!(codes.len() >= 5, "too few distinct error codes: {codes:?}");
}
