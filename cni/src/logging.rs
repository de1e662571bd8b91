//! Logging through `tracing`, to stderr or a file, never to stdout (stdout
//! carries only the CNI result or error).

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;

/// The log names pods, addresses and container IDs: readable by root only,
/// whatever the umask of the runtime (0600, directories 0700). Every plugin
/// exec opens it, so the usual case (directory there, file already 0600)
/// costs one open and one fstat: the directory is made only when the open
/// says it is missing, the mode set only when it is wrong.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    // O_NONBLOCK: a FIFO without a reader fails (ENXIO) instead of hanging
    // the call; it then logs to stderr.
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
    };
    let f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            open()?
        }
        other => other?,
    };
    // A log file an earlier version created 0644 is tightened too.
    let meta = f.metadata()?;
    if meta.is_file() && meta.permissions().mode() & 0o777 != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

/// Install the global subscriber once. `level`: error, warn, info, debug,
/// trace (default info). A log file that cannot be opened falls back to
/// stderr: logging must never fail a CNI call.
pub fn init(level: Option<&str>, file: Option<&Path>) {
    let filter = match level.map(str::to_ascii_lowercase).as_deref() {
        Some("error") => LevelFilter::ERROR,
        Some("warn") | Some("warning") => LevelFilter::WARN,
        Some("debug") => LevelFilter::DEBUG,
        Some("trace") => LevelFilter::TRACE,
        Some("off") | Some("none") => LevelFilter::OFF,
        _ => LevelFilter::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_ansi(false)
        .with_target(false);
    let opened = file.and_then(|p| open_log(p).ok());
    let _ = match opened {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn log_file_is_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dir/c.log");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let opened = open_log(&p);
        nix::sys::stat::umask(old);
        opened.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_log(&p).unwrap();
        assert_eq!(mode(&p), 0o600);
    }
}
