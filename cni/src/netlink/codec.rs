//! How a request of the door becomes one datagram.
//!
//! netlink-proto writes each request it is handed with one `sendmsg` and
//! matches replies to it by sequence number; a request is usually one
//! message. An nf_tables transaction (BATCH_BEGIN, the changes, BATCH_END)
//! must also reach the kernel in one `sendmsg` (`nfnetlink_rcv_batch` only
//! sees the messages of one skb) and must be answered as one request. So a
//! batch travels through netlink-proto as a single [`Wire::Batch`] "message",
//! and [`DoorCodec`] writes its messages back to back, each with the
//! sequence number netlink-proto gave the request: every reply the kernel
//! sends about the batch, whichever message it names, belongs to it.

use std::fmt::Debug;
use std::io;

use bytes::BytesMut;
use netlink_packet_core::{
    Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_proto::{NetlinkCodec, NetlinkMessageCodec};

const HEADER_LEN: usize = 16;

/// The message type a batch carries inside netlink-proto. 0 is no message
/// type on the wire (control messages are 1-4, families start at 16), and it
/// never is: [`DoorCodec`] writes the batch's own messages instead.
const BATCH_TYPE: u16 = 0;

/// What the door hands netlink-proto: one message of the family, or a batch
/// of them (each with its flags) sent and answered as one request.
#[derive(Debug, Clone)]
pub(super) enum Wire<M> {
    One(M),
    Batch(Vec<(M, u16)>),
}

impl<M: NetlinkSerializable> NetlinkSerializable for Wire<M> {
    fn message_type(&self) -> u16 {
        match self {
            Wire::One(m) => m.message_type(),
            Wire::Batch(_) => BATCH_TYPE,
        }
    }

    fn buffer_len(&self) -> usize {
        match self {
            Wire::One(m) => m.buffer_len(),
            Wire::Batch(msgs) => msgs
                .iter()
                .map(|(m, _)| align4(HEADER_LEN + m.buffer_len()))
                .sum(),
        }
    }

    /// A batch is written as complete netlink messages, 4-byte aligned, with
    /// sequence number 0 (the codec stamps the request's).
    fn serialize(&self, buffer: &mut [u8]) {
        let msgs = match self {
            Wire::One(m) => return m.serialize(buffer),
            Wire::Batch(msgs) => msgs,
        };
        let mut at = 0;
        for (m, flags) in msgs {
            let len = HEADER_LEN + m.buffer_len();
            let mut header = NetlinkHeader::default();
            header.length = len as u32;
            header.message_type = m.message_type();
            header.flags = *flags;
            header.emit(&mut buffer[at..at + HEADER_LEN]);
            m.serialize(&mut buffer[at + HEADER_LEN..at + len]);
            at += align4(len);
        }
    }
}

impl<M: NetlinkDeserializable> NetlinkDeserializable for Wire<M> {
    type Error = M::Error;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        M::deserialize(header, payload).map(Wire::One)
    }
}

/// netlink-proto's own codec, except that a [`Wire::Batch`] is written as
/// its messages under the request's sequence number.
pub(super) struct DoorCodec;

impl NetlinkMessageCodec for DoorCodec {
    fn decode<T>(src: &mut BytesMut) -> io::Result<Option<NetlinkMessage<T>>>
    where
        T: NetlinkDeserializable + Debug,
    {
        NetlinkCodec::decode(src)
    }

    fn encode<T>(msg: NetlinkMessage<T>, buf: &mut BytesMut) -> io::Result<()>
    where
        T: NetlinkSerializable + Debug,
    {
        if msg.header.message_type != BATCH_TYPE {
            return NetlinkCodec::encode(msg, buf);
        }
        let NetlinkPayload::InnerMessage(batch) = &msg.payload else {
            return Err(io::Error::other("netlink: a batch without messages"));
        };
        let at = buf.len();
        buf.resize(at + batch.buffer_len(), 0);
        batch.serialize(&mut buf[at..]);
        stamp_sequence(&mut buf[at..], msg.header.sequence_number);
        Ok(())
    }
}

/// Write `seq` into the header of every message of `datagram`.
fn stamp_sequence(datagram: &mut [u8], seq: u32) {
    let mut at = 0;
    while let Some(len) = datagram.get(at..at + 4) {
        let len = u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len < HEADER_LEN || at + len > datagram.len() {
            return;
        }
        datagram[at + 8..at + 12].copy_from_slice(&seq.to_ne_bytes());
        at += align4(len);
    }
}

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkBuffer, NLM_F_ACK, NLM_F_REQUEST};

    /// A message of `n` bytes of payload, all `n`.
    #[derive(Debug, Clone, PartialEq)]
    struct Bytes(u8);

    impl NetlinkSerializable for Bytes {
        fn message_type(&self) -> u16 {
            100 + self.0 as u16
        }
        fn buffer_len(&self) -> usize {
            self.0 as usize
        }
        fn serialize(&self, buffer: &mut [u8]) {
            buffer.fill(self.0);
        }
    }

    fn encode(wire: Wire<Bytes>, seq: u32, flags: u16) -> BytesMut {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = flags;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(wire));
        msg.finalize();
        let mut buf = BytesMut::new();
        DoorCodec::encode(msg, &mut buf).unwrap();
        buf
    }

    #[test]
    fn a_batch_is_its_messages_back_to_back_under_one_sequence_number() {
        let batch = Wire::Batch(vec![
            (Bytes(4), NLM_F_REQUEST),
            (Bytes(5), NLM_F_REQUEST),
            (Bytes(8), NLM_F_REQUEST | NLM_F_ACK),
        ]);
        let buf = encode(batch, 77, NLM_F_REQUEST | NLM_F_ACK);
        // 20, 21 padded to 24, 24: no outer header.
        assert_eq!(buf.len(), 20 + 24 + 24);
        let mut at = 0;
        let mut seen = Vec::new();
        while at < buf.len() {
            let m = NetlinkBuffer::new_checked(&buf[at..]).unwrap();
            assert_eq!(m.sequence_number(), 77);
            let n = m.length() as usize - HEADER_LEN;
            assert!(m.payload()[..n].iter().all(|b| *b as usize == n));
            seen.push((m.message_type(), m.flags()));
            at += align4(m.length() as usize);
        }
        assert_eq!(
            seen,
            [
                (104, NLM_F_REQUEST),
                (105, NLM_F_REQUEST),
                (108, NLM_F_REQUEST | NLM_F_ACK)
            ]
        );
    }

    #[test]
    fn a_single_message_is_framed_as_netlink_proto_frames_it() {
        let buf = encode(Wire::One(Bytes(3)), 9, NLM_F_REQUEST);
        let m = NetlinkBuffer::new_checked(&buf[..]).unwrap();
        assert_eq!(
            (m.length(), m.message_type(), m.flags(), m.sequence_number()),
            (19, 103, NLM_F_REQUEST, 9)
        );
    }

    #[test]
    fn stamping_stops_at_a_bad_length() {
        let mut buf = vec![0u8; 40];
        buf[0] = 16;
        buf[16] = 3; // shorter than a header: not a message
        stamp_sequence(&mut buf, 5);
        assert_eq!(&buf[8..12], &5u32.to_ne_bytes());
        assert_eq!(&buf[24..28], &[0; 4]);
    }
}
