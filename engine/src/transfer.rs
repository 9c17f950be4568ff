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

/// Settings of an export.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// Identifies the stream; an import refuses chunks of any other.
    pub stream_id: u64,
    /// Target size of a data chunk's uncompressed body, in bytes.
    pub max_chunk_bytes: usize,
    /// zstd level (1 fast .. 19 small).
    pub zstd_level: i32,
}

impl ExportOptions {
    /// Defaults for stream `stream_id`: 1 MiB chunks, zstd level 3.
    pub fn new(stream_id: u64) -> Self {
        ExportOptions { stream_id, max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES, zstd_level: 3 }
    }
}

/// Where an interrupted import wants its stream restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The stream the import is reading (`None` before the header arrived).
    pub stream_id: Option<u64>,
    /// The next chunk it needs.
    pub next_seq: u64,
    /// The last key it staged; the sender continues after it.
    pub after_key: Option<Vec<u8>>,
    /// The whole stream arrived and verified: nothing more to send, call
    /// [`Importer::finish`].
    pub ended: bool,
}

/// Produces a range's chunks (encoded frames) from a snapshot. An `Iterator` of frames. It
/// owns its reader: pass an engine snapshot, or a reference to one.
pub struct Exporter<R: Reader> {
    reader: R,
    cf: Cf,
    range: KeyRange,
    opts: ExportOptions,
    next_seq: u64,
    rest: Option<KeyRange>,
    sum: ChecksumBuilder,
    pending: Vec<KvPair>,
    done: bool,
    /// The zstd context in use and its level (made on first use).
    compressor: Option<(i32, zstd::bulk::Compressor<'static>)>,
    /// The last data chunk did not compress.
    incompressible: bool,
    /// Raw (uncompressed) bytes of the chunks produced so far.
    pub raw_bytes: u64,
    /// Encoded bytes of the chunks produced so far.
    pub wire_bytes: u64,
}

impl<R: Reader> Exporter<R> {
    /// Exports `range` of `cf` as seen by `reader` (normally an engine snapshot).
    pub fn new(reader: R, cf: Cf, range: KeyRange, opts: ExportOptions) -> Self {
        Exporter {
            reader,
            cf,
            rest: Some(range.clone()),
            range,
            opts,
            next_seq: 0,
            sum: ChecksumBuilder::new(),
            pending: Vec::new(),
            done: false,
            compressor: None,
            incompressible: false,
            raw_bytes: 0,
            wire_bytes: 0,
        }
    }

    /// Restarts an export where an import left off. `reader` must show the same data as the
    /// interrupted export (the same snapshot), and `opts.stream_id` must be the same.
    pub fn resume(reader: R, cf: Cf, range: KeyRange, opts: ExportOptions, at: &ResumePoint) -> Result<Self> {
        if at.stream_id.is_some_and(|id| id != opts.stream_id) {
            return Err(EngineError::Config(format!(
                "resume point belongs to stream {:?}, the exporter is stream {:#x}",
                at.stream_id, opts.stream_id
            )));
        }
        if at.after_key.as_deref().is_some_and(|k| !range.contains(k)) || (at.after_key.is_some() && at.next_seq < 2) {
            return Err(EngineError::Config(format!("resume point {at:?} does not fit range {range}")));
        }
        let mut ex = Exporter::new(reader, cf, range.clone(), opts);
        ex.next_seq = at.next_seq;
        ex.done = at.ended;
        if let Some(after) = &at.after_key {
            // Rebuild the checksum of what the importer already has, from the same snapshot.
            let prefix = range.through(after);
            let mut sum = ChecksumBuilder::new();
            for_each_pair(&ex.reader, cf, &prefix, |k, v| {
                sum.add(k, v);
                Ok(())
            })?;
            ex.sum = sum;
            ex.rest = range.after(after);
        }
        Ok(ex)
    }

    fn emit(&mut self, kind: ChunkKind, raw: &[u8]) -> Result<Bytes> {
        // Data that did not compress in the last chunk is compressed at zstd's fastest level:
        // it still is a zstd frame, at a fraction of the CPU.
        let level = if self.incompressible { INCOMPRESSIBLE_ZSTD_LEVEL } else { self.opts.zstd_level };
        let mut compressor = match self.compressor.take() {
            Some((l, c)) if l == level => c,
            _ => zstd::bulk::Compressor::new(level)
                .map_err(|e| EngineError::Io { context: "zstd compressor".into(), source: e })?,
        };
        let chunk = Chunk::compressed_with(&mut compressor, kind, self.opts.stream_id, self.next_seq, raw);
        self.compressor = Some((level, compressor));
        let chunk = chunk?;
        if kind == ChunkKind::Data {
            // Re-probe with the normal level every 16 chunks, in case the data changed.
            self.incompressible = !self.next_seq.is_multiple_of(16)
                && (chunk.payload.len() as f64) > raw.len() as f64 / MIN_USEFUL_COMPRESSION_RATIO;
        }
        self.next_seq += 1;
        let frame = chunk.encode()?;
        self.raw_bytes += raw.len() as u64;
        self.wire_bytes += frame.len() as u64;
        Ok(frame)
    }

    fn next_frame(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        if self.next_seq == 0 {
            let head = encode_header(self.cf, &self.range);
            return self.emit(ChunkKind::Header, &head).map(Some);
        }
        // Fill one data chunk.
        let mut body = Vec::with_capacity(self.opts.max_chunk_bytes.min(DEFAULT_MAX_CHUNK_BYTES * 4));
        loop {
            if self.pending.is_empty() {
                let Some(rest) = self.rest.take() else { break };
                let limit = ScanLimit::new(1024, self.opts.max_chunk_bytes.max(1));
                let page = self.reader.scan(self.cf, &rest, ScanOrder::Forward, limit)?;
                self.rest = page.resume_range(&rest, ScanOrder::Forward);
                self.pending = page.pairs;
                self.pending.reverse(); // pop from the back in key order
                if self.pending.is_empty() {
                    break;
                }
            }
            let Some((k, v)) = self.pending.last() else {
                break;
            };
            let pair_bytes = 8 + k.len() + v.len();
            if !body.is_empty() && body.len() + pair_bytes > self.opts.max_chunk_bytes {
                break;
            }
            let Some((k, v)) = self.pending.pop() else {
                break;
            };
            put_bytes(&mut body, &k);
            put_bytes(&mut body, &v);
            self.sum.add(&k, &v);
        }
        if !body.is_empty() {
            return self.emit(ChunkKind::Data, &body).map(Some);
        }
        self.done = true;
        let end = encode_end(&self.sum.finish());
        self.emit(ChunkKind::End, &end).map(Some)
    }

    /// Gives the reader back (to restart the export at another point with
    /// [`Exporter::resume`]).
    pub fn into_reader(self) -> R {
        self.reader
    }

    /// The key space and range being exported.
    pub fn target(&self) -> (Cf, &KeyRange) {
        (self.cf, &self.range)
    }

    /// The export's options.
    pub fn options(&self) -> ExportOptions {
        self.opts
    }

    /// The checksum of everything exported so far (the whole range once the end chunk is out).
    pub fn checksum(&self) -> RangeChecksum {
        self.sum.finish()
    }
}

impl<R: Reader> Iterator for Exporter<R> {
    type Item = Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_frame() {
            Ok(frame) => frame.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Settings of an import.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions {
    /// Largest chunk accepted (frame and decompressed body), in bytes.
    pub max_chunk_bytes: usize,
    /// Sync each staged chunk to disk before acknowledging it.
    pub sync: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { max_chunk_bytes: MAX_CHUNK_BODY_BYTES, sync: true }
    }
}

impl ImportOptions {
    /// Fails on a limit that could not hold one chunk header, or past 1 GiB.
    pub fn validate(&self) -> Result<()> {
        if !(64..=1 << 30).contains(&self.max_chunk_bytes) {
            return Err(EngineError::Config(format!(
                "import max_chunk_bytes {} is outside [64, 1GiB]",
                self.max_chunk_bytes
            )));
        }
        Ok(())
    }
}

/// Progress of an import, persisted after every accepted chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImportState {
    cf: Cf,
    range: KeyRange,
    stream_id: Option<u64>,
    next_seq: u64,
    last_key: Option<Vec<u8>>,
    sum: RangeChecksum,
    ended: bool,
}

impl ImportState {
    fn fresh(cf: Cf, range: KeyRange) -> Self {
        ImportState {
            cf,
            range,
            stream_id: None,
            next_seq: 0,
            last_key: None,
            sum: RangeChecksum::default(),
            ended: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = encode_header(self.cf, &self.range);
        match self.stream_id {
            Some(id) => {
                b.put_u8(1);
                b.put_u64_le(id);
            }
            None => b.put_u8(0),
        }
        b.put_u64_le(self.next_seq);
        match &self.last_key {
            Some(k) => {
                b.put_u8(1);
                put_bytes(&mut b, k);
            }
            None => b.put_u8(0),
        }
        b.extend_from_slice(&encode_end(&self.sum));
        b.put_u8(u8::from(self.ended));
        b
    }

    fn decode(raw: &[u8]) -> Result<Self, String> {
        let mut r = raw;
        let (cf, range) = read_header(&mut r)?;
        let need = |r: &[u8], n: usize| {
            if r.len() < n {
                Err("import state cut off".to_string())
            } else {
                Ok(())
            }
        };
        need(r, 1)?;
        let stream_id = match r.get_u8() {
            0 => None,
            _ => {
                need(r, 8)?;
                Some(r.get_u64_le())
            }
        };
        need(r, 9)?;
        let next_seq = r.get_u64_le();
        let last_key = match r.get_u8() {
            0 => None,
            _ => Some(get_bytes(&mut r, "last key")?),
        };
        need(r, 21)?;
        let sum = decode_end(&r[..20])?;
        let ended = r[20] != 0;
        Ok(ImportState { cf, range, stream_id, next_seq, last_key, sum, ended })
    }
}

/// What [`Importer::push`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportProgress {
    /// The chunk just staged.
    pub seq: u64,
    /// Pairs staged so far.
    pub pairs: u64,
    /// Key+value bytes staged so far.
    pub bytes: u64,
    /// The end chunk has arrived and verified: [`Importer::finish`] can switch.
    pub complete: bool,
}

fn state_key(import_id: u64) -> Vec<u8> {
    let mut k = b"import/".to_vec();
    k.extend_from_slice(&import_id.to_be_bytes());
    k.extend_from_slice(b"/state");
    k
}

fn chunk_prefix(import_id: u64) -> Vec<u8> {
    let mut k = b"import/".to_vec();
    k.extend_from_slice(&import_id.to_be_bytes());
    k.extend_from_slice(b"/chunk/");
    k
}

fn chunk_key(import_id: u64, seq: u64) -> Vec<u8> {
    let mut k = chunk_prefix(import_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn import_keys(import_id: u64) -> Result<KeyRange> {
    let mut start = b"import/".to_vec();
    start.extend_from_slice(&import_id.to_be_bytes());
    let mut end = start.clone();
    start.push(b'/');
    end.push(b'/' + 1);
    KeyRange::new(start, Some(end))
}

/// Receives an export stream into `range` of `cf`, staging chunks until the stream verifies.
pub struct Importer<'e, E: Engine> {
    engine: &'e E,
    import_id: u64,
    opts: ImportOptions,
    state: ImportState,
}

impl<'e, E: Engine> Importer<'e, E> {
    /// Starts import `import_id` into `range` of `cf`, or resumes it if its progress is on
    /// disk. Fails with [`TransferError::ImportConflict`] if a persisted import with this id
    /// has another target.
    ///
    /// An import id has one owner at a time: two `Importer`s on one id must not run at once.
    pub fn open(
        engine: &'e E,
        import_id: u64,
        cf: Cf,
        range: KeyRange,
        opts: ImportOptions,
    ) -> Result<Self, TransferError> {
        opts.validate()?;
        let state = match engine.get(Cf::Meta, &state_key(import_id))? {
            Some(raw) => {
                let state = ImportState::decode(&raw)
                    .map_err(|e| EngineError::Corrupt(format!("import {import_id} state: {e}")))?;
                if state.cf != cf || state.range != range {
                    return Err(TransferError::ImportConflict { import_id });
                }
                state
            }
            None => ImportState::fresh(cf, range),
        };
        Ok(Importer { engine, import_id, opts, state })
    }

    /// Where the sender must (re)start: next chunk and last staged key.
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            stream_id: self.state.stream_id,
            next_seq: self.state.next_seq,
            after_key: self.state.last_key.clone(),
            ended: self.state.ended,
        }
    }

    /// Checks one frame and stages it. On error nothing is staged and the import can go on
    /// from [`Importer::resume_point`].
    pub fn push(&mut self, frame: &[u8]) -> Result<ImportProgress, TransferError> {
        let chunk = Chunk::decode(frame, self.opts.max_chunk_bytes)?;
        let expected = self.state.next_seq;
        if chunk.seq < expected {
            return Err(TransferError::Duplicate { got: chunk.seq, expected });
        }
        if chunk.seq > expected {
            return Err(TransferError::OutOfOrder { got: chunk.seq, expected });
        }
        if let Some(id) = self.state.stream_id {
            if chunk.stream_id != id {
                return Err(TransferError::StreamMismatch { got: chunk.stream_id, expected: id });
            }
        }
        if self.state.ended {
            return Err(TransferError::UnexpectedKind {
                seq: chunk.seq,
                got: chunk.kind.name(),
                why: "the stream has ended",
            });
        }
        let mut next = self.state.clone();
        next.next_seq += 1;
        let body = chunk.body()?;
        let corrupt = |reason: String| TransferError::Corrupt { seq: Some(chunk.seq), reason };
        match (chunk.seq, chunk.kind) {
            (0, ChunkKind::Header) => {
                let (cf, range) = decode_header(&body).map_err(corrupt)?;
                if cf != self.state.cf || range != self.state.range {
                    return Err(TransferError::WrongRange {
                        expected_cf: self.state.cf,
                        expected: self.state.range.clone(),
                        got_cf: cf,
                        got: range,
                    });
                }
                next.stream_id = Some(chunk.stream_id);
            }
            (0, kind) => {
                return Err(TransferError::UnexpectedKind {
                    seq: 0,
                    got: kind.name(),
                    why: "a stream starts with its header",
                })
            }
            (_, ChunkKind::Header) => {
                return Err(TransferError::UnexpectedKind {
                    seq: chunk.seq,
                    got: "header",
                    why: "the header was already received",
                })
            }
            (seq, ChunkKind::Data) => {
                let pairs = decode_pairs(&body).map_err(corrupt)?;
                let mut sum = ChecksumBuilder::resume(next.sum);
                for (k, _) in &pairs {
                    let ordered = next.last_key.as_deref().is_none_or(|last| k.as_slice() > last);
                    if check_key(k).is_err() || !ordered || !next.range.contains(k) {
                        return Err(TransferError::KeyOutOfRange { seq, key: k.clone(), range: next.range.clone() });
                    }
                    next.last_key = Some(k.clone());
                }
                for (k, v) in &pairs {
                    sum.add(k, v);
                }
                next.sum = sum.finish();
            }
            (_, ChunkKind::End) => {
                let expected = decode_end(&body).map_err(corrupt)?;
                if expected != next.sum {
                    return Err(TransferError::ChecksumMismatch { expected, got: next.sum });
                }
                next.ended = true;
            }
        }
        let mut wb = WriteBatch::new();
        if chunk.kind == ChunkKind::Data {
            wb.put(Cf::Meta, chunk_key(self.import_id, chunk.seq), frame.to_vec());
        }
        wb.put(Cf::Meta, state_key(self.import_id), next.encode());
        self.engine.write(&wb, WriteOptions { sync: self.opts.sync })?;
        self.state = next;
        Ok(ImportProgress {
            seq: chunk.seq,
            pairs: self.state.sum.pairs,
            bytes: self.state.sum.bytes,
            complete: self.state.ended,
        })
    }

    /// Switches the target range to the staged contents, atomically, and removes the
    /// staging. Fails with [`TransferError::Truncated`] (and changes nothing) before the end
    /// chunk arrived; the import can then go on receiving, or be aborted.
    pub fn finish(&mut self) -> Result<RangeChecksum, TransferError> {
        if !self.state.ended {
            return Err(TransferError::Truncated { next_seq: self.state.next_seq });
        }
        // Read the staging from one snapshot and verify it while it streams into the switch:
        // a missing chunk or a wrong total fails the iterator, which cancels the switch.
        let staging = self.engine.snapshot();
        // Chunks 1..=last_data_seq are data; the end chunk was `next_seq - 1`.
        let last_data_seq = self.state.next_seq.saturating_sub(2);
        let mut pairs =
            StagedPairs::new(&staging, self.import_id, self.opts.max_chunk_bytes, last_data_seq, self.state.sum);
        self.engine.replace_range(self.state.cf, &self.state.range, &mut pairs)?;
        let sum = self.state.sum;
        clear(self.engine, self.import_id)?;
        self.state = ImportState::fresh(self.state.cf, self.state.range.clone());
        Ok(sum)
    }

    /// Drops the staged chunks and the progress; the target range was never touched.
    pub fn abort(self) -> Result<(), TransferError> {
        clear(self.engine, self.import_id)?;
        Ok(())
    }
}

fn clear<E: Engine>(engine: &E, import_id: u64) -> Result<()> {
    let mut wb = WriteBatch::new();
    wb.delete_range(Cf::Meta, import_keys(import_id)?);
    engine.write(&wb, WriteOptions::SYNC)
}

/// Reads the staged pairs back in order, one chunk at a time, from a snapshot, and fails
/// unless exactly the staged chunks are there and their pairs add up to the expected checksum.
struct StagedPairs<'s, R: Reader> {
    staging: &'s R,
    import_id: u64,
    max_chunk_bytes: usize,
    next_seq: u64,
    last_seq: u64,
    expected: RangeChecksum,
    sum: ChecksumBuilder,
    buf: std::vec::IntoIter<KvPair>,
    done: bool,
}

impl<'s, R: Reader> StagedPairs<'s, R> {
    fn new(staging: &'s R, import_id: u64, max_chunk_bytes: usize, last_seq: u64, expected: RangeChecksum) -> Self {
        StagedPairs {
            staging,
            import_id,
            max_chunk_bytes,
            next_seq: 1,
            last_seq,
            expected,
            sum: ChecksumBuilder::new(),
            buf: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Loads the next chunk; `Ok(false)` once every staged chunk was read and verified.
    fn load(&mut self) -> Result<bool> {
        let seq = self.next_seq;
        if seq > self.last_seq {
            let got = self.sum.finish();
            if got != self.expected {
                return Err(EngineError::Corrupt(format!(
                    "import {}: staged chunks add up to {got}, the stream verified {}",
                    self.import_id, self.expected
                )));
            }
            return Ok(false);
        }
        let staged = |e: String| EngineError::Corrupt(format!("import {} staged chunk {seq}: {e}", self.import_id));
        let frame =
            self.staging.get(Cf::Meta, &chunk_key(self.import_id, seq))?.ok_or_else(|| staged("missing".into()))?;
        let chunk = Chunk::decode(&frame, self.max_chunk_bytes).map_err(|e| staged(e.to_string()))?;
        let body = chunk.body().map_err(|e| staged(e.to_string()))?;
        let pairs = decode_pairs(&body).map_err(staged)?;
        for (k, v) in &pairs {
            self.sum.add(k, v);
        }
        self.next_seq += 1;
        self.buf = pairs.into_iter();
        Ok(true)
    }
}

impl<R: Reader> Iterator for StagedPairs<'_, R> {
    type Item = Result<KvPair>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(pair) = self.buf.next() {
                return Some(Ok(pair));
            }
            if self.done {
                return None;
            }
            match self.load() {
                Ok(true) => continue,
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Removes import `import_id`'s staged chunks and progress, whatever its target (for a
/// receiver that must start over with another stream).
pub fn abort_import<E: Engine>(engine: &E, import_id: u64) -> Result<()> {
    clear(engine, import_id)
}

/// Lists the imports with progress on disk (to resume or abort them after a restart).
pub fn pending_imports<R: Reader + ?Sized>(reader: &R) -> Result<Vec<u64>> {
    let range = KeyRange::new(b"import/".to_vec(), Some(b"import0".to_vec()))?;
    let mut ids = Vec::new();
    for_each_pair(reader, Cf::Meta, &range, |k, _| {
        if k.ends_with(b"/state") && k.len() == 7 + 8 + 6 {
            let mut id = [0u8; 8];
            id.copy_from_slice(&k[7..15]);
            ids.push(u64::from_be_bytes(id));
        }
        Ok(())
    })?;
    Ok(ids)
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

    #[test]
    fn import_state_round_trips_and_rejects_garbage() {
        let state = ImportState {
            cf: Cf::Data,
            range: KeyRange::new(b"a".to_vec(), Some(b"q".to_vec())).expect("range"),
            stream_id: Some(77),
            next_seq: 12,
            last_key: Some(b"k".to_vec()),
            sum: RangeChecksum { pairs: 3, bytes: 40, crc32: 0xdead_beef },
            ended: false,
        };
        let raw = state.encode();
        assert_eq!(ImportState::decode(&raw).expect("decode"), state);
        for len in 0..raw.len() {
            assert!(ImportState::decode(&raw[..len]).is_err(), "truncated state of {len} bytes accepted");
        }
    }
}
