//! Deterministic names and random MACs.

use cni::netlink::Mac;

/// The pod end of the underlay veth pair.
pub const POD_VETH: &str = "veth0";

/// Host end of the underlay veth: `veth` + 11 hex chars of a hash of the
/// container ID, so DEL finds it without any state.
pub fn host_veth_name(container_id: &str) -> String {
    format!(
        "veth{}",
        &format!("{:016x}", fnv1a64(container_id.as_bytes()))[..11]
    )
}

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> Mac {
    let mut b = [0u8; 6];
    // getrandom(2) never blocks once the pool is initialised (always true
    // long after boot); fall back to time and pid bits rather than fail.
    // SAFETY: the buffer is valid for writes of its length, which is what getrandom is told.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32);
        b.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    b[0] = (b[0] & 0xfe) | 0x02;
    b
}

pub fn format_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_and_short() {
        let a = host_veth_name("0123456789abcdef");
        assert_eq!(a, host_veth_name("0123456789abcdef"));
        assert_ne!(a, host_veth_name("0123456789abcdee"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
    }

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..100 {
            let m = random_mac();
            assert_eq!(m[0] & 0x03, 0x02);
        }
        assert_eq!(format_mac(&[0x0a, 0, 0xff, 1, 2, 3]), "0a:00:ff:01:02:03");
    }
}
