//! `"store": {"kind": "etcd", ...}`: endpoints, key prefix, TLS files,
//! credentials and the call timeout, each bad value a code 7 naming its field.
//!
//! Only paths are kept here: the password is read when the store is opened
//! and never enters a `Debug` or an error message.

use std::path::PathBuf;
use std::time::Duration;

use cni::{Error, Result};
use serde_json::{Map, Value};

use crate::config::{as_object, as_str, known_keys, opt_array, opt_str};

pub const DEFAULT_PREFIX: &str = "/coordinator-ipam";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    /// Host name or address as written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    /// Client certificate and key (both or neither).
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<Endpoint>,
    /// Starts with '/', no trailing '/'.
    pub prefix: String,
    pub tls: Option<TlsFiles>,
    /// User name and the file holding its password.
    pub auth: Option<(String, PathBuf)>,
    pub timeout: Duration,
}

const KEYS: &[&str] = &[
    "kind",
    "endpoints",
    "prefix",
    "tls",
    "username",
    "passwordFile",
    "timeout",
];

pub fn parse(obj: &Map<String, Value>) -> Result<EtcdConfig> {
    known_keys(obj, KEYS, "ipam.store")?;
    let list = opt_array(obj, "endpoints", "ipam.store.endpoints")?;
    if list.is_empty() {
        return Err(Error::config(
            "ipam.store.endpoints",
            "at least one endpoint (http://HOST:PORT or https://HOST:PORT) is required",
        ));
    }
    let endpoints = list
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("ipam.store.endpoints[{i}]");
            parse_endpoint(as_str(v, &field)?, &field)
        })
        .collect::<Result<Vec<_>>>()?;
    let prefix = match opt_str(obj, "prefix", "ipam.store.prefix")? {
        None => DEFAULT_PREFIX.to_string(),
        Some(p) => parse_prefix(p)?,
    };
    let any_https = endpoints.iter().any(|e| e.https);
    let tls = match obj.get("tls").filter(|v| !v.is_null()) {
        None if any_https => {
            return Err(Error::config(
                "ipam.store.tls.ca",
                "required for https endpoints (the CA that signed the etcd server certificate)",
            ))
        }
        None => None,
        Some(_) if !any_https => {
            return Err(Error::config(
                "ipam.store.tls",
                "given, but no endpoint is https://",
            ))
        }
        Some(v) => Some(parse_tls(as_object(v, "ipam.store.tls")?)?),
    };
    let user = opt_str(obj, "username", "ipam.store.username")?;
    let pass = opt_str(obj, "passwordFile", "ipam.store.passwordFile")?;
    let auth = match (user, pass) {
        (None, None) => None,
        (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => {
            Some((u.to_string(), PathBuf::from(p)))
        }
        (Some(""), _) => return Err(Error::config("ipam.store.username", "must not be empty")),
        (Some(_), _) => {
            return Err(Error::config(
                "ipam.store.passwordFile",
                "required with username (a file holding the password)",
            ))
        }
        (None, Some(_)) => {
            return Err(Error::config(
                "ipam.store.username",
                "required with passwordFile",
            ))
        }
    };
    let timeout = match opt_str(obj, "timeout", "ipam.store.timeout")? {
        None => DEFAULT_TIMEOUT,
        Some(t) => parse_timeout(t)?,
    };
    Ok(EtcdConfig {
        endpoints,
        prefix,
        tls,
        auth,
        timeout,
    })
}

fn parse_endpoint(s: &str, field: &str) -> Result<Endpoint> {
    let bad = |why: &str| Error::config(field, format!("{s:?}: {why}"));
    let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL (use username and passwordFile)",
        ));
    }
    if rest.contains('/') || rest.contains('?') {
        return Err(bad("must be scheme://HOST:PORT, without a path"));
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(r) => {
            let (h, p) = r.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address in brackets"));
            }
            (h, p.strip_prefix(':'))
        }
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !valid_host {
        return Err(bad("not a host name or address"));
    }
    let port = match port {
        None => 2379,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be 1-65535"))?,
    };
    Ok(Endpoint {
        https,
        host: host.to_string(),
        port,
    })
}

fn parse_prefix(p: &str) -> Result<String> {
    let trimmed = p.trim_end_matches('/');
    let ok = trimmed.starts_with('/')
        && trimmed.len() > 1
        && !trimmed.contains("//")
        && trimmed.chars().all(|c| c.is_ascii_graphic());
    if !ok {
        return Err(Error::config(
            "ipam.store.prefix",
            format!("{p:?} must be a key path like /coordinator-ipam (starts with '/', printable, no empty segment)"),
        ));
    }
    Ok(trimmed.to_string())
}

fn parse_tls(obj: &Map<String, Value>) -> Result<TlsFiles> {
    known_keys(obj, &["ca", "cert", "key"], "ipam.store.tls")?;
    let path = |k: &str| -> Result<Option<PathBuf>> {
        let field = format!("ipam.store.tls.{k}");
        match opt_str(obj, k, &field)? {
            Some("") => Err(Error::config(&field, "must not be empty")),
            Some(p) => Ok(Some(PathBuf::from(p))),
            None => Ok(None),
        }
    };
    let ca = path("ca")?.ok_or_else(|| {
        Error::config(
            "ipam.store.tls.ca",
            "required (the CA that signed the etcd server certificate)",
        )
    })?;
    let client = match (path("cert")?, path("key")?) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => return Err(Error::config("ipam.store.tls.key", "required with cert")),
        (None, Some(_)) => return Err(Error::config("ipam.store.tls.cert", "required with key")),
    };
    Ok(TlsFiles { ca, client })
}

/// `"3s"`, `"500ms"`, `"1.5s"`: 10 ms to 5 min.
fn parse_timeout(s: &str) -> Result<Duration> {
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, f64::NAN)
    };
    let secs = num
        .trim()
        .parse::<f64>()
        .map(|n| n * unit)
        .unwrap_or(f64::NAN);
    if !(0.01..=300.0).contains(&secs) {
        return Err(Error::config(
            "ipam.store.timeout",
            format!("{s:?} must be a duration from 10ms to 5m, like \"3s\" or \"500ms\""),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Result<EtcdConfig> {
        parse(v.as_object().unwrap())
    }

    fn field_of(v: Value) -> String {
        let e = p(v).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        e.to_string()
    }

    #[test]
    fn full_config() {
        let c = p(json!({"kind": "etcd", "endpoints": ["https://10.0.0.10:2379", "https://[fd00::1]:2381/", "https://etcd-1"],
            "prefix": "/ipam/", "tls": {"ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"},
            "username": "ipam", "passwordFile": "/pw", "timeout": "500ms"}))
        .unwrap();
        assert_eq!(c.endpoints.len(), 3);
        assert_eq!(c.endpoints[1].host, "fd00::1");
        assert_eq!(c.endpoints[1].port, 2381);
        assert_eq!(c.endpoints[2].port, 2379);
        assert_eq!(c.endpoints[1].to_string(), "https://[fd00::1]:2381");
        assert_eq!(c.prefix, "/ipam");
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.auth, Some(("ipam".into(), "/pw".into())));
        assert!(c.tls.unwrap().client.is_some());
        let d = p(json!({"endpoints": ["http://127.0.0.1:2379"]})).unwrap();
        assert_eq!(d.prefix, DEFAULT_PREFIX);
        assert_eq!(d.timeout, DEFAULT_TIMEOUT);
        assert!(d.tls.is_none() && d.auth.is_none());
    }

    #[test]
    fn every_bad_value_names_its_field() {
        let ep = json!(["http://127.0.0.1:2379"]);
        let cases = [
            (json!({}), "ipam.store.endpoints"),
            (json!({"endpoints": "x"}), "ipam.store.endpoints"),
            (json!({"endpoints": [1]}), "ipam.store.endpoints[0]"),
            (
                json!({"endpoints": ["127.0.0.1:2379"]}),
                "ipam.store.endpoints[0]",
            ),
            (
                json!({"endpoints": ["http://u:pw@h:1"]}),
                "ipam.store.endpoints[0]",
            ),
            (
                json!({"endpoints": ["http://h:0"]}),
                "ipam.store.endpoints[0]",
            ),
            (
                json!({"endpoints": ["http://h:1/v3"]}),
                "ipam.store.endpoints[0]",
            ),
            (
                json!({"endpoints": ["http://[zz]:1"]}),
                "ipam.store.endpoints[0]",
            ),
            (json!({"endpoints": ["https://h:1"]}), "ipam.store.tls.ca"),
            (
                json!({"endpoints": ep, "tls": {"ca": "/x"}}),
                "ipam.store.tls",
            ),
            (
                json!({"endpoints": ["https://h"], "tls": {"cert": "/x", "ca": "/c"}}),
                "ipam.store.tls.key",
            ),
            (
                json!({"endpoints": ["https://h"], "tls": {"ca": ""}}),
                "ipam.store.tls.ca",
            ),
            (
                json!({"endpoints": ["https://h"], "tls": {"ca": "/c", "crt": "/x"}}),
                "ipam.store.tls.crt",
            ),
            (json!({"endpoints": ep, "prefix": "x"}), "ipam.store.prefix"),
            (json!({"endpoints": ep, "prefix": "/"}), "ipam.store.prefix"),
            (
                json!({"endpoints": ep, "username": "u"}),
                "ipam.store.passwordFile",
            ),
            (
                json!({"endpoints": ep, "passwordFile": "/p"}),
                "ipam.store.username",
            ),
            (
                json!({"endpoints": ep, "timeout": "3"}),
                "ipam.store.timeout",
            ),
            (
                json!({"endpoints": ep, "timeout": "0s"}),
                "ipam.store.timeout",
            ),
            (json!({"endpoints": ep, "timeout": 3}), "ipam.store.timeout"),
            (
                json!({"endpoints": ep, "dataDir": "/x"}),
                "ipam.store.dataDir",
            ),
        ];
        for (v, field) in cases {
            let msg = field_of(v.clone());
            assert!(msg.contains(&format!("\"{field}\"")), "{v}: {msg}");
        }
    }
}
