//! Durable small-file state: an exclusive lock plus atomic replacement.
//!
//! Both the IPAM file store and the quarantine file keep one JSON document per
//! directory and change it from many short-lived plugin processes at once.
//! The recipe is always: take an exclusive `flock` on a *separate* lock file
//! (the data file itself is replaced by `rename`, so a lock on it would be a
//! lock on an inode that disappears), read, modify, write a temporary file in
//! the same directory, fsync it, rename it over the data file, fsync the
//! directory. A crash at any point leaves either the old or the new document.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

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
        _ => "",
    };
    Error::Io(format!("{what} {}: {err}{hint}", path.display()))
}

/// Create `dir` and its parents if needed.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create directory", dir, &e))
}

/// Block until this process holds the exclusive lock on `path` (created if missing).
pub fn lock_exclusive(path: &Path) -> Result<LockGuard> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_error("cannot open lock file", path, &e))?;
    lock_retrying(file, path)
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
            Err((f, nix::errno::Errno::EINTR)) => file = f,
            Err((_, errno)) => {
                return Err(io_error("cannot lock", path, &std::io::Error::from(errno)));
            }
        }
    }
}

/// The contents of `path`, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("cannot open", path, &e)),
    };
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(|e| io_error("cannot read", path, &e))?;
    Ok(Some(buf))
}

/// Replace `path` with `data` atomically and durably. The caller holds the
/// lock that serialises writers of `path` (the temporary name is fixed, so a
/// temporary left by a killed writer is simply overwritten by the next one).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Io(format!("not a file path: {}", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);

    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| io_error("cannot create", &tmp, &e))?;
    let written = file
        .write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("cannot write", &tmp, &e));
    drop(file);
    if let Err(e) = written {
        // Do not leave a half-written temporary behind on ENOSPC and the like.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error("cannot replace", path, &e));
    }
    // The rename is durable only once the directory entry is on disk.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync directory", dir, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_replace() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(read_optional(&p).unwrap(), None);
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(read_optional(&p).unwrap().unwrap(), b"two");
        // Only the data file remains: the temporary was renamed away.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn lock_is_exclusive_between_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let g = lock_exclusive(&p).unwrap();
        // A second open file description cannot take the lock while g lives.
        let f = File::open(&p).unwrap();
        let r = Flock::lock(f, FlockArg::LockExclusiveNonblock);
        assert!(r.is_err());
        drop(g);
        let f = File::open(&p).unwrap();
        assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok());
    }

    #[test]
    fn file_in_place_of_dir_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("notadir");
        std::fs::write(&blocker, b"x").unwrap();
        let e = ensure_dir(&blocker.join("sub")).unwrap_err();
        assert_eq!(e.code(), 5);
        let e = write_atomic(&blocker.join("state.json"), b"x").unwrap_err();
        assert_eq!(e.code(), 5);
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
