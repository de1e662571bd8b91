//! CNI results, held in the 1.1 shape and converted on the way in and out.
//!
//! 0.3.x/0.4.0 results differ from 1.x in one required field (`ips[].version`);
//! 1.1.0 adds optional route and interface fields. Parsing accepts any
//! supported version; printing emits exactly what the requested version
//! defines. Unknown fields are kept (`extra`) so a chained plugin that prints
//! `prevResult` back loses nothing another plugin put there.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::version::Version;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteEntry>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.as_deref().unwrap_or("").is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl IpConfig {
    pub fn new(address: IpNet, gateway: Option<IpAddr>, interface: Option<usize>) -> IpConfig {
        IpConfig {
            address,
            gateway,
            interface,
            extra: Map::new(),
        }
    }
}

impl RouteEntry {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> RouteEntry {
        RouteEntry {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
            extra: Map::new(),
        }
    }
}

impl CniResult {
    /// Parse a result (or `prevResult`) of any supported version. Its own
    /// `cniVersion`, when present, must be supported; the per-version fields
    /// are checked loosely, as libcni does when converting.
    pub fn parse(v: &Value) -> Result<CniResult> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Decode("result is not a JSON object".into()))?;
        if let Some(ver) = obj.get("cniVersion") {
            let s = ver
                .as_str()
                .ok_or_else(|| Error::Decode("result cniVersion is not a string".into()))?;
            Version::parse(s)?;
        }
        let mut obj = obj.clone();
        obj.remove("cniVersion");
        if let Some(Value::Array(ips)) = obj.get_mut("ips") {
            for ip in ips.iter_mut() {
                if let Some(o) = ip.as_object_mut() {
                    // 0.3.x/0.4.0 carry "version"; it is derived from the address.
                    o.remove("version");
                }
            }
        }
        let r: CniResult = serde_json::from_value(Value::Object(obj))
            .map_err(|e| Error::Decode(format!("result: {e}")))?;
        for ip in &r.ips {
            if let Some(i) = ip.interface {
                if i >= r.interfaces.len() {
                    return Err(Error::Decode(format!(
                        "result: ip {} names interface {i}, but there are {} interfaces",
                        ip.address,
                        r.interfaces.len()
                    )));
                }
            }
        }
        Ok(r)
    }

    /// The JSON a plugin prints for `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let mut r = self.clone();
        if !version.has_1_1_fields() {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path.clear();
                i.pci_id.clear();
            }
            for rt in &mut r.routes {
                rt.mtu = None;
                rt.advmss = None;
                rt.priority = None;
                rt.table = None;
                rt.scope = None;
            }
        }
        let mut v = serde_json::to_value(&r).unwrap_or_else(|_| Value::Object(Map::new()));
        if version.ip_has_version_field() {
            if let Some(Value::Array(ips)) = v.get_mut("ips") {
                for (ip, cfg) in ips.iter_mut().zip(&r.ips) {
                    if let Some(o) = ip.as_object_mut() {
                        let fam = if cfg.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        };
                        o.insert("version".into(), Value::from(fam));
                    }
                }
            }
        }
        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::from(version.as_str()));
        if let Value::Object(m) = v {
            out.extend(m);
        }
        Value::Object(out)
    }

    /// Index of the interface called `name` inside `sandbox` (any sandbox when None).
    pub fn interface_index(&self, name: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == name && !i.sandbox.is_empty())
            .or_else(|| self.interfaces.iter().position(|i| i.name == name))
    }

    /// Addresses of interface `idx`; addresses without an interface count for
    /// every interface only when the result has a single one.
    pub fn ips_of(&self, idx: Option<usize>) -> Vec<&IpConfig> {
        self.ips
            .iter()
            .filter(|ip| match (ip.interface, idx) {
                (Some(a), Some(b)) => a == b,
                (None, _) => self.interfaces.len() <= 1,
                (Some(_), None) => false,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1() -> Value {
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "mtu": 1500,
                            "sandbox": "/var/run/netns/p", "x-vendor": 1}],
            "ips": [{"address": "10.6.0.5/16", "gateway": "10.6.0.1", "interface": 0},
                    {"address": "fd00:6::5/64", "gateway": "fd00:6::1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1", "table": 100}],
            "dns": {"nameservers": ["10.0.0.10"]},
            "vendorField": "keep"
        })
    }

    #[test]
    fn converts_to_every_version() {
        let r = CniResult::parse(&v1()).unwrap();
        let old = r.to_json(Version::V030);
        assert_eq!(old["cniVersion"], "0.3.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert!(old["routes"][0].get("table").is_none());
        assert!(old["interfaces"][0].get("mtu").is_none());
        assert_eq!(old["interfaces"][0]["x-vendor"], 1);
        assert_eq!(old["vendorField"], "keep");
        let new = r.to_json(Version::V110);
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["routes"][0]["table"], 100);
        assert_eq!(new["interfaces"][0]["mtu"], 1500);
        // Round trip through an old version keeps what that version can carry.
        let back = CniResult::parse(&old).unwrap();
        assert_eq!(back.ips, r.ips);
        assert_eq!(
            back.to_json(Version::V100)["ips"],
            r.to_json(Version::V100)["ips"]
        );
    }

    #[test]
    fn rejects_bad_results() {
        assert_eq!(CniResult::parse(&json!([])).unwrap_err().code(), 6);
        assert_eq!(
            CniResult::parse(&json!({"cniVersion": "0.1.0"}))
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(
            CniResult::parse(&json!({"ips": [{"address": "nonsense"}]}))
                .unwrap_err()
                .code(),
            6
        );
        assert_eq!(
            CniResult::parse(&json!({"ips": [{"address": "10.0.0.1/8", "interface": 3}]}))
                .unwrap_err()
                .code(),
            6
        );
    }

    #[test]
    fn ips_of_interface() {
        let r = CniResult::parse(&v1()).unwrap();
        assert_eq!(r.ips_of(r.interface_index("eth0")).len(), 2);
        assert_eq!(r.ips_of(r.interface_index("net1")).len(), 0);
    }
}
