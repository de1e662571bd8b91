//! Dispatch of one plugin exec: environment and stdin in, exactly one JSON
//! document (result or error) out on stdout, exit code 0 or 1.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::{json, Value};

use crate::config::{NetConf, MAX_STDIN};
use crate::env::{CniEnv, Command};
use crate::error::{code, Error, Result};
use crate::result::CniResult;
use crate::version::{Version, LATEST, SUPPORTED};

/// One call: the validated environment, the common config fields and the
/// whole stdin JSON (for the plugin's own fields).
#[derive(Debug, Clone)]
pub struct Call {
    pub env: CniEnv,
    pub conf: NetConf,
    pub raw: Value,
}

impl Call {
    pub fn version(&self) -> Version {
        // Validated by NetConf::parse before any verb runs.
        self.conf.version().unwrap_or(Version::V110)
    }

    /// `prevResult`, parsed; None when absent.
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match &self.conf.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::parse(v)
                .map(Some)
                .map_err(|e| e.context("prevResult")),
        }
    }
}

pub trait Plugin {
    /// CNI_ARGS keys this plugin understands besides the Kubernetes ones.
    fn known_args(&self) -> &[&str] {
        &[]
    }
    fn add(&self, call: &Call) -> Result<CniResult>;
    fn del(&self, call: &Call) -> Result<()>;
    fn check(&self, call: &Call) -> Result<()>;
    fn status(&self, _call: &Call) -> Result<()> {
        Ok(())
    }
    fn gc(&self, _call: &Call) -> Result<()> {
        Ok(())
    }
}

/// What the VERSION verb reports and logs name.
pub struct About {
    pub name: &'static str,
    pub version: &'static str,
}

/// What one exec prints and returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Entry point of a plugin binary. Never returns.
pub fn run(plugin: &dyn Plugin, about: &About) -> ! {
    let vars: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let mut stdin = Vec::new();
    // VERSION may come with an empty or closed stdin; a read error is a decode
    // error reported below. One byte past the bound tells an oversized input.
    let read = std::io::stdin()
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin);
    let out = match read {
        Ok(n) if n > MAX_STDIN => failure(&stdin_too_large(), LATEST),
        Ok(_) => dispatch(plugin, about, &vars, &stdin),
        Err(e) => failure(&Error::Io(format!("reading stdin: {e}")), LATEST),
    };
    let mut so = std::io::stdout().lock();
    // A verb without a result (DEL, CHECK, STATUS, GC) prints nothing at all.
    if !out.stdout.is_empty() {
        let _ = so.write_all(out.stdout.as_bytes());
        let _ = so.write_all(b"\n");
    }
    let _ = so.flush();
    std::process::exit(out.exit_code)
}

fn stdin_too_large() -> Error {
    Error::Decode(format!(
        "network config on stdin is larger than {} KiB",
        MAX_STDIN >> 10
    ))
}

/// The whole protocol, testable in-process: a panic anywhere below becomes
/// an error JSON instead of a crash.
pub fn dispatch(
    plugin: &dyn Plugin,
    about: &About,
    vars: &HashMap<String, String>,
    stdin: &[u8],
) -> Outcome {
    if stdin.len() > MAX_STDIN {
        return failure(&stdin_too_large(), LATEST);
    }
    match catch_unwind(AssertUnwindSafe(|| {
        dispatch_inner(plugin, about, vars, stdin)
    })) {
        Ok(o) => o,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            failure(
                &Error::plugin(code::INTERNAL, format!("internal error: {what}")),
                &request_version(stdin),
            )
        }
    }
}

fn dispatch_inner(
    plugin: &dyn Plugin,
    about: &About,
    vars: &HashMap<String, String>,
    stdin: &[u8],
) -> Outcome {
    // VERSION needs nothing but CNI_COMMAND: whatever else the runtime left
    // in the environment must not make it fail.
    if vars.get("CNI_COMMAND").map(String::as_str) == Some("VERSION") {
        return version_info(stdin, about);
    }
    let env = match CniEnv::from_map(vars, plugin.known_args()) {
        Ok(e) => e,
        Err(e) => return failure(&e, &request_version(stdin)),
    };
    let (conf, raw) = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return failure(&e, &request_version(stdin)),
    };
    let version = match conf.version() {
        Ok(v) => v,
        Err(e) => return failure(&e, LATEST),
    };
    let call = Call { env, conf, raw };
    let res = match call.env.command {
        Command::Add => plugin.add(&call).map(|r| Some(r.to_json(version))),
        Command::Del => plugin.del(&call).map(|_| None),
        Command::Check if !version.has_check() => Err(Error::IncompatibleVersion(format!(
            "CHECK is not defined for cniVersion {version} (needs 0.4.0 or later)"
        ))),
        Command::Check => plugin.check(&call).map(|_| None),
        Command::Status if !version.has_status_gc() => Err(Error::IncompatibleVersion(format!(
            "STATUS is not defined for cniVersion {version} (needs 1.1.0)"
        ))),
        Command::Status => plugin.status(&call).map(|_| None),
        Command::Gc if !version.has_status_gc() => Err(Error::IncompatibleVersion(format!(
            "GC is not defined for cniVersion {version} (needs 1.1.0)"
        ))),
        Command::Gc => plugin.gc(&call).map(|_| None),
        Command::Version => unreachable_version(),
    };
    match res {
        Ok(Some(v)) => Outcome {
            stdout: v.to_string(),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(e) => {
            tracing::error!(command = call.env.command.as_str(), code = e.code(), "{e}");
            failure(&e, version.as_str())
        }
    }
}

fn unreachable_version() -> Result<Option<Value>> {
    Err(Error::plugin(code::INTERNAL, "VERSION handled earlier"))
}

fn failure(e: &Error, version: &str) -> Outcome {
    Outcome {
        stdout: e.to_json(version).to_string(),
        exit_code: 1,
    }
}

/// The version to answer errors in: the config's when we support it.
fn request_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_string())
}

fn version_info(stdin: &[u8], about: &About) -> Outcome {
    let requested: Option<String> = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string));
    let cni_version = match requested {
        Some(v) if !v.is_empty() => v,
        _ => LATEST.to_string(),
    };
    tracing::debug!(plugin = about.name, version = about.version, "VERSION");
    Outcome {
        stdout: json!({"cniVersion": cni_version, "supportedVersions": SUPPORTED}).to_string(),
        exit_code: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Plugin for Echo {
        fn add(&self, call: &Call) -> Result<CniResult> {
            if call.conf.rest.get("panic").is_some() {
                panic!("boom");
            }
            Ok(call.prev_result()?.unwrap_or_default())
        }
        fn del(&self, _: &Call) -> Result<()> {
            Ok(())
        }
        fn check(&self, _: &Call) -> Result<()> {
            Err(Error::plugin(code::CHECK_FAILED, "nope"))
        }
    }

    const ABOUT: About = About {
        name: "echo",
        version: "0",
    };

    fn vars(cmd: &str) -> HashMap<String, String> {
        [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn json_of(o: &Outcome) -> Value {
        serde_json::from_str(&o.stdout).unwrap()
    }

    #[test]
    fn add_prints_in_config_version() {
        let conf = br#"{"cniVersion":"0.4.0","name":"n","type":"echo",
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}"#;
        let o = dispatch(&Echo, &ABOUT, &vars("ADD"), conf);
        assert_eq!(o.exit_code, 0);
        let v = json_of(&o);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
    }

    #[test]
    fn panics_become_errors() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"echo","panic":1}"#;
        let o = dispatch(&Echo, &ABOUT, &vars("ADD"), conf);
        assert_eq!(o.exit_code, 1);
        assert_eq!(json_of(&o)["code"], code::INTERNAL);
    }

    #[test]
    fn version_and_verb_gates() {
        let o = dispatch(&Echo, &ABOUT, &vars("VERSION"), b"");
        assert_eq!(json_of(&o)["supportedVersions"][4], "1.1.0");
        let o = dispatch(
            &Echo,
            &ABOUT,
            &vars("VERSION"),
            br#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(json_of(&o)["cniVersion"], "0.4.0");
        let conf = br#"{"cniVersion":"0.3.1","name":"n","type":"echo"}"#;
        assert_eq!(
            json_of(&dispatch(&Echo, &ABOUT, &vars("CHECK"), conf))["code"],
            1
        );
        assert_eq!(
            json_of(&dispatch(&Echo, &ABOUT, &vars("GC"), conf))["code"],
            1
        );
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"echo"}"#;
        let o = dispatch(&Echo, &ABOUT, &vars("CHECK"), conf);
        assert_eq!(json_of(&o)["code"], code::CHECK_FAILED);
        assert_eq!(json_of(&o)["cniVersion"], "1.0.0");
        let o = dispatch(&Echo, &ABOUT, &vars("DEL"), conf);
        assert_eq!((o.exit_code, o.stdout.as_str()), (0, ""));
    }

    #[test]
    fn bad_prev_result_is_decode_error() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"echo","prevResult":{"ips":[{"address":"x"}]}}"#;
        let o = dispatch(&Echo, &ABOUT, &vars("ADD"), conf);
        assert_eq!(json_of(&o)["code"], 6);
        assert!(json_of(&o)["msg"]
            .as_str()
            .unwrap()
            .starts_with("prevResult"));
    }
}
