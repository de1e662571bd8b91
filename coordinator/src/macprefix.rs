//! `podMACPrefix`: a MAC derived from the pod's IP, so the same address always
//! comes with the same MAC and switches/ARP caches along the path stay valid
//! when a pod is re-created with its fixed IP.

use std::net::IpAddr;

use cni::Error;
use ipnet::IpNet;

const FIELD: &str = "podMACPrefix";

/// Parse `"xx:xx"` (two hex bytes). The first byte must be unicast (its
/// least significant bit clear).
pub fn parse_prefix(s: &str) -> cni::Result<[u8; 2]> {
    let bad = |why: &str| Error::config(FIELD, format!("{s:?}: {why}"));
    let mut parts = s.split(':');
    let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected two hex bytes like \"0a:1b\""));
    };
    let byte = |p: &str| {
        if p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()) {
            u8::from_str_radix(p, 16).ok()
        } else {
            None
        }
    };
    let (Some(a), Some(b)) = (byte(a), byte(b)) else {
        return Err(bad("expected two hex bytes like \"0a:1b\""));
    };
    if a & 1 != 0 {
        return Err(bad("the first byte must be unicast (lowest bit clear)"));
    }
    Ok([a, b])
}

/// Prefix + the 4 bytes of the first IPv4 address, else the last 4 bytes of
/// the first IPv6 address. `None` without addresses.
pub fn mac_for(prefix: [u8; 2], addrs: &[IpNet]) -> Option<[u8; 6]> {
    let tail: [u8; 4] = match addrs.iter().find(|n| n.addr().is_ipv4()) {
        Some(n) => match n.addr() {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(_) => return None,
        },
        None => match addrs.first()?.addr() {
            IpAddr::V6(a) => {
                let o = a.octets();
                [o[12], o[13], o[14], o[15]]
            }
            IpAddr::V4(_) => return None,
        },
    };
    Some([prefix[0], prefix[1], tail[0], tail[1], tail[2], tail[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn parses_unicast_prefixes() {
        assert_eq!(parse_prefix("0a:1b").unwrap(), [0x0a, 0x1b]);
        assert_eq!(parse_prefix("FE:ff").unwrap(), [0xfe, 0xff]);
    }

    #[test]
    fn refuses_bad_prefixes_with_code_7() {
        for s in [
            "", "0a", "0a:1b:2c", "0a-1b", "a:1b", "0g:00", "01:00", "ff:00", "0a:1b:", " 0a:1b",
            "+a:1b",
        ] {
            let e = parse_prefix(s).unwrap_err();
            assert_eq!(e.code(), 7, "{s}");
            assert!(e.to_string().contains("podMACPrefix"), "{e}");
        }
    }

    #[test]
    fn mac_from_first_ipv4_else_last_bytes_of_ipv6() {
        let p = [0x0a, 0x1b];
        assert_eq!(
            mac_for(p, &nets(&["fd00::1:2/64", "10.6.0.5/16", "10.7.0.9/16"])),
            Some([0x0a, 0x1b, 10, 6, 0, 5])
        );
        assert_eq!(
            mac_for(p, &nets(&["fd00::5/64", "fd00::1:2:3/64"])),
            Some([0x0a, 0x1b, 0, 0, 0, 5]),
            "leading zero bytes kept"
        );
        assert_eq!(
            mac_for(p, &nets(&["fd00::abcd:1234/64"])),
            Some([0x0a, 0x1b, 0xab, 0xcd, 0x12, 0x34])
        );
        assert_eq!(mac_for(p, &[]), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,12}") {
            let _ = parse_prefix(&s);
        }

        #[test]
        fn formatted_unicast_prefixes_round_trip(a in any::<u8>(), b in any::<u8>()) {
            let s = format!("{a:02x}:{b:02X}");
            match parse_prefix(&s) {
                Ok(p) => { prop_assert_eq!(p, [a, b]); prop_assert_eq!(a & 1, 0); }
                Err(e) => { prop_assert_eq!(a & 1, 1); prop_assert_eq!(e.code(), 7); }
            }
        }

        #[test]
        fn mac_keeps_prefix_and_ipv4(a in any::<u8>(), b in any::<u8>(), ip in any::<u32>(), ip6 in any::<u128>()) {
            let v4 = IpNet::from(IpAddr::V4(std::net::Ipv4Addr::from(ip)));
            let v6 = IpNet::from(IpAddr::V6(std::net::Ipv6Addr::from(ip6)));
            let m = mac_for([a, b], &[v6, v4]).unwrap();
            prop_assert_eq!(&m[..2], &[a, b]);
            prop_assert_eq!(&m[2..], &ip.to_be_bytes());
            let m6 = mac_for([a, b], &[v6]).unwrap();
            prop_assert_eq!(&m6[2..], &ip6.to_be_bytes()[12..]);
        }
    }
}
