//! Network namespaces.
//!
//! `setns(2)` changes the namespace of the calling *thread* only. Code that
//! needs to act inside a pod's netns (open a socket, write a sysctl) does so on
//! a short-lived scoped thread that enters the netns, does its work and exits;
//! the calling thread never changes namespace, so no later code can run in the
//! wrong one by accident. Sockets created there stay bound to that netns and
//! can be used from any thread afterwards.

use std::fs::File;
use std::path::{Path, PathBuf};

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

#[allow(unused_variables)]
impl NetNs {
    /// Open the netns at `path` (e.g. `/var/run/netns/x`, `/proc/<pid>/ns/net`).
    /// `ErrorKind::NotFound` when the path does not exist; `InvalidInput` when it
    /// is not a network namespace (e.g. a stale bind-mount target).
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<NetNs> {
        todo!()
    }

    /// The calling thread's netns.
    pub fn current() -> std::io::Result<NetNs> {
        todo!()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Same namespace (device and inode)?
    pub fn same_as(&self, other: &NetNs) -> bool {
        todo!()
    }

    /// Run `f` on a fresh thread that has entered this netns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        todo!()
    }
}

/// Write a sysctl (`net.ipv4.conf.all.rp_filter` or `net/ipv4/conf/all/rp_filter`)
/// in the calling thread's netns. Call it inside [`NetNs::run`] for another netns.
#[allow(unused_variables)]
pub fn sysctl_set(key: &str, value: &str) -> std::io::Result<()> {
    todo!()
}

/// Read a sysctl in the calling thread's netns (trimmed).
#[allow(unused_variables)]
pub fn sysctl_get(key: &str) -> std::io::Result<String> {
    todo!()
}
