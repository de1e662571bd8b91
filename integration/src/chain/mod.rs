//! A chain runner that behaves like libcni (what Multus and containerd use):
//! ADD plugin by plugin with `prevResult`, DEL in reverse, CHECK, GC, STATUS,
//! results cached for CHECK and DEL. Plugins run inside the lab's node netns.

mod cache;
mod conf;
pub mod exec;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

pub use cache::{Cache, Key as CacheKey};
pub use conf::{plugin_stdin, NetConfList};

use cache::Key;

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

    fn cni_args(&self) -> String {
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

/// A conflist ready to run.
#[derive(Debug)]
pub struct Chain {
    list: NetConfList,
    cni_path: Vec<PathBuf>,
    node_netns: Option<PathBuf>,
    cache: Cache,
    timeout: Duration,
    env: Vec<(String, String)>,
}

/// Where our own plugin binaries are: the directory of the running
/// executable, or its parent for test and example binaries (`target/debug/deps`).
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps") | Some("examples") => dir.parent().map(Path::to_path_buf).unwrap_or(dir),
        _ => dir,
    }
}

/// `/usr/lib/cni` (reference plugins) then [`default_bin_dir`].
pub fn default_cni_path() -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/lib/cni"), default_bin_dir()]
}

/// Parse a `CNI_PATH`-style list.
pub fn parse_cni_path(s: &str) -> Vec<PathBuf> {
    s.split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The spec version GC and STATUS need.
const GC_VERSION: &str = "1.1.0";

impl Chain {
    /// Defaults: [`default_cni_path`], current netns, in-memory cache, 60 s per plugin.
    pub fn new(list: NetConfList) -> Chain {
        Chain {
            list,
            cni_path: default_cni_path(),
            node_netns: None,
            cache: Cache::memory(),
            timeout: Duration::from_secs(60),
            env: Vec::new(),
        }
    }

    /// Load a conflist (or single conf) file.
    pub fn from_file(path: impl AsRef<Path>) -> ChainResult<Chain> {
        Ok(Chain::new(NetConfList::from_file(path)?))
    }

    pub fn cni_path(mut self, dirs: Vec<PathBuf>) -> Chain {
        self.cni_path = dirs;
        self
    }

    /// Exec plugins inside this netns (a lab's node), name or path.
    pub fn node_netns(mut self, ns: Option<&str>) -> Chain {
        self.node_netns = ns.map(crate::nsexec::netns_path);
        self
    }

    /// Cache ADD results as files under `dir/results` (default: in memory).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Chain {
        self.cache = Cache::Dir(dir.into());
        self
    }

    /// Set `key=value` in every plugin's environment, as the runtime's own
    /// environment on a node would (e.g. `NODE_NAME` from the downward API).
    /// `CNI_*` keys are the runtime's per-call view and are set per call.
    pub fn env(mut self, key: &str, value: &str) -> Chain {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Kill a plugin that runs longer than this.
    pub fn timeout(mut self, t: Duration) -> Chain {
        self.timeout = t;
        self
    }

    pub fn list(&self) -> &NetConfList {
        &self.list
    }

    pub fn list_mut(&mut self) -> &mut NetConfList {
        &mut self.list
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Run `verb`. GC keeps the attachments found in the cache; use
    /// [`gc`](Self::gc) to name them yourself.
    pub fn run(&self, verb: Verb, att: &Attachment) -> ChainResult<Outcome> {
        match verb {
            Verb::Add => self.add(att),
            Verb::Del => self.del(att),
            Verb::Check => self.check(att),
            Verb::Gc => self.gc(&self.cache.attachments(&self.list.name)),
            Verb::Status => self.status(),
        }
    }

    pub fn add(&self, att: &Attachment) -> ChainResult<Outcome> {
        let mut runs = Vec::new();
        let mut prev: Option<Value> = None;
        for (i, plugin) in self.list.plugins.iter().enumerate() {
            let stdin = plugin_stdin(
                plugin,
                &self.list.cni_version,
                &self.list.name,
                &att.capability_args,
                prev.as_ref(),
            );
            let run = self.exec(i, Verb::Add, stdin, Some(att), &mut runs)?;
            match run {
                Some(Value::Object(o)) => prev = Some(Value::Object(o)),
                _ => {
                    return Err(fail(
                        i,
                        plugin,
                        0,
                        "ADD printed no result object on stdout".into(),
                        None,
                        runs,
                    ))
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        let key = self.key(att);
        let entry = cache::record(
            &key,
            &self.list.to_value(),
            &att.args,
            &att.capability_args,
            &result,
        );
        if let Err(e) = self.cache.put(&key, entry) {
            let mut err = ChainError::runtime(format!("cache ADD result: {e}"));
            err.runs = runs;
            return Err(err);
        }
        Ok(Outcome {
            result: Some(result),
            runs,
        })
    }

    pub fn check(&self, att: &Attachment) -> ChainResult<Outcome> {
        if !version_at_least(&self.list.cni_version, "0.4.0") {
            return Err(ChainError::runtime(format!(
                "CHECK needs cniVersion >= 0.4.0, the list has {}",
                self.list.cni_version
            )));
        }
        let cached = self.cache.result(&self.key(att)).ok_or_else(|| {
            ChainError::runtime(format!(
                "no cached ADD result for {}/{}",
                att.container_id, att.ifname
            ))
        })?;
        let mut runs = Vec::new();
        for (i, plugin) in self.list.plugins.iter().enumerate() {
            let stdin = plugin_stdin(
                plugin,
                &self.list.cni_version,
                &self.list.name,
                &att.capability_args,
                Some(&cached),
            );
            self.exec(i, Verb::Check, stdin, Some(att), &mut runs)?;
        }
        Ok(Outcome { result: None, runs })
    }

    pub fn del(&self, att: &Attachment) -> ChainResult<Outcome> {
        let key = self.key(att);
        let cached = if version_at_least(&self.list.cni_version, "0.4.0") {
            self.cache.result(&key)
        } else {
            None
        };
        let mut runs = Vec::new();
        for (i, plugin) in self.list.plugins.iter().enumerate().rev() {
            let stdin = plugin_stdin(
                plugin,
                &self.list.cni_version,
                &self.list.name,
                &att.capability_args,
                cached.as_ref(),
            );
            self.exec(i, Verb::Del, stdin, Some(att), &mut runs)?;
        }
        if let Err(e) = self.cache.remove(&key) {
            let mut err = ChainError::runtime(format!("remove cached result: {e}"));
            err.runs = runs;
            return Err(err);
        }
        Ok(Outcome { result: None, runs })
    }

    /// GC: each plugin once, told which `(containerID, ifname)` attachments
    /// are still valid. Sent as spec 1.1.0 when the list is older; plugins
    /// that do not support 1.1.0 (per VERSION) are skipped, not failed.
    pub fn gc(&self, valid: &[(String, String)]) -> ChainResult<Outcome> {
        let attachments: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        self.each_once(Verb::Gc, |stdin| {
            stdin.insert(
                "cni.dev/valid-attachments".into(),
                Value::Array(attachments.clone()),
            );
        })
    }

    /// STATUS: each plugin once (spec 1.1.0, same skipping as GC).
    pub fn status(&self) -> ChainResult<Outcome> {
        self.each_once(Verb::Status, |_| {})
    }

    fn each_once(
        &self,
        verb: Verb,
        extra: impl Fn(&mut Map<String, Value>),
    ) -> ChainResult<Outcome> {
        let version = if version_at_least(&self.list.cni_version, GC_VERSION) {
            self.list.cni_version.clone()
        } else {
            GC_VERSION.to_string()
        };
        let mut runs = Vec::new();
        for (i, plugin) in self.list.plugins.iter().enumerate() {
            let ty = conf::plugin_type(plugin);
            if let Some(why) = self.unsupported(&ty, &version) {
                runs.push(PluginRun {
                    index: i,
                    plugin: ty,
                    verb,
                    stdin: Value::Null,
                    stdout: String::new(),
                    stderr: String::new(),
                    exit_code: None,
                    wall: Duration::ZERO,
                    max_rss_kib: 0,
                    cpu: Duration::ZERO,
                    skipped: Some(why),
                });
                continue;
            }
            let mut stdin = plugin_stdin(plugin, &version, &self.list.name, &Map::new(), None);
            if let Value::Object(o) = &mut stdin {
                extra(o);
            }
            self.exec(i, verb, stdin, None, &mut runs)?;
        }
        Ok(Outcome { result: None, runs })
    }

    /// Why `ty` cannot take `version` (from its VERSION answer), if it cannot.
    fn unsupported(&self, ty: &str, version: &str) -> Option<String> {
        let binary = self.find(ty).ok()?;
        let raw = exec::run(exec::Spawn {
            binary: &binary,
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

    fn key<'a>(&'a self, att: &'a Attachment) -> Key<'a> {
        Key {
            network: &self.list.name,
            container_id: &att.container_id,
            ifname: &att.ifname,
        }
    }

    fn find(&self, ty: &str) -> ChainResult<PathBuf> {
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
    fn exec(
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

fn fail(
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

/// `a >= b` for dotted spec versions; unparsable parts count as 0.
/// The addresses (without prefix) of a CNI result.
pub fn result_ips(result: &Value) -> Vec<std::net::IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

pub fn version_at_least(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) >= parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("1.1.0", "1.1.0"));
    }

    #[test]
    fn cni_args_parse_and_render() {
        let args = Attachment::parse_args("IgnoreUnknown=1;K8S_POD_NAME=a=b;").unwrap();
        assert_eq!(args[1], ("K8S_POD_NAME".into(), "a=b".into()));
        let att = Attachment {
            args,
            ..Attachment::default()
        };
        assert_eq!(att.cni_args(), "IgnoreUnknown=1;K8S_POD_NAME=a=b");
        assert!(Attachment::parse_args("novalue").is_err());
    }

    #[test]
    fn verbs_parse() {
        assert_eq!(Verb::parse("add"), Some(Verb::Add));
        assert_eq!(Verb::parse("Gc"), Some(Verb::Gc));
        assert_eq!(Verb::parse("version"), None);
    }
}
