//! Exec one plugin binary: stdin in, stdout and stderr captured separately,
//! wall time from spawn to exit and peak RSS from `wait4`'s rusage.

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::nsexec::{self, Enter};

/// What a process did.
#[derive(Debug)]
pub struct RawRun {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit code; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub wall: Duration,
    /// Peak resident set size in KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
    /// User + system CPU time.
    pub cpu: Duration,
    pub timed_out: bool,
}

pub struct Spawn<'a> {
    pub binary: &'a Path,
    pub args: Vec<String>,
    /// Start from an empty environment instead of ours without `CNI_*`.
    pub clear_env: bool,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    /// Run inside this netns with a fresh sysfs; `None`: the current netns.
    pub netns: Option<&'a Path>,
    pub timeout: Duration,
}

pub fn run(spec: Spawn<'_>) -> io::Result<RawRun> {
    let mut cmd = Command::new(spec.binary);
    cmd.args(&spec.args);
    if spec.clear_env {
        cmd.env_clear();
    }
    // A runtime gives plugins its own CNI_* view only; never leak ours.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CNI_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ns) = spec.netns {
        nsexec::enter(&mut cmd, ns, Enter::WithSysfs)?;
    }
    let start = Instant::now();
    let mut child = spawn_retrying_busy(&mut cmd)
        .map_err(|e| io::Error::new(e.kind(), format!("exec {}: {e}", spec.binary.display())))?;
    let pid = child.id() as libc::pid_t;

    let stdin = child.stdin.take();
    let input = spec.stdin;
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            // A plugin may exit without reading stdin: EPIPE is not our error.
            let _ = s.write_all(&input);
        }
    });
    let out_reader = reader(child.stdout.take());
    let err_reader = reader(child.stderr.take());

    // The watchdog may only kill while the child is not yet reaped, or it
    // could hit a recycled pid: `state.0` says "reaped soon, hands off".
    let state = Arc::new(Mutex::new((false, false)));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = {
        let state = Arc::clone(&state);
        let timeout = spec.timeout;
        std::thread::spawn(move || {
            if done_rx.recv_timeout(timeout).is_err() {
                if let Ok(mut s) = state.lock() {
                    if !s.0 {
                        // SAFETY: kill(2) takes only integers; the child is not reaped yet (waitid WNOWAIT), so the pid is still ours.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        s.1 = true;
                    }
                }
            }
        })
    };

    // Wait for exit without reaping, so the watchdog's pid stays valid.
    loop {
        // SAFETY: all-zero bytes are a valid siginfo_t.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid siginfo_t for waitid to fill.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            // Someone else reaped it: the pid is no longer ours to kill.
            if let Ok(mut s) = state.lock() {
                s.0 = true;
            }
            let _ = done_tx.send(());
            return Err(e);
        }
    }
    let wall = start.elapsed();
    let timed_out = match state.lock() {
        Ok(mut s) => {
            s.0 = true;
            s.1
        }
        Err(_) => false,
    };
    let _ = done_tx.send(());
    let _ = watchdog.join();

    let (status, usage) = wait_with_usage(pid)?;
    let _ = writer.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Ok(RawRun {
        stdout,
        stderr,
        exit_code,
        signal,
        wall,
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        timed_out,
    })
}

/// Spawn, retrying while the binary is "text file busy". A plugin written by
/// this process (a test's script) can still be open for writing in a child
/// that another thread forked before the write fd was closed (the fd only
/// goes away at that child's exec); libcni retries the same error for the
/// same reason.
fn spawn_retrying_busy(cmd: &mut Command) -> io::Result<std::process::Child> {
    let mut pause = Duration::from_millis(5);
    for _ in 0..8 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            other => return other,
        }
    }
    cmd.spawn()
}

/// Reap our child `pid`: its wait status and resource usage (CPU, peak RSS).
pub fn wait_with_usage(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child; status and usage outlive the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A kernel `timeval` as a duration.
pub fn timeval(t: libc::timeval) -> Duration {
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let micros = u32::try_from(t.tv_usec).unwrap_or(0).min(999_999);
    Duration::new(secs, micros * 1000)
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}
