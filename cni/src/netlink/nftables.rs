//! The nf_tables family (NETLINK_NETFILTER, subsystem nf_tables) behind the
//! door: its message type, an attribute builder and walker, and the typed
//! requests (atomic batch, get, dump) the coordinator's reply-mark table uses.
//!
//! netlink-packet-netfilter 0.4 has table, chain and rule messages, but no
//! `ct` expression (two of the ten expressions our rules are made of), so the
//! messages are built here from the uapi layout: a 4-byte `nfgenmsg` (family,
//! version, resource id in network order), then attributes. nf_tables
//! attributes carrying integers are big-endian; register *contents* (marks, ct
//! state bits) are host-endian because the kernel copies them as-is.

use std::convert::Infallible;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::door::{Door, Protocol, Refusal};
use super::{NlError, NlResult};
use crate::netns::NetNs;

/// nfnetlink subsystem id of nf_tables.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

pub use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_INET: u8 = 1;

const NFGENMSG_LEN: usize = 4;

/// nf_tables message types (enum nf_tables_msg_types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum NftMsg {
    NewTable = 0,
    GetTable = 1,
    DelTable = 2,
    NewChain = 3,
    GetChain = 4,
    NewRule = 6,
    GetRule = 7,
}

impl NftMsg {
    pub fn msg_type(self) -> u16 {
        (NFNL_SUBSYS_NFTABLES << 8) | self as u16
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Attributes of one message (or of one nest), appended in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    pub fn new() -> Self {
        Attrs(Vec::new())
    }

    pub fn bytes(self, kind: u16, payload: &[u8]) -> Self {
        self.push(kind, payload)
    }

    /// A NUL-terminated string, as nla_strcmp/nla_strscpy expect.
    pub fn string(self, kind: u16, s: &str) -> Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.push(kind, &v)
    }

    /// A big-endian u32 (NLA_BE32 / ntohl in the kernel).
    pub fn be32(self, kind: u16, v: u32) -> Self {
        self.push(kind, &v.to_be_bytes())
    }

    pub fn nested(self, kind: u16, inner: Attrs) -> Self {
        self.push(kind | NLA_F_NESTED, &inner.0)
    }

    fn push(self, kind: u16, payload: &[u8]) -> Self {
        let mut out = self.0;
        // Attribute length counts header + payload, without trailing padding.
        let len = (4 + payload.len()) as u16;
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(out.len()), 0);
        Attrs(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One nfnetlink message: its type, the `nfgenmsg` fields and the attributes
/// after it. Requests are built with [`NfMessage::nft`]; replies (tables,
/// chains, rules) come back the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfMessage {
    pub msg_type: u16,
    pub family: u8,
    /// `nfgenmsg.res_id`: the subsystem for batch markers, 0 otherwise.
    pub res_id: u16,
    pub attrs: Attrs,
}

impl NfMessage {
    /// An nf_tables message of family inet.
    pub fn nft(msg: NftMsg, attrs: Attrs) -> Self {
        NfMessage {
            msg_type: msg.msg_type(),
            family: NFPROTO_INET,
            res_id: 0,
            attrs,
        }
    }

    fn batch_marker(msg_type: u16) -> Self {
        NfMessage {
            msg_type,
            family: NFPROTO_UNSPEC,
            res_id: NFNL_SUBSYS_NFTABLES,
            attrs: Attrs::new(),
        }
    }
}

impl NetlinkSerializable for NfMessage {
    fn message_type(&self) -> u16 {
        self.msg_type
    }

    fn buffer_len(&self) -> usize {
        NFGENMSG_LEN + self.attrs.as_bytes().len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.family;
        buffer[1] = 0; // NFNETLINK_V0
        buffer[2..4].copy_from_slice(&self.res_id.to_be_bytes());
        buffer[NFGENMSG_LEN..].copy_from_slice(self.attrs.as_bytes());
    }
}

impl NetlinkDeserializable for NfMessage {
    type Error = Infallible;

    /// Never fails: a reply too short for its `nfgenmsg` has no attributes,
    /// and the callers find nothing in it.
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Infallible> {
        let res_id = payload
            .get(2..4)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .unwrap_or(0);
        Ok(NfMessage {
            msg_type: header.message_type,
            family: payload.first().copied().unwrap_or(NFPROTO_UNSPEC),
            res_id,
            attrs: Attrs(payload.get(NFGENMSG_LEN..).unwrap_or(&[]).to_vec()),
        })
    }
}

/// NETLINK_NETFILTER, spoken with [`NfMessage`].
pub struct Netfilter;

impl Protocol for Netfilter {
    const PROTOCOL: isize = NETLINK_NETFILTER;
    type Message = NfMessage;

    fn tune(sock: &mut Socket) -> NlResult<()> {
        // A refused change comes back whole, not capped to its header: two
        // messages of a batch can share a header, and the echo is how a
        // refusal names the one that failed.
        sock.set_cap_ack(false)
            .map_err(|e| NlError::Io(format!("NETLINK_CAP_ACK: {e}")))
    }
}

/// An nf_tables socket bound to one network namespace.
pub struct Nftables {
    door: Door<Netfilter>,
}

impl Nftables {
    /// Open a socket inside `ns`.
    pub fn open_in(ns: &NetNs) -> NlResult<Nftables> {
        Ok(Nftables {
            door: Door::open_in(ns)?,
        })
    }

    /// Apply `msgs` (each with its extra flags and a name for errors) as one
    /// atomic transaction, sent in one datagram between BATCH_BEGIN and
    /// BATCH_END. Only the last change asks for an ACK: `nfnetlink_rcv_batch`
    /// holds every answer until the whole batch is processed and committed
    /// (or rolled back), then sends them in message order, so the first
    /// answer is the refusal of the first failing message, or that one ACK.
    /// (A failure before the first message or of the commit itself is
    /// answered at once, naming the batch or its first change.) The
    /// refusal's text is prefixed with the name of its message.
    pub fn batch(&self, msgs: &[(NfMessage, u16, String)]) -> NlResult<()> {
        let marker = |t| (NfMessage::batch_marker(t), NLM_F_REQUEST);
        let last = msgs.len().saturating_sub(1);
        let mut framed = Vec::with_capacity(msgs.len() + 2);
        framed.push(marker(NFNL_MSG_BATCH_BEGIN));
        framed.extend(msgs.iter().enumerate().map(|(i, (m, flags, _))| {
            let ack = if i == last { NLM_F_ACK } else { 0 };
            (m.clone(), NLM_F_REQUEST | ack | flags)
        }));
        framed.push(marker(NFNL_MSG_BATCH_END));
        self.door.batch(&framed).map_err(|Refusal { at, error }| {
            let what = match at {
                Some(i) if (1..=msgs.len()).contains(&i) => msgs[i - 1].2.as_str(),
                Some(_) => "nftables batch",
                None => return error,
            };
            match error {
                NlError::Kernel { errno, msg } => NlError::Kernel {
                    errno,
                    msg: format!("{what}: {msg}"),
                },
                other => other,
            }
        })
    }

    /// A single object (a table, a chain), or NotFound.
    pub fn get(&self, msg: NfMessage) -> NlResult<NfMessage> {
        self.door.get(msg)
    }

    /// Every object a filtered dump returns.
    pub fn dump(&self, msg: NfMessage) -> NlResult<Vec<NfMessage>> {
        self.door.dump(msg)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Walk a flat attribute list: `(type without flags, payload)`. Stops at the
/// first malformed attribute.
pub fn attr_iter(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = u16_at(buf, at)? as usize;
        let kind = u16_at(buf, at + 2)? & NLA_TYPE_MASK;
        if len < 4 || at + len > buf.len() {
            return None;
        }
        let payload = &buf[at + 4..at + len];
        at += align4(len);
        Some((kind, payload))
    })
}

pub fn find_attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attr_iter(buf).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

pub fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

pub fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(0..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};

    #[test]
    fn attributes_are_padded_and_nested() {
        let a = Attrs::new().string(1, "ab").be32(2, 0x0102_0304);
        // "ab\0" -> len 7, padded to 8; u32 -> len 8.
        assert_eq!(a.as_bytes().len(), 16);
        assert_eq!(&a.as_bytes()[0..2], &7u16.to_ne_bytes());
        assert_eq!(&a.as_bytes()[12..16], &[1, 2, 3, 4]);
        let n = Attrs::new().nested(4, a.clone());
        assert_eq!(u16_at(n.as_bytes(), 2), Some(4 | NLA_F_NESTED));
        let inner: Vec<_> = attr_iter(find_attr(n.as_bytes(), 4).unwrap()).collect();
        assert_eq!(inner.len(), 2);
        assert_eq!(c_string(inner[0].1), "ab");
        assert_eq!(be32(inner[1].1), Some(0x0102_0304));
    }

    #[test]
    fn messages_round_trip_through_the_netlink_framing() {
        let msg = NfMessage::nft(NftMsg::NewTable, Attrs::new().string(1, "t"));
        let mut nl = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(msg.clone()),
        );
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        assert_eq!(&buf[4..6], &NftMsg::NewTable.msg_type().to_ne_bytes());
        assert_eq!(buf[16], NFPROTO_INET);
        let back = NetlinkMessage::<NfMessage>::deserialize(&buf).unwrap();
        assert_eq!(back.payload, NetlinkPayload::InnerMessage(msg));

        // Batch markers name the subsystem in network byte order.
        let marker = NfMessage::batch_marker(NFNL_MSG_BATCH_BEGIN);
        let mut b = vec![0; marker.buffer_len()];
        marker.serialize(&mut b);
        assert_eq!(b, [NFPROTO_UNSPEC, 0, 0, NFNL_SUBSYS_NFTABLES as u8]);
    }

    #[test]
    fn malformed_input_is_rejected_not_panicking() {
        let h = NetlinkHeader::default();
        assert_eq!(
            NfMessage::deserialize(&h, &[1]).unwrap().attrs,
            Attrs::new()
        );
        assert_eq!(attr_iter(&[200, 0, 1, 0]).count(), 0);
        assert_eq!(be32(&[1]), None);
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(buf in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = NetlinkMessage::<NfMessage>::deserialize(&buf);
            let _ = attr_iter(&buf).count();
        }
    }
}
