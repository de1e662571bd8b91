//! Exec one plugin of a chain as libcni does: find it on CNI_PATH, ask its
//! VERSION when needed, give it the CNI_* environment and judge what it
//! printed.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::{conf, Attachment, Chain, ChainError, ChainResult, PluginRun, Verb};
use crate::exec;

impl Chain {
    /// Why `ty` cannot take `version` (from its VERSION answer), if it cannot.
    pub(super) fn unsupported(&self, ty: &str, version: &str) -> Option<String> {
        let binary = self.find(ty).ok()?;
        let raw = exec::run(exec::Spawn {
            binary: &binary,
            args: Vec::new(),
            clear_env: false,
            env: vec![("CNI_COMMAND".into(), "VERSION".into())],
            stdin: json!({"cniVersion": version}).to_string().into_bytes(),
            netns: self.node_netns.as_deref(),
            timeout: self.timeout,
        })
        .ok()?;
        let answer: Value = serde_json::from_slice(&raw.stdout).ok()?;
        let supported = answer["supportedVersions"].as_array()?;
        if supported.iter().any(|v| v == version) {
            None
        } else {
            Some(format!("{ty} does not support cniVersion {version}"))
        }
    }

    pub(super) fn find(&self, ty: &str) -> ChainResult<PathBuf> {
        self.cni_path
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                ChainError::runtime(format!(
                    "plugin \"{ty}\" not found in CNI_PATH {}",
                    join_path(&self.cni_path)
                ))
            })
    }

    /// Exec plugin `i` and judge its output; pushes the run onto `runs`.
    /// Returns the parsed stdout (None when empty).
    pub(super) fn exec(
        &self,
        i: usize,
        verb: Verb,
        stdin: Value,
        att: Option<&Attachment>,
        runs: &mut Vec<PluginRun>,
    ) -> ChainResult<Option<Value>> {
        let plugin = &self.list.plugins[i];
        let ty = conf::plugin_type(plugin);
        let binary = self.find(&ty).map_err(|mut e| {
            e.plugin = Some(ty.clone());
            e.index = Some(i);
            e.runs = std::mem::take(runs);
            e
        })?;
        let mut env = self.env.clone();
        env.extend([
            ("CNI_COMMAND".to_string(), verb.as_str().to_string()),
            ("CNI_PATH".to_string(), join_path(&self.cni_path)),
        ]);
        if let Some(att) = att {
            let netns = att
                .netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            env.push(("CNI_CONTAINERID".into(), att.container_id.clone()));
            env.push(("CNI_NETNS".into(), netns));
            env.push(("CNI_IFNAME".into(), att.ifname.clone()));
            env.push(("CNI_ARGS".into(), att.cni_args()));
        }
        let raw = exec::run(exec::Spawn {
            binary: &binary,
            args: Vec::new(),
            clear_env: false,
            env,
            stdin: stdin.to_string().into_bytes(),
            netns: self.node_netns.as_deref(),
            timeout: self.timeout,
        });
        let raw = match raw {
            Ok(r) => r,
            Err(e) => {
                return Err(fail(
                    i,
                    plugin,
                    0,
                    e.to_string(),
                    None,
                    std::mem::take(runs),
                ));
            }
        };
        let stdout = String::from_utf8_lossy(&raw.stdout).into_owned();
        runs.push(PluginRun {
            index: i,
            plugin: ty.clone(),
            verb,
            stdin,
            stdout: stdout.clone(),
            stderr: String::from_utf8_lossy(&raw.stderr).into_owned(),
            exit_code: raw.exit_code,
            wall: raw.wall,
            max_rss_kib: raw.max_rss_kib,
            cpu: raw.cpu,
            skipped: None,
        });
        let parsed: Option<Value> = if stdout.trim().is_empty() {
            None
        } else {
            match serde_json::from_str(&stdout) {
                Ok(v) => Some(v),
                Err(e) => {
                    let msg = format!(
                        "invalid JSON on stdout ({e}), exit {:?}: {}",
                        raw.exit_code,
                        stdout.trim()
                    );
                    return Err(fail(i, plugin, 0, msg, None, std::mem::take(runs)));
                }
            }
        };
        if raw.timed_out {
            let msg = format!("killed after {:?}", self.timeout);
            return Err(fail(i, plugin, 0, msg, parsed, std::mem::take(runs)));
        }
        if raw.exit_code == Some(0) {
            return Ok(parsed);
        }
        let code = parsed
            .as_ref()
            .and_then(|p| p.get("code"))
            .and_then(Value::as_u64)
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0);
        let msg = match parsed
            .as_ref()
            .and_then(|p| p.get("msg"))
            .and_then(Value::as_str)
        {
            Some(m) => m.to_string(),
            None => {
                let stderr = runs
                    .last()
                    .map(|r| r.stderr.trim().to_string())
                    .unwrap_or_default();
                match raw.exit_code {
                    Some(c) => format!("exit {c} without a CNI error; stderr: {stderr}"),
                    None => format!("killed by signal {:?}; stderr: {stderr}", raw.signal),
                }
            }
        };
        Err(fail(i, plugin, code, msg, parsed, std::mem::take(runs)))
    }
}

pub(super) fn fail(
    i: usize,
    plugin: &Map<String, Value>,
    code: u32,
    msg: String,
    error: Option<Value>,
    runs: Vec<PluginRun>,
) -> Box<ChainError> {
    Box::new(ChainError {
        plugin: Some(conf::plugin_type(plugin)),
        index: Some(i),
        code,
        error: error.unwrap_or_else(|| json!({"code": code, "msg": msg})),
        msg,
        runs,
    })
}

fn join_path(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}
