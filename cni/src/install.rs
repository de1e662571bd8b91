//! `<plugin> install`: the binaries put themselves (and the node defaults
//! file) on a node, so a container image needs no shell or `cp`.
//!
//! Every file is replaced atomically (a temporary in the same directory,
//! fsync, rename): a runtime exec'ing the plugin during an upgrade runs either
//! the old or the new binary, never a half-written one. A file that already
//! has the wanted bytes and mode is left alone, so a restarted DaemonSet pod
//! changes nothing.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::{io_error, read_optional, Dir};

/// Mode of an installed plugin binary.
pub const BIN_MODE: u32 = 0o755;
/// Mode of the installed node defaults file.
pub const DEFAULTS_MODE: u32 = 0o644;

/// What [`install_bytes`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Unchanged,
}

/// Make `dest` hold `data` with permission bits `mode`, atomically; nothing is
/// written when it already does. Missing directories are made 0755. The
/// directory may be a symbolic link (the operator named it); a symlink at
/// `dest` is replaced, never written through.
pub fn install_bytes(data: &[u8], dest: &Path, mode: u32) -> Result<Outcome> {
    let (dir, name) = match (dest.parent(), dest.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) if !d.as_os_str().is_empty() => (d, n),
        _ => return Err(Error::Io(format!("not a file path: {}", dest.display()))),
    };
    if let Ok(meta) = std::fs::symlink_metadata(dest) {
        if meta.is_file() && meta.permissions().mode() & 0o7777 == mode {
            let old = std::fs::read(dest).map_err(|e| io_error("cannot read", dest, &e))?;
            if old == data {
                return Ok(Outcome::Unchanged);
            }
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| io_error("cannot create directory", dir, &e))?;
    let d = Dir::open_following(dir)?
        .ok_or_else(|| Error::Io(format!("{} vanished", dir.display())))?;
    d.write_atomic_mode(name, data, mode)?;
    Ok(Outcome::Written)
}

/// Copy the file `src` to `dest` (see [`install_bytes`]).
pub fn install_file(src: &Path, dest: &Path, mode: u32) -> Result<Outcome> {
    let data = std::fs::read(src).map_err(|e| io_error("cannot read", src, &e))?;
    install_bytes(&data, dest, mode)
}

/// Checks a defaults file's bytes before they are installed: a ConfigMap
/// typo then fails the installer, not every pod's ADD on the node.
pub type DefaultsCheck<'a> = &'a dyn Fn(&[u8]) -> Result<()>;

#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    bin_dir: Option<PathBuf>,
    defaults_from: Option<PathBuf>,
    defaults_to: Option<PathBuf>,
}

fn parse(args: &[String], with_defaults: bool) -> std::result::Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .map(PathBuf::from)
                .ok_or(format!("{name} needs a value"))
        };
        match a.as_str() {
            "--cni-bin-dir" => o.bin_dir = Some(value(a)?),
            "--defaults-from" if with_defaults => o.defaults_from = Some(value(a)?),
            "--defaults-to" if with_defaults => o.defaults_to = Some(value(a)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.defaults_from.is_some() != o.defaults_to.is_some() {
        return Err("--defaults-from and --defaults-to go together".into());
    }
    if o.bin_dir.is_none() && o.defaults_to.is_none() {
        return Err("nothing to install: give --cni-bin-dir".into());
    }
    Ok(o)
}

/// The usage lines of `install`, for the binaries' `--help`.
pub fn usage(name: &str, with_defaults: bool) -> String {
    let mut s = format!("  {name} install --cni-bin-dir DIR");
    if with_defaults {
        s.push_str(" [--defaults-from FILE --defaults-to PATH]");
    }
    s.push_str(&format!(
        "\n      Copy this binary to DIR/{name} (atomic, mode 0755; unchanged files are\n      left alone)."
    ));
    if with_defaults {
        s.push_str(
            " Also validate FILE as node defaults and install it as PATH\n      (mode 0644).",
        );
    }
    s.push('\n');
    s
}

/// `<name> install ...` (args after `install`): exit status 0 done, 1 failed,
/// 2 bad command line. `check` is given when the binary owns a defaults file.
pub fn run(
    name: &str,
    args: &[String],
    check: Option<DefaultsCheck>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let o = match parse(args, check.is_some()) {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(
                err,
                "{name} install: {e}\n\n{}",
                usage(name, check.is_some())
            );
            return 2;
        }
    };
    match install(name, &o, check, out) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "{name} install: {e}");
            1
        }
    }
}

fn install(
    name: &str,
    o: &Options,
    check: Option<DefaultsCheck>,
    out: &mut dyn Write,
) -> Result<()> {
    let mut report = |what: &Path, r: Outcome| {
        let verb = match r {
            Outcome::Written => "installed",
            Outcome::Unchanged => "unchanged",
        };
        let _ = writeln!(out, "{verb} {}", what.display());
    };
    // Defaults first: a bad file must not leave new binaries that would read it.
    if let (Some(from), Some(to), Some(check)) = (&o.defaults_from, &o.defaults_to, check) {
        // Bounded like the plugin's own read of it; a FIFO or device fails
        // at once instead of hanging or filling memory.
        let data = read_optional(from, crate::config::MAX_STDIN as u64)?
            .ok_or_else(|| Error::Io(format!("cannot read {}: no such file", from.display())))?;
        check(&data).map_err(|e| e.context(from.display()))?;
        report(to, install_bytes(&data, to, DEFAULTS_MODE)?);
    }
    if let Some(dir) = &o.bin_dir {
        let me = std::env::current_exe()
            .map_err(|e| Error::Io(format!("cannot find this executable: {e}")))?;
        let dest = dir.join(name);
        report(&dest, install_file(&me, &dest, BIN_MODE)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn copies_with_the_mode_whatever_the_umask_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("bin/coordinator");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let first = install_bytes(b"v1", &dest, BIN_MODE);
        nix::sys::stat::umask(old);
        assert_eq!(first.unwrap(), Outcome::Written);
        assert_eq!(std::fs::read(&dest).unwrap(), b"v1");
        assert_eq!(mode_of(&dest), 0o755);

        let ino = std::fs::metadata(&dest).unwrap().ino();
        assert_eq!(
            install_bytes(b"v1", &dest, BIN_MODE).unwrap(),
            Outcome::Unchanged
        );
        assert_eq!(std::fs::metadata(&dest).unwrap().ino(), ino, "rewritten");
        assert_eq!(names(&dir.path().join("bin")), vec!["coordinator"]);
    }

    #[test]
    fn replacement_is_a_rename_so_an_open_old_file_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("coordinator");
        install_bytes(b"old binary", &dest, BIN_MODE).unwrap();
        // A runtime that opened (or is exec'ing) the old file keeps its inode.
        let held = std::fs::File::open(&dest).unwrap();
        let old_ino = held.metadata().unwrap().ino();
        assert_eq!(
            install_bytes(b"new binary", &dest, BIN_MODE).unwrap(),
            Outcome::Written
        );
        assert_ne!(std::fs::metadata(&dest).unwrap().ino(), old_ino);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut &held, &mut s).unwrap();
        assert_eq!(s, "old binary");
        assert_eq!(std::fs::read(&dest).unwrap(), b"new binary");
        assert_eq!(names(dir.path()), vec!["coordinator"], "no temporary left");
    }

    #[test]
    fn a_symlink_in_place_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"keep").unwrap();
        let dest = dir.path().join("coordinator");
        std::os::unix::fs::symlink(&elsewhere, &dest).unwrap();
        install_bytes(b"binary", &dest, BIN_MODE).unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&dest).unwrap().is_file());
        assert_eq!(std::fs::read(&dest).unwrap(), b"binary");
    }

    #[test]
    fn a_directory_that_is_a_symlink_is_followed_but_not_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-bin");
        std::fs::create_dir(&real).unwrap();
        // /opt/cni/bin -> real-bin, as on many hosts; the defaults' parent too.
        let bins = dir.path().join("bin");
        std::os::unix::fs::symlink(&real, &bins).unwrap();
        let dest = bins.join("coordinator");
        assert_eq!(
            install_bytes(b"binary", &dest, BIN_MODE).unwrap(),
            Outcome::Written
        );
        assert_eq!(std::fs::read(real.join("coordinator")).unwrap(), b"binary");
        assert_eq!(
            install_bytes(b"binary", &dest, BIN_MODE).unwrap(),
            Outcome::Unchanged
        );
        // A link in the followed directory is still replaced, not written through.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"keep").unwrap();
        std::os::unix::fs::symlink(&elsewhere, real.join("coordinator-ipam")).unwrap();
        install_bytes(b"ipam", &bins.join("coordinator-ipam"), BIN_MODE).unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep");
        let meta = std::fs::symlink_metadata(real.join("coordinator-ipam")).unwrap();
        assert!(meta.is_file());
        assert_eq!(names(&real), vec!["coordinator", "coordinator-ipam"]);
        // A link to a directory below a followed one (nested links) too.
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::os::unix::fs::symlink(&etc, real.join("coordinator.d")).unwrap();
        let to = bins.join("coordinator.d/defaults.json");
        install_bytes(b"{}", &to, DEFAULTS_MODE).unwrap();
        assert_eq!(std::fs::read(etc.join("defaults.json")).unwrap(), b"{}");
        assert_eq!(mode_of(&etc.join("defaults.json")), DEFAULTS_MODE);
    }

    #[test]
    fn a_wrong_mode_alone_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("coordinator-ipam");
        std::fs::write(&dest, b"same").unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            install_bytes(b"same", &dest, BIN_MODE).unwrap(),
            Outcome::Written
        );
        assert_eq!(mode_of(&dest), 0o755);
    }

    #[test]
    fn command_line() {
        let a = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse(&a(&["--cni-bin-dir", "/host/opt/cni/bin"]), false).unwrap(),
            Options {
                bin_dir: Some("/host/opt/cni/bin".into()),
                ..Options::default()
            }
        );
        let both = a(&["--defaults-from", "/c/d.json", "--defaults-to", "/h/d.json"]);
        assert!(parse(&both, false).unwrap_err().contains("--defaults-from"));
        assert_eq!(
            parse(&both, true).unwrap().defaults_to,
            Some(PathBuf::from("/h/d.json"))
        );
        assert!(parse(&a(&["--defaults-from", "x"]), true).is_err());
        assert!(parse(&a(&[]), true).is_err());
        assert!(parse(&a(&["--cni-bin-dir"]), true).is_err());
    }

    #[test]
    fn run_refuses_bad_defaults_before_touching_anything() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("cm.json");
        std::fs::write(&from, b"{\"hostRuleTable\": \"x\"}").unwrap();
        let to = dir.path().join("etc/defaults.json");
        let bins = dir.path().join("bin");
        let args: Vec<String> = [
            "--cni-bin-dir",
            bins.to_str().unwrap(),
            "--defaults-from",
            from.to_str().unwrap(),
            "--defaults-to",
            to.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let refuse: DefaultsCheck = &|_| Err(Error::config("hostRuleTable", "not an integer"));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run("x", &args, Some(refuse), &mut out, &mut err), 1);
        assert!(String::from_utf8_lossy(&err).contains("hostRuleTable"));
        assert!(!to.exists() && !bins.exists());

        let accept: DefaultsCheck = &|_| Ok(());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run("x", &args, Some(accept), &mut out, &mut err), 0);
        assert_eq!(mode_of(&to), 0o644);
        assert_eq!(mode_of(&bins.join("x")), 0o755);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("installed"), "{text}");
    }
}
