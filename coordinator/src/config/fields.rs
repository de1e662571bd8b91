//! The coordinator's typed field readers: lists of CIDRs, durations,
//! policy routes and the nested option objects, each error naming the field
//! by its path (`detectOptions.retries`). The JSON walking itself is
//! [`cni::fields`], shared with coordinator-ipam.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use cni::config::absolute_path;
use cni::env::validate_ifname;
use cni::fields;
use cni::Error;
use ipnet::IpNet;
use serde_json::{Map, Value};

use super::duration::{parse_duration, DurationError};
use super::{DetectOptions, LogOptions, PolicyRoute, DEFAULT_LOG_FILE};
use cni::logging::Rotation;

/// 10 GiB: more than any node keeps for one plugin's log.
const MAX_LOG_MIB: i64 = 10_240;

pub(super) fn parse_link_local(s: &str) -> cni::Result<IpNet> {
    let net: IpNet = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => IpNet::new(IpAddr::V4(a), 32).expect("32 is valid"),
            Ok(IpAddr::V6(a)) => IpNet::new(IpAddr::V6(a), 128).expect("128 is valid"),
            Err(_) => {
                return Err(Error::config(
                    "vethLinkAddress",
                    format!("{s:?} is not an IP address"),
                ))
            }
        },
    };
    if !crate::plan::is_link_local(&net.addr()) {
        return Err(Error::config(
            "vethLinkAddress",
            format!("{s} is not a link-local address (169.254.0.0/16 or fe80::/10)"),
        ));
    }
    Ok(net)
}

/// Typed access to config fields with errors that name the field (nested
/// objects prefix their parent: `detectOptions.retries`).
pub(super) struct Fields<'a>(pub(super) &'a Map<String, Value>, pub(super) &'a str);

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        fields::get(self.0, k)
    }

    fn err(&self, k: &str, why: impl std::fmt::Display) -> Error {
        Error::config(&fields::path(self.1, k), why)
    }

    pub(super) fn string(&self, k: &str) -> cni::Result<Option<String>> {
        Ok(fields::opt_str(self.0, k, &fields::path(self.1, k))?.map(str::to_string))
    }

    pub(super) fn bool(&self, k: &str) -> cni::Result<Option<bool>> {
        fields::opt_bool(self.0, k, &fields::path(self.1, k))
    }

    pub(super) fn int(&self, k: &str) -> cni::Result<Option<i64>> {
        fields::opt_int(self.0, k, &fields::path(self.1, k))
    }

    pub(super) fn ifname(&self, k: &str) -> cni::Result<Option<String>> {
        match self.string(k)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => {
                validate_ifname(&s)
                    .map_err(|_| self.err(k, format!("{s:?} is not a valid interface name")))?;
                Ok(Some(s))
            }
        }
    }

    pub(super) fn cidrs(&self, k: &str) -> cni::Result<Vec<IpNet>> {
        let items = match self.get(k) {
            None => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(v) => return Err(self.err(k, format!("{v} is not a list of CIDRs"))),
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let s = item
                .as_str()
                .ok_or_else(|| Error::config(&format!("{k}[{i}]"), "is not a string"))?;
            let net: IpNet = s
                .trim()
                .parse()
                .map_err(|_| Error::config(&format!("{k}[{i}]"), format!("{s:?} is not a CIDR")))?;
            // Spiderpool reads these with net.ParseCIDR, which drops host bits.
            let net = net.trunc();
            if !out.contains(&net) {
                out.push(net);
            }
        }
        Ok(out)
    }

    pub(super) fn duration(&self, k: &str) -> cni::Result<Option<Duration>> {
        match self.get(k) {
            None => Ok(None),
            // A bare number is milliseconds.
            Some(Value::Number(n)) => match n.as_u64() {
                Some(ms) => Ok(Some(Duration::from_millis(ms))),
                None => Err(self.err(k, format!("{n} is not a duration"))),
            },
            Some(Value::String(s)) => match parse_duration(s) {
                Ok(d) => Ok(Some(d)),
                Err(DurationError::Syntax) => {
                    Err(self.err(k, format!("{s:?} is not a duration like \"10ms\"")))
                }
                Err(DurationError::Range) => Err(self.err(k, format!("{s:?} is out of range"))),
            },
            Some(v) => Err(self.err(k, format!("{v} is not a duration"))),
        }
    }

    pub(super) fn policy_routes(&self, k: &str) -> cni::Result<Vec<PolicyRoute>> {
        let items = match self.get(k) {
            None => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(v) => return Err(self.err(k, format!("{v} is not a list"))),
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let name = format!("{k}[{i}]");
            let o = item
                .as_object()
                .ok_or_else(|| Error::config(&name, "is not an object {dst, gw}"))?;
            let dst: IpNet = o
                .get("dst")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::config(&format!("{name}.dst"), "missing or not a CIDR"))?;
            let gw: IpAddr = o
                .get("gw")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::config(&format!("{name}.gw"), "missing or not an IP"))?;
            if dst.addr().is_ipv4() != gw.is_ipv4() {
                return Err(Error::config(
                    &name,
                    format!("dst {dst} and gw {gw} are of different families"),
                ));
            }
            out.push(PolicyRoute {
                dst: dst.trunc(),
                gw,
            });
        }
        Ok(out)
    }

    pub(super) fn detect_options(&self, k: &str) -> cni::Result<DetectOptions> {
        let mut d = DetectOptions::default();
        let o = match self.get(k) {
            None => return Ok(d),
            Some(Value::Object(o)) => o,
            Some(v) => return Err(self.err(k, format!("{v} is not an object"))),
        };
        let sub = Fields(o, k);
        match sub.int("retries")? {
            None => {}
            Some(r) if (1..=100).contains(&r) => d.retries = r as u32,
            Some(r) => {
                return Err(Error::config(
                    &format!("{k}.retries"),
                    format!("{r} is not between 1 and 100"),
                ))
            }
        }
        let limit = Duration::from_secs(10);
        for (name, slot) in [("interval", &mut d.interval), ("timeout", &mut d.timeout)] {
            if let Some(v) = sub.duration(name)? {
                if v > limit {
                    return Err(Error::config(
                        &format!("{k}.{name}"),
                        format!("{v:?} is longer than 10s"),
                    ));
                }
                *slot = v;
            }
        }
        Ok(d)
    }

    pub(super) fn log_options(&self, k: &str) -> cni::Result<LogOptions> {
        let mut opts = LogOptions {
            level: None,
            file: Some(PathBuf::from(DEFAULT_LOG_FILE)),
            rotation: Rotation::default(),
        };
        let o = match self.get(k) {
            None => return Ok(opts),
            Some(Value::Object(o)) => o,
            Some(v) => return Err(self.err(k, format!("{v} is not an object"))),
        };
        let sub = Fields(o, k);
        opts.level = sub.string("logLevel")?;
        if let Some(l) = &opts.level {
            let ok = [
                "", "trace", "debug", "info", "warn", "warning", "error", "off", "none",
            ]
            .contains(&l.to_ascii_lowercase().as_str());
            if !ok {
                return Err(Error::config(
                    &format!("{k}.logLevel"),
                    format!("{l:?} is not one of trace, debug, info, warn, error, off"),
                ));
            }
        }
        // Spiderpool calls it logFilePath; "-" or "stderr" keeps logs on stderr.
        opts.file = match sub.string("logFile")?.or(sub.string("logFilePath")?) {
            None => Some(PathBuf::from(DEFAULT_LOG_FILE)),
            Some(s) if s.is_empty() => Some(PathBuf::from(DEFAULT_LOG_FILE)),
            Some(s) if s == "-" || s == "stderr" => None,
            Some(s) => Some(absolute_path(&format!("{k}.logFile"), &s)?),
        };
        // Spiderpool's units and zeroes (lumberjack's): size in MiB, 0 for
        // the default; age in days and count, 0 for no limit.
        if let Some(mib) = sub.bounded_int("logMaxSize", 0, MAX_LOG_MIB)? {
            if mib > 0 {
                opts.rotation.max_bytes = (mib as u64) << 20;
            }
        }
        if let Some(days) = sub.bounded_int("logMaxAge", 0, 36_500)? {
            opts.rotation.max_age = (days > 0).then(|| Duration::from_secs(days as u64 * 86_400));
        }
        if let Some(n) = sub.bounded_int("logMaxCount", 0, 100_000)? {
            opts.rotation.max_backups = (n > 0).then_some(n as u32);
        }
        Ok(opts)
    }

    fn bounded_int(&self, k: &str, min: i64, max: i64) -> cni::Result<Option<i64>> {
        match self.int(k)? {
            Some(v) if !(min..=max).contains(&v) => {
                Err(self.err(k, format!("{v} is not between {min} and {max}")))
            }
            other => Ok(other),
        }
    }
}
