//! Export/import: round trips, every kind of bad stream, and resuming after interruption.
//! Each case runs against both engines.

use std::ops::Deref;

use bytes::Bytes;
use presage_engine::transfer::{
    pending_imports, Chunk, CHUNK_HEADER_BYTES, DEFAULT_MAX_CHUNK_BYTES,
};
use presage_engine::{
    range_checksum, Cf, Engine, ExportOptions, Exporter, ImportOptions, Importer, KeyRange,
    RangeChecksum, TransferError,
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
                format!("user-{i:08}-profile-{}", "abcdefgh".repeat(value_bytes / 8)).into_bytes()
                    [..value_bytes]
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
    put_all(
        e,
        Cf::Data,
        (0..50).map(|i| (key(i * 7), b"target's own".to_vec())),
    );
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
    let mut imp =
        Importer::open(dst, 1, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    for f in &frames {
        imp.push(f).expect("push");
    }
    let got = imp.finish().expect("finish");
    let want = range_checksum(src, Cf::Data, &r).expect("checksum");
    assert_eq!(got, want);
    assert_eq!(want.pairs, 100_000);
    assert_eq!(
        range_checksum(dst, Cf::Data, &r).expect("checksum"),
        want,
        "copy verifies by range checksum"
    );
    assert!(
        pending_imports(dst).expect("list").is_empty(),
        "staging is cleared"
    );
}

/// Feeds `frames` into a fresh import and returns the error it ends with (push or finish).
fn import_err<E: Engine>(e: &E, r: &KeyRange, frames: &[Bytes]) -> TransferError {
    let mut imp =
        Importer::open(e, 9, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
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
    assert!(
        frames.len() >= 5,
        "need several data chunks, have {}",
        frames.len()
    );
    let before = target(dst);

    // Corrupt: one flipped bit in a data chunk's payload, and in its header.
    let mut bad = frames.clone();
    let mut f = bad[2].to_vec();
    f[CHUNK_HEADER_BYTES + 10] ^= 0x01;
    bad[2] = Bytes::from(f);
    let err = import_err(dst, &r, &bad);
    assert!(
        matches!(err, TransferError::Corrupt { seq: Some(2), .. }),
        "bit flip: {err}"
    );
    assert!(err.to_string().contains("crc32"), "a clear message: {err}");
    assert_untouched(dst, before);
    let mut bad = frames.clone();
    let mut f = bad[1].to_vec();
    f[16] ^= 0x80; // seq field
    bad[1] = Bytes::from(f);
    assert!(matches!(
        import_err(dst, &r, &bad),
        TransferError::Corrupt { .. }
    ));

    // Truncated inside a frame.
    let mut bad = frames.clone();
    bad[3] = bad[3].slice(..bad[3].len() - 5);
    assert!(matches!(
        import_err(dst, &r, &bad),
        TransferError::Corrupt { seq: Some(3), .. }
    ));

    // Reordered.
    let mut bad = frames.clone();
    bad.swap(2, 3);
    let err = import_err(dst, &r, &bad);
    assert!(
        matches!(
            err,
            TransferError::OutOfOrder {
                got: 3,
                expected: 2
            }
        ),
        "reorder: {err}"
    );
    assert_untouched(dst, before);

    // Duplicated.
    let mut bad = frames.clone();
    bad.insert(3, bad[2].clone());
    let err = import_err(dst, &r, &bad);
    assert!(
        matches!(
            err,
            TransferError::Duplicate {
                got: 2,
                expected: 3
            }
        ),
        "duplicate: {err}"
    );
    assert_untouched(dst, before);

    // Truncated stream: the end chunk never comes.
    let cut = &frames[..frames.len() - 1];
    let err = import_err(dst, &r, cut);
    assert!(
        matches!(err, TransferError::Truncated { .. }),
        "truncated: {err}"
    );
    assert_untouched(dst, before);
    let err = import_err(dst, &r, &frames[..frames.len() - 2]);
    assert!(
        matches!(err, TransferError::Truncated { .. }),
        "truncated: {err}"
    );

    // Wrong range: a stream for a neighbouring range.
    let other = export_all(src, &range("k015000", Some("k020000")), 7);
    let err = import_err(dst, &r, &other);
    assert!(
        matches!(err, TransferError::WrongRange { .. }),
        "wrong range: {err}"
    );
    assert_untouched(dst, before);

    // Another stream mixed in.
    let mut bad = frames.clone();
    bad[2] = export_all(src, &r, 8)[2].clone();
    let err = import_err(dst, &r, &bad);
    assert!(
        matches!(
            err,
            TransferError::StreamMismatch {
                got: 8,
                expected: 7
            }
        ),
        "mixed streams: {err}"
    );

    // The end chunk of an export of different data (same stream id): checksum mismatch.
    put_all(src, Cf::Data, vec![(key(10), b"changed".to_vec())]);
    let changed = export_all(src, &r, 7);
    let mut bad = frames.clone();
    let last = bad.len() - 1;
    bad[last] = changed[changed.len() - 1].clone();
    let err = import_err(dst, &r, &bad);
    assert!(
        matches!(err, TransferError::ChecksumMismatch { .. }),
        "checksum: {err}"
    );
    assert_untouched(dst, before);

    // A chunk too large for the importer's limit.
    let mut imp = Importer::open(
        dst,
        10,
        Cf::Data,
        r.clone(),
        ImportOptions {
            max_chunk_bytes: 1024,
            sync: false,
        },
    )
    .expect("open");
    imp.push(&frames[0]).expect("header is small");
    assert!(matches!(
        imp.push(&frames[1]),
        Err(TransferError::TooLarge { .. })
    ));
    imp.abort().expect("abort");

    // After a refused chunk the import goes on with the right one.
    let mut imp =
        Importer::open(dst, 11, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    imp.push(&frames[0]).expect("header");
    assert!(imp.push(&frames[2]).is_err());
    let (last, body) = frames[1..].split_last().expect("frames");
    for f in body {
        imp.push(f).expect("push");
    }
    assert!(
        matches!(imp.finish(), Err(TransferError::Truncated { .. })),
        "no end chunk yet"
    );
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
    let opts = ExportOptions {
        max_chunk_bytes: 64 * 1024,
        ..ExportOptions::new(77)
    };
    let frames: Vec<Bytes> = Exporter::new(&snap, Cf::Data, r.clone(), opts)
        .collect::<Result<_, _>>()
        .expect("export");
    let half = frames.len() / 2;
    let mut imp =
        Importer::open(&*dst, 5, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    for f in &frames[..half] {
        imp.push(f).expect("push");
    }
    drop(imp);
    let dst = restart(dst);
    assert_eq!(pending_imports(&*dst).expect("list"), vec![5]);
    let mut imp =
        Importer::open(&*dst, 5, Cf::Data, r.clone(), ImportOptions::default()).expect("reopen");
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
    assert_eq!(
        rest,
        frames[half..].to_vec(),
        "a resumed export continues the same stream"
    );
    // A retransmitted chunk is refused as a duplicate.
    assert!(matches!(
        imp.push(&frames[half - 1]),
        Err(TransferError::Duplicate { .. })
    ));
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
    assert!(Importer::open(
        dst,
        3,
        Cf::Data,
        range("c", Some("d")),
        ImportOptions::default()
    )
    .is_ok());
    // ...but once a chunk is staged, another target under that id is refused.
    let src = presage_engine::MemEngine::new();
    let frames = export_all(&src, &r, 1);
    let mut imp =
        Importer::open(dst, 3, Cf::Data, r.clone(), ImportOptions::default()).expect("open");
    imp.push(&frames[0]).expect("header");
    assert!(matches!(
        Importer::open(
            dst,
            3,
            Cf::Data,
            range("c", Some("d")),
            ImportOptions::default()
        ),
        Err(TransferError::ImportConflict { import_id: 3 })
    ));
    imp.abort().expect("abort");
    assert!(pending_imports(dst).expect("list").is_empty());
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
        }
    };
}

transfer_suite!(mem, crate::fixture::mem(), |f| f);
transfer_suite!(rocks, crate::fixture::rocks(), crate::rocks::reopen);
