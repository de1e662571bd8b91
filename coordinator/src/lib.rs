//! coordinator: a chained CNI meta-plugin that makes a multi-NIC pod's
//! routing coherent (policy tables per NIC, a host veth for underlay pods,
//! conflict and gateway checks).
//!
//! The verbs (`add`, `del`, `check`) read the pod, compute a [`plan`] as plain
//! data and hand it to a thin executor that talks to the kernel.

pub mod config;
pub mod macprefix;
pub mod plugin;
