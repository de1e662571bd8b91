//! The key layout under the configured prefix `<p>`:
//!
//! - `<p>/ip/<network>/<ip>` → the [`Record`] as JSON: the claim itself, one
//!   key per address, created only if it never existed;
//! - `<p>/att/<network>/<container>/<ifname>/<ip>` → "": what an attachment
//!   holds (ADD's idempotence, DEL, CHECK);
//! - `<p>/sticky/<network>/<namespace>/<pod>/<ifname>/<ip>` → "": what a
//!   sticky identity holds or has parked;
//! - `<p>/node/<node>/<network>/<ip>` → "": the records of a node (reclaim);
//! - `<p>/cursor/<network>/<pool>` → the last address handed out (a hint).
//!
//! The index keys are derived from the record alone ([`Keys::index`]), and
//! every change writes the record and its index keys in one transaction, so
//! they never disagree. Free-text parts are percent-encoded so that a '/' in
//! a container ID cannot move a key into another's range.

use std::net::IpAddr;

use crate::allocator::{Attachment, Record, StickyId};

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unesc(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// Every claimed address of every network.
    pub fn ip_root(&self) -> String {
        format!("{}/ip/", self.prefix)
    }

    pub fn ip_prefix(&self, net: &str) -> String {
        format!("{}/ip/{net}/", self.prefix)
    }

    pub fn ip(&self, net: &str, ip: &IpAddr) -> String {
        format!("{}{ip}", self.ip_prefix(net))
    }

    pub fn attachment(&self, net: &str, a: &Attachment) -> String {
        format!(
            "{}/att/{net}/{}/{}/",
            self.prefix,
            esc(&a.container_id),
            esc(&a.ifname)
        )
    }

    pub fn sticky(&self, net: &str, s: &StickyId) -> String {
        format!(
            "{}/sticky/{net}/{}/{}/{}/",
            self.prefix,
            esc(&s.namespace),
            esc(&s.pod),
            esc(&s.ifname)
        )
    }

    pub fn node(&self, node: &str, net: &str) -> String {
        format!("{}/node/{}/{net}/", self.prefix, esc(node))
    }

    pub fn cursor_prefix(&self, net: &str) -> String {
        format!("{}/cursor/{net}/", self.prefix)
    }

    pub fn cursor(&self, net: &str, pool: &str) -> String {
        format!("{}{}", self.cursor_prefix(net), esc(pool))
    }

    /// The pool named by a key under [`Keys::cursor_prefix`].
    pub fn cursor_pool(&self, net: &str, key: &str) -> Option<String> {
        key.strip_prefix(&self.cursor_prefix(net)).map(unesc)
    }

    /// The network of a key under [`Keys::ip_root`].
    pub fn network_of(&self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(&self.ip_root())?;
        rest.split_once('/').map(|(n, _)| n.to_string())
    }

    /// The index keys a record has (see the module doc).
    pub fn index(&self, net: &str, r: &Record) -> Vec<String> {
        let mut keys = vec![format!("{}{}", self.node(&r.node, net), r.ip)];
        if let Some(a) = &r.owner {
            keys.push(format!("{}{}", self.attachment(net, a), r.ip));
        }
        if let Some(s) = &r.sticky {
            keys.push(format!("{}{}", self.sticky(net, s), r.ip));
        }
        keys
    }
}

/// The address at the end of an index or record key.
pub fn ip_of(key: &str) -> Option<IpAddr> {
    key.rsplit('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_escaping() {
        let k = Keys::new("/p");
        let ip: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(k.ip("n", &ip), "/p/ip/n/fd00::5");
        let a = Attachment {
            container_id: "a/b%c".into(),
            ifname: "net1".into(),
        };
        assert_eq!(k.attachment("n", &a), "/p/att/n/a%2Fb%25c/net1/");
        let r = Record {
            ip,
            pool: "v6".into(),
            node: "node 1".into(),
            owner: Some(a),
            sticky: Some(StickyId {
                namespace: "db".into(),
                pod: "m-0".into(),
                ifname: "net1".into(),
            }),
        };
        assert_eq!(
            k.index("n", &r),
            vec![
                "/p/node/node%201/n/fd00::5",
                "/p/att/n/a%2Fb%25c/net1/fd00::5",
                "/p/sticky/n/db/m-0/net1/fd00::5"
            ]
        );
        assert_eq!(ip_of("/p/att/n/a%2Fb%25c/net1/fd00::5"), Some(ip));
        assert_eq!(
            k.cursor_pool("n", &k.cursor("n", "a/b")),
            Some("a/b".into())
        );
        assert_eq!(k.network_of("/p/ip/net-1/10.0.0.1"), Some("net-1".into()));
    }
}
