//! Run a program inside a network namespace without an intermediate process.
//!
//! `ip netns exec` forks, enters the netns and remounts `/sys` so that
//! `/sys/class/net` shows the namespace's links. We do the same in the child
//! between fork and exec (`pre_exec`), so the measured time and memory of a
//! plugin are the plugin's own, not those of a wrapper.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Resolve a netns given by name (`/var/run/netns/<name>`) or by path.
pub fn netns_path(ns: &str) -> PathBuf {
    if ns.contains('/') {
        PathBuf::from(ns)
    } else {
        Path::new("/var/run/netns").join(ns)
    }
}

/// How much of `ip netns exec` to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enter {
    /// Only `setns(CLONE_NEWNET)`: enough for sockets (ping, nft, ip).
    NetOnly,
    /// Also a private mount namespace with a fresh sysfs, as `ip netns exec`
    /// does: needed by programs that read `/sys/class/net` (CNI plugins).
    WithSysfs,
}

/// Make `cmd` run inside the netns at `ns`. The netns file is opened now, so a
/// missing namespace is reported here rather than as an exec failure.
pub fn enter(cmd: &mut Command, ns: &Path, how: Enter) -> io::Result<()> {
    let file = File::open(ns)
        .map_err(|e| io::Error::new(e.kind(), format!("open netns {}: {e}", ns.display())))?;
    // Everything the child touches is prepared before fork: after fork only
    // async-signal-safe syscalls may run.
    let root = c"/";
    let sys = c"/sys";
    let sysfs = c"sysfs";
    let none = c"none";
    let sysfs_source = CString::new("cni-lab").map_err(io::Error::other)?;
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe functions (setns, unshare, mount) on data moved into it.
    unsafe {
        cmd.pre_exec(move || {
            let fd = file.as_raw_fd();
            if how == Enter::WithSysfs {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // Keep our mounts from propagating back to the parent's namespace.
                let flags = libc::MS_SLAVE | libc::MS_REC;
                if libc::mount(
                    none.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if how == Enter::WithSysfs {
                // A sysfs mount shows the links of the netns of whoever mounts it,
                // so it must be mounted after setns. No sysfs at all is fine.
                let mut flags: libc::c_ulong = 0;
                if libc::umount2(sys.as_ptr(), libc::MNT_DETACH) != 0 {
                    let mut st: libc::statvfs = std::mem::zeroed();
                    if libc::statvfs(sys.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY != 0
                    {
                        flags = libc::MS_RDONLY;
                    }
                }
                if libc::mount(
                    sysfs_source.as_ptr(),
                    sys.as_ptr(),
                    sysfs.as_ptr(),
                    flags,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// A `Command` for `program` that runs inside netns `ns` (name or path).
pub fn command_in(ns: &str, program: &str, how: Enter) -> io::Result<Command> {
    let mut cmd = Command::new(program);
    enter(&mut cmd, &netns_path(ns), how)?;
    Ok(cmd)
}
