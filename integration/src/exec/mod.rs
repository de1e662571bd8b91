//! The one way the tests, the chain runner and the benchmarks exec a plugin
//! (like libcni's invoke, or pkg/testutils' CmdAdd/CmdDel in the reference
//! plugins): [`spawn::run`] starts the binary, feeds stdin, captures stdout and
//! stderr, and measures wall time, CPU and peak RSS, with a watchdog; [`Exec`]
//! is the builder the tests use, a cleared environment with explicit `CNI_*`
//! variables, and [`Run`] the assertions on what it did.

mod spawn;

pub use spawn::{run, timeval, wait_with_usage, RawRun, Spawn};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A plugin that has not exited after this long is killed and the run
/// reported as hung: a guard against a stuck suite, not a timing assertion.
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// `target/<profile>/<name>`, next to the running test executable
/// ([`crate::chain::default_bin_dir`]). Panics with the command to run when
/// the binary was not built.
pub fn bin_path(name: &str) -> PathBuf {
    let p = crate::chain::default_bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before these tests",
        p.display()
    );
    p
}

/// One planned exec.
#[derive(Debug, Clone)]
pub struct Exec {
    bin: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    stdin: Vec<u8>,
    netns: Option<PathBuf>,
}

/// What one exec did.
#[derive(Debug, Clone)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    /// None: killed by a signal.
    pub code: Option<i32>,
}

impl Exec {
    /// The binary with an empty environment and empty stdin.
    pub fn new(bin: impl Into<PathBuf>) -> Exec {
        Exec {
            bin: bin.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            stdin: Vec::new(),
            netns: None,
        }
    }

    /// Command-line arguments (the operator CLI of coordinator-ipam).
    pub fn args(mut self, args: &[&str]) -> Exec {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Exec inside this netns (with a fresh sysfs) instead of ours.
    pub fn in_netns(mut self, netns: impl Into<PathBuf>) -> Exec {
        self.netns = Some(netns.into());
        self
    }

    /// The configured process, for a test that controls it itself (kills it
    /// mid-call, runs it under a wrapper). Stdin, stdout and stderr piped.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(&self.args)
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// The usual per-attachment environment of `command`.
    pub fn cni(bin: impl Into<PathBuf>, command: &str, container_id: &str, netns: &str) -> Exec {
        Exec::new(bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
    }

    pub fn env(mut self, key: &str, val: &str) -> Exec {
        self.env.insert(key.to_string(), val.to_string());
        self
    }

    pub fn unset(mut self, key: &str) -> Exec {
        self.env.remove(key);
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Exec {
        self.stdin = data.into();
        self
    }

    pub fn stdin_json(self, v: &Value) -> Exec {
        self.stdin(v.to_string())
    }

    /// Run to completion. Panics only when the binary cannot be started or
    /// hangs, both failures of the suite's premise.
    pub fn run(&self) -> Run {
        self.run_within(HANG_LIMIT)
    }

    /// Like [`Exec::run`], with a tighter bound for calls that must not wait
    /// on anything (a FIFO in place of a file, say).
    pub fn run_within(&self, hang_limit: Duration) -> Run {
        let raw = run(Spawn {
            binary: &self.bin,
            args: self.args.clone(),
            clear_env: true,
            env: self.env.clone().into_iter().collect(),
            stdin: self.stdin.clone(),
            netns: self.netns.as_deref(),
            timeout: hang_limit,
        })
        .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        assert!(
            !raw.timed_out,
            "{} hung for {hang_limit:?} with env {:?}",
            self.bin.display(),
            self.env
        );
        Run {
            stdout: String::from_utf8_lossy(&raw.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&raw.stderr).into_owned(),
            code: raw.exit_code,
        }
    }
}

/// `s` holds exactly one JSON value and nothing but whitespace around it.
pub fn one_json(s: &str) -> Result<Value, String> {
    let mut it = serde_json::Deserializer::from_str(s).into_iter::<Value>();
    let first = match it.next() {
        None => return Err("no JSON value".into()),
        Some(Err(e)) => return Err(format!("not JSON: {e}")),
        Some(Ok(v)) => v,
    };
    match it.next() {
        None => Ok(first),
        Some(Ok(v)) => Err(format!("a second JSON value follows: {v}")),
        Some(Err(e)) => Err(format!("trailing bytes after the JSON value: {e}")),
    }
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Exit 0 and stdout exactly one JSON value, returned.
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.code, Some(0), "expected success: {}", self.describe());
        self.json()
    }

    /// Exit 0; stdout as it is (text output of a CLI).
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "expected success: {}", self.describe());
        &self.stdout
    }

    /// Stdout exactly one JSON value, whatever the exit code.
    pub fn json(&self) -> Value {
        one_json(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {}", self.describe()))
    }

    /// Exit 0 and nothing at all on stdout (DEL, CHECK, STATUS, GC).
    pub fn ok_silent(&self) {
        assert_eq!(self.code, Some(0), "expected success: {}", self.describe());
        assert!(
            self.stdout.is_empty(),
            "stdout must be empty: {}",
            self.describe()
        );
    }

    /// Exit != 0 and stdout exactly one CNI error object with `code`, a
    /// non-empty `msg` and a string `cniVersion`; the object is returned.
    pub fn err(&self, code: u64) -> Value {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a clean failure exit: {}",
            self.describe()
        );
        let v = self.json();
        assert!(v.is_object(), "error is not an object: {}", self.describe());
        assert_eq!(
            v.get("code").and_then(Value::as_u64),
            Some(code),
            "wrong error code: {}",
            self.describe()
        );
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or("");
        assert!(!msg.is_empty(), "error without msg: {}", self.describe());
        assert!(
            v.get("cniVersion").and_then(Value::as_str).is_some(),
            "error without cniVersion: {}",
            self.describe()
        );
        v
    }

    /// The error's `msg`.
    pub fn err_msg(&self, code: u64) -> String {
        self.err(code)["msg"].as_str().unwrap_or("").to_string()
    }

    pub fn stderr(&self) -> &str {
        &self.stderr
    }
}

#[cfg(test)]
mod tests {
    use super::one_json;

    #[test]
    fn one_json_is_strict() {
        assert!(one_json("{\"a\":1}\n").is_ok());
        assert!(one_json("  [1] ").is_ok());
        assert!(one_json("").is_err());
        assert!(one_json("{} {}").is_err());
        assert!(one_json("{}\nlog line").is_err());
        assert!(one_json("INFO x\n{}").is_err());
    }
}
