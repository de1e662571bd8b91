//! Shared foundation of `coordinator` and `coordinator-ipam`.
//!
//! - [`error`]: the one error type, mapped to CNI error codes;
//! - [`env`], [`config`], [`result`], [`version`]: the CNI protocol (spec 0.3.0 – 1.1.0);
//! - [`install`]: the binaries copying themselves onto a node (DaemonSet, packages);
//! - [`plugin`]: dispatch of ADD/DEL/CHECK/VERSION/STATUS/GC and the stdout contract;
//! - [`logging`]: tracing to stderr or a log file, never stdout;
//! - [`netns`]: entering network namespaces without leaking a thread into the wrong one;
//! - [`netlink`]: the only module that speaks netlink (routing and nf_tables).

pub mod config;
pub mod env;
pub mod error;
pub mod fields;
pub mod fsutil;
pub mod install;
pub mod logging;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod quarantine;
pub mod result;
pub mod version;

pub use error::{Error, Result};
