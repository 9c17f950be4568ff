//! Frames: the length- and crc-checked envelope of every native message, and the loops
//! that read and write them.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Bytes of a frame header: body length and body crc32, both big-endian u32.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Bytes a frame body grows by per read (a body is never allocated whole up front).
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced body is longer than `max-frame-bytes`.
    #[error("frame of {len_bytes} bytes > max-frame-bytes {max_frame_bytes}")]
    Oversize {
        /// Announced length.
        len_bytes: usize,
        /// The limit.
        max_frame_bytes: usize,
    },
    /// The body does not match its checksum.
    #[error("frame crc mismatch: header {expected:#010x}, body {actual:#010x}")]
    BadCrc {
        /// From the header.
        expected: u32,
        /// Of the body.
        actual: u32,
    },
    /// The body is not a message of the expected kind.
    #[error("malformed frame body: {0}")]
    Malformed(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Appends the frame of message `msg` answering or asking as `id` to `out`.
pub fn encode_frame<T: Serialize>(id: u64, msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let body = rmp_serde::to_vec_named(&(id, msg)).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = u32::try_from(body.len())
        .map_err(|_| FrameError::Oversize { len_bytes: body.len(), max_frame_bytes: u32::MAX as usize })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Splits a complete frame off the front of `buf`: its body and the bytes it used; `None`
/// while the frame is incomplete. Checks the length before the body is needed.
pub fn split_frame(buf: &[u8], max_frame_bytes: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else { return Ok(None) };
    let (len, expected) = parse_header(header, max_frame_bytes)?;
    let Some(body) = buf.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len) else { return Ok(None) };
    check_crc(body, expected)?;
    Ok(Some((body, FRAME_HEADER_BYTES + len)))
}

/// The body length and crc of a frame header, the length checked against the limit.
fn parse_header(header: &[u8], max_frame_bytes: usize) -> Result<(usize, u32), FrameError> {
    let word = |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let len = word(0) as usize;
    if len > max_frame_bytes {
        return Err(FrameError::Oversize { len_bytes: len, max_frame_bytes });
    }
    Ok((len, word(4)))
}

fn check_crc(body: &[u8], expected: u32) -> Result<(), FrameError> {
    let actual = crc32fast::hash(body);
    if actual != expected {
        return Err(FrameError::BadCrc { expected, actual });
    }
    Ok(())
}

/// Decodes a frame body: the id and the message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<(u64, T), FrameError> {
    rmp_serde::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads the header of the next frame; `None` at a clean end of stream.
pub(super) async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<(usize, u32)>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    parse_header(&header, max_frame_bytes).map(Some)
}

/// Reads a body of `len` bytes as they arrive, growing the buffer a chunk at a time, and
/// checks it against `crc`.
pub(super) async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize, crc: u32) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK_BYTES);
        body.reserve(want);
        let n = (&mut *r).take(want as u64).read_buf(&mut body).await?;
        if n == 0 {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    check_crc(&body, crc)?;
    Ok(body)
}

/// Reads one frame body; `None` at a clean end of stream.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    match read_header(r, max_frame_bytes).await? {
        Some((len, crc)) => read_body(r, len, crc).await.map(Some),
        None => Ok(None),
    }
}

/// Writes queued frames, flushing when the queue runs dry. Ends when the queue closes or a
/// write fails.
///
/// Before it flushes, the writer lets the runtime run once more: answers completed by the
/// same event (a Raft round acknowledges many writes at once) are queued by tasks woken
/// together, and one send then carries all of them instead of one send, one loopback
/// delivery and one wake-up of the reader each.
pub(super) async fn write_frames<W: AsyncWrite + Unpin>(w: W, mut rx: mpsc::Receiver<Vec<u8>>) -> std::io::Result<()> {
    let mut w = BufWriter::new(w);
    while let Some(frame) = rx.recv().await {
        w.write_all(&frame).await?;
        tokio::task::yield_now().await;
        while let Ok(more) = rx.try_recv() {
            w.write_all(&more).await?;
        }
        w.flush().await?;
    }
    let _ = w.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Request, Route};

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let request = Request::Put {
            route: Route {
                shard: 3,
                epoch: presage_shardmgr::Epoch { version: 2, conf_ver: 1 },
                priority: crate::proto::Priority::Bulk,
                replica_read: false,
            },
            key: b"k".to_vec(),
            value: vec![0xff; 300],
            id: Some(crate::proto::RequestId { client: u64::MAX, slot: 7, seq: 1 << 40 }),
        };
        let mut buf = Vec::new();
        encode_frame(7, &request, &mut buf).expect("encodes");
        let whole = buf.len();
        for cut in 0..whole {
            assert!(split_frame(&buf[..cut], 1 << 20).expect("no error").is_none(), "cut {cut}");
        }
        let (body, used) = split_frame(&buf, 1 << 20).expect("ok").expect("complete");
        assert_eq!(used, whole);
        assert_eq!(decode_body::<Request>(body).expect("decodes"), (7, request));
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let mut buf = Vec::new();
        encode_frame(1, &Request::Hello, &mut buf).expect("encodes");
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        assert!(matches!(split_frame(&buf, 1 << 20), Err(FrameError::BadCrc { .. })));
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(matches!(split_frame(&huge, 1 << 20), Err(FrameError::Oversize { .. })));
        assert!(matches!(decode_body::<Request>(&[0xc1]), Err(FrameError::Malformed(_))));
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;
    use crate::proto::{PfaQuery, ProtoError, Request, Response};

    /// Every kind of answer and question survives the wire, errors with a message included.
    #[test]
    fn errors_and_pfa_queries_round_trip() {
        let answers = [
            Response::Error(ProtoError::Invalid("node 999 is not in the cluster".into())),
            Response::Error(ProtoError::Retry("later".into())),
            Response::Error(ProtoError::Internal("x".into())),
            Response::Pfa { json: "{}".into() },
        ];
        for answer in answers {
            let mut buf = Vec::new();
            encode_frame(3, &answer, &mut buf).unwrap_or_else(|e| panic!("{answer:?}: {e}"));
            let (body, _) = split_frame(&buf, 1 << 20).expect("ok").expect("complete");
            assert_eq!(decode_body::<Response>(body).expect("decodes"), (3, answer));
        }
        let mut counters = std::collections::BTreeMap::new();
        counters.insert("smart_5_raw".to_string(), 1.0);
        for query in [
            PfaQuery::Risk,
            PfaQuery::Warnings { after_seq: 1, limit: 2 },
            PfaQuery::PushCounters { node: 999, counters },
        ] {
            let request = Request::Pfa { query };
            let mut buf = Vec::new();
            encode_frame(4, &request, &mut buf).unwrap_or_else(|e| panic!("{request:?}: {e}"));
            let (body, _) = split_frame(&buf, 1 << 20).expect("ok").expect("complete");
            assert_eq!(decode_body::<Request>(body).expect("decodes"), (4, request));
        }
    }

    /// Records each write the writer makes, whole.
    struct Recording(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Recording {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.lock().expect("not poisoned").push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn answers_completed_together_leave_in_one_write() {
        let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel(8);
        let writer = tokio::spawn(write_frames(Recording(std::sync::Arc::clone(&writes)), rx));
        tx.send(vec![1u8; 10]).await.expect("queued");
        // A second answer, from a task woken by the same event as the first: it runs after
        // the writer took the first frame, before the writer flushes.
        let tx2 = tx.clone();
        tokio::spawn(async move { tx2.send(vec![2u8; 10]).await.expect("queued") });
        drop(tx);
        writer.await.expect("writer task").expect("writes");
        let mut both = vec![1u8; 10];
        both.extend_from_slice(&[2u8; 10]);
        assert_eq!(*writes.lock().expect("not poisoned"), vec![both], "one write for both answers");
    }
}
