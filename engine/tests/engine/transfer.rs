//! Export/import: round trips, every kind of bad stream, and resuming after interruption.
//! Each case runs against both engines.

use std::ops::Deref;

use bytes::Bytes;
use presage_engine::transfer::{pending_imports, Chunk, ChunkKind, CHUNK_HEADER_BYTES, DEFAULT_MAX_CHUNK_BYTES};
use presage_engine::{
    range_checksum, Cf, Engine, ExportOptions, Exporter, ImportOptions, Importer, KeyRange, RangeChecksum,
    TransferError,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::conformance::{key, put_all, range};

/// Writes `n` keys with `value_bytes`-byte values: text-like (compressible) or random.
fn fill<E: Engine>(e: &E, n: u32, value_bytes: usize, compressible: bool, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    put_all(
        e,
        Cf::Data,
        (0..n).map(|i| {
            let v = if compressible {
                format!("user-{i:08}-profile-{}", "abcdefgh".repeat(value_bytes / 8)).into_bytes()[..value_bytes]
                    .to_vec()
            } else {
                (0..value_bytes).map(|_| rng.random()).collect()
            };
            (key(i), v)
        }),
    );
}

fn export_all<E: Engine>(e: &E, r: &KeyRange, stream_id: u64) -> Vec<Bytes> {
    let snap = e.snapshot();
    Exporter::new(&snap, Cf::Data, r.clone(), ExportOptions::new(stream_id))
        .collect::<Result<Vec<_>, _>>()
        .expect("export")
}

/// A target engine with data of its own in the range (so "untouched" is observable).
fn target<E: Engine>(e: &E) -> RangeChecksum {
    put_all(e, Cf::Data, (0..50).map(|i| (key(i * 7), b"target's own".to_vec())));
    range_checksum(e, Cf::Data, &KeyRange::all()).expect("checksum")
}

fn assert_untouched<E: Engine>(e: &E, before: RangeChecksum) {
    assert_eq!(
        range_checksum(e, Cf::Data, &KeyRange::all()).expect("checksum"),
        before,
        "target range must be untouched"
    );
}

pub fn round_trip_100k<S: Engine, T: Engine>(src: &S, dst: &T) {
    fill(src, 100_000, 100, true, 1);
    let r = KeyRange::all();
    let frames = export_all(src, &r, 42);
    assert!(frames.len() > 3, "{} chunks", frames.len());
    for f in &frames {
        let chunk = Chunk::decode(f, 16 << 20).expect("decodes");
        assert!(
            chunk.raw_len as usize <= DEFAULT_MAX_CHUNK_BYTES,
            "chunk {} of {} raw bytes",
            chunk.seq,
            chunk.raw_len
        );
    }
    target(dst);
    let mut imp = Importer::open(dst, 1, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    for f in &frames {
        imp.push(f).expect("push");
    }
    let got = imp.finish().expect("finish");
    let want = range_checksum(src, Cf::Data, &r).expect("checksum");
    assert_eq!(got, want);
    assert_eq!(want.pairs, 100_000);
    assert_eq!(range_checksum(dst, Cf::Data, &r).expect("checksum"), want, "copy verifies by range checksum");
    assert!(pending_imports(dst).expect("list").is_empty(), "staging is cleared");
}

/// Feeds `frames` into a fresh import and returns the error it ends with (push or finish).
fn import_err<E: Engine>(e: &E, r: &KeyRange, frames: &[Bytes]) -> TransferError {
    let mut imp = Importer::open(e, 9, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    for f in frames {
        if let Err(err) = imp.push(f) {
            imp.abort().expect("abort");
            return err;
        }
    }
    match imp.finish() {
        Err(err) => {
            imp.abort().expect("abort");
            err
        }
        Ok(sum) => panic!("bad stream imported: {sum}"),
    }
}

pub fn every_bad_stream_is_refused<S: Engine, T: Engine>(src: &S, dst: &T) {
    fill(src, 20_000, 200, false, 2);
    let r = range("k000000", Some("k015000"));
    let frames = export_all(src, &r, 7);
    let original = range_checksum(src, Cf::Data, &r).expect("checksum");
    assert!(frames.len() >= 5, "need several data chunks, have {}", frames.len());
    let before = target(dst);

    // Corrupt: one flipped bit in a data chunk's payload, and in its header.
    let mut bad = frames.clone();
    let mut f = bad[2].to_vec();
    f[CHUNK_HEADER_BYTES + 10] ^= 0x01;
    bad[2] = Bytes::from(f);
    let err = import_err(dst, &r, &bad);
    assert!(matches!(err, TransferError::Corrupt { seq: Some(2), .. }), "bit flip: {err}");
    assert!(err.to_string().contains("crc32"), "a clear message: {err}");
    assert_untouched(dst, before);
    let mut bad = frames.clone();
    let mut f = bad[1].to_vec();
    f[16] ^= 0x80; // seq field
    bad[1] = Bytes::from(f);
    assert!(matches!(import_err(dst, &r, &bad), TransferError::Corrupt { .. }));
    assert_untouched(dst, before);

    // Truncated inside a frame.
    let mut bad = frames.clone();
    bad[3] = bad[3].slice(..bad[3].len() - 5);
    assert!(matches!(import_err(dst, &r, &bad), TransferError::Corrupt { seq: Some(3), .. }));

    // Reordered.
    let mut bad = frames.clone();
    bad.swap(2, 3);
    let err = import_err(dst, &r, &bad);
    assert!(matches!(err, TransferError::OutOfOrder { got: 3, expected: 2 }), "reorder: {err}");
    assert_untouched(dst, before);

    // Duplicated.
    let mut bad = frames.clone();
    bad.insert(3, bad[2].clone());
    let err = import_err(dst, &r, &bad);
    assert!(matches!(err, TransferError::Duplicate { got: 2, expected: 3 }), "duplicate: {err}");
    assert_untouched(dst, before);

    // Truncated stream: the end chunk never comes.
    let cut = &frames[..frames.len() - 1];
    let err = import_err(dst, &r, cut);
    assert!(matches!(err, TransferError::Truncated { .. }), "truncated: {err}");
    assert_untouched(dst, before);
    let err = import_err(dst, &r, &frames[..frames.len() - 2]);
    assert!(matches!(err, TransferError::Truncated { .. }), "truncated: {err}");

    // Wrong range: a stream for a neighbouring range.
    let other = export_all(src, &range("k015000", Some("k020000")), 7);
    let err = import_err(dst, &r, &other);
    assert!(matches!(err, TransferError::WrongRange { .. }), "wrong range: {err}");
    assert_untouched(dst, before);

    // Another stream mixed in.
    let mut bad = frames.clone();
    bad[2] = export_all(src, &r, 8)[2].clone();
    let err = import_err(dst, &r, &bad);
    assert!(matches!(err, TransferError::StreamMismatch { got: 8, expected: 7 }), "mixed streams: {err}");

    // The end chunk of an export of different data (same stream id): checksum mismatch.
    put_all(src, Cf::Data, vec![(key(10), b"changed".to_vec())]);
    let changed = export_all(src, &r, 7);
    let mut bad = frames.clone();
    let last = bad.len() - 1;
    bad[last] = changed[changed.len() - 1].clone();
    let err = import_err(dst, &r, &bad);
    assert!(matches!(err, TransferError::ChecksumMismatch { .. }), "checksum: {err}");
    assert_untouched(dst, before);

    // A chunk too large for the importer's limit.
    let mut imp = Importer::open(dst, 10, Cf::Data, r.clone(), ImportOptions { max_chunk_bytes: 1024, sync: false })
        .expect("open");
    imp.push(&frames[0]).expect("header is small");
    assert!(matches!(imp.push(&frames[1]), Err(TransferError::TooLarge { .. })));
    imp.abort().expect("abort");

    // After a refused chunk the import goes on with the right one.
    let mut imp = Importer::open(dst, 11, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    imp.push(&frames[0]).expect("header");
    assert!(imp.push(&frames[2]).is_err());
    let (last, body) = frames[1..].split_last().expect("frames");
    for f in body {
        imp.push(f).expect("push");
    }
    assert!(matches!(imp.finish(), Err(TransferError::Truncated { .. })), "no end chunk yet");
    assert_untouched(dst, before);
    imp.push(last).expect("end chunk");
    let sum = imp.finish().expect("finish");
    assert_eq!(sum, original);
    assert_eq!(range_checksum(dst, Cf::Data, &r).expect("checksum"), sum);
    assert!(pending_imports(dst).expect("list").is_empty());
}

/// Pushes half a stream, hands the engine to `restart` (a crash and reopen), then resumes
/// from the persisted point with a resumed exporter on the same snapshot.
pub fn interrupted_import_resumes<S: Engine, T: Engine, F: Deref<Target = T>>(
    src: &S,
    dst: F,
    restart: impl FnOnce(F) -> F,
) {
    fill(src, 30_000, 100, false, 3);
    let r = KeyRange::all();
    let snap = src.snapshot();
    let opts = ExportOptions { max_chunk_bytes: 64 * 1024, ..ExportOptions::new(77) };
    let frames: Vec<Bytes> = Exporter::new(&snap, Cf::Data, r.clone(), opts).collect::<Result<_, _>>().expect("export");
    let half = frames.len() / 2;
    let mut imp = Importer::open(&*dst, 5, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    for f in &frames[..half] {
        imp.push(f).expect("push");
    }
    drop(imp);
    let dst = restart(dst);
    assert_eq!(pending_imports(&*dst).expect("list"), vec![5]);
    let mut imp = Importer::open(&*dst, 5, Cf::Data, r.clone(), ImportOptions::default()).expect("reopen");
    let at = imp.resume_point();
    assert_eq!(at.next_seq, half as u64);
    assert_eq!(at.stream_id, Some(77));
    assert!(at.after_key.is_some());
    // Resend from the resume point with a new exporter on the same snapshot: the frames
    // must be exactly the ones the first exporter produced.
    let rest: Vec<Bytes> = Exporter::resume(&snap, Cf::Data, r.clone(), opts, &at)
        .expect("resume")
        .collect::<Result<_, _>>()
        .expect("export");
    assert_eq!(decoded(&rest), decoded(&frames[half..]), "a resumed export continues the same stream");
    // A retransmitted chunk is refused as a duplicate.
    assert!(matches!(imp.push(&frames[half - 1]), Err(TransferError::Duplicate { .. })));
    for f in &rest {
        imp.push(f).expect("push");
    }
    let sum = imp.finish().expect("finish");
    assert_eq!(sum, range_checksum(&snap, Cf::Data, &r).expect("checksum"));
    assert_eq!(range_checksum(&*dst, Cf::Data, &r).expect("checksum"), sum);
}

pub fn import_conflict_and_abort<T: Engine>(dst: &T) {
    let r = range("a", Some("b"));
    let imp = Importer::open(dst, 3, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    drop(imp);
    // Nothing is persisted before the first chunk, so the id is still free...
    assert!(Importer::open(dst, 3, Cf::Data, range("c", Some("d")), ImportOptions::default()).is_ok());
    // ...but once a chunk is staged, another target under that id is refused.
    let src = presage_engine::MemEngine::new();
    let frames = export_all(&src, &r, 1);
    let mut imp = Importer::open(dst, 3, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    imp.push(&frames[0]).expect("header");
    assert!(matches!(
        Importer::open(dst, 3, Cf::Data, range("c", Some("d")), ImportOptions::default()),
        Err(TransferError::ImportConflict { import_id: 3 })
    ));
    imp.abort().expect("abort");
    assert!(pending_imports(dst).expect("list").is_empty());
}

/// What a chunk means, independent of how its body was compressed (the compression level
/// adapts to the data, so a resumed export may compress a chunk differently).
fn decoded(frames: &[Bytes]) -> Vec<(ChunkKind, u64, u64, Vec<u8>)> {
    frames
        .iter()
        .map(|f| {
            let c = Chunk::decode(f, 16 << 20).expect("decodes");
            let body = c.body().expect("body");
            (c.kind, c.stream_id, c.seq, body)
        })
        .collect()
}

fn frame(kind: ChunkKind, stream_id: u64, seq: u64, body: &[u8]) -> Bytes {
    Chunk::new(kind, stream_id, seq, body, 1).expect("chunk").encode().expect("encode")
}

fn pair_body(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in pairs {
        b.extend_from_slice(&(k.len() as u32).to_le_bytes());
        b.extend_from_slice(k);
        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        b.extend_from_slice(v);
    }
    b
}

/// Chunks with a valid crc but a wrong body or a wrong place in the stream.
pub fn well_framed_lies_are_refused<T: Engine>(dst: &T) {
    let before = target(dst);
    let r = range("k000010", Some("k000020"));
    let head = export_all(&presage_engine::MemEngine::new(), &r, 5)[0].clone();
    let ok_pair = pair_body(&[(b"k000011", b"v")]);
    type Case = (&'static str, Vec<Bytes>, fn(&TransferError) -> bool);
    let cases: Vec<Case> = vec![
        ("data at seq 0", vec![frame(ChunkKind::Data, 5, 0, &ok_pair)], |e| {
            matches!(e, TransferError::UnexpectedKind { seq: 0, .. })
        }),
        ("second header", vec![head.clone(), head_at(&head, 1)], |e| {
            matches!(e, TransferError::UnexpectedKind { seq: 1, .. })
        }),
        (
            "key below the range",
            vec![head.clone(), frame(ChunkKind::Data, 5, 1, &pair_body(&[(b"k000001", b"v")]))],
            |e| matches!(e, TransferError::KeyOutOfRange { .. }),
        ),
        (
            "key at the range end",
            vec![head.clone(), frame(ChunkKind::Data, 5, 1, &pair_body(&[(b"k000020", b"v")]))],
            |e| matches!(e, TransferError::KeyOutOfRange { .. }),
        ),
        (
            "keys out of order",
            vec![head.clone(), frame(ChunkKind::Data, 5, 1, &pair_body(&[(b"k000013", b"v"), (b"k000012", b"v")]))],
            |e| matches!(e, TransferError::KeyOutOfRange { .. }),
        ),
        (
            "keys out of order across chunks",
            vec![head.clone(), frame(ChunkKind::Data, 5, 1, &ok_pair), frame(ChunkKind::Data, 5, 2, &ok_pair)],
            |e| matches!(e, TransferError::KeyOutOfRange { seq: 2, .. }),
        ),
        ("pair cut short", vec![head.clone(), frame(ChunkKind::Data, 5, 1, &ok_pair[..ok_pair.len() - 1])], |e| {
            matches!(e, TransferError::Corrupt { .. })
        }),
        ("empty data chunk", vec![head.clone(), frame(ChunkKind::Data, 5, 1, b"")], |e| {
            matches!(e, TransferError::Corrupt { .. })
        }),
        ("end body too short", vec![head.clone(), frame(ChunkKind::End, 5, 1, b"short")], |e| {
            matches!(e, TransferError::Corrupt { .. })
        }),
        ("header body garbage", vec![frame(ChunkKind::Header, 5, 0, b"\x07garbage")], |e| {
            matches!(e, TransferError::Corrupt { .. })
        }),
        ("raw length lies", vec![with_raw_len(&head, 999)], |e| matches!(e, TransferError::Corrupt { .. })),
        (
            "chunk after the end",
            vec![head.clone(), frame(ChunkKind::End, 5, 1, &[0u8; 20][..]), frame(ChunkKind::Data, 5, 2, &ok_pair)],
            |e| matches!(e, TransferError::UnexpectedKind { seq: 2, .. }),
        ),
    ];
    for (name, frames, want) in cases {
        let err = import_err(dst, &r, &frames);
        assert!(want(&err), "{name}: unexpected error {err}");
        assert_untouched(dst, before);
    }
}

fn head_at(head: &Bytes, seq: u64) -> Bytes {
    let c = Chunk::decode(head, 1 << 20).expect("header");
    Chunk { seq, ..c }.encode().expect("encode")
}

fn with_raw_len(f: &Bytes, raw_len: u32) -> Bytes {
    let c = Chunk::decode(f, 1 << 20).expect("chunk");
    Chunk { raw_len, ..c }.encode().expect("encode")
}

/// A staged chunk that disappears before the switch (another owner aborted the import) fails
/// `finish` without touching the target.
pub fn finish_refuses_lost_staging<S: Engine, T: Engine>(src: &S, dst: &T) {
    fill(src, 5_000, 300, false, 4);
    let r = KeyRange::all();
    let frames = export_all(src, &r, 3);
    assert!(frames.len() > 3);
    let before = target(dst);
    let mut imp = Importer::open(dst, 21, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    for f in &frames {
        imp.push(f).expect("push");
    }
    Importer::open(dst, 21, Cf::Data, r.clone(), ImportOptions::default())
        .expect("second owner")
        .abort()
        .expect("abort");
    let err = imp.finish().expect_err("staging is gone");
    assert!(err.to_string().contains("missing"), "{err}");
    assert_untouched(dst, before);
}

/// Resuming at the very start, right after the header, and after the end chunk.
pub fn resume_at_stream_edges<T: Engine>(dst: &T) {
    let src = presage_engine::MemEngine::new();
    fill(&src, 2_000, 100, true, 5);
    let r = KeyRange::all();
    let snap = src.snapshot();
    let opts = ExportOptions { max_chunk_bytes: 32 * 1024, ..ExportOptions::new(12) };
    let frames: Vec<Bytes> = Exporter::new(&snap, Cf::Data, r.clone(), opts).collect::<Result<_, _>>().expect("export");
    for pushed in [0, 1, frames.len()] {
        let mut imp =
            Importer::open(dst, 30 + pushed as u64, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
        for f in &frames[..pushed] {
            imp.push(f).expect("push");
        }
        let at = imp.resume_point();
        assert_eq!(at.ended, pushed == frames.len());
        let rest: Vec<Bytes> = Exporter::resume(&snap, Cf::Data, r.clone(), opts, &at)
            .expect("resume")
            .collect::<Result<_, _>>()
            .expect("export");
        assert_eq!(decoded(&rest), decoded(&frames[pushed..]), "resumed after {pushed} chunks");
        for f in &rest {
            imp.push(f).expect("push");
        }
        let sum = imp.finish().expect("finish");
        assert_eq!(sum, range_checksum(&snap, Cf::Data, &r).expect("checksum"));
    }
    let bad = presage_engine::ResumePoint { stream_id: Some(99), next_seq: 1, after_key: None, ended: false };
    assert!(Exporter::resume(&snap, Cf::Data, r.clone(), opts, &bad).is_err(), "another stream's resume point");
}

/// Arbitrary bytes and arbitrary well-framed bodies: always an error, never a panic, and the
/// target is untouched.
pub fn arbitrary_frames_never_panic<T: Engine>(dst: &T) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    let before = target(dst);
    let r = range("k000010", Some("k000020"));
    let head = export_all(&presage_engine::MemEngine::new(), &r, 5)[0].clone();
    let seed = crate::fixture::seed();
    let mut runner = TestRunner::new(Config {
        cases: 256,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (prop::collection::vec(any::<u8>(), 0..256), 0u8..4, 0u64..3, any::<bool>());
    let result = runner.run(&strategy, |(bytes, kind, seq, framed)| {
        let kind = match kind {
            0 => ChunkKind::Header,
            1 => ChunkKind::Data,
            _ => ChunkKind::End,
        };
        let f = if framed { frame(kind, 5, seq, &bytes) } else { Bytes::from(bytes) };
        let mut imp = Importer::open(dst, 40, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
        if seq > 0 {
            imp.push(&head).expect("header");
        }
        let pushed = imp.push(&f);
        let finished = imp.finish();
        imp.abort().expect("abort");
        prop_assert!(pushed.is_err() || finished.is_err(), "a random chunk completed an import");
        Ok(())
    });
    if let Err(e) = result {
        panic!("seed {seed} (replay with PRESAGE_TEST_SEED={seed}): {e}");
    }
    assert_untouched(dst, before);
}

macro_rules! transfer_suite {
    ($name:ident, $make:expr, $restart:expr) => {
        mod $name {
            #[test]
            fn round_trip_100k() {
                super::round_trip_100k(&*$make, &*$make);
            }
            #[test]
            fn every_bad_stream_is_refused() {
                super::every_bad_stream_is_refused(&*$make, &*$make);
            }
            #[test]
            fn interrupted_import_resumes() {
                let src = $make;
                super::interrupted_import_resumes(&*src, $make, $restart);
            }
            #[test]
            fn import_conflict_and_abort() {
                super::import_conflict_and_abort(&*$make);
            }
            #[test]
            fn well_framed_lies_are_refused() {
                super::well_framed_lies_are_refused(&*$make);
            }
            #[test]
            fn finish_refuses_lost_staging() {
                super::finish_refuses_lost_staging(&*$make, &*$make);
            }
            #[test]
            fn resume_at_stream_edges() {
                super::resume_at_stream_edges(&*$make);
            }
            #[test]
            fn arbitrary_frames_never_panic() {
                super::arbitrary_frames_never_panic(&*$make);
            }
        }
    };
}

transfer_suite!(mem, crate::fixture::mem(), |f| f);
transfer_suite!(rocks, crate::fixture::rocks(), crate::rocks::reopen);
