//! coordinator-ipam: underlay address pools for CNI.
//!
//! - [`config`]: the `ipam` block, validated field by field;
//! - [`pool`]: pools and the address arithmetic (u128 intervals);
//! - [`allocator`]: allocation decisions, through the [`allocator::Ledger`] lookups;
//! - [`store`]: where the state lives (file store: indexed snapshot + journal; etcd can follow);
//! - [`verbs`]: ADD/DEL/CHECK/GC/STATUS wired to the CNI protocol;
//! - [`cli`]: the operator commands run without `CNI_COMMAND`;
//! - [`metrics`]: pool usage as node_exporter textfile gauges.

pub mod allocator;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod pool;
pub mod store;
pub mod verbs;
