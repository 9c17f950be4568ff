//! The sending half: a key range read at one snapshot, as a resumable stream of chunks.

use super::*;

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
