//! The CNI environment variables, parsed and validated.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::config::MAX_NAME_LEN;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "" => return Err(Error::InvalidEnv("CNI_COMMAND is empty".into())),
            other => return Err(Error::InvalidEnv(format!("unknown CNI_COMMAND {other:?}"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// Verbs that act on one attachment and so need container, netns, ifname.
    fn per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// `CNI_ARGS`: `K=V;K=V`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

/// Keys every plugin understands (set by Kubernetes runtimes and Multus).
pub const COMMON_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
];

impl CniArgs {
    /// Parse and check keys: a key outside `COMMON_ARGS` and `known` is an
    /// error unless `IgnoreUnknown` is true (as libcni's arg loader does).
    pub fn parse(s: &str, known: &[&str]) -> Result<CniArgs> {
        let mut pairs = Vec::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| Error::InvalidEnv(format!("CNI_ARGS: {part:?} is not K=V")))?;
            if k.is_empty() {
                return Err(Error::InvalidEnv(format!(
                    "CNI_ARGS: empty key in {part:?}"
                )));
            }
            if k.len() > MAX_NAME_LEN || v.len() > MAX_NAME_LEN {
                return Err(Error::InvalidEnv(format!(
                    "CNI_ARGS: {} is longer than {MAX_NAME_LEN} bytes",
                    short(k)
                )));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        let args = CniArgs { pairs };
        let ignore = args
            .get("IgnoreUnknown")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"))
            .unwrap_or(false);
        if !ignore {
            let unknown: Vec<&str> = args
                .pairs
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !COMMON_ARGS.contains(k) && !known.contains(k))
                .collect();
            if !unknown.is_empty() {
                return Err(Error::InvalidEnv(format!(
                    "CNI_ARGS: unknown args {unknown:?} (set IgnoreUnknown=1 to ignore them)"
                )));
            }
        }
        Ok(args)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE").filter(|v| !v.is_empty())
    }
    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME").filter(|v| !v.is_empty())
    }
}

/// The validated environment of one call.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: Command,
    /// Empty for VERSION, STATUS and GC.
    pub container_id: String,
    pub netns: Option<PathBuf>,
    /// Empty for VERSION, STATUS and GC.
    pub ifname: String,
    pub path: Vec<PathBuf>,
    pub args: CniArgs,
}

impl CniEnv {
    /// Parse and validate; every failure is code 4 (invalid environment).
    pub fn from_map(vars: &HashMap<String, String>, known_args: &[&str]) -> Result<CniEnv> {
        let get = |k: &str| vars.get(k).map(String::as_str).unwrap_or("");
        let command = match vars.get("CNI_COMMAND") {
            None => return Err(Error::InvalidEnv("CNI_COMMAND is not set".into())),
            Some(c) => Command::parse(c)?,
        };
        let mut missing = Vec::new();
        if command.per_attachment() {
            for key in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"] {
                if get(key).is_empty() {
                    missing.push(key);
                }
            }
            if command != Command::Del && get("CNI_NETNS").is_empty() {
                missing.push("CNI_NETNS");
            }
        }
        if !missing.is_empty() {
            return Err(Error::InvalidEnv(format!(
                "required environment variables missing: {}",
                missing.join(", ")
            )));
        }
        let container_id = get("CNI_CONTAINERID").to_string();
        if command.per_attachment() {
            validate_container_id(&container_id)?;
        }
        let ifname = get("CNI_IFNAME").to_string();
        if command.per_attachment() {
            validate_ifname(&ifname)?;
        }
        let netns = match get("CNI_NETNS") {
            "" => None,
            p => Some(validate_netns(p)?),
        };
        let path = get("CNI_PATH")
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        let args = CniArgs::parse(get("CNI_ARGS"), known_args)?;
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            path,
            args,
        })
    }
}

/// The start of a possibly huge value, for an error message.
fn short(s: &str) -> String {
    match s.char_indices().nth(32) {
        Some((i, _)) => format!("{:?}...", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// Container IDs as libcni accepts them: alphanumeric first, then `[A-Za-z0-9_.-]`.
pub fn validate_container_id(id: &str) -> Result<()> {
    if id.len() > MAX_NAME_LEN {
        return Err(Error::InvalidEnv(format!(
            "CNI_CONTAINERID {} is {} bytes long (at most {MAX_NAME_LEN})",
            short(id),
            id.len()
        )));
    }
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(Error::InvalidEnv(format!(
            "CNI_CONTAINERID {id:?} has invalid characters (want [A-Za-z0-9][A-Za-z0-9_.-]*)"
        )))
    }
}

/// Linux interface names: 1–15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is not a valid name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(w) => Err(Error::InvalidEnv(format!("CNI_IFNAME {name:?} {w}"))),
    }
}

fn validate_netns(p: &str) -> Result<PathBuf> {
    if !p.starts_with('/') || p.contains('\0') {
        return Err(Error::InvalidEnv(format!(
            "CNI_NETNS {p:?} is not an absolute path"
        )));
    }
    Ok(PathBuf::from(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn add_env() -> HashMap<String, String> {
        env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1_2.3"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=db;K8S_POD_NAME=mysql-0;FOO=bar",
            ),
        ])
    }

    #[test]
    fn parses_a_full_add() {
        let e = CniEnv::from_map(&add_env(), &[]).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path.len(), 2);
        assert_eq!(e.args.pod_namespace(), Some("db"));
        assert_eq!(e.args.pod_name(), Some("mysql-0"));
        assert_eq!(e.args.get("FOO"), Some("bar"));
    }

    #[test]
    fn every_invalid_env_is_code_4() {
        let cases: Vec<(&str, Option<&str>)> = vec![
            ("CNI_COMMAND", None),
            ("CNI_COMMAND", Some("FROB")),
            ("CNI_CONTAINERID", None),
            ("CNI_CONTAINERID", Some("-bad")),
            ("CNI_CONTAINERID", Some("a/b")),
            ("CNI_IFNAME", None),
            ("CNI_IFNAME", Some("0123456789abcdef")),
            ("CNI_IFNAME", Some("..")),
            ("CNI_IFNAME", Some("a/b")),
            ("CNI_IFNAME", Some("a b")),
            ("CNI_NETNS", None),
            ("CNI_NETNS", Some("relative/path")),
            ("CNI_PATH", None),
            ("CNI_ARGS", Some("novalue")),
            ("CNI_ARGS", Some("FOO=bar")),
        ];
        let long_id = "a".repeat(70_000);
        let long_arg = format!("K8S_POD_NAME={}", "p".repeat(70_000));
        let cases = cases
            .into_iter()
            .chain([
                ("CNI_CONTAINERID", Some(long_id.as_str())),
                ("CNI_ARGS", Some(long_arg.as_str())),
            ])
            .collect::<Vec<_>>();
        for (key, val) in cases {
            let mut e = add_env();
            match val {
                None => {
                    e.remove(key);
                }
                Some(v) => {
                    e.insert(key.into(), v.into());
                }
            }
            let err = CniEnv::from_map(&e, &[]).unwrap_err();
            assert_eq!(err.code(), 4, "{key}={val:?}: {err}");
        }
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing() {
        let mut e = add_env();
        e.insert("CNI_COMMAND".into(), "DEL".into());
        e.remove("CNI_NETNS");
        assert!(CniEnv::from_map(&e, &[]).unwrap().netns.is_none());
        let v = env(&[("CNI_COMMAND", "VERSION")]);
        assert_eq!(CniEnv::from_map(&v, &[]).unwrap().command, Command::Version);
        let s = env(&[("CNI_COMMAND", "STATUS")]);
        assert_eq!(CniEnv::from_map(&s, &[]).unwrap().command, Command::Status);
    }

    #[test]
    fn known_args_are_accepted_without_ignore_unknown() {
        let a = CniArgs::parse("IP=10.0.0.5;K8S_POD_NAME=x", &["IP"]).unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.5"));
        assert!(CniArgs::parse("IP=10.0.0.5", &[]).is_err());
    }
}
