//! Network namespaces.
//!
//! `setns(2)` changes the namespace of the calling *thread* only. Code that
//! needs to act inside a pod's netns (open a socket, write a sysctl) enters
//! it, does that one piece of work and returns to the namespace it came
//! from, on the calling thread (see [`NetNs::run`]): a thread spawn and join
//! per entry cost more than the work itself on the ADD path. Sockets created
//! inside stay bound to that netns and can be used from anywhere afterwards.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};

/// `f_type` of files on the nsfs pseudo filesystem (linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Open the netns at `path` (e.g. `/var/run/netns/x`, `/proc/<pid>/ns/net`).
    /// `ErrorKind::NotFound` when the path does not exist; `InvalidInput` when it
    /// is not a namespace (e.g. the empty file left when a bind mount is gone).
    pub fn open(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref();
        // O_NONBLOCK: a FIFO in place of the netns must not block the open
        // (it is refused below, like any file that is not nsfs).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)?;
        let fs = nix::sys::statfs::fstatfs(&file).map_err(io::Error::from)?;
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a network namespace", path.display()),
            ));
        }
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The pod's netns named by `CNI_NETNS`: a missing one is code 3, one
    /// that is not a netns (a plain file, a FIFO) or that is the plugin's own
    /// netns is code 4. Configuring the plugin's own netns as a pod would
    /// put `veth0`, rules and tables on the node, and a DEL would delete the
    /// node's.
    pub fn open_pod(path: &Path) -> Result<NetNs> {
        let ns = NetNs::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                Error::UnknownContainer(format!("netns {} does not exist", path.display()))
            }
            io::ErrorKind::InvalidInput => Error::InvalidEnv(format!(
                "CNI_NETNS {} is not a network namespace",
                path.display()
            )),
            _ => Error::Io(format!("opening netns {}: {e}", path.display())),
        })?;
        let own = NetNs::open("/proc/self/ns/net")
            .map_err(|e| Error::Io(format!("opening the plugin's own netns: {e}")))?;
        if ns.same_as(&own) {
            return Err(Error::InvalidEnv(format!(
                "CNI_NETNS {} is the plugin's own network namespace, not a pod's",
                path.display()
            )));
        }
        Ok(ns)
    }

    /// The calling thread's netns.
    pub fn current() -> io::Result<NetNs> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// The namespace's inode number: unique among the namespaces alive.
    pub fn inode(&self) -> Option<u64> {
        self.file.metadata().ok().map(|m| m.ino())
    }

    /// Same namespace (device and inode)?
    pub fn same_as(&self, other: &NetNs) -> bool {
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Run `f` inside this netns on the calling thread, then return the
    /// thread to the namespace it was in, also when `f` panics. Threads `f`
    /// spawns start inside this netns.
    ///
    /// Failing to get back would leave the thread configuring the wrong
    /// network: the process aborts instead.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        struct Return(File);
        impl Drop for Return {
            fn drop(&mut self) {
                if let Err(e) = setns(&self.0, CloneFlags::CLONE_NEWNET) {
                    eprintln!("fatal: cannot return to the original network namespace: {e}");
                    std::process::abort();
                }
            }
        }
        let home = File::open("/proc/thread-self/ns/net")?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let _back = Return(home);
        Ok(f())
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    // Dotted keys cannot name interfaces with dots in them; slash form is taken as-is.
    let rel = if key.contains('/') {
        key.trim_start_matches('/').to_string()
    } else {
        key.replace('.', "/")
    };
    Path::new("/proc/sys").join(rel)
}

/// Write a sysctl (`net.ipv4.conf.all.rp_filter` or `net/ipv4/conf/all/rp_filter`)
/// in the calling thread's netns. Call it inside [`NetNs::run`] for another netns.
pub fn sysctl_set(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(sysctl_path(key), value)
}

/// Read a sysctl in the calling thread's netns (trimmed).
pub fn sysctl_get(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(sysctl_path(key))?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.all.rp_filter"),
            Path::new("/proc/sys/net/ipv4/conf/all/rp_filter")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn open_rejects_plain_files_and_missing_paths() {
        let f = std::env::temp_dir().join(format!("not-a-netns-{}", std::process::id()));
        std::fs::write(&f, b"").unwrap();
        assert_eq!(
            NetNs::open(&f).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        std::fs::remove_file(&f).unwrap();
        assert_eq!(
            NetNs::open("/nonexistent/netns").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn open_pod_refuses_own_netns_fifos_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = NetNs::open_pod(Path::new("/proc/self/ns/net")).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("own network namespace"), "{e}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Used to block in open(2) forever.
        assert_eq!(NetNs::open_pod(&fifo).unwrap_err().code(), 4);
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(NetNs::open_pod(&file).unwrap_err().code(), 4);
        assert_eq!(
            NetNs::open_pod(&dir.path().join("gone"))
                .unwrap_err()
                .code(),
            3
        );
        let other = scratch_netns();
        let path = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(other.file())
        ));
        assert!(NetNs::open_pod(&path).is_ok());
    }

    /// A fresh netns held only by the returned handle (needs root).
    fn scratch_netns() -> NetNs {
        std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare (needs root)");
            NetNs::current().unwrap()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn run_enters_and_returns_also_after_a_panic() {
        let home = NetNs::current().unwrap();
        let other = scratch_netns();
        assert!(!other.same_as(&home));
        let inside = other
            .run(|| NetNs::current().unwrap().same_as(&other))
            .unwrap();
        assert!(inside);
        assert!(NetNs::current().unwrap().same_as(&home));

        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            other.run(|| panic!("inside")).unwrap()
        }));
        assert!(caught.is_err());
        assert!(
            NetNs::current().unwrap().same_as(&home),
            "a panic inside must not leave the thread in the other netns"
        );

        // Nested: back to the middle one, then home.
        let third = scratch_netns();
        let back_in_other = other
            .run(|| {
                third.run(|| ()).unwrap();
                NetNs::current().unwrap().same_as(&other)
            })
            .unwrap();
        assert!(back_in_other);
        assert!(NetNs::current().unwrap().same_as(&home));
    }
}
