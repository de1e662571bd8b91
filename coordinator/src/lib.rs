//! coordinator: a chained CNI meta-plugin that makes a multi-NIC pod's
//! routing coherent (policy tables per NIC, a host veth for underlay pods,
//! conflict and gateway checks).
//!
//! The verbs ([`add`], [`del`], [`check`]) read the pod ([`observe`]),
//! compute a [`plan`] as plain data and hand it to a thin executor
//! ([`apply`]) that talks to the kernel and undoes its steps on failure.

pub mod add;
pub mod announce;
pub mod apply;
pub mod check;
pub mod config;
pub mod context;
pub mod del;
pub mod detect;
pub mod explain;
pub mod guard;
pub mod macprefix;
pub mod mode;
pub mod names;
pub mod nftables;
pub mod observe;
pub mod owners;
pub mod plan;
pub mod plugin;
pub mod record;
pub mod result_routes;
pub mod undo;
