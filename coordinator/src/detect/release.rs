//! Releasing packet sockets without making the plugin's exit wait for it.
//!
//! The last close of a packet socket runs `packet_release`, which always
//! waits out an RCU grace period (`synchronize_net()`): 5-20 ms on a busy
//! node. A process cannot finish exiting while one of its threads sits in
//! that wait, and the runtime waits for the plugin's exit, so neither a
//! closing thread nor leaving the socket to `exit()` takes the wait off the
//! pod's start-up path. Instead a forked child takes the last reference: the
//! plugin drops its own descriptor (not the last one, so nothing waits) and
//! the child, holding nothing else — not stdout, stderr or a lock file, whose
//! `flock` would otherwise stay held — closes the sockets and exits on its own.

use std::os::fd::{AsRawFd, OwnedFd};

/// Hand the last reference of `fds` to a short-lived child that closes them.
/// Returns at once. When no child can be made, the sockets are closed here
/// (the wait is then paid, as before).
pub fn release_detached(fds: Vec<OwnedFd>) {
    if fds.is_empty() {
        return;
    }
    let mut keep: Vec<libc::c_uint> = fds.iter().map(|f| f.as_raw_fd() as libc::c_uint).collect();
    keep.sort_unstable();
    // SAFETY: the child runs only async-signal-safe syscalls (close_range,
    // close, _exit) on data prepared before the fork, then exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; never returns.
        unsafe { close_all_then_exit(&keep) }
    }
    if pid < 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "fork for socket release failed: closing in place"
        );
    }
    drop(fds);
}

/// In the child: close every descriptor but `keep` (sorted), then `keep`
/// itself (the grace period is waited out here), then exit.
unsafe fn close_all_then_exit(keep: &[libc::c_uint]) -> ! {
    let mut first: libc::c_uint = 0;
    for &fd in keep {
        if fd > first {
            close_range(first, fd - 1);
        }
        first = fd.saturating_add(1);
    }
    close_range(first, libc::c_uint::MAX);
    for &fd in keep {
        libc::close(fd as libc::c_int);
    }
    libc::_exit(0)
}

unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
    if libc::syscall(libc::SYS_close_range, first, last, 0) == 0 {
        return;
    }
    // Before Linux 5.9: one by one (a plugin holds a few dozen at most).
    for fd in first..=last.min(1023) {
        libc::close(fd as libc::c_int);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_child_closes_what_it_was_given() {
        let (r, w) = nix::unistd::pipe().unwrap();
        release_detached(vec![w]);
        // EOF only once both copies are closed: ours at once, the child's
        // (the last one) soon after.
        let mut buf = Vec::new();
        std::fs::File::from(r).read_to_end(&mut buf).unwrap();
        assert!(buf.is_empty());
    }
}
