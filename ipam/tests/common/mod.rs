//! Running the built `coordinator-ipam` binary the way a runtime does.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command};

use integration::exec::Exec;

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_coordinator-ipam");
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A temporary data dir and quarantine file for one test, and the store:
/// the file store in the data dir, or a one-member etcd of its own.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub etcd: Option<integration::etcd::Cluster>,
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
            etcd: None,
        }
    }
    pub fn etcd() -> Lab {
        Lab {
            etcd: Some(integration::etcd::Cluster::single()),
            ..Lab::new()
        }
    }
    /// The `ipam.store` block of this lab.
    pub fn store(&self) -> Value {
        match &self.etcd {
            None => json!({"kind": "file", "dataDir": self.data_dir()}),
            Some(c) => json!({"kind": "etcd", "endpoints": c.endpoints(), "timeout": "3s"}),
        }
    }
    /// The addresses recorded for `network`, read through the CLI.
    pub fn recorded_ips(&self, network: &str) -> Vec<String> {
        let mut conf = self.conf("1.0.0", json!([{"subnet": "10.255.0.0/24"}]), json!({}));
        conf["name"] = json!(network);
        let path = self.dir.path().join(format!("list-{network}.json"));
        std::fs::write(&path, conf.to_string()).expect("write config");
        let (code, out, err) = cli(&["list", "--config", path.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "list failed: {err}");
        let v: Value = serde_json::from_str(&out).expect("list JSON");
        v.as_array()
            .expect("records")
            .iter()
            .map(|r| r["ip"].as_str().unwrap_or("").to_string())
            .collect()
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn quarantine(&self) -> PathBuf {
        self.dir.path().join("quarantine.json")
    }
    pub fn state_file(&self, network: &str) -> PathBuf {
        self.data_dir().join(network).join("state.bin")
    }
    /// A network config with these pools (and extra ipam fields).
    pub fn conf(&self, version: &str, pools: Value, extra: Value) -> Value {
        let mut ipam = json!({
            "type": "coordinator-ipam",
            "nodeName": "node1",
            "store": self.store(),
            "quarantineFile": self.quarantine(),
            "pools": pools,
        });
        if let (Some(m), Some(e)) = (ipam.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        json!({"cniVersion": version, "name": "net1", "type": "macvlan", "ipam": ipam})
    }
}

pub struct Call<'a> {
    pub command: &'a str,
    pub container: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
}

impl<'a> Call<'a> {
    pub fn new(command: &'a str, container: &'a str) -> Call<'a> {
        Call {
            command,
            container,
            ifname: "net1",
            args: "",
        }
    }
    pub fn args(mut self, args: &'a str) -> Self {
        self.args = args;
        self
    }
    pub fn ifname(mut self, ifname: &'a str) -> Self {
        self.ifname = ifname;
        self
    }

    /// The call as the one plugin exec of the test kit.
    pub fn exec(&self, conf: &Value) -> Exec {
        let mut e = Exec::new(BIN)
            .env("CNI_COMMAND", self.command)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin_json(conf);
        if !self.container.is_empty() {
            e = e
                .env("CNI_CONTAINERID", self.container)
                .env("CNI_IFNAME", self.ifname)
                .env("CNI_NETNS", &format!("/var/run/netns/{}", self.container));
        }
        if !self.args.is_empty() {
            e = e.env("CNI_ARGS", self.args);
        }
        e
    }

    /// The process, for tests that kill it mid-call.
    pub fn command(&self) -> Command {
        self.exec(&Value::Null).command()
    }

    pub fn spawn(&self, conf: &Value) -> Child {
        let mut child = self.command().spawn().expect("spawn coordinator-ipam");
        if let Some(mut stdin) = child.stdin.take() {
            // A child killed early closes its end: ignore EPIPE.
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        child
    }

    /// Exit status and the stdout JSON (Null when empty).
    pub fn run(&self, conf: &Value) -> (i32, Value) {
        let out = self.exec(conf).run();
        let v = if out.stdout.trim().is_empty() {
            Value::Null
        } else {
            out.json()
        };
        (out.code.unwrap_or(-1), v)
    }

    /// Run and require success.
    pub fn ok(&self, conf: &Value) -> Value {
        let (code, v) = self.run(conf);
        assert_eq!(code, 0, "{} {} failed: {v}", self.command, self.container);
        v
    }

    /// Run and require failure with `code`; returns the message.
    pub fn fails(&self, conf: &Value, code: u64) -> String {
        let (exit, v) = self.run(conf);
        assert_eq!(
            exit, 1,
            "{} {} should fail: {v}",
            self.command, self.container
        );
        assert_eq!(v["code"], code, "{v}");
        v["msg"].as_str().unwrap_or("").to_string()
    }
}

/// The addresses (without prefix) of a result.
pub fn result_ips(v: &Value) -> Vec<String> {
    v["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str())
                .map(|s| s.split('/').next().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Run the CLI; exit status, stdout, stderr.
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Exec::new(BIN).args(args).run();
    (out.code.unwrap_or(-1), out.stdout, out.stderr)
}
