//! The chain runner's vocabulary: verbs, attachments, what each plugin exec
//! did, and how a chain fails.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// A CNI verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Gc,
    Status,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
            Verb::Gc => "GC",
            Verb::Status => "STATUS",
        }
    }

    /// Parse `add`, `DEL`, ... (any case).
    pub fn parse(s: &str) -> Option<Verb> {
        match s.to_ascii_uppercase().as_str() {
            "ADD" => Some(Verb::Add),
            "DEL" => Some(Verb::Del),
            "CHECK" => Some(Verb::Check),
            "GC" => Some(Verb::Gc),
            "STATUS" => Some(Verb::Status),
            _ => None,
        }
    }
}

/// One container interface as the runtime knows it.
#[derive(Clone, Debug, Default)]
pub struct Attachment {
    pub container_id: String,
    /// The pod's netns path; `None` (empty `CNI_NETNS`) for a DEL after the
    /// netns is gone.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Runtime capability args (`{"ips": [...]}`, `{"mac": "..."}`), given to
    /// plugins that declare the capability, as `runtimeConfig`.
    pub capability_args: Map<String, Value>,
}

impl Attachment {
    pub fn new(container_id: &str, netns: impl Into<PathBuf>, ifname: &str) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            netns: Some(netns.into()),
            ifname: ifname.into(),
            ..Attachment::default()
        }
    }

    pub fn arg(mut self, key: &str, value: &str) -> Attachment {
        self.args.push((key.into(), value.into()));
        self
    }

    pub fn capability(mut self, name: &str, value: Value) -> Attachment {
        self.capability_args.insert(name.into(), value);
        self
    }

    /// Parse `K=V;K2=V2` into [`args`](Self::args).
    pub fn parse_args(s: &str) -> ChainResult<Vec<(String, String)>> {
        s.split(';')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(ChainError::runtime(format!(
                    "CNI_ARGS entry \"{kv}\" is not K=V"
                ))),
            })
            .collect()
    }

    pub(super) fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// One plugin execution.
#[derive(Clone, Debug)]
pub struct PluginRun {
    pub index: usize,
    /// The plugin's `type`.
    pub plugin: String,
    pub verb: Verb,
    pub stdin: Value,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    /// Wall time from spawn to exit.
    pub wall: Duration,
    /// Peak RSS of the plugin process in KiB.
    pub max_rss_kib: u64,
    /// User + system CPU time of the plugin process.
    pub cpu: Duration,
    /// Set when the plugin was not run (GC/STATUS on a plugin that does not
    /// support the required spec version).
    pub skipped: Option<String>,
}

/// A successful chain run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// ADD: the last plugin's result. Other verbs: `None`.
    pub result: Option<Value>,
    pub runs: Vec<PluginRun>,
}

/// A failed chain run: the first failing plugin (or the runtime itself).
#[derive(Clone, Debug)]
pub struct ChainError {
    /// Type of the plugin that failed; `None` when the runtime failed before
    /// or around the exec (bad conf, binary not found, cache).
    pub plugin: Option<String>,
    pub index: Option<usize>,
    /// The CNI error code; 0 when the failure has none (runtime failure,
    /// plugin crashed without printing an error).
    pub code: u32,
    pub msg: String,
    /// The error JSON: the plugin's own when it printed one.
    pub error: Value,
    /// Every plugin run up to and including the failing one.
    pub runs: Vec<PluginRun>,
}

/// Chain runs fail with a boxed [`ChainError`] (it carries every plugin run).
pub type ChainResult<T> = Result<T, Box<ChainError>>;

impl ChainError {
    pub fn runtime(msg: impl Into<String>) -> Box<ChainError> {
        let msg = msg.into();
        Box::new(ChainError {
            plugin: None,
            index: None,
            code: 0,
            error: json!({"code": 0, "msg": msg}),
            msg,
            runs: Vec::new(),
        })
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.plugin, self.index) {
            (Some(p), Some(i)) => write!(f, "plugin #{i} {p}: code {}: {}", self.code, self.msg),
            _ => write!(f, "runtime: {}", self.msg),
        }
    }
}

impl std::error::Error for ChainError {}
