//! Deterministic fault injection for the kill-sweep tests:
//! `COORDINATOR_TEST_ABORT_AT_REQUEST=N` kills the process with SIGKILL just
//! before its Nth netlink request (every family, counted per process), so no
//! undo or destructor runs: exactly what `kill -9` between two netlink sends
//! leaves behind. Unset (always, outside tests), it costs one cached lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const ENV: &str = "COORDINATOR_TEST_ABORT_AT_REQUEST";

static SENT: AtomicU64 = AtomicU64::new(0);

fn limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| std::env::var(ENV).ok()?.parse().ok())
}

/// Called by the request path before each send.
pub fn maybe_abort() {
    let Some(n) = limit() else { return };
    if SENT.fetch_add(1, Ordering::Relaxed) + 1 >= n {
        // SAFETY: signalling our own process; SIGKILL cannot be caught.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
