//! Deterministic fault injection for the sweep tests, counted per process
//! over every netlink request of every family:
//! - `COORDINATOR_TEST_ABORT_AT_REQUEST=N` kills the process with SIGKILL
//!   just before its Nth request, so no undo or destructor runs: exactly what
//!   `kill -9` between two netlink sends leaves behind;
//! - `COORDINATOR_TEST_PANIC_AT_REQUEST=N` panics there instead: a bug in the
//!   middle of a call, which unwinds through every undo the call has armed.
//!
//! Compiled only with the `fault-injection` feature, which only test builds
//! enable (`scripts/build.sh --profile dev --fault-injection`): a shipped
//! binary neither contains these names nor reads them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const ENV: &str = "COORDINATOR_TEST_ABORT_AT_REQUEST";
pub const PANIC_ENV: &str = "COORDINATOR_TEST_PANIC_AT_REQUEST";

static SENT: AtomicU64 = AtomicU64::new(0);

fn limits() -> (Option<u64>, Option<u64>) {
    static LIMITS: OnceLock<(Option<u64>, Option<u64>)> = OnceLock::new();
    *LIMITS.get_or_init(|| {
        let at = |key| std::env::var(key).ok()?.parse().ok();
        (at(ENV), at(PANIC_ENV))
    })
}

/// Called by the request path before each send.
pub fn maybe_abort() {
    let (kill_at, panic_at) = limits();
    if kill_at.is_none() && panic_at.is_none() {
        return;
    }
    let n = SENT.fetch_add(1, Ordering::Relaxed) + 1;
    if kill_at.is_some_and(|k| n >= k) {
        // SAFETY: signalling our own process; SIGKILL cannot be caught.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    // Once: the undo that the unwinding runs makes requests of its own.
    if panic_at == Some(n) {
        panic!("{PANIC_ENV}: injected panic before netlink request {n}");
    }
}
