//! A chain runner that behaves like libcni (what Multus and containerd use):
//! ADD plugin by plugin with `prevResult`, DEL in reverse, CHECK, GC, STATUS,
//! results cached for CHECK and DEL. Plugins run inside the lab's node netns.

mod cache;
mod conf;
mod invoke;
mod types;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

pub use cache::{Cache, Key as CacheKey};
pub use conf::{plugin_stdin, NetConfList};
pub use types::{Attachment, ChainError, ChainResult, Outcome, PluginRun, Verb};

use cache::Key;
use invoke::fail;

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

    fn key<'a>(&'a self, att: &'a Attachment) -> Key<'a> {
        Key {
            network: &self.list.name,
            container_id: &att.container_id,
            ifname: &att.ifname,
        }
    }
}

/// The addresses (without prefix) of a CNI result.
pub fn result_ips(result: &Value) -> Vec<std::net::IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// `a >= b` for dotted spec versions; unparsable parts count as 0.
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
