//! Logging through `tracing`, to stderr or a file, never to stdout (stdout
//! carries only the CNI result or error).
//!
//! One log file is shared by every plugin exec on the node, many at once.
//! Each event is formatted whole and written with one `write(2)` on an
//! `O_APPEND` descriptor, so lines of concurrent processes neither tear nor
//! interleave. The file is rotated when an exec opens it and finds it at or
//! over the size limit ([`Rotation`]): the full file is renamed to a backup
//! named after the UTC time (`coordinator-2026-12-07T15-04-05.123.log`,
//! lumberjack's scheme, which Spiderpool uses) and a new one is started.
//! Processes still holding the old descriptor keep appending to the backup,
//! so no line is lost; only pruning (by count and age) ever deletes one, and
//! then only from a backup that `max_backups` rotations have passed since.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime as LogTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Spiderpool's defaults for `logMaxSize` (MiB), `logMaxAge` (days) and
/// `logMaxCount`.
pub const DEFAULT_MAX_MIB: u64 = 100;
pub const DEFAULT_MAX_AGE_DAYS: u64 = 30;
pub const DEFAULT_MAX_BACKUPS: u32 = 10;

/// When the log file is rotated and how many backups are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate when an exec finds the file this large (bytes).
    pub max_bytes: u64,
    /// Backups last modified longer ago are removed; `None` keeps them.
    pub max_age: Option<Duration>,
    /// Backups kept beyond this many (newest first) are removed; `None`
    /// keeps them all.
    pub max_backups: Option<u32>,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: DEFAULT_MAX_MIB << 20,
            max_age: Some(Duration::from_secs(DEFAULT_MAX_AGE_DAYS * 86_400)),
            max_backups: Some(DEFAULT_MAX_BACKUPS),
        }
    }
}

/// Where one exec logs, and what every line says about the call.
#[derive(Debug, Clone, Default)]
pub struct Settings<'a> {
    /// error, warn, info, debug, trace, off (default info).
    pub level: Option<&'a str>,
    /// `None` logs to stderr.
    pub file: Option<&'a Path>,
    pub rotation: Rotation,
}

/// The log names pods, addresses and container IDs: readable by root only,
/// whatever the umask of the runtime (0600, directories 0700). Every plugin
/// exec opens it, so the usual case (directory there, file already 0600)
/// costs one open and one fstat: the directory is made only when the open
/// says it is missing, the mode set only when it is wrong.
fn open_log(path: &Path) -> io::Result<File> {
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
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
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

/// How long an exec waits for another one that is rotating: renaming and
/// pruning take well under a millisecond, and logging must never hold up a
/// CNI call, so past this the exec appends to the full file instead.
const LOCK_TRIES: u32 = 50;
const LOCK_PAUSE: Duration = Duration::from_millis(2);

/// Opens the log for appending, rotating it first when it is full.
///
/// Rotation is serialised by a `flock` on the full file itself: every exec
/// that found it full waits for that lock, and all but the first then see
/// that the path names a new file and open that one instead.
pub fn open_rotating(path: &Path, rot: &Rotation) -> io::Result<File> {
    for _ in 0..3 {
        let f = open_log(path)?;
        let meta = f.metadata()?;
        if !meta.is_file() || meta.len() < rot.max_bytes.max(1) {
            return Ok(f);
        }
        let Some(lock) = lock_briefly(f) else {
            return open_log(path);
        };
        let still_ours = std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
        if still_ours {
            rename_to_backup(path)?;
            prune(path, rot, SystemTime::now());
        }
        drop(lock);
    }
    open_log(path)
}

fn lock_briefly(mut f: File) -> Option<Flock<File>> {
    for _ in 0..LOCK_TRIES {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Some(l),
            Err((back, _)) => f = back,
        }
        std::thread::sleep(LOCK_PAUSE);
    }
    None
}

/// `dir/stem.ext` → (`dir`, `stem-`, `.ext`): a backup is `stem-<time>.ext`.
fn backup_parts(path: &Path) -> (PathBuf, String, String) {
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (dir, format!("{stem}-"), ext)
}

pub fn backup_name(path: &Path, at: SystemTime) -> PathBuf {
    let (dir, prefix, ext) = backup_parts(path);
    dir.join(format!("{prefix}{}{ext}", utc_stamp(at)))
}

/// Renames without replacing: two rotations within one millisecond must not
/// overwrite a backup, so a taken name is retried a millisecond later.
fn rename_to_backup(path: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(path.as_os_str().as_bytes())?;
    let mut last = io::Error::from_raw_os_error(libc::EEXIST);
    for _ in 0..5 {
        let to = CString::new(backup_name(path, SystemTime::now()).as_os_str().as_bytes())?;
        // SAFETY: both arguments are NUL-terminated strings that outlive the
        // call; renameat2 only reads them.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EEXIST) {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(last)
}

/// Whether `name` is one of this log's backups: `stem-YYYY-MM-DDTHH-MM-SS.mmm.ext`.
fn is_backup(name: &str, prefix: &str, ext: &str) -> bool {
    let Some(stamp) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(ext))
    else {
        return false;
    };
    stamp.len() == 23
        && stamp.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 | 13 | 16 => b == b'-',
            10 => b == b'T',
            19 => b == b'.',
            _ => b.is_ascii_digit(),
        })
}

/// Removes the backups past the count and the age limits. Best effort: a
/// backup that cannot be removed now is removed by a later rotation.
fn prune(path: &Path, rot: &Rotation, now: SystemTime) {
    let (dir, prefix, ext) = backup_parts(path);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut backups: Vec<(String, SystemTime)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            if !is_backup(&name, &prefix, &ext) {
                return None;
            }
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (name, meta.modified().unwrap_or(now)))
        })
        .collect();
    // The time in the name sorts as text: newest first.
    backups.sort_by(|a, b| b.0.cmp(&a.0));
    for (i, (name, modified)) in backups.iter().enumerate() {
        let too_many = rot.max_backups.is_some_and(|n| i >= n as usize);
        let too_old = rot
            .max_age
            .is_some_and(|age| now.duration_since(*modified).unwrap_or_default() > age);
        if too_many || too_old {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
}

/// `2026-12-07T15-04-05.123` (UTC; no colons, which some tools mind in file
/// names).
fn utc_stamp(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}-{:02}-{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Hinnant's method:
/// eras of 400 years, years starting in March so the leap day comes last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `ADD <container ID> <ifname>` from the CNI environment, for every line.
/// The runtime sets these, but they are not validated yet when logging
/// starts: anything outside a name's usual characters is shown as `?`, so a
/// hostile value cannot forge lines or send terminal escapes.
pub fn call_context() -> String {
    let var = |k: &str, max: usize| -> String {
        let v = std::env::var_os(k).unwrap_or_default();
        let v = v.to_string_lossy();
        let clean: String = v
            .chars()
            .take(max)
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-:@".contains(c) {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if clean.is_empty() {
            "-".into()
        } else {
            clean
        }
    };
    format!(
        "{} {} {}",
        var("CNI_COMMAND", 8),
        var("CNI_CONTAINERID", 128),
        var("CNI_IFNAME", 16)
    )
}

/// `time LEVEL VERB container ifname: message fields`, whatever thread logs.
struct CallFormat {
    call: String,
}

impl<S, N> FormatEvent<S, N> for CallFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        LogTime.format_time(&mut w)?;
        write!(w, " {:>5} {}: ", event.metadata().level(), self.call)?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

fn level_filter(level: Option<&str>) -> LevelFilter {
    match level.map(str::to_ascii_lowercase).as_deref() {
        Some("error") => LevelFilter::ERROR,
        Some("warn") | Some("warning") => LevelFilter::WARN,
        Some("debug") => LevelFilter::DEBUG,
        Some("trace") => LevelFilter::TRACE,
        Some("off") | Some("none") => LevelFilter::OFF,
        _ => LevelFilter::INFO,
    }
}

/// Install the global subscriber once. A log file that cannot be opened
/// falls back to stderr: logging must never fail a CNI call.
pub fn init(settings: &Settings) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level_filter(settings.level))
        .with_ansi(false)
        .event_format(CallFormat {
            call: call_context(),
        });
    let opened = settings
        .file
        .and_then(|p| open_rotating(p, &settings.rotation).ok());
    let _ = match opened {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(io::stderr).try_init(),
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

    #[test]
    fn dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(20_794), (2026, 12, 7));
        assert_eq!(civil_from_days(47_482), (2100, 1, 1));
        let t = UNIX_EPOCH + Duration::from_millis(1_796_655_845_123);
        assert_eq!(utc_stamp(t), "2026-12-07T15-04-05.123");
    }

    #[test]
    fn backups_are_named_and_recognised() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_655_845_123);
        let b = backup_name(Path::new("/var/log/c/coordinator.log"), t);
        assert_eq!(
            b,
            Path::new("/var/log/c/coordinator-2026-12-07T15-04-05.123.log")
        );
        let name = b.file_name().unwrap().to_str().unwrap();
        assert!(is_backup(name, "coordinator-", ".log"));
        for other in [
            "coordinator.log",
            "coordinator-2026-12-07T15-04-05.123.log.gz",
            "coordinator-2026-12-07T15:04:05.123.log",
            "coordinator-x026-12-07T15-04-05.123.log",
            "other-2026-12-07T15-04-05.123.log",
        ] {
            assert!(!is_backup(other, "coordinator-", ".log"), "{other}");
        }
        let bare = backup_name(Path::new("/l/plain"), t);
        assert_eq!(bare, Path::new("/l/plain-2026-12-07T15-04-05.123"));
    }

    #[test]
    fn rotates_when_full_and_prunes_by_count_and_age() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let rot = Rotation {
            max_bytes: 100,
            max_age: None,
            max_backups: Some(2),
        };
        for i in 0..5 {
            let mut f = open_rotating(&p, &rot).unwrap();
            f.write_all(format!("{i}{}\n", "x".repeat(120)).as_bytes())
                .unwrap();
            // Distinct backup names even on a fast machine.
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[2], "c.log");
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        // The two newest backups hold lines 2 and 3, the live file line 4.
        assert!(read(&names[0]).starts_with('2'), "{names:?}");
        assert!(read(&names[1]).starts_with('3'));
        assert!(read("c.log").starts_with('4'));
        // Age: a backup older than the limit goes at the next rotation.
        let old = dir.path().join(&names[0]);
        let long_ago = SystemTime::now() - Duration::from_secs(3 * 86_400);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let by_age = Rotation {
            max_bytes: 100,
            max_age: Some(Duration::from_secs(86_400)),
            max_backups: None,
        };
        prune(&p, &by_age, SystemTime::now());
        assert!(!old.exists());
        assert!(dir.path().join(&names[1]).exists());
    }

    #[test]
    fn a_full_file_that_is_not_regular_is_left_alone() {
        let rot = Rotation {
            max_bytes: 1,
            ..Rotation::default()
        };
        // /dev/null reports size 0, but is not a regular file either way.
        open_rotating(Path::new("/dev/null"), &rot).unwrap();
        assert!(Path::new("/dev/null").exists());
    }
}
