//! Removing lab namespaces: on drop, on SIGINT/SIGTERM, and after a crash.
//!
//! A named netns is a bind mount of an nsfs inode on `/var/run/netns/<name>`;
//! removing it is `umount2(MNT_DETACH)` + `unlink`, exactly what
//! `ip netns del` does. Those are plain syscalls, so the signal handler can do
//! the same work itself instead of merely setting a flag nobody would read
//! while a test is blocked.

use std::ffi::CString;
use std::io;
use std::sync::{Once, OnceLock};

pub const NETNS_DIR: &str = "/var/run/netns";

/// Prefix shared by every lab namespace, so a crashed run can be swept.
pub const PREFIX: &str = "cl-";

/// Remove named netns `name`. Missing is fine.
pub fn remove_netns(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad netns name {name:?}"),
        ));
    }
    let path = CString::new(format!("{NETNS_DIR}/{name}")).map_err(io::Error::other)?;
    // SAFETY: `path` is a NUL-terminated string that outlives the umount and unlink calls, which only read it.
    unsafe {
        // EINVAL: not a mount point (already unmounted); ENOENT: gone.
        if libc::umount2(path.as_ptr(), libc::MNT_DETACH) != 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                return Err(e);
            }
        }
        if libc::unlink(path.as_ptr()) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Named netns whose name starts with `prefix`.
pub fn list_netns(prefix: &str) -> io::Result<Vec<String>> {
    let rd = match std::fs::read_dir(NETNS_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Remove every netns whose name starts with `prefix` (e.g. [`PREFIX`] after a
/// crashed run), and lab scratch directories of that prefix in the temp dir.
/// Returns the netns names removed. An empty prefix is refused: it
/// would remove namespaces that are not ours.
pub fn sweep(prefix: &str) -> io::Result<Vec<String>> {
    if prefix.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to sweep with an empty prefix",
        ));
    }
    let names = list_netns(prefix)?;
    let mut errors = Vec::new();
    for n in &names {
        if let Err(e) = remove_netns(n) {
            errors.push(format!("{n}: {e}"));
        }
    }
    // Lab scratch directories (`<tmp>/<lab prefix>`) left by the same runs.
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let ours = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(prefix));
            if ours && e.file_type().is_ok_and(|t| t.is_dir()) {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    errors.push(format!("{}: {err}", e.path().display()));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(names)
    } else {
        Err(io::Error::other(errors.join("; ")))
    }
}

/// The prefix of every lab made by this process: `cl-<pid>x`.
pub fn process_prefix() -> String {
    format!("{PREFIX}{}x", std::process::id())
}

// Bytes of process_prefix(), read by the signal handler (set before it is installed).
static SIGNAL_PREFIX: OnceLock<Vec<u8>> = OnceLock::new();
static INSTALL: Once = Once::new();

/// Install SIGINT/SIGTERM handlers (once per process) that remove this
/// process's lab namespaces, then let the signal kill the process as usual.
pub fn install_signal_handler() {
    INSTALL.call_once(|| {
        let _ = SIGNAL_PREFIX.set(process_prefix().into_bytes());
        // SAFETY: a zeroed sigaction is a valid empty one; the handler only calls async-signal-safe functions (see on_signal).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
            libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        }
    });
}

extern "C" fn on_signal(sig: libc::c_int) {
    if let Some(prefix) = SIGNAL_PREFIX.get() {
        // Removing entries while reading the directory may hide some from
        // getdents; rescan until a pass removes nothing.
        for _ in 0..8 {
            // SAFETY: sweep_raw is called from the signal handler's context with a prefix that lives for the process.
            if unsafe { sweep_raw(prefix) } == 0 {
                break;
            }
        }
    }
    // SA_RESETHAND restored the default action: die of the same signal.
    // SAFETY: raise(2) is async-signal-safe and takes no pointers.
    unsafe {
        libc::raise(sig);
    }
}

/// Async-signal-safe sweep: only open/getdents64/umount2/unlink/close, no
/// allocation. Returns how many namespaces it removed.
unsafe fn sweep_raw(prefix: &[u8]) -> usize {
    const DIR: &[u8] = b"/var/run/netns/";
    let fd = libc::open(
        c"/var/run/netns".as_ptr(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
    );
    if fd < 0 {
        return 0;
    }
    let mut removed = 0;
    let mut buf = [0u8; 4096];
    loop {
        let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
        if n <= 0 {
            break;
        }
        let n = n as usize;
        let mut off = 0usize;
        // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
        while off + 19 < n {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 || off + reclen > n {
                break;
            }
            let name = &buf[off + 19..off + reclen];
            let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            let name = &name[..len];
            if name.starts_with(prefix) {
                let mut path = [0u8; 300];
                if DIR.len() + name.len() < path.len() {
                    path[..DIR.len()].copy_from_slice(DIR);
                    path[DIR.len()..DIR.len() + name.len()].copy_from_slice(name);
                    let p = path.as_ptr() as *const libc::c_char;
                    libc::umount2(p, libc::MNT_DETACH);
                    if libc::unlink(p) == 0 {
                        removed += 1;
                    }
                }
            }
            off += reclen;
        }
    }
    libc::close(fd);
    removed
}

/// Where the coordinator keeps its attachment records.
pub const RECORDS: &str = "/run/coordinator/attachments";

/// Remove the coordinator's attachment records of pods in the netns named
/// `names` (a test that drops its pods without the runtime's DEL leaves
/// them; a record names its netns path in its first line). Best effort.
pub fn remove_records_of(names: &[String]) {
    let Ok(dirs) = std::fs::read_dir(RECORDS) else {
        return;
    };
    let paths: Vec<String> = names.iter().map(|n| format!("{NETNS_DIR}/{n}")).collect();
    for d in dirs.flatten() {
        let Ok(files) = std::fs::read_dir(d.path()) else {
            continue;
        };
        for f in files.flatten() {
            let Ok(text) = std::fs::read_to_string(f.path()) else {
                continue;
            };
            let head = text.lines().next().unwrap_or_default();
            let ours = paths
                .iter()
                .any(|p| head.contains(&format!("\"netns\":\"{p}\"")));
            if ours {
                let _ = std::fs::remove_file(f.path());
            }
        }
        // Only when empty.
        let _ = std::fs::remove_dir(d.path());
    }
}
