//! The one namespace fixture of every crate's tests (like `testutils.NewNS`
//! of the reference plugins): a named netns made for one test, under this
//! process's lab prefix (so a crashed run is swept and SIGINT/SIGTERM remove
//! it), removed when dropped, also when the test fails. Labs build their node,
//! fabric, pods and clients from the same [`create`].

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use cni::netns::{sysctl_set, NetNs};

use super::cleanup::{install_signal_handler, process_prefix, remove_netns, NETNS_DIR};
use super::{in_netns, require_root, state};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `ip netns add`, then lo up and IPv6 DAD off (so addresses are usable at
/// once and nothing waits on DAD).
pub fn create(name: &str) -> io::Result<()> {
    create_with(name, false)
}

fn create_with(name: &str, kernel_dad: bool) -> io::Result<()> {
    let out = std::process::Command::new("ip")
        .args(["netns", "add", name])
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if !kernel_dad {
        in_netns(name, || {
            sysctl_set("net.ipv6.conf.all.accept_dad", "0")?;
            sysctl_set("net.ipv6.conf.default.accept_dad", "0")?;
            sysctl_set("net.ipv6.conf.lo.accept_dad", "0")
        })?;
    }
    state::ip(name, &["link", "set", "lo", "up"]).map(drop)
}

/// A scratch network namespace, removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    ns: NetNs,
}

impl Netns {
    /// A fresh netns named `cl-<pid>xs<n>-<tag>`, IPv6 DAD off. Fails
    /// loudly without root.
    pub fn new(tag: &str) -> io::Result<Netns> {
        Netns::make(tag, false)
    }

    /// Like [`Netns::new`], with the kernel's IPv6 DAD left on (tests of
    /// DAD itself).
    pub fn with_kernel_dad(tag: &str) -> io::Result<Netns> {
        Netns::make(tag, true)
    }

    fn make(tag: &str, kernel_dad: bool) -> io::Result<Netns> {
        require_root()?;
        install_signal_handler();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{}s{n}-{tag}", process_prefix());
        if let Err(e) = create_with(&name, kernel_dad) {
            let _ = remove_netns(&name);
            return Err(e);
        }
        match NetNs::open(format!("{NETNS_DIR}/{name}")) {
            Ok(ns) => Ok(Netns { name, ns }),
            Err(e) => {
                let _ = remove_netns(&name);
                Err(e)
            }
        }
    }

    /// Like [`Netns::new`], panicking with the reason: for tests.
    pub fn scratch(tag: &str) -> Netns {
        Netns::new(tag).unwrap_or_else(|e| panic!("scratch netns {tag}: {e} (needs root)"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`: what CNI_NETNS takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// The open namespace, for `Netlink::open_in`, `NetNs::run` and friends.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// `ip -n <name> <args>`, its stdout.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        state::ip(&self.name, args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = remove_netns(&self.name) {
            eprintln!("netns clean-up: {}: {e}", self.name);
        }
    }
}
