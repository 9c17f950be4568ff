//! The peer port's handshake: the first bytes each way after TLS (or TCP on an insecure
//! cluster), before any Raft frame or control-plane request.
//!
//! ```text
//! hello (dialler -> listener), HELLO_BYTES = 28:
//! +------+---------+---------+------+-------------+----------------+-----------------+
//! | PRSG | version | channel | 0x00 | node_id u64 | cluster_id u64 | crc32 of the 24 |
//! +------+---------+---------+------+-------------+----------------+-----------------+
//!   4      u16       u8        u8     big-endian    0: not joined    bytes before
//!
//! answer (listener -> dialler), ANSWER_HEADER_BYTES = 24, then the reason:
//! +------+--------+------+-------------+----------------+----------------+--------+
//! | PRSG | status | 0x00 | node_id u64 | cluster_id u64 | reason_len u16 | reason |
//! +------+--------+------+-------------+----------------+----------------+--------+
//!          0: welcome, 1: refused                          <= MAX_REASON_BYTES, UTF-8
//! ```
//!
//! The listener decides with [`admit`]: on a secure cluster the hello's node id must be the
//! one the TLS client certificate names; the cluster id must be the listener's, or 0 from a
//! node that has not joined yet (which may then only say hello and join, never Raft). A
//! listener that has not joined a cluster itself admits nobody. A
//! refusal carries its reason, is logged on both sides, and closes the connection. Decoding
//! is total (fuzzed: `tools/fuzz`, target `peer_handshake`).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::identity::Identity;

/// The first bytes of every hello and answer.
pub const MAGIC: [u8; 4] = *b"PRSG";
/// The handshake's version.
pub const VERSION: u16 = 1;
/// Bytes of a hello.
pub const HELLO_BYTES: usize = 28;
/// Bytes of an answer before its reason.
pub const ANSWER_HEADER_BYTES: usize = 24;
/// Longest refusal reason, in bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// What a peer connection carries after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Raft frames, dialler to listener.
    Raft,
    /// Native-protocol requests and answers (the control plane).
    Rpc,
}

impl Channel {
    fn code(self) -> u8 {
        match self {
            Channel::Raft => 1,
            Channel::Rpc => 2,
        }
    }
}

/// The dialler's claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The channel asked for.
    pub channel: Channel,
    /// The dialling node.
    pub node_id: u64,
    /// Its cluster (0: it has not joined one).
    pub cluster_id: u64,
}

/// The listener's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The listening node.
    pub node_id: u64,
    /// Its cluster (0: not joined yet).
    pub cluster_id: u64,
    /// `None`: welcome; else why the connection is refused.
    pub refused: Option<String>,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes are not a handshake of ours.
    #[error("not a Presage peer handshake: {0}")]
    Malformed(String),
    /// The other side refused the connection.
    #[error("refused by node {node_id}: {reason}")]
    Refused {
        /// Who refused.
        node_id: u64,
        /// Why.
        reason: String,
    },
    /// The other side is not who it should be.
    #[error("{0}")]
    Mismatch(String),
    /// No handshake in time.
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

/// The bytes of `hello`.
pub fn encode_hello(hello: &Hello) -> [u8; HELLO_BYTES] {
    let mut b = [0u8; HELLO_BYTES];
    b[..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&VERSION.to_be_bytes());
    b[6] = hello.channel.code();
    b[8..16].copy_from_slice(&hello.node_id.to_be_bytes());
    b[16..24].copy_from_slice(&hello.cluster_id.to_be_bytes());
    let crc = crc32fast::hash(&b[..24]);
    b[24..].copy_from_slice(&crc.to_be_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

/// Reads a hello. Total: any bytes give a hello or an error.
pub fn decode_hello(b: &[u8]) -> Result<Hello, HandshakeError> {
    let bad = |m: &str| Err(HandshakeError::Malformed(m.into()));
    if b.len() != HELLO_BYTES {
        return bad("wrong length");
    }
    if b[..4] != MAGIC {
        return bad("bad magic");
    }
    if u32::from_be_bytes([b[24], b[25], b[26], b[27]]) != crc32fast::hash(&b[..24]) {
        return bad("bad checksum");
    }
    let version = u16::from_be_bytes([b[4], b[5]]);
    if version != VERSION {
        return Err(HandshakeError::Malformed(format!("version {version}, this node speaks {VERSION}")));
    }
    let channel = match b[6] {
        1 => Channel::Raft,
        2 => Channel::Rpc,
        c => return Err(HandshakeError::Malformed(format!("unknown channel {c}"))),
    };
    let node_id = u64_at(b, 8);
    if node_id == 0 {
        return bad("node id 0");
    }
    Ok(Hello { channel, node_id, cluster_id: u64_at(b, 16) })
}

/// The bytes of `answer` (a reason is cut to [`MAX_REASON_BYTES`] on a character boundary).
pub fn encode_answer(answer: &Answer) -> Vec<u8> {
    let mut reason = answer.refused.as_deref().unwrap_or("");
    while reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    let mut b = Vec::with_capacity(ANSWER_HEADER_BYTES + reason.len());
    b.extend_from_slice(&MAGIC);
    b.push(u8::from(answer.refused.is_some()));
    b.push(0);
    b.extend_from_slice(&answer.node_id.to_be_bytes());
    b.extend_from_slice(&answer.cluster_id.to_be_bytes());
    b.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    b.extend_from_slice(reason.as_bytes());
    b
}

/// Reads an answer's header: the answer without its reason, whether refused, and the
/// reason's length. Total.
pub fn decode_answer_header(b: &[u8]) -> Result<(Answer, bool, usize), HandshakeError> {
    if b.len() != ANSWER_HEADER_BYTES || b[..4] != MAGIC {
        return Err(HandshakeError::Malformed("bad answer".into()));
    }
    let refused = match b[4] {
        0 => false,
        1 => true,
        s => return Err(HandshakeError::Malformed(format!("unknown status {s}"))),
    };
    let reason_len = usize::from(u16::from_be_bytes([b[22], b[23]]));
    if reason_len > MAX_REASON_BYTES {
        return Err(HandshakeError::Malformed("reason too long".into()));
    }
    Ok((Answer { node_id: u64_at(b, 6), cluster_id: u64_at(b, 14), refused: None }, refused, reason_len))
}

/// The dialler's side: sends `hello`, reads the answer (within `timeout`). A refusal is an
/// error carrying its reason.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hello: &Hello,
    timeout: Duration,
) -> Result<Answer, HandshakeError> {
    let work = async {
        stream.write_all(&encode_hello(hello)).await?;
        stream.flush().await?;
        let mut header = [0u8; ANSWER_HEADER_BYTES];
        stream.read_exact(&mut header).await?;
        let (mut answer, refused, reason_len) = decode_answer_header(&header)?;
        let mut reason = vec![0u8; reason_len];
        stream.read_exact(&mut reason).await?;
        if refused {
            return Err(HandshakeError::Refused {
                node_id: answer.node_id,
                reason: String::from_utf8_lossy(&reason).into_owned(),
            });
        }
        answer.refused = None;
        Ok(answer)
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| HandshakeError::Timeout(timeout))?
}

/// The listener's side, first half: reads the hello (within `timeout`).
pub async fn read_hello<S: AsyncRead + Unpin>(stream: &mut S, timeout: Duration) -> Result<Hello, HandshakeError> {
    let mut b = [0u8; HELLO_BYTES];
    tokio::time::timeout(timeout, stream.read_exact(&mut b)).await.map_err(|_| HandshakeError::Timeout(timeout))??;
    decode_hello(&b)
}

/// The listener's side, second half: sends `answer`.
pub async fn write_answer<S: AsyncWrite + Unpin>(stream: &mut S, answer: &Answer) -> Result<(), HandshakeError> {
    stream.write_all(&encode_answer(answer)).await?;
    stream.flush().await?;
    Ok(())
}

/// Who a welcomed peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// A node of this cluster.
    Member(u64),
    /// A node that has not joined a cluster yet: it may only say hello and join.
    Joining(u64),
}

/// Decides whether to welcome `hello`: `cert` is the identity the TLS client certificate
/// proved (`None` on an insecure node), `cluster_id` the listener's (0: it has not joined
/// one yet). Returns who the peer is, or why it is refused.
pub fn admit(hello: &Hello, cert: Option<&Identity>, secure: bool, cluster_id: u64) -> Result<Admitted, String> {
    if secure {
        match cert {
            Some(Identity::Node(id)) if *id == hello.node_id => {}
            Some(Identity::Node(id)) => {
                return Err(format!("the certificate names node {id}, the handshake claims node {}", hello.node_id))
            }
            Some(other) => return Err(format!("the certificate names {other}, not a node")),
            None => return Err("no certificate".into()),
        }
    }
    match (hello.cluster_id, cluster_id) {
        // A node that has not joined cannot tell its cluster's members from strangers.
        (_, 0) => Err("this node has not joined a cluster yet".into()),
        (0, _) if hello.channel == Channel::Raft => {
            Err("Raft needs both nodes to belong to the cluster (join first)".into())
        }
        (0, _) => Ok(Admitted::Joining(hello.node_id)),
        (theirs, ours) if theirs == ours => Ok(Admitted::Member(hello.node_id)),
        (theirs, ours) => {
            Err(format!("node {} belongs to cluster {theirs:#x}, this is cluster {ours:#x}", hello.node_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_and_answers_round_trip_and_bad_bytes_are_errors() {
        let hello = Hello { channel: Channel::Rpc, node_id: 7, cluster_id: 0xfeed };
        let bytes = encode_hello(&hello);
        assert_eq!(decode_hello(&bytes).expect("decodes"), hello);
        for i in 0..HELLO_BYTES {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert!(decode_hello(&bad).is_err(), "flipped byte {i}");
        }
        assert!(decode_hello(&bytes[..10]).is_err());
        let answer = Answer { node_id: 2, cluster_id: 3, refused: Some("é".repeat(400)) };
        let b = encode_answer(&answer);
        let (head, refused, len) = decode_answer_header(&b[..ANSWER_HEADER_BYTES]).expect("header");
        assert!(refused && len <= MAX_REASON_BYTES && (head.node_id, head.cluster_id) == (2, 3));
        assert!(std::str::from_utf8(&b[ANSWER_HEADER_BYTES..]).is_ok(), "cut on a character boundary");
    }

    #[test]
    fn admission_follows_the_certificate_and_the_cluster() {
        let h = |channel, node_id, cluster_id| Hello { channel, node_id, cluster_id };
        let node = |id| Identity::Node(id);
        assert_eq!(admit(&h(Channel::Raft, 2, 9), Some(&node(2)), true, 9), Ok(Admitted::Member(2)));
        assert!(admit(&h(Channel::Raft, 2, 9), Some(&node(3)), true, 9).is_err(), "another node's certificate");
        assert!(admit(&h(Channel::Raft, 2, 9), Some(&Identity::User("app".into())), true, 9).is_err());
        assert!(admit(&h(Channel::Raft, 2, 9), None, true, 9).is_err());
        assert!(admit(&h(Channel::Raft, 2, 8), Some(&node(2)), true, 9).is_err(), "another cluster");
        assert!(admit(&h(Channel::Raft, 2, 0), Some(&node(2)), true, 9).is_err(), "no Raft before joining");
        assert_eq!(admit(&h(Channel::Rpc, 2, 0), Some(&node(2)), true, 9), Ok(Admitted::Joining(2)));
        assert!(admit(&h(Channel::Rpc, 2, 9), None, false, 0).is_err(), "a listener without a cluster admits nobody");
        assert_eq!(admit(&h(Channel::Rpc, 2, 0), None, false, 9), Ok(Admitted::Joining(2)));
        assert_eq!(admit(&h(Channel::Rpc, 2, 9), None, false, 9), Ok(Admitted::Member(2)));
        assert!(admit(&h(Channel::Rpc, 2, 8), None, false, 9).is_err(), "insecure still checks the cluster");
    }
}
