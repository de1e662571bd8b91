//! Network configuration lists as a runtime sees them (libcni `NetworkConfigList`).

use std::path::Path;

use serde_json::{Map, Value};

use super::{ChainError, ChainResult};

/// A conflist: `{cniVersion, name, plugins: [...]}`. A single-plugin conf is
/// accepted and wrapped, as libcni's `ConfListFromConf` does.
#[derive(Clone, Debug)]
pub struct NetConfList {
    pub cni_version: String,
    pub name: String,
    /// Each plugin's own conf, exactly as written in the list.
    pub plugins: Vec<Map<String, Value>>,
    /// The whole list as loaded (stored in the result cache).
    pub raw: Value,
}

impl NetConfList {
    pub fn from_file(path: impl AsRef<Path>) -> ChainResult<NetConfList> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ChainError::runtime(format!("read {}: {e}", path.display())))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ChainError::runtime(format!("parse {}: {e}", path.display())))?;
        NetConfList::from_value(value)
    }

    pub fn from_value(value: Value) -> ChainResult<NetConfList> {
        let obj = value
            .as_object()
            .ok_or_else(|| ChainError::runtime("network config is not a JSON object"))?;
        let cni_version = string_field(obj, "cniVersion")?;
        let name = string_field(obj, "name")?;
        let plugins = match obj.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| {
                    p.as_object()
                        .cloned()
                        .ok_or_else(|| ChainError::runtime("a plugin conf is not a JSON object"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(ChainError::runtime("\"plugins\" is not an array")),
            None => {
                let mut single = obj.clone();
                single.remove("cniVersion");
                single.remove("name");
                vec![single]
            }
        };
        if plugins.is_empty() {
            return Err(ChainError::runtime("conflist has no plugins"));
        }
        for p in &plugins {
            match p.get("type") {
                Some(Value::String(t)) if valid_type(t) => {}
                _ => return Err(ChainError::runtime("a plugin has no valid \"type\"")),
            }
        }
        Ok(NetConfList {
            cni_version,
            name,
            plugins,
            raw: value,
        })
    }

    /// The plugin types in order.
    pub fn types(&self) -> Vec<String> {
        self.plugins.iter().map(plugin_type).collect()
    }

    /// Mutable access to the first plugin of type `ty` (tests tweak confs,
    /// e.g. point host-local's `dataDir` at a lab directory).
    pub fn plugin_mut(&mut self, ty: &str) -> Option<&mut Map<String, Value>> {
        self.plugins.iter_mut().find(|p| plugin_type(p) == ty)
    }

    /// The list as JSON, reflecting any edits made through [`plugin_mut`](Self::plugin_mut).
    pub fn to_value(&self) -> Value {
        let mut out = self.raw.as_object().cloned().unwrap_or_default();
        out.insert("cniVersion".into(), self.cni_version.clone().into());
        out.insert("name".into(), self.name.clone().into());
        out.insert(
            "plugins".into(),
            Value::Array(self.plugins.iter().cloned().map(Value::Object).collect()),
        );
        Value::Object(out)
    }
}

pub(crate) fn plugin_type(p: &Map<String, Value>) -> String {
    p.get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

// A type names a file in CNI_PATH: no path separators, no "..".
fn valid_type(t: &str) -> bool {
    !t.is_empty() && !t.contains('/') && t != "." && t != ".."
}

fn string_field(obj: &Map<String, Value>, field: &str) -> ChainResult<String> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ChainError::runtime(format!(
            "network config has no string \"{field}\""
        ))),
    }
}

/// The stdin of one plugin: its conf plus the list's `cniVersion` and `name`,
/// `runtimeConfig` from the capabilities it declares, and `prevResult`.
pub fn plugin_stdin(
    plugin: &Map<String, Value>,
    cni_version: &str,
    name: &str,
    capability_args: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("cniVersion".into(), cni_version.into());
    conf.insert("name".into(), name.into());
    let mut rc = Map::new();
    if let Some(Value::Object(caps)) = plugin.get("capabilities") {
        for (cap, enabled) in caps {
            if enabled.as_bool() == Some(true) {
                if let Some(arg) = capability_args.get(cap) {
                    rc.insert(cap.clone(), arg.clone());
                }
            }
        }
    }
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    Value::Object(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_conf_is_wrapped() {
        let l = NetConfList::from_value(json!({
            "cniVersion": "1.0.0", "name": "n", "type": "macvlan", "master": "ens1"
        }))
        .unwrap();
        assert_eq!(l.types(), vec!["macvlan"]);
        assert!(l.plugins[0].get("name").is_none());
        assert_eq!(l.plugins[0]["master"], "ens1");
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in [
            json!([]),
            json!({"name": "n", "plugins": [{"type": "x"}]}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{}]}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": {}}),
        ] {
            assert!(NetConfList::from_value(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn stdin_injects_version_name_runtime_config_and_prev_result() {
        let plugin = json!({"type": "coordinator", "capabilities": {"ips": true, "mac": false, "bandwidth": true}});
        let caps = json!({"ips": ["10.6.1.5/16"], "mac": "aa:bb:cc:dd:ee:ff"});
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let s = plugin_stdin(
            plugin.as_object().unwrap(),
            "1.0.0",
            "net",
            caps.as_object().unwrap(),
            Some(&prev),
        );
        assert_eq!(s["cniVersion"], "1.0.0");
        assert_eq!(s["name"], "net");
        assert_eq!(s["runtimeConfig"], json!({"ips": ["10.6.1.5/16"]}));
        assert_eq!(s["prevResult"], prev);
        let first = plugin_stdin(
            json!({"type": "macvlan"}).as_object().unwrap(),
            "1.0.0",
            "net",
            caps.as_object().unwrap(),
            None,
        );
        assert!(first.get("prevResult").is_none());
        assert!(first.get("runtimeConfig").is_none());
    }
}
