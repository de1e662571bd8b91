//! Node-local scenario labs shared by the tests, the demo and the benchmarks:
//!
//! - [`lab`]: network namespaces playing a node, the data-centre fabric, pods
//!   and outside clients, with guaranteed clean-up;
//! - [`chain`]: a libcni-like runner that execs plugin chains inside the node;
//! - [`etcd`]: real etcd members on loopback for the etcd store's tests and bench;
//! - [`exec`]: the one plugin exec (spawn, capture, measure) and the tests'
//!   builder and assertions on it;
//! - [`traffic`]: bounded TCP and ping checks from inside a netns;
//! - [`nsexec`]: exec a program inside a netns without a wrapper process;
//! - [`bench`]: the benchmark harness (per-exec latency, CPU, RSS vs anchors).

pub mod bench;
pub mod chain;
pub mod etcd;
pub mod exec;
pub mod lab;
pub mod nsexec;
pub mod traffic;
