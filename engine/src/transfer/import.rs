//! The receiving half: every chunk checked and staged durably with the import's progress;
//! the range is replaced atomically only once the whole stream verified.

use super::*;

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
