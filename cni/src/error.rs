//! The one error type of both plugins, and its CNI error code.
//!
//! Every failure a plugin reports ends up here, so the code a runtime sees is
//! decided in one place (spec "Error" section: codes 1–99 are reserved by the
//! spec, 100+ belong to the plugin).

use serde::Serialize;

/// CNI error codes defined by the spec.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_DISRUPTIVE: u32 = 51;

    // Plugin codes (>= 100), shared by both binaries so a runtime log reader
    // can tell them apart.
    /// A kernel operation (netlink, sysctl, socket) failed.
    pub const KERNEL: u32 = 100;
    /// Another host already uses an address the pod was given.
    pub const IP_CONFLICT: u32 = 101;
    /// A gateway of the pod did not answer within the probe window.
    pub const GATEWAY_UNREACHABLE: u32 = 102;
    /// CHECK found a piece of the layout missing or different.
    pub const CHECK_FAILED: u32 = 103;
    /// No applicable pool has a free address.
    pub const POOL_EXHAUSTED: u32 = 110;
    /// A requested address is outside every applicable pool or taken.
    pub const ADDRESS_UNAVAILABLE: u32 = 111;
    /// The IPAM state on disk cannot be read.
    pub const STORE_CORRUPT: u32 = 112;
    /// A feature that is not implemented yet.
    pub const NOT_IMPLEMENTED: u32 = 199;
    /// A bug: the plugin hit a state it cannot handle (a caught panic).
    pub const INTERNAL: u32 = 999;
}

/// Errors of both plugins. Each variant maps to exactly one CNI code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    IncompatibleVersion(String),
    #[error("{0}")]
    UnsupportedField(String),
    #[error("{0}")]
    UnknownContainer(String),
    #[error("{0}")]
    InvalidEnv(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Decode(String),
    /// Invalid network configuration; the message names the field.
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    TryAgain(String),
    /// STATUS: the plugin cannot serve ADDs now (code 50).
    #[error("{0}")]
    NotAvailable(String),
    /// A plugin-specific failure (code >= 100).
    #[error("{msg}")]
    Plugin {
        code: u32,
        msg: String,
        details: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion(_) => code::INCOMPATIBLE_VERSION,
            Error::UnsupportedField(_) => code::UNSUPPORTED_FIELD,
            Error::UnknownContainer(_) => code::UNKNOWN_CONTAINER,
            Error::InvalidEnv(_) => code::INVALID_ENV,
            Error::Io(_) => code::IO,
            Error::Decode(_) => code::DECODE,
            Error::InvalidConfig(_) => code::INVALID_CONFIG,
            Error::TryAgain(_) => code::TRY_AGAIN,
            Error::NotAvailable(_) => code::NOT_AVAILABLE,
            Error::Plugin { code, .. } => *code,
        }
    }

    /// Invalid value of config field `field`.
    pub fn config(field: &str, why: impl std::fmt::Display) -> Self {
        Error::InvalidConfig(format!("invalid config field \"{field}\": {why}"))
    }

    pub fn plugin(code: u32, msg: impl Into<String>) -> Self {
        Error::Plugin {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn plugin_details(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error::Plugin {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// A kernel operation failed; `what` says which one.
    pub fn kernel(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        Error::plugin(code::KERNEL, format!("{what}: {err}"))
    }

    /// Prefix the message with context, keeping the code.
    pub fn context(self, ctx: impl std::fmt::Display) -> Self {
        let wrap = |m: String| format!("{ctx}: {m}");
        match self {
            Error::IncompatibleVersion(m) => Error::IncompatibleVersion(wrap(m)),
            Error::UnsupportedField(m) => Error::UnsupportedField(wrap(m)),
            Error::UnknownContainer(m) => Error::UnknownContainer(wrap(m)),
            Error::InvalidEnv(m) => Error::InvalidEnv(wrap(m)),
            Error::Io(m) => Error::Io(wrap(m)),
            Error::Decode(m) => Error::Decode(wrap(m)),
            Error::InvalidConfig(m) => Error::InvalidConfig(wrap(m)),
            Error::TryAgain(m) => Error::TryAgain(wrap(m)),
            Error::NotAvailable(m) => Error::NotAvailable(wrap(m)),
            Error::Plugin { code, msg, details } => Error::Plugin {
                code,
                msg: wrap(msg),
                details,
            },
        }
    }

    /// The error JSON printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let details = match self {
            Error::Plugin { details, .. } => details.clone(),
            _ => String::new(),
        };
        serde_json::to_value(ErrorJson {
            cni_version,
            code: self.code(),
            msg: self.to_string(),
            details,
        })
        .unwrap_or_default()
    }
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    details: String,
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Decode(e.to_string())
    }
}

/// Add context to any `Result` whose error converts into [`Error`].
pub trait Context<T> {
    fn context(self, ctx: impl std::fmt::Display) -> Result<T>;
    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, ctx: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(ctx))
    }
    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_json() {
        let e = Error::config("mode", "unknown value \"x\"");
        assert_eq!(e.code(), 7);
        let j = e.to_json("1.0.0");
        assert_eq!(j["code"], 7);
        assert_eq!(j["cniVersion"], "1.0.0");
        assert!(j["msg"].as_str().unwrap().contains("\"mode\""));
        assert!(j.get("details").is_none());
        let p = Error::plugin_details(101, "conflict", "mac aa");
        assert_eq!(p.to_json("0.4.0")["details"], "mac aa");
        assert_eq!(p.context("net1").to_string(), "net1: conflict");
    }
}
