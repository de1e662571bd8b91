//! Fixed MAC addresses derived from the pod's IP (placeholder; replaced by the detect branch).

/// Two hex bytes separated by ':', unicast.
pub fn parse_prefix(s: &str) -> cni::Result<[u8; 2]> {
    let bad = || {
        cni::Error::config(
            "podMACPrefix",
            format!("{s:?} is not two unicast hex bytes like \"0a:1b\""),
        )
    };
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    if a.len() != 2 || b.len() != 2 {
        return Err(bad());
    }
    let a = u8::from_str_radix(a, 16).map_err(|_| bad())?;
    let b = u8::from_str_radix(b, 16).map_err(|_| bad())?;
    if a & 1 == 1 {
        return Err(bad());
    }
    Ok([a, b])
}
