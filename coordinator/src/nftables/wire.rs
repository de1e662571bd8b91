//! Byte layout of nf_tables netlink messages: building requests and walking
//! replies. Pure data, no sockets, so it is unit-tested without root.
//!
//! Layout facts (linux/netlink.h, linux/netfilter/nfnetlink.h): every message
//! is a 16-byte `nlmsghdr` in host byte order, then a 4-byte `nfgenmsg`
//! (family, version, resource id in network order), then attributes. nf_tables
//! attributes carrying integers are big-endian; register *contents* (marks,
//! ct state bits) are host-endian because the kernel copies them as-is.

/// nfnetlink subsystem id of nf_tables.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
/// On an NLMSG_ERROR: the echoed request was cut to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// On an NLMSG_ERROR: extended-ack attributes follow the echoed request.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// Extended-ack attribute holding a human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_INET: u8 = 1;

const NLMSG_HDRLEN: usize = 16;
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

/// One request: header fields plus the attributes after `nfgenmsg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub msg_type: u16,
    pub flags: u16,
    pub family: u8,
    /// `nfgenmsg.res_id`: the subsystem for batch markers, 0 otherwise.
    pub res_id: u16,
    pub attrs: Attrs,
}

impl Request {
    pub fn nft(msg: NftMsg, flags: u16, attrs: Attrs) -> Self {
        Request {
            msg_type: msg.msg_type(),
            flags: NLM_F_REQUEST | flags,
            family: NFPROTO_INET,
            res_id: 0,
            attrs,
        }
    }

    fn batch_marker(msg_type: u16) -> Self {
        Request {
            msg_type,
            flags: NLM_F_REQUEST,
            family: NFPROTO_UNSPEC,
            res_id: NFNL_SUBSYS_NFTABLES,
            attrs: Attrs::new(),
        }
    }

    /// Append the encoded message to `out`.
    pub fn encode(&self, seq: u32, out: &mut Vec<u8>) {
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + self.attrs.as_bytes().len();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&self.msg_type.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        out.push(self.family);
        out.push(0); // NFNETLINK_V0
        out.extend_from_slice(&self.res_id.to_be_bytes());
        out.extend_from_slice(self.attrs.as_bytes());
    }
}

/// Encode `msgs` as one transaction: BATCH_BEGIN, messages, BATCH_END. The
/// messages get sequence numbers `first_seq + 1 ..`; the returned vector
/// lists them in order so ACKs can be matched back.
pub fn encode_batch(msgs: &[Request], first_seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::new();
    let mut seqs = Vec::with_capacity(msgs.len());
    Request::batch_marker(NFNL_MSG_BATCH_BEGIN).encode(first_seq, &mut out);
    let mut seq = first_seq;
    for m in msgs {
        seq = seq.wrapping_add(1);
        m.encode(seq, &mut out);
        seqs.push(seq);
    }
    Request::batch_marker(NFNL_MSG_BATCH_END).encode(seq.wrapping_add(1), &mut out);
    (out, seqs)
}

/// One message read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// NLMSG_ERROR: `errno` 0 is an ACK; otherwise a negative errno, with the
    /// kernel's extended-ack text when it sent one.
    Ack {
        seq: u32,
        errno: i32,
        msg: Option<String>,
    },
    Done {
        seq: u32,
    },
    /// An nf_tables object; `attrs` follow the nfgenmsg header.
    Object {
        seq: u32,
        msg_type: u16,
        attrs: &'a [u8],
    },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Split a datagram into messages. `None` on any malformed length.
pub fn parse_replies(buf: &[u8]) -> Option<Vec<Reply<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let len = u32_at(buf, at)? as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return None;
        }
        let msg_type = u16_at(buf, at + 4)?;
        let flags = u16_at(buf, at + 6)?;
        let seq = u32_at(buf, at + 8)?;
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        out.push(match msg_type {
            NLMSG_ERROR => parse_error(seq, flags, body)?,
            NLMSG_DONE => Reply::Done { seq },
            _ => Reply::Object {
                seq,
                msg_type,
                attrs: body.get(NFGENMSG_LEN..)?,
            },
        });
        at += align4(len);
    }
    Some(out)
}

fn parse_error(seq: u32, flags: u16, body: &[u8]) -> Option<Reply<'_>> {
    let errno = i32::from_ne_bytes(body.get(0..4)?.try_into().ok()?);
    // The echoed request follows: only its header when capped.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        (u32_at(body, 4)? as usize).max(NLMSG_HDRLEN)
    };
    let mut msg = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        if let Some(tlvs) = body.get(4 + align4(echoed)..) {
            msg = attr_iter(tlvs)
                .find(|(k, _)| *k == NLMSGERR_ATTR_MSG)
                .map(|(_, v)| c_string(v));
        }
    }
    Some(Reply::Ack { seq, errno, msg })
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
    fn batch_is_framed_by_markers() {
        let msgs = [
            Request::nft(NftMsg::NewTable, NLM_F_ACK, Attrs::new().string(1, "t")),
            Request::nft(NftMsg::DelTable, NLM_F_ACK, Attrs::new().string(1, "t")),
        ];
        let (buf, seqs) = encode_batch(&msgs, 100);
        assert_eq!(seqs, vec![101, 102]);
        let parsed = parse_replies(&buf).unwrap();
        let types: Vec<u16> = parsed
            .iter()
            .map(|r| match r {
                Reply::Object { msg_type, .. } => *msg_type,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            types,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                NftMsg::NewTable.msg_type(),
                NftMsg::DelTable.msg_type(),
                NFNL_MSG_BATCH_END
            ]
        );
        // Batch markers name the subsystem in network byte order.
        assert_eq!(&buf[18..20], &NFNL_SUBSYS_NFTABLES.to_be_bytes());
        assert_eq!(buf[16], NFPROTO_UNSPEC);
        assert_eq!(buf[20 + 16], NFPROTO_INET);
    }

    #[test]
    fn error_replies_carry_errno_and_text() {
        let mut b = Vec::new();
        let tlv = Attrs::new().string(NLMSGERR_ATTR_MSG, "no such table");
        let len = 16 + 4 + 16 + tlv.as_bytes().len();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(-2i32).to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]);
        b.extend_from_slice(tlv.as_bytes());
        assert_eq!(
            parse_replies(&b).unwrap(),
            vec![Reply::Ack {
                seq: 7,
                errno: -2,
                msg: Some("no such table".into())
            }]
        );
    }

    #[test]
    fn malformed_input_is_rejected_not_panicking() {
        assert!(parse_replies(&[1, 2, 3]).is_none());
        let mut b = vec![0u8; 16];
        b[0..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(parse_replies(&b).is_none());
        assert_eq!(attr_iter(&[200, 0, 1, 0]).count(), 0);
        assert_eq!(be32(&[1]), None);
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(buf in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_replies(&buf);
            let _ = attr_iter(&buf).count();
        }
    }
}
