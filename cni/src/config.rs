//! The network configuration a plugin reads on stdin: the fields the spec
//! defines for every plugin. Plugin-specific fields stay in [`NetConf::rest`]
//! (and in the raw JSON the plugin gets next to it), so nothing a runtime or
//! Multus adds is lost.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::version::Version;

#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default)]
    pub capabilities: Map<String, Value>,
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Map<String, Value>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(rename = "ifname")]
    pub ifname: String,
}

/// The most a plugin reads from stdin. Real configs with a `prevResult` are a
/// few KiB; a bound keeps a hostile or broken runtime from costing the node
/// gigabytes (a 50 MB JSON array parsed to ~5 GB of `Value`s): past it the call
/// fails at once with code 6, before anything is parsed.
pub const MAX_STDIN: usize = 1 << 20;

/// The longest container ID, network, pool, node or CNI_ARGS value accepted:
/// far above what runtimes use (64 hex digits, 253-byte pod names) and far
/// below what a store record can hold (65,535 bytes per string).
pub const MAX_NAME_LEN: usize = 1024;

/// A path field: absolute, since a relative one would resolve against
/// whatever directory the runtime happens to exec the plugin in.
pub fn absolute_path(field: &str, s: &str) -> Result<PathBuf> {
    if !s.starts_with('/') || s.contains('\0') {
        return Err(Error::config(
            field,
            format!("{s:?} is not an absolute path"),
        ));
    }
    Ok(PathBuf::from(s))
}

impl NetConf {
    /// Parse stdin. Malformed JSON is code 6; a missing or unsupported
    /// `cniVersion` code 1; a missing `name` or `type` code 7.
    pub fn parse(stdin: &[u8]) -> Result<(NetConf, Value)> {
        let raw: Value = serde_json::from_slice(stdin)
            .map_err(|e| Error::Decode(format!("network config is not valid JSON: {e}")))?;
        if !raw.is_object() {
            return Err(Error::Decode("network config is not a JSON object".into()));
        }
        let conf: NetConf = serde_json::from_value(raw.clone())
            .map_err(|e| Error::Decode(format!("network config: {e}")))?;
        conf.version()?;
        if conf.name.is_empty() {
            return Err(Error::config("name", "is required"));
        }
        if conf.name.len() > MAX_NAME_LEN {
            return Err(Error::config(
                "name",
                format!("is {} bytes long (at most {MAX_NAME_LEN})", conf.name.len()),
            ));
        }
        if !valid_network_name(&conf.name) {
            return Err(Error::config(
                "name",
                format!("{:?} has invalid characters", conf.name),
            ));
        }
        if conf.plugin_type.is_empty() {
            return Err(Error::config("type", "is required"));
        }
        Ok((conf, raw))
    }

    pub fn version(&self) -> Result<Version> {
        Version::parse(&self.cni_version)
    }

    /// GC: the attachments the runtime still uses.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>> {
        match self.rest.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::config("cni.dev/valid-attachments", format!("malformed: {e}"))),
        }
    }
}

/// Network names as libcni accepts them.
fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unknown_fields() {
        let (c, raw) = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n1","type":"coordinator","mode":"underlay","x":{"y":1}}"#,
        )
        .unwrap();
        assert_eq!(c.rest["mode"], "underlay");
        assert_eq!(raw["x"]["y"], 1);
    }

    #[test]
    fn error_codes() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code(), 6);
        assert_eq!(NetConf::parse(b"[]").unwrap_err().code(), 6);
        assert_eq!(
            NetConf::parse(br#"{"name":"a","type":"b"}"#)
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"a","type":"b"}"#)
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","type":"b"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a b","type":"b"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a","type":5}"#)
                .unwrap_err()
                .code(),
            6
        );
    }

    #[test]
    fn long_names_and_relative_paths_are_code_7() {
        let long = "n".repeat(70_000);
        let conf = format!(r#"{{"cniVersion":"1.0.0","name":"{long}","type":"b"}}"#);
        let e = NetConf::parse(conf.as_bytes()).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("\"name\""), "{e}");
        assert_eq!(absolute_path("f", "/a/b").unwrap(), PathBuf::from("/a/b"));
        for bad in ["a/b", "", "./x", "x\0"] {
            let e = absolute_path("logOptions.logFile", bad).unwrap_err();
            assert_eq!(e.code(), 7);
            assert!(e.to_string().contains("logOptions.logFile"), "{e}");
        }
    }

    #[test]
    fn valid_attachments() {
        let (c, _) = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"a","type":"b","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let v = c.valid_attachments().unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].container_id, "c1");
    }
}
