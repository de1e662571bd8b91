//! Kernel error codes to [`NlError`], and the kernel's own explanation string.

use super::NlError;

/// NLMSGERR_ATTR_MSG: the extended-ack attribute holding a text message.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGHDR_LEN: usize = 16;

/// Map a (positive) errno to the cases callers branch on.
pub(crate) fn from_errno(errno: i32, ext_msg: Option<String>) -> NlError {
    match errno {
        libc::EEXIST => NlError::Exists,
        libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL => NlError::NotFound,
        _ => {
            let base = std::io::Error::from_raw_os_error(errno).to_string();
            let msg = match ext_msg {
                Some(m) if !m.is_empty() => format!("{base}: {m}"),
                _ => base,
            };
            NlError::Kernel { errno, msg }
        }
    }
}

/// The errno of an error, when it came from the kernel.
pub(crate) fn errno_of(e: &NlError) -> Option<i32> {
    match e {
        NlError::Exists => Some(libc::EEXIST),
        NlError::Kernel { errno, .. } => Some(*errno),
        _ => None,
    }
}

/// Payload of an NLMSG_ERROR after its code: the echoed request (only its
/// header when `capped`), then extended-ack attributes. Returns the text one.
pub(crate) fn parse_ext_ack(payload: &[u8], capped: bool) -> Option<String> {
    let echoed = if capped {
        NLMSGHDR_LEN
    } else {
        let len = u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?) as usize;
        align4(len)
    };
    let mut rest = payload.get(echoed..)?;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let value = &rest[4..len];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        rest = rest.get(align4(len)..)?;
    }
    None
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert_eq!(from_errno(libc::EEXIST, None), NlError::Exists);
        for e in [libc::ENOENT, libc::ESRCH, libc::ENODEV, libc::EADDRNOTAVAIL] {
            assert_eq!(from_errno(e, None), NlError::NotFound, "errno {e}");
        }
        match from_errno(libc::EINVAL, Some("bad table".into())) {
            NlError::Kernel { errno, msg } => {
                assert_eq!(errno, libc::EINVAL);
                assert!(msg.contains("bad table"), "{msg}");
                assert!(msg.contains("Invalid argument"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        match from_errno(libc::EPERM, None) {
            NlError::Kernel { errno, .. } => assert_eq!(errno, libc::EPERM),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            errno_of(&from_errno(libc::ENETUNREACH, None)),
            Some(libc::ENETUNREACH)
        );
        assert_eq!(errno_of(&NlError::NotFound), None);
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        v.resize(align4(len), 0);
        v
    }

    #[test]
    fn ext_ack_message() {
        // Capped: a 16-byte header, then an offset attribute, then the text.
        let mut p = vec![0u8; 16];
        p.extend(attr(2, &7u32.to_ne_bytes()));
        p.extend(attr(1, b"FIB table does not exist\0"));
        assert_eq!(
            parse_ext_ack(&p, true).as_deref(),
            Some("FIB table does not exist")
        );
        // Uncapped: the echoed request says how long it is (20 bytes, padded to 20).
        let mut p = 20u32.to_ne_bytes().to_vec();
        p.resize(20, 0);
        p.extend(attr(1, b"nope\0"));
        assert_eq!(parse_ext_ack(&p, false).as_deref(), Some("nope"));
        // Garbage never panics.
        assert_eq!(parse_ext_ack(&[], false), None);
        assert_eq!(parse_ext_ack(&[0xff; 3], true), None);
        let mut p = vec![0u8; 16];
        p.extend_from_slice(&[200, 0, 1, 0, b'x']);
        assert_eq!(parse_ext_ack(&p, true), None);
    }
}
