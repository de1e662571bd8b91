//! The file store under concurrency, crashes and broken storage, through the
//! real binary.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn pools() -> Value {
    json!([{"name": "p", "subnet": "10.20.0.0/23", "gateway": "10.20.0.1"}])
}

#[test]
fn two_hundred_parallel_adds_get_distinct_addresses() {
    let lab = Lab::new();
    let conf = lab.conf("1.0.0", pools(), json!({}));
    let ids: Vec<String> = (0..200).map(|i| format!("par{i}")).collect();
    let children: Vec<_> = ids
        .iter()
        .map(|id| Call::new("ADD", id).spawn(&conf))
        .collect();
    let mut got = Vec::new();
    for (id, child) in ids.iter().zip(children) {
        let out = child.wait_with_output().expect("wait");
        let v: Value = serde_json::from_slice(&out.stdout).expect("ADD printed JSON");
        assert_eq!(out.status.code(), Some(0), "{id}: {v}");
        got.extend(result_ips(&v));
    }
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(got.len(), 200);
    assert_eq!(distinct.len(), 200, "an address was handed out twice");
    let stored: BTreeSet<String> = lab.recorded_ips("net1").into_iter().collect();
    assert_eq!(stored, got.iter().cloned().collect::<BTreeSet<_>>());
}

/// Start a call and SIGKILL it after `delay` (it may have finished by then,
/// or be anywhere in between: before the lock, holding it, mid-write).
fn kill_after(call: Call, conf: &Value, delay: Duration) {
    let mut child = call.spawn(conf);
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn kill_9_during_add_and_del_never_corrupts_or_duplicates() {
    let lab = Lab::new();
    let conf = lab.conf("1.0.0", pools(), json!({}));
    let n = 60;
    let ids: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    // Phase 1: ADDs killed at varying points, two at a time so one can be
    // killed while the other waits on the lock.
    for (i, pair) in ids.chunks(2).enumerate() {
        let delay = Duration::from_millis(i as u64 % 30);
        std::thread::scope(|s| {
            for id in pair {
                let conf = &conf;
                s.spawn(move || kill_after(Call::new("ADD", id), conf, delay));
            }
        });
    }
    // Whatever survived must load (the CLI reads the same store).
    let (code, out, err) = cli(&[
        "list",
        "--data-dir",
        lab.data_dir().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "state must load after kill -9: {err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert!(listed.as_array().unwrap().len() <= n);
    eprintln!(
        "kill -9 phase: {} of {n} ADDs had committed",
        listed.as_array().unwrap().len()
    );

    // Every attachment completes its ADD: a killed ADD that had committed is
    // returned idempotently, one that had not gets a fresh address.
    let mut by_id = std::collections::BTreeMap::new();
    for id in &ids {
        by_id.insert(id.clone(), result_ips(&Call::new("ADD", id).ok(&conf)));
    }
    let all: Vec<&String> = by_id.values().flatten().collect();
    assert_eq!(
        all.iter().collect::<BTreeSet<_>>().len(),
        n,
        "duplicate after kill -9"
    );
    assert_eq!(
        lab.recorded_ips("net1").len(),
        n,
        "a killed ADD leaked an address"
    );

    // Phase 2: DELs of the first half killed at varying points, then completed.
    for (i, id) in ids[..n / 2].iter().enumerate() {
        kill_after(
            Call::new("DEL", id),
            &conf,
            Duration::from_millis(i as u64 % 30),
        );
    }
    for id in &ids[..n / 2] {
        Call::new("DEL", id).ok(&conf);
    }
    let left: BTreeSet<String> = lab.recorded_ips("net1").into_iter().collect();
    let want: BTreeSet<String> = ids[n / 2..]
        .iter()
        .flat_map(|id| by_id[id].clone())
        .collect();
    assert_eq!(left, want);

    // New ADDs never collide with survivors.
    for i in 0..20 {
        let ip = result_ips(&Call::new("ADD", &format!("new{i}")).ok(&conf));
        assert!(!want.contains(&ip[0]), "{ip:?} handed out again");
    }
}

#[test]
fn corrupt_state_file_is_an_error_and_is_kept() {
    let lab = Lab::new();
    let conf = lab.conf("1.0.0", pools(), json!({}));
    Call::new("ADD", "a").ok(&conf);
    let state = lab.state_file("net1");
    let garbage = b"{\"version\":1,\"records\":[{\"ip\":\"10.20.0.";
    std::fs::write(&state, garbage).unwrap();
    let msg = Call::new("ADD", "b").fails(&conf, 112);
    assert!(
        msg.contains("state.bin") && msg.contains("corrupt"),
        "{msg}"
    );
    Call::new("DEL", "a").fails(&conf, 112);
    let mut status = lab.conf("1.1.0", pools(), json!({}));
    status["name"] = json!("net1");
    Call::new("STATUS", "").fails(&status, 112);
    assert_eq!(
        std::fs::read(&state).unwrap(),
        garbage,
        "a corrupt state must never be reset"
    );
    let (code, _, err) = cli(&["list", "--data-dir", lab.data_dir().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn file_in_place_of_data_dir_is_io_error() {
    let lab = Lab::new();
    std::fs::write(lab.data_dir(), b"not a dir").unwrap();
    let conf = lab.conf("1.0.0", pools(), json!({}));
    let msg = Call::new("ADD", "a").fails(&conf, 5);
    assert!(msg.contains("not a directory"), "{msg}");
}

/// Run one CNI call inside a private mount namespace after `setup` (a shell
/// snippet that gets the data dir as $1) prepared it. Needs root.
fn in_mount_ns(lab: &Lab, setup: &str, call: Call, conf: &Value) -> (i32, Value) {
    let script = format!("set -e; {setup}; shift; exec \"$@\"");
    let cmd = call.command();
    let inner = cmd.get_program().to_owned();
    let envs: Vec<_> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(lab.data_dir())
        .arg(inner)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(envs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("unshare (util-linux) is required");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.trim().is_empty(),
        "mount namespace setup failed (this test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
    )
}

#[test]
fn read_only_data_dir_is_io_error() {
    let lab = Lab::new();
    let conf = lab.conf("1.0.0", pools(), json!({}));
    let held = result_ips(&Call::new("ADD", "a").ok(&conf));
    let ro = "mount --bind \"$1\" \"$1\"; mount -o remount,bind,ro \"$1\"";
    for (cmd, id) in [("ADD", "b"), ("DEL", "a")] {
        let (code, v) = in_mount_ns(&lab, ro, Call::new(cmd, id), &conf);
        assert_eq!((code, v["code"].as_u64()), (1, Some(5)), "{cmd}: {v}");
        assert!(
            v["msg"].as_str().unwrap().contains("ead-only file system"),
            "{v}"
        );
    }
    // Outside the private namespace nothing changed.
    assert_eq!(lab.recorded_ips("net1"), held);
}

#[test]
fn full_data_dir_is_io_error() {
    let lab = Lab::new();
    std::fs::create_dir_all(lab.data_dir()).unwrap();
    let conf = lab.conf("1.0.0", pools(), json!({}));
    // A tiny tmpfs filled up, private to this call.
    let full = "mount -t tmpfs -o size=128k,nr_inodes=64 tmpfs \"$1\"; \
                dd if=/dev/zero of=\"$1/fill\" bs=4k count=64 2>/dev/null || true";
    let (code, v) = in_mount_ns(&lab, full, Call::new("ADD", "a"), &conf);
    assert_eq!((code, v["code"].as_u64()), (1, Some(5)), "{v}");
    assert!(v["msg"].as_str().unwrap().contains("No space left"), "{v}");
    assert!(!lab.state_file("net1").exists());
    assert!(!lab.data_dir().join("net1").join("journal").exists());
}
