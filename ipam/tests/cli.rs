//! The operator CLI of the same binary.

mod common;

use common::*;
use serde_json::{json, Value};

fn setup() -> (Lab, Value, std::path::PathBuf) {
    let lab = Lab::new();
    let pools = json!([{"name": "v4", "subnet": "10.30.0.0/24", "gateway": "10.30.0.1", "ranges": ["10.30.0.10-10.30.0.19"]},
                       {"name": "v6", "subnet": "fd00:30::/64"}]);
    let conf = lab.conf("1.0.0", pools, json!({"sticky": [{"namespace": "db"}]}));
    // The same network as a conflist, as an operator would point at it.
    let conflist = json!({"cniVersion": "1.0.0", "name": "net1",
        "plugins": [{"type": "macvlan", "master": "ens1", "ipam": conf["ipam"].clone()}, {"type": "coordinator"}]});
    let path = lab.dir.path().join("10-net1.conflist");
    std::fs::write(&path, conflist.to_string()).unwrap();
    (lab, conf, path)
}

#[test]
fn help_is_usable() {
    let (code, out, _) = cli(&["--help"]);
    assert_eq!(code, 0);
    for word in [
        "list",
        "usage",
        "release",
        "--data-dir",
        "--config",
        "--network",
        "EXAMPLES",
    ] {
        assert!(out.contains(word), "help lacks {word}");
    }
    let (code, _, err) = cli(&[]);
    assert_eq!(code, 2, "no command is a usage error");
    assert!(err.is_empty());
    let (code, _, err) = cli(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown command"), "{err}");
    let (code, _, err) = cli(&["list", "--bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("--bogus"), "{err}");
}

#[test]
fn list_usage_release() {
    let (lab, conf, conflist) = setup();
    let a = result_ips(&Call::new("ADD", "ctr-a").ok(&conf));
    let b = result_ips(
        &Call::new("ADD", "ctr-b")
            .args("K8S_POD_NAMESPACE=db;K8S_POD_NAME=pg-0")
            .ok(&conf),
    );
    Call::new("DEL", "ctr-b")
        .args("K8S_POD_NAMESPACE=db;K8S_POD_NAME=pg-0")
        .ok(&conf);
    let data = lab.data_dir();
    let data = data.to_str().unwrap();

    let (code, out, err) = cli(&["list", "--data-dir", data, "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let row_a = rows.iter().find(|r| r["ip"] == a[0].as_str()).unwrap();
    assert_eq!(row_a["containerId"], "ctr-a");
    assert_eq!(row_a["network"], "net1");
    assert_eq!(row_a["pool"], "v4");
    let row_b = rows.iter().find(|r| r["ip"] == b[0].as_str()).unwrap();
    assert_eq!(row_b["parked"], true);
    assert_eq!(row_b["sticky"], "db/pg-0");

    let (code, out, _) = cli(&["list", "--config", conflist.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("NETWORK"), "{out}");
    assert!(
        out.contains(&a[0]) && out.contains("parked") && out.contains("in-use"),
        "{out}"
    );

    let (code, out, err) = cli(&["usage", "--config", conflist.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let u: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(u[0]["name"], "v4");
    assert_eq!(u[0]["capacity"], "10");
    assert_eq!(u[0]["inUse"], 1);
    assert_eq!(u[0]["parked"], 1);
    assert_eq!(u[0]["free"], "8");
    assert_eq!(u[1]["free"], ((1u128 << 64) - 1 - 2).to_string());
    let (code, out, _) = cli(&["usage", "--config", conflist.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("10.30.0.0/24"), "{out}");

    // The same figures as node_exporter textfile gauges, written atomically
    // over an older file, readable by a non-root exporter.
    let prom = lab.dir.path().join("coordinator-ipam-net1.prom");
    std::fs::write(&prom, "stale").unwrap();
    let conf_arg = conflist.to_str().unwrap();
    let (code, out, err) = cli(&[
        "usage",
        "--config",
        conf_arg,
        "--textfile",
        prom.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "the textfile replaces the printed table");
    let text = std::fs::read_to_string(&prom).unwrap();
    for sample in [
        r#"coordinator_ipam_pool_capacity{network="net1",pool="v4",subnet="10.30.0.0/24"} 10"#,
        r#"coordinator_ipam_pool_in_use{network="net1",pool="v4",subnet="10.30.0.0/24"} 1"#,
        r#"coordinator_ipam_pool_parked{network="net1",pool="v4",subnet="10.30.0.0/24"} 1"#,
        r#"coordinator_ipam_pool_quarantined{network="net1",pool="v4",subnet="10.30.0.0/24"} 0"#,
        r#"coordinator_ipam_pool_free{network="net1",pool="v4",subnet="10.30.0.0/24"} 8"#,
    ] {
        assert!(
            text.lines().any(|l| l == sample),
            "{sample} missing from {text}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let missing = lab.dir.path().join("no/such/dir/x.prom");
    let (code, _, err) = cli(&[
        "usage",
        "--config",
        conf_arg,
        "--textfile",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");

    // Release the parked address by hand; a second release says there is nothing.
    let (code, out, err) = cli(&["release", &b[0], "--network", "net1", "--data-dir", data]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&b[0]), "{out}");
    assert!(!lab.recorded_ips("net1").contains(&b[0]));
    let (code, _, err) = cli(&["release", &b[0], "--network", "net1", "--data-dir", data]);
    assert_eq!(code, 1);
    assert!(err.contains("no reservation"), "{err}");
    let (code, _, err) = cli(&[
        "release",
        "nonsense",
        "--network",
        "net1",
        "--data-dir",
        data,
    ]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&["usage", "--data-dir", data]);
    assert_eq!(code, 2);
    assert!(err.contains("--config"), "{err}");
}

/// `--config` naming a FIFO (nobody writing: an unbounded read waits
/// forever) or a device (`/dev/zero`: an unbounded read fills memory) fails
/// at once, with a clear error and a non-zero status. The FIFO first: on a
/// build that reads unbounded it hangs, and the hang limit fails the test
/// before the device is tried.
#[test]
fn a_config_that_is_a_fifo_or_a_device_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("net.conflist");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo = fifo.to_str().unwrap().to_string();
    for path in [fifo.as_str(), "/dev/zero"] {
        for cmd in ["list", "usage"] {
            let out = integration::exec::Exec::new(BIN)
                .args(&[cmd, "--config", path])
                .run_within(std::time::Duration::from_secs(10));
            assert_eq!(out.code, Some(1), "{cmd} --config {path}: {}", out.stderr);
            assert!(
                out.stderr.contains(path) && out.stderr.contains("not a regular file"),
                "{cmd} --config {path}: {}",
                out.stderr
            );
        }
    }
    let missing = dir.path().join("missing.conflist");
    let (code, _, err) = cli(&["list", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no such file"), "{err}");
}
