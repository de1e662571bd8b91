//! Durable small-file state: an exclusive lock plus atomic replacement, in a
//! directory opened once and used by descriptor.
//!
//! Both the IPAM file store and the quarantine file keep their documents in
//! one directory and change them from many short-lived plugin processes at
//! once. The recipe is always: take an exclusive `flock` on a *separate* lock
//! file (a data file replaced by `rename` would be a lock on an inode that
//! disappears), read, modify, write a temporary file in the same directory,
//! fsync it, rename it over the data file, fsync the directory. A crash at any
//! point leaves either the old or the new document.
//!
//! Every file is opened relative to its directory's descriptor ([`Dir`]) with
//! `O_NOFOLLOW` and checked to be a regular file, so a symlink planted in the
//! store (`journal` -> a file elsewhere, `.state.bin.tmp` -> anything) is
//! refused instead of followed, and a FIFO or device in place of a file fails
//! at once (`O_NONBLOCK`) instead of hanging the call. Directories are created
//! 0700 and files 0600: the umask can only take bits away from those. Whole
//! reads are bounded.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// The most read whole from any one file (the quarantine file, a journal, a
/// legacy JSON state): far above what they hold in use (a journal is
/// compacted at a few hundred KiB), far below what would hurt the node.
pub const MAX_FILE: u64 = 16 << 20;

/// An exclusive `flock` held until dropped (closing the file releases it, also
/// when the process is killed).
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
    path: PathBuf,
}

impl LockGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An `Io` error (code 5) that names the path and says what was being done.
pub fn io_error(what: &str, path: &Path, err: &std::io::Error) -> Error {
    let hint = match err.raw_os_error() {
        Some(libc::EROFS) => " (read-only file system)",
        Some(libc::ENOSPC) => " (no space left on device)",
        Some(libc::EDQUOT) => " (disk quota exceeded)",
        Some(libc::ENOTDIR) => " (a path component is not a directory)",
        Some(libc::ELOOP) => " (a symbolic link, which is not followed here)",
        _ => "",
    };
    Error::Io(format!("{what} {}: {err}{hint}", path.display()))
}

fn errno_error(what: &str, path: &Path, e: Errno) -> Error {
    io_error(what, path, &std::io::Error::from(e))
}

/// Create `dir` and its missing parents, each 0700.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error("cannot create directory", dir, &e))
}

/// Refuse anything but a regular file (a FIFO, a device, a directory).
fn regular(file: File, path: &Path) -> Result<File> {
    let meta = file
        .metadata()
        .map_err(|e| io_error("cannot stat", path, &e))?;
    if !meta.is_file() {
        return Err(Error::Io(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// Read all of `file`, refusing more than `limit` bytes.
fn read_bounded(file: File, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_error("cannot read", path, &e))?;
    if buf.len() as u64 > limit {
        return Err(Error::Io(format!(
            "{} is larger than {} KiB",
            path.display(),
            limit >> 10
        )));
    }
    Ok(buf)
}

/// The contents of the regular file `path` (symlinks followed: node config
/// such as a ConfigMap mount may be one), or `None` when it does not exist.
/// A FIFO or device fails at once; more than `limit` bytes is an error.
pub fn read_optional(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("cannot open", path, &e)),
    };
    read_bounded(regular(file, path)?, path, limit).map(Some)
}

/// A directory held open; its files are opened relative to it, never through
/// a symbolic link.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Create `path` (0700, parents too) if missing and open it. The
    /// directory itself must not be a symbolic link.
    pub fn create(path: &Path) -> Result<Dir> {
        ensure_dir(path)?;
        Dir::open(path)?.ok_or_else(|| Error::Io(format!("{} vanished", path.display())))
    }

    /// Open `path`, or `None` when it does not exist.
    pub fn open(path: &Path) -> Result<Option<Dir>> {
        Dir::open_with(path, OFlag::O_NOFOLLOW)
    }

    /// Open `path` even when it is a symbolic link to a directory, or `None`
    /// when it does not exist: for a directory an operator names on the
    /// command line (`/opt/cni/bin` is a link on many hosts). Its files are
    /// still opened without following links.
    pub fn open_following(path: &Path) -> Result<Option<Dir>> {
        Dir::open_with(path, OFlag::empty())
    }

    fn open_with(path: &Path, extra: OFlag) -> Result<Option<Dir>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | extra;
        match nix::fcntl::open(path, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir {
                fd,
                path: path.to_path_buf(),
            })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(errno_error("cannot open directory", path, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The full path of `name`, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn open_at(&self, name: &str, flags: OFlag) -> Result<Option<File>> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        match nix::fcntl::openat(
            self.fd.as_fd(),
            name,
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => regular(File::from(fd), &self.join(name)).map(Some),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(errno_error("cannot open", &self.join(name), e)),
        }
    }

    /// Is there an entry `name` (of any type; links are not followed)?
    pub fn exists(&self, name: &str) -> Result<bool> {
        match nix::sys::stat::fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno_error("cannot stat", &self.join(name), e)),
        }
    }

    /// `name` opened for reading, or `None` when it does not exist.
    pub fn open_read(&self, name: &str) -> Result<Option<File>> {
        self.open_at(name, OFlag::O_RDONLY)
    }

    /// The contents of `name`, or `None` when it does not exist.
    pub fn read(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        match self.open_read(name)? {
            Some(f) => read_bounded(f, &self.join(name), limit).map(Some),
            None => Ok(None),
        }
    }

    /// `name` opened for writing, created (0600) when missing; the flag says
    /// whether it existed before.
    pub fn open_write(&self, name: &str) -> Result<(File, bool)> {
        if let Some(f) = self.open_at(name, OFlag::O_WRONLY)? {
            return Ok((f, true));
        }
        let f = self
            .open_at(name, OFlag::O_WRONLY | OFlag::O_CREAT)?
            .ok_or_else(|| Error::Io(format!("cannot create {}", self.join(name).display())))?;
        Ok((f, false))
    }

    /// `name` opened for appending, created (0600) when missing; the flag
    /// says whether it existed before.
    pub fn open_append(&self, name: &str) -> Result<(File, bool)> {
        if let Some(f) = self.open_at(name, OFlag::O_WRONLY | OFlag::O_APPEND)? {
            return Ok((f, true));
        }
        let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT;
        let f = self
            .open_at(name, flags)?
            .ok_or_else(|| Error::Io(format!("cannot create {}", self.join(name).display())))?;
        Ok((f, false))
    }

    /// `name` created (0600) for appending; an error if it exists.
    pub fn create_append(&self, name: &str) -> Result<File> {
        let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_EXCL;
        self.open_at(name, flags)?
            .ok_or_else(|| Error::Io(format!("cannot create {}", self.join(name).display())))
    }

    /// Block until this process holds an exclusive `flock` on the directory
    /// itself, released when the `Dir` is dropped.
    pub fn flock(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: a valid open descriptor owned by self; flock only locks it.
            let rc = unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(io_error("cannot lock", &self.path, &err));
            }
        }
    }

    /// Block until this process holds the exclusive lock on `name` (created
    /// if missing).
    pub fn lock(&self, name: &str) -> Result<LockGuard> {
        let path = self.join(name);
        let f = self
            .open_at(name, OFlag::O_RDWR | OFlag::O_CREAT)?
            .ok_or_else(|| Error::Io(format!("cannot create {}", path.display())))?;
        lock_retrying(f, &path)
    }

    /// Remove `name` if present.
    pub fn remove(&self, name: &str) -> Result<()> {
        match nix::unistd::unlinkat(
            self.fd.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(errno_error("cannot remove", &self.join(name), e)),
        }
    }

    /// Make the directory's entries durable (after a create or a rename).
    pub fn sync(&self) -> Result<()> {
        nix::unistd::fsync(self.fd.as_fd())
            .map_err(|e| errno_error("cannot sync directory", &self.path, e))
    }

    /// Replace `name` with `data` atomically (a reader sees the old or the
    /// new contents, never a mix), without making it durable: for state
    /// that lives on a tmpfs and dies with the pods it describes (`/run`),
    /// where an fsync is pure cost. The caller serialises writers.
    pub fn replace(&self, name: &str, data: &[u8]) -> Result<()> {
        self.write_renamed(name, data, None)
    }

    /// Replace `name` with `data` atomically and durably. The caller holds
    /// the lock that serialises writers of `name` (the temporary name is
    /// fixed: whatever a killed writer, or anyone else, left under it is
    /// removed first, never written through).
    pub fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        self.write_atomic_mode(name, data, 0o600)
    }

    /// [`Dir::write_atomic`] leaving `name` with the mode `mode` exactly
    /// (the umask does not apply: an installed plugin must be 0755).
    pub fn write_atomic_mode(&self, name: &str, data: &[u8], mode: u32) -> Result<()> {
        self.write_renamed(name, data, Some(mode))?;
        // The rename is durable only once the directory entry is on disk.
        self.sync()
    }

    /// `data` into a fixed temporary name, then renamed over `name`; with
    /// `durable_mode`, the file gets that mode and is synced before the
    /// rename.
    fn write_renamed(&self, name: &str, data: &[u8], durable_mode: Option<u32>) -> Result<()> {
        let tmp = format!(".{name}.tmp");
        self.remove(&tmp)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        let mut file = self
            .open_at(&tmp, flags)?
            .ok_or_else(|| Error::Io(format!("cannot create {}", self.join(&tmp).display())))?;
        let written = match durable_mode {
            Some(mode) => file
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .and_then(|()| file.write_all(data))
                .and_then(|()| file.sync_all()),
            None => file.write_all(data),
        }
        .map_err(|e| io_error("cannot write", &self.join(&tmp), &e));
        drop(file);
        if let Err(e) = written {
            // Do not leave a half-written temporary behind on ENOSPC and the like.
            let _ = self.remove(&tmp);
            return Err(e);
        }
        let fd = self.fd.as_fd();
        if let Err(e) = nix::fcntl::renameat(fd, OsStr::new(&tmp), fd, OsStr::new(name)) {
            let _ = self.remove(&tmp);
            return Err(errno_error("cannot replace", &self.join(name), e));
        }
        Ok(())
    }
}

fn lock_retrying(mut file: File, path: &Path) -> Result<LockGuard> {
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => {
                return Ok(LockGuard {
                    _lock: lock,
                    path: path.to_path_buf(),
                })
            }
            // A signal interrupted the wait; the file came back to us, wait again.
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => {
                return Err(errno_error("cannot lock", path, errno));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_read_replace() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::create(&tmp.path().join("d")).unwrap();
        assert_eq!(dir.read("state.json", MAX_FILE).unwrap(), None);
        dir.write_atomic("state.json", b"one").unwrap();
        dir.write_atomic("state.json", b"two").unwrap();
        assert_eq!(dir.read("state.json", MAX_FILE).unwrap().unwrap(), b"two");
        // Only the data file remains: the temporary was renamed away.
        assert_eq!(
            names(dir.path()),
            vec![std::ffi::OsString::from("state.json")]
        );
        let e = dir.read("state.json", 2).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn private_modes_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let old = nix::sys::stat::umask(Mode::empty());
        let dir = Dir::create(&tmp.path().join("a/b"));
        nix::sys::stat::umask(old);
        let dir = dir.unwrap();
        dir.write_atomic("f", b"x").unwrap();
        let _ = dir.lock("lock").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.join("f")), 0o600);
        assert_eq!(mode(&dir.join("lock")), 0o600);
    }

    #[test]
    fn planted_symlinks_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let dir = Dir::create(&tmp.path().join("store")).unwrap();
        for name in ["journal", "lock", ".state.bin.tmp"] {
            std::os::unix::fs::symlink(&outside, dir.join(name)).unwrap();
        }
        assert!(dir
            .read("journal", MAX_FILE)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        assert!(dir.open_write("journal").is_err());
        assert!(dir.lock("lock").is_err());
        // The temporary link is removed, not written through, and the data
        // file is a regular file afterwards.
        dir.write_atomic("state.bin", b"new").unwrap();
        assert!(std::fs::symlink_metadata(dir.join("state.bin"))
            .unwrap()
            .is_file());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        // The directory itself as a link is refused too.
        let link = tmp.path().join("linked");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(Dir::open(&link).is_err());
    }

    #[test]
    fn fifos_and_devices_fail_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::create(tmp.path()).unwrap();
        nix::unistd::mkfifo(&dir.join("journal"), Mode::from_bits_truncate(0o600)).unwrap();
        let e = dir.read("journal", MAX_FILE).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(dir.open_write("journal").is_err());
        let e = read_optional(&dir.join("journal"), MAX_FILE).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = read_optional(Path::new("/dev/zero"), MAX_FILE).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert_eq!(read_optional(&dir.join("missing"), MAX_FILE).unwrap(), None);
    }

    #[test]
    fn lock_is_exclusive_between_open_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::create(tmp.path()).unwrap();
        let g = dir.lock("lock").unwrap();
        // A second open file description cannot take the lock while g lives.
        let f = File::open(dir.join("lock")).unwrap();
        let r = Flock::lock(f, FlockArg::LockExclusiveNonblock);
        assert!(r.is_err());
        drop(g);
        let f = File::open(dir.join("lock")).unwrap();
        assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok());
    }

    #[test]
    fn file_in_place_of_dir_is_io_error() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("notadir");
        std::fs::write(&blocker, b"x").unwrap();
        let e = Dir::create(&blocker.join("sub")).unwrap_err();
        assert_eq!(e.code(), 5);
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(Dir::create(&blocker).unwrap_err().code(), 5);
    }
}
