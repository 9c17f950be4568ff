//! The conformance suite: every case is a generic function over `Engine`, and
//! `conformance!` instantiates all of them for one engine constructor. Every engine and
//! wrapper stack must pass the same cases.

use presage_engine::{
    middle_key, range_checksum, Cf, Engine, EngineError, KeyRange, KvPair, Reader, ScanLimit, ScanOrder, WriteBatch,
    WriteOptions, MAX_KEY_BYTES,
};

pub fn key(i: u32) -> Vec<u8> {
    format!("k{i:06}").into_bytes()
}

pub fn range(start: &str, end: Option<&str>) -> KeyRange {
    KeyRange::new(start.as_bytes().to_vec(), end.map(|e| e.as_bytes().to_vec())).expect("valid range")
}

pub fn put_all<E: Engine>(e: &E, cf: Cf, pairs: impl IntoIterator<Item = KvPair>) {
    let mut wb = WriteBatch::new();
    for (k, v) in pairs {
        wb.put(cf, k, v);
        if wb.size_bytes() > 1 << 20 {
            e.write(&wb, WriteOptions::NO_SYNC).expect("write");
            wb = WriteBatch::new();
        }
    }
    if !wb.is_empty() {
        e.write(&wb, WriteOptions::NO_SYNC).expect("write");
    }
}

/// Every pair of `range`, read page by page with `limit`, in `order`.
pub fn scan_all<R: presage_engine::Reader + ?Sized>(
    r: &R,
    cf: Cf,
    range: &KeyRange,
    order: ScanOrder,
    limit: ScanLimit,
) -> Vec<KvPair> {
    let mut out = Vec::new();
    let mut next = Some(range.clone());
    let mut pages = 0;
    while let Some(rg) = next {
        let page = r.scan(cf, &rg, order, limit).expect("scan");
        assert!(page.pairs.len() <= limit.max_keys, "page over max_keys");
        let bytes: usize = page.pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(page.pairs.len() <= 1 || bytes <= limit.max_bytes, "page of {bytes} bytes over max_bytes");
        assert!(!page.more || !page.pairs.is_empty(), "an empty page cannot have more");
        out.extend(page.pairs.iter().cloned());
        next = page.resume_range(&rg, order);
        pages += 1;
        assert!(pages < 1_000_000, "scan does not terminate");
    }
    out
}

pub fn put_get_delete<E: Engine>(e: &E) {
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, b"a".to_vec(), b"1".to_vec()).put(Cf::Raft, b"a".to_vec(), b"raft".to_vec());
    e.write(&wb, WriteOptions::SYNC).expect("write");
    assert_eq!(e.get(Cf::Data, b"a").expect("get"), Some(b"1".to_vec()));
    assert_eq!(e.get(Cf::Raft, b"a").expect("get"), Some(b"raft".to_vec()), "key spaces are separate");
    assert_eq!(e.get(Cf::Meta, b"a").expect("get"), None, "key spaces are separate");
    let mut wb = WriteBatch::new();
    wb.delete(Cf::Data, b"a".to_vec());
    e.write(&wb, WriteOptions::NO_SYNC).expect("write");
    assert_eq!(e.get(Cf::Data, b"a").expect("get"), None);
    assert_eq!(e.get(Cf::Raft, b"a").expect("get"), Some(b"raft".to_vec()));
}

pub fn batch_order_last_write_wins<E: Engine>(e: &E) {
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, b"x".to_vec(), b"1".to_vec()).delete(Cf::Data, b"x".to_vec());
    wb.delete(Cf::Data, b"y".to_vec()).put(Cf::Data, b"y".to_vec(), b"2".to_vec());
    wb.put(Cf::Data, b"z1".to_vec(), b"3".to_vec()).delete_range(Cf::Data, range("z", Some("z2")));
    wb.delete_range(Cf::Data, range("w", Some("w2"))).put(Cf::Data, b"w1".to_vec(), b"4".to_vec());
    e.write(&wb, WriteOptions::NO_SYNC).expect("write");
    assert_eq!(e.get(Cf::Data, b"x").expect("get"), None);
    assert_eq!(e.get(Cf::Data, b"y").expect("get"), Some(b"2".to_vec()));
    assert_eq!(e.get(Cf::Data, b"z1").expect("get"), None);
    assert_eq!(e.get(Cf::Data, b"w1").expect("get"), Some(b"4".to_vec()));
}

pub fn invalid_batch_applies_nothing<E: Engine>(e: &E) {
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, b"ok".to_vec(), b"1".to_vec());
    wb.put(Cf::Meta, vec![b'k'; MAX_KEY_BYTES + 1], b"2".to_vec());
    let err = e.write(&wb, WriteOptions::SYNC).expect_err("oversized key");
    assert!(matches!(err, EngineError::KeyTooLarge { .. }), "{err}");
    assert_eq!(e.get(Cf::Data, b"ok").expect("get"), None, "batch is all or nothing");

    let mut huge_value = WriteBatch::new();
    huge_value.put(Cf::Data, b"v".to_vec(), vec![0u8; presage_engine::MAX_VALUE_BYTES + 1]);
    let err = e.write(&huge_value, WriteOptions::NO_SYNC).expect_err("oversized value");
    assert!(matches!(err, EngineError::ValueTooLarge { .. }), "{err}");

    let mut big = WriteBatch::new();
    for i in 0..=presage_engine::DEFAULT_MAX_WRITE_BATCH_BYTES / presage_engine::MAX_VALUE_BYTES {
        big.put(Cf::Data, key(i as u32), vec![0u8; presage_engine::MAX_VALUE_BYTES]);
    }
    let err = e.write(&big, WriteOptions::NO_SYNC).expect_err("oversized batch");
    assert!(matches!(err, EngineError::BatchTooLarge { .. }), "{err}");
    assert_eq!(e.get(Cf::Data, &key(0)).expect("get"), None);
}

pub fn scans_are_bounded_and_complete<E: Engine>(e: &E) {
    let pairs: Vec<KvPair> = (0..500).map(|i| (key(i), vec![b'v'; (i % 37) as usize])).collect();
    put_all(e, Cf::Data, pairs.clone());
    put_all(e, Cf::Meta, vec![(key(1), b"other".to_vec())]);
    let r = range("k000100", Some("k000400"));
    let want: Vec<KvPair> = pairs.iter().filter(|(k, _)| r.contains(k)).cloned().collect();
    for limit in
        [ScanLimit::new(1, 1 << 20), ScanLimit::new(7, 1 << 20), ScanLimit::new(1000, 100), ScanLimit::new(1000, 1)]
    {
        assert_eq!(scan_all(e, Cf::Data, &r, ScanOrder::Forward, limit), want, "forward with {limit:?}");
        let mut rev = want.clone();
        rev.reverse();
        assert_eq!(scan_all(e, Cf::Data, &r, ScanOrder::Reverse, limit), rev, "reverse with {limit:?}");
    }
    let one = e.scan(Cf::Data, &r, ScanOrder::Forward, ScanLimit::new(10, 1)).expect("scan");
    assert_eq!(one.pairs.len(), 1, "a page holds at least one pair");
    assert!(one.more);
    let all = e.scan(Cf::Data, &KeyRange::all(), ScanOrder::Forward, ScanLimit::new(10_000, 1 << 30)).expect("scan");
    assert_eq!(all.pairs.len(), 500);
    assert!(!all.more);
    let empty = e.scan(Cf::Data, &range("a", Some("b")), ScanOrder::Reverse, ScanLimit::default()).expect("scan");
    assert!(empty.pairs.is_empty() && !empty.more);
    let err = e.scan(Cf::Data, &r, ScanOrder::Forward, ScanLimit::new(0, 10)).expect_err("zero limit");
    assert!(matches!(err, EngineError::ZeroScanLimit));
}

pub fn extreme_keys<E: Engine>(e: &E) {
    let longest = vec![0xffu8; MAX_KEY_BYTES];
    put_all(
        e,
        Cf::Data,
        vec![(Vec::new(), b"empty".to_vec()), (longest.clone(), b"last".to_vec()), (vec![0], b"zero".to_vec())],
    );
    assert_eq!(e.get(Cf::Data, b"").expect("get"), Some(b"empty".to_vec()));
    let all = scan_all(e, Cf::Data, &KeyRange::all(), ScanOrder::Forward, ScanLimit::new(1, 1));
    let keys: Vec<Vec<u8>> = all.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![Vec::new(), vec![0], longest.clone()]);
    let rev = scan_all(e, Cf::Data, &KeyRange::all(), ScanOrder::Reverse, ScanLimit::new(1, 1));
    assert_eq!(rev.len(), 3);
    assert_eq!(rev[0].0, longest);
    let mut wb = WriteBatch::new();
    wb.delete_range(Cf::Data, KeyRange::from_start(vec![0]).expect("range"));
    e.write(&wb, WriteOptions::NO_SYNC).expect("unbounded delete-range");
    let left = scan_all(e, Cf::Data, &KeyRange::all(), ScanOrder::Forward, ScanLimit::default());
    assert_eq!(left, vec![(Vec::new(), b"empty".to_vec())], "unbounded delete-range reaches the longest key");
}

pub fn snapshots_are_consistent<E: Engine>(e: &E) {
    put_all(e, Cf::Data, (0..100).map(|i| (key(i), b"old".to_vec())));
    put_all(e, Cf::Raft, vec![(b"log".to_vec(), b"old".to_vec())]);
    let snap = e.snapshot();
    let mut wb = WriteBatch::new();
    for i in 0..100 {
        wb.put(Cf::Data, key(i), b"new".to_vec());
    }
    wb.put(Cf::Data, key(1000), b"new".to_vec()).delete_range(Cf::Data, range("k000010", Some("k000020")));
    wb.delete(Cf::Raft, b"log".to_vec());
    e.write(&wb, WriteOptions::NO_SYNC).expect("write");
    let seen = scan_all(&snap, Cf::Data, &KeyRange::all(), ScanOrder::Forward, ScanLimit::new(9, 1 << 20));
    assert_eq!(seen.len(), 100);
    assert!(seen.iter().all(|(_, v)| v == b"old"), "snapshot sees no later write");
    assert_eq!(snap.get(Cf::Raft, b"log").expect("get"), Some(b"old".to_vec()));
    assert_eq!(snap.get(Cf::Data, &key(1000)).expect("get"), None);
    assert_eq!(e.get(Cf::Data, &key(5)).expect("get"), Some(b"new".to_vec()));
    assert_eq!(e.get(Cf::Data, &key(15)).expect("get"), None);
    // Dropping one snapshot does not disturb another.
    let snap2 = e.snapshot();
    drop(snap);
    assert_eq!(snap2.get(Cf::Data, &key(5)).expect("get"), Some(b"new".to_vec()));
}

pub fn delete_range_is_exact<E: Engine>(e: &E) {
    put_all(e, Cf::Data, (0..100).map(|i| (key(i), b"v".to_vec())));
    put_all(e, Cf::Meta, (0..100).map(|i| (key(i), b"v".to_vec())));
    let mut wb = WriteBatch::new();
    wb.delete_range(Cf::Data, range("k000010", Some("k000020")));
    e.write(&wb, WriteOptions::SYNC).expect("write");
    for i in 0..100 {
        let present = e.get(Cf::Data, &key(i)).expect("get").is_some();
        assert_eq!(present, !(10..20).contains(&i), "key {i}");
        assert!(e.get(Cf::Meta, &key(i)).expect("get").is_some(), "other key space untouched");
    }
}

pub fn approximate_stats_track_data<E: Engine>(e: &E) {
    let value = vec![7u8; 1000];
    put_all(e, Cf::Data, (0..20_000).map(|i| (key(i), value.clone())));
    e.flush().expect("flush");
    let all = e.approximate_stats(Cf::Data, &KeyRange::all()).expect("stats");
    assert!((10_000..=40_000).contains(&all.keys), "about 20000 keys, estimated {}", all.keys);
    // Values are compressible: on disk the range may shrink a lot, but never to nothing.
    assert!(all.size_bytes > 10_000 && all.size_bytes <= 2 * 20_000 * 1010, "size {}", all.size_bytes);
    let half = e.approximate_stats(Cf::Data, &range("k000000", Some("k010000"))).expect("stats");
    let share = half.size_bytes as f64 / all.size_bytes as f64;
    assert!((0.3..=0.7).contains(&share), "half the keys hold {share:.2} of the bytes");
    let none = e.approximate_stats(Cf::Data, &range("x", Some("y"))).expect("stats");
    assert!(none.size_bytes < all.size_bytes / 100, "an empty range is small: {none:?}");
}

pub fn middle_key_halves_bytes<E: Engine>(e: &E) {
    let r = range("k", Some("l"));
    assert_eq!(middle_key(e, Cf::Data, &r).expect("middle"), None, "empty range");
    put_all(e, Cf::Data, vec![(key(0), b"v".to_vec())]);
    assert_eq!(middle_key(e, Cf::Data, &r).expect("middle"), None, "one key cannot split");
    put_all(e, Cf::Data, vec![(key(1), b"v".to_vec())]);
    assert_eq!(middle_key(e, Cf::Data, &r).expect("middle"), Some(key(1)));
    // Uneven value sizes: the first 1000 keys hold a quarter of the bytes.
    put_all(e, Cf::Data, (0..4000).map(|i| (key(i), vec![0u8; if i < 1000 { 100 } else { 300 }])));
    let mid = middle_key(e, Cf::Data, &r).expect("middle").expect("splittable");
    let left: usize = scan_all(
        e,
        Cf::Data,
        &KeyRange::new(b"k".to_vec(), Some(mid.clone())).expect("r"),
        ScanOrder::Forward,
        ScanLimit::default(),
    )
    .iter()
    .map(|(k, v)| k.len() + v.len())
    .sum();
    let total: usize = scan_all(e, Cf::Data, &r, ScanOrder::Forward, ScanLimit::default())
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    let share = left as f64 / total as f64;
    assert!((0.49..=0.51).contains(&share), "middle key {mid:?} leaves {share:.3} of the bytes left");
}

pub fn checksum_detects_differences<E: Engine>(e: &E) {
    let r = KeyRange::all();
    let empty = range_checksum(e, Cf::Data, &r).expect("checksum");
    assert_eq!(empty.pairs, 0);
    put_all(e, Cf::Data, (0..1000).map(|i| (key(i), format!("v{i}").into_bytes())));
    let a = range_checksum(e, Cf::Data, &r).expect("checksum");
    assert_eq!(a.pairs, 1000);
    assert_eq!(a, range_checksum(&e.snapshot(), Cf::Data, &r).expect("checksum"), "engine and snapshot agree");
    put_all(e, Cf::Data, vec![(key(500), b"changed".to_vec())]);
    let b = range_checksum(e, Cf::Data, &r).expect("checksum");
    assert_ne!(a.crc32, b.crc32, "one changed value changes the checksum");
    put_all(e, Cf::Data, vec![(key(500), b"v500".to_vec())]);
    assert_eq!(a, range_checksum(e, Cf::Data, &r).expect("checksum"));
}

pub fn replace_range_is_atomic<E: Engine>(e: &E) {
    put_all(e, Cf::Data, (0..100).map(|i| (key(i), b"old".to_vec())));
    let target = range("k000020", Some("k000080"));
    let before = range_checksum(e, Cf::Data, &KeyRange::all()).expect("checksum");
    // Out of order: refused, nothing changes.
    let mut bad = vec![Ok((key(30), b"n".to_vec())), Ok((key(25), b"n".to_vec()))].into_iter();
    let err = e.replace_range(Cf::Data, &target, &mut bad).expect_err("unordered");
    assert!(matches!(err, EngineError::UnorderedKeys { .. }), "{err}");
    // Outside the range: refused.
    let mut outside = vec![Ok((key(30), b"n".to_vec())), Ok((key(90), b"n".to_vec()))].into_iter();
    assert!(e.replace_range(Cf::Data, &target, &mut outside).is_err());
    // A failing source: refused.
    let mut failing = vec![Ok((key(30), b"n".to_vec())), Err(EngineError::Corrupt("source broke".into()))].into_iter();
    assert!(e.replace_range(Cf::Data, &target, &mut failing).is_err());
    assert_eq!(
        before,
        range_checksum(e, Cf::Data, &KeyRange::all()).expect("checksum"),
        "failed replaces change nothing"
    );

    let snap = e.snapshot();
    let mut fresh = (50..60).map(|i| Ok((key(i), b"new".to_vec())));
    assert_eq!(e.replace_range(Cf::Data, &target, &mut fresh).expect("replace"), 10);
    let now = scan_all(e, Cf::Data, &KeyRange::all(), ScanOrder::Forward, ScanLimit::default());
    let want: Vec<KvPair> = (0..20)
        .map(|i| (key(i), b"old".to_vec()))
        .chain((50..60).map(|i| (key(i), b"new".to_vec())))
        .chain((80..100).map(|i| (key(i), b"old".to_vec())))
        .collect();
    assert_eq!(now, want);
    assert_eq!(snap.get(Cf::Data, &key(30)).expect("get"), Some(b"old".to_vec()), "open snapshot keeps the old range");
    // Replacing with nothing clears the range.
    let mut nothing = std::iter::empty();
    assert_eq!(e.replace_range(Cf::Data, &target, &mut nothing).expect("replace"), 0);
    assert_eq!(scan_all(e, Cf::Data, &target, ScanOrder::Forward, ScanLimit::default()), vec![]);
    assert_eq!(e.get(Cf::Data, &key(10)).expect("get"), Some(b"old".to_vec()));
}

pub fn storage_stats_are_readable<E: Engine>(e: &E) {
    put_all(e, Cf::Data, (0..100).map(|i| (key(i), vec![1u8; 100])));
    let s = e.storage_stats();
    assert!(!s.write_stopped, "an idle engine is not stopped: {s:?}");
    assert!(s.memtable_bytes + s.sst_bytes > 0, "data is accounted somewhere: {s:?}");
}

macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            #[test]
            fn put_get_delete() {
                super::put_get_delete(&*$make);
            }
            #[test]
            fn batch_order_last_write_wins() {
                super::batch_order_last_write_wins(&*$make);
            }
            #[test]
            fn invalid_batch_applies_nothing() {
                super::invalid_batch_applies_nothing(&*$make);
            }
            #[test]
            fn scans_are_bounded_and_complete() {
                super::scans_are_bounded_and_complete(&*$make);
            }
            #[test]
            fn extreme_keys() {
                super::extreme_keys(&*$make);
            }
            #[test]
            fn snapshots_are_consistent() {
                super::snapshots_are_consistent(&*$make);
            }
            #[test]
            fn delete_range_is_exact() {
                super::delete_range_is_exact(&*$make);
            }
            #[test]
            fn approximate_stats_track_data() {
                super::approximate_stats_track_data(&*$make);
            }
            #[test]
            fn middle_key_halves_bytes() {
                super::middle_key_halves_bytes(&*$make);
            }
            #[test]
            fn checksum_detects_differences() {
                super::checksum_detects_differences(&*$make);
            }
            #[test]
            fn replace_range_is_atomic() {
                super::replace_range_is_atomic(&*$make);
            }
            #[test]
            fn storage_stats_are_readable() {
                super::storage_stats_are_readable(&*$make);
            }
            #[test]
            fn matches_btreemap_model() {
                crate::model::check_against_model(|| $make);
            }
        }
    };
}

conformance!(mem, crate::fixture::mem());
conformance!(rocks, crate::fixture::rocks());
conformance!(metered_faulty_mem, crate::fixture::metered_faulty_mem());
conformance!(metered_faulty_rocks, crate::fixture::metered_faulty_rocks());
