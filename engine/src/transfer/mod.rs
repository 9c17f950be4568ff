//! Range export/import: the storage half of Presage's compressed, checked shard copies.
//!
//! An export turns a key range, read at one snapshot, into a stream of self-describing
//! chunks; an import checks every chunk, stages it durably, and only after the whole stream
//! verified replaces the target range atomically ([`Engine::replace_range`]).
//!
//! # Stream
//!
//! `seq 0` is a *header* chunk (key space, range), `1..n` are *data* chunks (ascending pairs),
//! and the last is an *end* chunk with the sender's [`RangeChecksum`]. Every chunk is framed as
//!
//! ```text
//! magic "PSC1" | kind u8 | 0u8 x3 | stream_id u64 | seq u64 | raw_len u32 | payload_len u32 | crc32 u32 | payload
//! ```
//!
//! little-endian, where `payload` is the zstd-compressed body of `raw_len` bytes and `crc32`
//! (crc32fast) covers the 32 header bytes before it and the payload. A data body is a run of
//! `key_len u32 | key | value_len u32 | value`; a data chunk holds pairs until the next one
//! would take it past `max_chunk_bytes` (default 1 MiB), and at least one pair.
//!
//! # What the importer rejects, before touching anything
//!
//! corrupt bytes (magic, lengths, crc32, zstd), a duplicate, a gap or reordering (`seq`), a
//! chunk of another stream (`stream_id`), a stream for another range or key space (header),
//! keys outside the range or out of order, a checksum that disagrees (end), and - at
//! [`Importer::finish`] - a stream without its end (truncated).
//!
//! # Resuming
//!
//! Each accepted chunk is written to the `Meta` key space together with the import's progress
//! in one synced batch. After a crash or a broken connection, [`Importer::open`] reloads the
//! progress and [`Importer::resume_point`] tells the sender where to restart
//! ([`Exporter::resume`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::checksum::{ChecksumBuilder, RangeChecksum};
use crate::engine::{for_each_pair, Engine, Reader};
use crate::error::{EngineError, Result};
use crate::types::{
    check_key, Cf, KeyRange, KvPair, ScanLimit, ScanOrder, WriteBatch, WriteOptions, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};

mod export;
mod import;

pub use export::{ExportOptions, Exporter, ResumePoint};
pub use import::{abort_import, pending_imports, ImportOptions, ImportProgress, Importer};

const MAGIC: &[u8; 4] = b"PSC1";
/// Bytes of a chunk's frame header, before the payload.
pub const CHUNK_HEADER_BYTES: usize = 36;
/// zstd level used once data proves incompressible (zstd's "fast" negative levels).
const INCOMPRESSIBLE_ZSTD_LEVEL: i32 = -5;
/// A chunk compressing by less than this ratio counts as incompressible.
const MIN_USEFUL_COMPRESSION_RATIO: f64 = 1.1;

/// Default target size of a data chunk's uncompressed body.
pub const DEFAULT_MAX_CHUNK_BYTES: usize = 1024 * 1024;
/// Why an export stream or an import was refused.
///
/// Every variant except [`TransferError::Engine`] is raised *before* anything is staged or the
/// target range is touched: the import can resume from [`crate::transfer::Importer::resume_point`].
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The chunk's bytes are damaged: bad magic, bad length, crc32 mismatch, bad compression.
    #[error("corrupt chunk{}: {reason}", seq_suffix(*.seq))]
    Corrupt {
        /// Sequence number from the chunk header, when it could be read.
        seq: Option<u64>,
        /// What check failed.
        reason: String,
    },
    /// A chunk that was already applied arrived again.
    #[error("duplicate chunk: got seq {got}, expected {expected}")]
    Duplicate {
        /// The sequence number received.
        got: u64,
        /// The next sequence number the import needs.
        expected: u64,
    },
    /// A chunk arrived ahead of its turn (a gap or a reordering).
    #[error("chunk out of order: got seq {got}, expected {expected}")]
    OutOfOrder {
        /// The sequence number received.
        got: u64,
        /// The next sequence number the import needs.
        expected: u64,
    },
    /// A chunk belongs to another export stream.
    #[error("chunk belongs to stream {got:#x}, the import is reading stream {expected:#x}")]
    StreamMismatch {
        /// Stream id of the chunk.
        got: u64,
        /// Stream id the import started with.
        expected: u64,
    },
    /// The stream describes another column family or key range than the import's target.
    #[error("stream carries {got_cf:?} {got}, the import target is {expected_cf:?} {expected}")]
    WrongRange {
        /// Target column family.
        expected_cf: Cf,
        /// Target range.
        expected: KeyRange,
        /// Column family in the stream.
        got_cf: Cf,
        /// Range in the stream.
        got: KeyRange,
    },
    /// A pair in a data chunk lies outside the target range or out of key order.
    #[error("chunk {seq}: key {key:?} is outside {range} or not after the previous key")]
    KeyOutOfRange {
        /// Chunk sequence number.
        seq: u64,
        /// The key.
        key: Vec<u8>,
        /// The target range.
        range: KeyRange,
    },
    /// The chunk kind is not what the stream needs at this point.
    #[error("chunk {seq}: unexpected {got} chunk ({why})")]
    UnexpectedKind {
        /// Chunk sequence number.
        seq: u64,
        /// The kind that arrived.
        got: &'static str,
        /// What was expected instead.
        why: &'static str,
    },
    /// The stream ended before its end chunk.
    #[error("stream truncated: end chunk not received, next expected seq {next_seq}")]
    Truncated {
        /// The chunk the import is waiting for.
        next_seq: u64,
    },
    /// The totals in the end chunk disagree with what was received.
    #[error("checksum mismatch: sender has {expected}, received {got}")]
    ChecksumMismatch {
        /// What the sender computed.
        expected: RangeChecksum,
        /// What the importer computed.
        got: RangeChecksum,
    },
    /// A chunk exceeds a configured size limit.
    #[error("chunk of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge {
        /// Size of the chunk (or its decompressed payload).
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A persisted import for this id targets another range.
    #[error("import {import_id} already exists for another target; abort it first")]
    ImportConflict {
        /// The import id.
        import_id: u64,
    },
    /// The engine failed while staging or switching.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn seq_suffix(seq: Option<u64>) -> String {
    seq.map_or_else(String::new, |s| format!(" {s}"))
}

/// Largest body a chunk can need: the target size, or one pair of the largest key and value
/// the engine stores (a pair never splits across chunks), with its two length prefixes.
pub const MAX_CHUNK_BODY_BYTES: usize = DEFAULT_MAX_CHUNK_BYTES + MAX_KEY_BYTES + MAX_VALUE_BYTES + 8;

/// Largest frame carrying a body of at most `max_chunk_bytes`: zstd may expand incompressible
/// input slightly.
pub fn max_frame_bytes(max_chunk_bytes: usize) -> usize {
    zstd::zstd_safe::compress_bound(max_chunk_bytes).saturating_add(CHUNK_HEADER_BYTES)
}

/// What a chunk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// First chunk: key space and range.
    Header,
    /// Pairs.
    Data,
    /// Last chunk: the sender's checksum.
    End,
}

impl ChunkKind {
    fn code(self) -> u8 {
        match self {
            ChunkKind::Header => 0,
            ChunkKind::Data => 1,
            ChunkKind::End => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(ChunkKind::Header),
            1 => Some(ChunkKind::Data),
            2 => Some(ChunkKind::End),
            _ => None,
        }
    }

    /// Lower-case name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            ChunkKind::Header => "header",
            ChunkKind::Data => "data",
            ChunkKind::End => "end",
        }
    }
}

/// A decoded, crc-checked chunk (body still compressed).
#[derive(Debug, Clone)]
pub struct Chunk {
    /// What it carries.
    pub kind: ChunkKind,
    /// The export stream it belongs to.
    pub stream_id: u64,
    /// Position in the stream.
    pub seq: u64,
    /// Length of the decompressed body.
    pub raw_len: u32,
    /// The zstd-compressed body.
    pub payload: Bytes,
}

impl Chunk {
    /// A chunk of `kind` whose body is `raw`, compressed at `zstd_level`.
    pub fn new(kind: ChunkKind, stream_id: u64, seq: u64, raw: &[u8], zstd_level: i32) -> Result<Self> {
        let mut compressor = zstd::bulk::Compressor::new(zstd_level)
            .map_err(|e| EngineError::Io { context: "zstd compressor".into(), source: e })?;
        Self::compressed_with(&mut compressor, kind, stream_id, seq, raw)
    }

    fn compressed_with(
        compressor: &mut zstd::bulk::Compressor<'_>,
        kind: ChunkKind,
        stream_id: u64,
        seq: u64,
        raw: &[u8],
    ) -> Result<Self> {
        let raw_len =
            u32::try_from(raw.len()).map_err(|_| EngineError::Corrupt(format!("chunk body of {} bytes", raw.len())))?;
        let payload =
            compressor.compress(raw).map_err(|e| EngineError::Io { context: "zstd compression".into(), source: e })?;
        Ok(Chunk { kind, stream_id, seq, raw_len, payload: Bytes::from(payload) })
    }

    fn header_bytes(&self) -> Result<[u8; CHUNK_HEADER_BYTES - 4]> {
        let payload_len = u32::try_from(self.payload.len())
            .map_err(|_| EngineError::Corrupt(format!("chunk payload of {} bytes", self.payload.len())))?;
        let mut h = [0u8; CHUNK_HEADER_BYTES - 4];
        let mut w = &mut h[..];
        w.put_slice(MAGIC);
        w.put_u8(self.kind.code());
        w.put_slice(&[0, 0, 0]);
        w.put_u64_le(self.stream_id);
        w.put_u64_le(self.seq);
        w.put_u32_le(self.raw_len);
        w.put_u32_le(payload_len);
        Ok(h)
    }

    /// The chunk's wire form.
    pub fn encode(&self) -> Result<Bytes> {
        let head = self.header_bytes()?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(&self.payload);
        let mut out = BytesMut::with_capacity(CHUNK_HEADER_BYTES + self.payload.len());
        out.put_slice(&head);
        out.put_u32_le(crc.finalize());
        out.put_slice(&self.payload);
        Ok(out.freeze())
    }

    /// Parses and crc-checks a chunk's wire form. `max_chunk_bytes` bounds both the frame
    /// and the declared decompressed size.
    pub fn decode(frame: &[u8], max_chunk_bytes: usize) -> Result<Chunk, TransferError> {
        let corrupt = |seq: Option<u64>, reason: String| TransferError::Corrupt { seq, reason };
        let max_frame_bytes = max_frame_bytes(max_chunk_bytes);
        if frame.len() > max_frame_bytes {
            return Err(TransferError::TooLarge { len_bytes: frame.len(), max_bytes: max_frame_bytes });
        }
        if frame.len() < CHUNK_HEADER_BYTES {
            return Err(corrupt(None, format!("frame of {} bytes is shorter than its header", frame.len())));
        }
        let mut r = frame;
        let mut magic = [0u8; 4];
        r.copy_to_slice(&mut magic);
        if &magic != MAGIC {
            return Err(corrupt(None, format!("bad magic {magic:?}")));
        }
        let kind_code = r.get_u8();
        r.advance(3);
        let stream_id = r.get_u64_le();
        let seq = r.get_u64_le();
        let raw_len = r.get_u32_le();
        let payload_len = r.get_u32_le() as usize;
        let crc_stored = r.get_u32_le();
        if r.len() != payload_len {
            return Err(corrupt(Some(seq), format!("payload is {} bytes, header says {payload_len}", r.len())));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&frame[..CHUNK_HEADER_BYTES - 4]);
        crc.update(r);
        let crc_actual = crc.finalize();
        if crc_actual != crc_stored {
            return Err(corrupt(Some(seq), format!("crc32 {crc_actual:08x} != stored {crc_stored:08x}")));
        }
        let kind = ChunkKind::from_code(kind_code)
            .ok_or_else(|| corrupt(Some(seq), format!("unknown chunk kind {kind_code}")))?;
        if raw_len as usize > max_chunk_bytes {
            return Err(TransferError::TooLarge { len_bytes: raw_len as usize, max_bytes: max_chunk_bytes });
        }
        Ok(Chunk { kind, stream_id, seq, raw_len, payload: Bytes::copy_from_slice(r) })
    }

    /// The decompressed body; fails unless it is exactly `raw_len` bytes.
    pub fn body(&self) -> Result<Vec<u8>, TransferError> {
        let body = zstd::bulk::decompress(&self.payload, self.raw_len as usize)
            .map_err(|e| TransferError::Corrupt { seq: Some(self.seq), reason: format!("zstd: {e}") })?;
        if body.len() != self.raw_len as usize {
            return Err(TransferError::Corrupt {
                seq: Some(self.seq),
                reason: format!("body is {} bytes, header says {}", body.len(), self.raw_len),
            });
        }
        Ok(body)
    }
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.put_u32_le(b.len() as u32);
    buf.put_slice(b);
}

fn get_bytes(r: &mut &[u8], what: &str) -> Result<Vec<u8>, String> {
    if r.len() < 4 {
        return Err(format!("{what}: length cut off"));
    }
    let len = r.get_u32_le() as usize;
    if r.len() < len {
        return Err(format!("{what}: {len} bytes declared, {} left", r.len()));
    }
    let out = r[..len].to_vec();
    r.advance(len);
    Ok(out)
}

fn encode_header(cf: Cf, range: &KeyRange) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_u8(cf.code());
    put_bytes(&mut b, range.start());
    match range.end() {
        Some(end) => {
            b.put_u8(1);
            put_bytes(&mut b, end);
        }
        None => b.put_u8(0),
    }
    b
}

fn read_header(r: &mut &[u8]) -> Result<(Cf, KeyRange), String> {
    if r.is_empty() {
        return Err("empty header".into());
    }
    let cf_code = r.get_u8();
    let cf = Cf::from_code(cf_code).ok_or_else(|| format!("unknown key space {cf_code}"))?;
    let start = get_bytes(r, "range start")?;
    if r.is_empty() {
        return Err("range end flag cut off".into());
    }
    let end = match r.get_u8() {
        0 => None,
        1 => Some(get_bytes(r, "range end")?),
        f => return Err(format!("bad range end flag {f}")),
    };
    let range = KeyRange::new(start, end).map_err(|e| e.to_string())?;
    Ok((cf, range))
}

fn decode_header(mut r: &[u8]) -> Result<(Cf, KeyRange), String> {
    let head = read_header(&mut r)?;
    if !r.is_empty() {
        return Err(format!("{} trailing header bytes", r.len()));
    }
    Ok(head)
}

fn encode_end(sum: &RangeChecksum) -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    b.put_u64_le(sum.pairs);
    b.put_u64_le(sum.bytes);
    b.put_u32_le(sum.crc32);
    b
}

fn decode_end(mut r: &[u8]) -> Result<RangeChecksum, String> {
    if r.len() != 20 {
        return Err(format!("end body is {} bytes, expected 20", r.len()));
    }
    Ok(RangeChecksum { pairs: r.get_u64_le(), bytes: r.get_u64_le(), crc32: r.get_u32_le() })
}

fn decode_pairs(mut r: &[u8]) -> Result<Vec<KvPair>, String> {
    let mut pairs = Vec::new();
    while !r.is_empty() {
        let k = get_bytes(&mut r, "key")?;
        let v = get_bytes(&mut r, "value")?;
        pairs.push((k, v));
    }
    if pairs.is_empty() {
        return Err("data chunk without pairs".into());
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_resumes_exactly() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> =
            (0..100u32).map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; i as usize])).collect();
        let mut whole = ChecksumBuilder::new();
        pairs.iter().for_each(|(k, v)| whole.add(k, v));
        for cut in [0, 1, 50, 99, 100] {
            let mut first = ChecksumBuilder::new();
            pairs[..cut].iter().for_each(|(k, v)| first.add(k, v));
            let mut rest = ChecksumBuilder::resume(first.finish());
            pairs[cut..].iter().for_each(|(k, v)| rest.add(k, v));
            assert_eq!(rest.finish(), whole.finish(), "resumed at {cut}");
        }
        // Moving a byte from key to value changes the checksum (lengths are hashed too).
        let mut a = ChecksumBuilder::new();
        a.add(b"ab", b"c");
        let mut b = ChecksumBuilder::new();
        b.add(b"a", b"bc");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn chunk_codec_round_trips_and_checks_every_byte() {
        let chunk = Chunk::new(ChunkKind::Data, 9, 4, b"hello hello hello hello", 3).expect("build");
        let frame = chunk.encode().expect("encode");
        let back = Chunk::decode(&frame, 1024).expect("decode");
        assert_eq!((back.kind, back.stream_id, back.seq), (ChunkKind::Data, 9, 4));
        assert_eq!(back.body().expect("body"), b"hello hello hello hello");
        for i in 0..frame.len() {
            let mut bad = frame.to_vec();
            bad[i] ^= 0x04;
            assert!(Chunk::decode(&bad, 1024).is_err(), "flipped byte {i} went unnoticed");
        }
        for len in 0..frame.len() {
            assert!(Chunk::decode(&frame[..len], 1024).is_err(), "truncated to {len}");
        }
        assert!(matches!(Chunk::decode(&frame, 4), Err(TransferError::TooLarge { .. })));
    }
}
