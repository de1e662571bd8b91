//! Hostile and careless input to the built binaries (issue 12): values that
//! used to panic, hang or cost gigabytes, and paths that point where they
//! should not. Each test is a reproduction that failed before its fix. No
//! network namespace is created: every call here fails before it touches
//! the kernel, or is a DEL of links that never existed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cni_tests::exec::{bin_path, Exec, Run};
use serde_json::{json, Value};

/// Far longer than any of these calls takes, far shorter than forever.
const QUICK: Duration = Duration::from_secs(20);

fn coordinator() -> PathBuf {
    bin_path("coordinator")
}

fn ipam() -> PathBuf {
    bin_path("coordinator-ipam")
}

fn unique_id(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "hostile{}x{}{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn gone_netns(dir: &Path) -> String {
    dir.join("netns-that-never-existed").display().to_string()
}

fn coord_conf(dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "hostilenet",
        "type": "coordinator",
        "mode": "underlay",
        "defaultsFile": dir.join("no-such-defaults.json"),
        "quarantineFile": dir.join("quarantine.json"),
        "logOptions": {"logLevel": "debug", "logFile": "-"},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.6.1.5/16", "gateway": "10.6.0.1", "interface": 0}]},
    })
}

fn coord(cmd: &str, dir: &Path, conf: &Value) -> Run {
    Exec::cni(coordinator(), cmd, &unique_id("c"), &gone_netns(dir))
        .stdin_json(conf)
        .run_within(QUICK)
}

fn ipam_conf(dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "hostileipam",
        "type": "macvlan",
        "ipam": {
            "type": "coordinator-ipam",
            "nodeName": "hostile-node",
            "store": {"kind": "file", "dataDir": dir.join("data")},
            "quarantineFile": dir.join("quarantine.json"),
            "pools": [{"name": "v4", "subnet": "10.6.0.0/16", "gateway": "10.6.0.1"}],
        }
    })
}

fn ipam_call(cmd: &str, id: &str, dir: &Path, conf: &Value) -> Run {
    Exec::cni(ipam(), cmd, id, &gone_netns(dir))
        .stdin_json(conf)
        .run_within(QUICK)
}

// ---------------------------------------------------------------- item 1

#[test]
fn huge_durations_are_code_7_on_add_and_del_still_succeeds() {
    let dir = tmp();
    let huge = json!("20000000000000000000s");
    let cases = [
        ("quarantineTTL", json!({"quarantineTTL": huge})),
        (
            "detectOptions.interval",
            json!({"detectOptions": {"interval": huge}}),
        ),
        (
            "detectOptions.timeout",
            json!({"detectOptions": {"timeout": huge}}),
        ),
    ];
    for (field, set) in cases {
        let mut conf = coord_conf(dir.path());
        for (k, v) in set.as_object().expect("an object") {
            conf[k] = v.clone();
        }
        let msg = coord("ADD", dir.path(), &conf).err_msg(7);
        assert!(msg.contains(field), "{field}: {msg}");
        // DEL succeeds with a config that no longer validates.
        coord("DEL", dir.path(), &conf).ok_silent();
    }
}

// ---------------------------------------------------------------- item 2

#[test]
fn overlong_names_are_config_or_environment_errors() {
    let dir = tmp();
    let long = "x".repeat(70_000);
    let conf = ipam_conf(dir.path());
    // Container ID: environment, code 4.
    let msg = ipam_call("ADD", &long, dir.path(), &conf).err_msg(4);
    assert!(msg.contains("CNI_CONTAINERID"), "{msg}");
    // A CNI_ARGS value (the pod name ends up in store records): code 4.
    let msg = Exec::cni(ipam(), "ADD", &unique_id("a"), &gone_netns(dir.path()))
        .env(
            "CNI_ARGS",
            &format!("K8S_POD_NAMESPACE=ns;K8S_POD_NAME={long}"),
        )
        .stdin_json(&conf)
        .run_within(QUICK)
        .err_msg(4);
    assert!(msg.contains("CNI_ARGS"), "{msg}");
    // Pool name, node name, network name: config, code 7 naming the field.
    for (field, set) in [
        ("ipam.pools[0].name", "/ipam/pools/0/name"),
        ("ipam.nodeName", "/ipam/nodeName"),
        ("\"name\"", "/name"),
    ] {
        let mut c = conf.clone();
        *c.pointer_mut(set).expect("field exists") = json!(long);
        let msg = ipam_call("ADD", &unique_id("p"), dir.path(), &c).err_msg(7);
        assert!(msg.contains(field), "{field}: {msg}");
    }
    // Nothing was stored by any of them.
    assert!(!dir.path().join("data/hostileipam").exists());
}

// ---------------------------------------------------------------- item 4

#[test]
fn oversized_stdin_fails_at_once_with_code_6() {
    // 50 MB of JSON array: used to cost 5.6 GB of RSS and 21 s. Now the
    // plugin reads at most 1 MiB + 1 byte and refuses.
    let mut doc = Vec::with_capacity(50 << 20);
    doc.extend_from_slice(b"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"x\":[");
    while doc.len() < 50 << 20 {
        doc.extend_from_slice(b"0,");
    }
    doc.extend_from_slice(b"0]}");
    let dir = tmp();
    for bin in [coordinator(), ipam()] {
        let msg = Exec::cni(bin, "ADD", &unique_id("big"), &gone_netns(dir.path()))
            .stdin(doc.clone())
            .run_within(QUICK)
            .err_msg(6);
        assert!(msg.contains("larger than 1024 KiB"), "{msg}");
    }
}

// ---------------------------------------------------------------- item 11

#[test]
fn relative_paths_are_code_7() {
    let dir = tmp();
    for (field, set) in [
        ("quarantineFile", "/quarantineFile"),
        ("defaultsFile", "/defaultsFile"),
        ("logOptions.logFile", "/logOptions/logFile"),
    ] {
        let mut conf = coord_conf(dir.path());
        *conf.pointer_mut(set).expect("field exists") = json!("relative/x.json");
        let msg = coord("ADD", dir.path(), &conf).err_msg(7);
        assert!(msg.contains(field), "{field}: {msg}");
    }
    for (field, set) in [
        ("ipam.store.dataDir", "/ipam/store/dataDir"),
        ("ipam.quarantineFile", "/ipam/quarantineFile"),
    ] {
        let mut conf = ipam_conf(dir.path());
        *conf.pointer_mut(set).expect("field exists") = json!("relative/dir");
        let msg = ipam_call("ADD", &unique_id("r"), dir.path(), &conf).err_msg(7);
        assert!(msg.contains(field), "{field}: {msg}");
    }
}

// ---------------------------------------------------------------- item 3

fn fifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

#[test]
fn fifos_and_devices_in_place_of_files_fail_at_once() {
    let dir = tmp();
    // CNI_NETNS a FIFO: used to block in open(2) forever.
    let ns = dir.path().join("netns-fifo");
    fifo(&ns);
    let conf = coord_conf(dir.path());
    let msg = Exec::cni(
        coordinator(),
        "ADD",
        &unique_id("f"),
        &ns.display().to_string(),
    )
    .stdin_json(&conf)
    .run_within(QUICK)
    .err_msg(4);
    assert!(msg.contains("not a network namespace"), "{msg}");
    // defaultsFile a FIFO: code 7 naming it.
    let defaults = dir.path().join("defaults-fifo");
    fifo(&defaults);
    let mut conf = coord_conf(dir.path());
    conf["defaultsFile"] = json!(defaults);
    for cmd in ["ADD", "CHECK"] {
        let msg = coord(cmd, dir.path(), &conf).err_msg(7);
        assert!(
            msg.contains("defaultsFile") && msg.contains("not a regular file"),
            "{msg}"
        );
    }
    coord("DEL", dir.path(), &conf).ok_silent();

    // coordinator-ipam: quarantineFile a FIFO or /dev/zero.
    for (i, target) in ["fifo", "/dev/zero"].into_iter().enumerate() {
        let q = dir.path().join(format!("q{i}.json"));
        if target == "fifo" {
            fifo(&q);
        } else {
            std::os::unix::fs::symlink(target, &q).expect("symlink");
        }
        let mut conf = ipam_conf(dir.path());
        conf["ipam"]["quarantineFile"] = json!(q);
        let msg = ipam_call("ADD", &unique_id("q"), dir.path(), &conf).err_msg(5);
        // A link is not even followed to find out.
        let why = ["not a regular file", "symbolic link"];
        assert!(why.iter().any(|w| msg.contains(w)), "{msg}");
    }
    // state.bin a FIFO, or a link to /dev/zero.
    let conf = ipam_conf(dir.path());
    let net = dir.path().join("data/hostileipam");
    ipam_call("ADD", &unique_id("s"), dir.path(), &conf).ok_json();
    for target in ["fifo", "/dev/zero"] {
        let state = net.join("state.bin");
        let _ = std::fs::remove_file(&state);
        if target == "fifo" {
            fifo(&state);
        } else {
            std::os::unix::fs::symlink(target, &state).expect("symlink");
        }
        for cmd in ["ADD", "DEL"] {
            let run = ipam_call(cmd, &unique_id("s"), dir.path(), &conf);
            let e = run.json();
            assert_eq!(e["code"], json!(5), "{target} {cmd}: {e}");
        }
    }
}
