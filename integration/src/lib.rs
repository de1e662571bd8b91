//! Node-local scenario labs shared by the tests, the demo and the benchmarks:
//!
//! - [`lab`]: network namespaces playing a node, the data-centre fabric, pods
//!   and outside clients, with guaranteed clean-up;
//! - [`chain`]: a libcni-like runner that execs plugin chains inside the node;
//! - [`traffic`]: bounded TCP and ping checks from inside a netns;
//! - [`nsexec`]: exec a program inside a netns without a wrapper process.

pub mod chain;
pub mod lab;
pub mod nsexec;
pub mod traffic;
