//! A read-only memory mapping of a whole file.
//!
//! The snapshot is mapped rather than read so that a lookup touches the
//! pages it needs from the page cache instead of copying the whole file into
//! fresh memory (with 4,000 records, reading cost ~0.3 ms of page faults and
//! copying, more than the rest of an ADD).

use std::os::fd::AsRawFd;

use cni::fsutil::{self, Dir};
use cni::Result;

/// Safety of the mapping: the file store never changes `state.bin` in place,
/// it replaces it by rename, so the mapped inode keeps its contents and size
/// for as long as the mapping lives. Only someone truncating the file by
/// hand meanwhile could make an access fault (SIGBUS: the call dies and
/// changes nothing, like a kill).
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// The mapped contents of `name` in `dir` (a regular file, opened
    /// without following links), or `None` when it does not exist.
    pub fn open(dir: &Dir, name: &str) -> Result<Option<Mapped>> {
        let path = dir.join(name);
        let Some(file) = dir.open_read(name)? else {
            return Ok(None);
        };
        let len = file
            .metadata()
            .map_err(|e| fsutil::io_error("cannot stat", &path, &e))?
            .len();
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len == 0 {
            return Ok(Some(Mapped::default()));
        }
        // SAFETY: a fresh read-only private mapping of an open file; the
        // result is checked before use (see the type's doc for why the
        // contents stay valid).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            return Err(fsutil::io_error("cannot map", &path, &e));
        }
        Ok(Some(Mapped { ptr, len }))
    }
}

/// Nothing mapped: the empty file.
impl Default for Mapped {
    fn default() -> Mapped {
        Mapped {
            ptr: std::ptr::null_mut(),
            len: 0,
        }
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping exactly what `open` mapped, once.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_contents_and_tells_missing_and_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap().unwrap();
        let p = dir.join("f");
        assert!(Mapped::open(&dir, "f").unwrap().is_none());
        std::fs::write(&p, b"").unwrap();
        assert_eq!(Mapped::open(&dir, "f").unwrap().unwrap().as_ref(), b"");
        std::fs::write(&p, b"hello").unwrap();
        let m = Mapped::open(&dir, "f").unwrap().unwrap();
        // Replacing the file by rename leaves the mapping as it was.
        std::fs::write(dir.join("g"), b"other").unwrap();
        std::fs::rename(dir.join("g"), &p).unwrap();
        assert_eq!(m.as_ref(), b"hello");
    }
}
