//! Property test: random operation sequences against an engine and a `BTreeMap` model, with
//! snapshots taken along the way and scans read back in random page sizes and directions.

use std::collections::BTreeMap;
use std::ops::Deref;

use presage_engine::{Cf, Engine, KeyRange, ScanLimit, ScanOrder, WriteBatch, WriteOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

use crate::conformance::scan_all;

type Model = [BTreeMap<Vec<u8>, Vec<u8>>; 3];

#[derive(Debug, Clone)]
enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Option<Vec<u8>>),
    /// Commit the pending batch with this sync choice.
    Commit(bool),
    /// Take a snapshot and remember the model at that point.
    Snapshot,
    /// Compare a scan of this range with the model.
    Scan(Vec<u8>, Option<Vec<u8>>, bool, usize, usize),
}

fn small_key() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet so that operations hit the same keys often.
    prop::collection::vec(prop::sample::select(vec![0u8, b'a', b'b', b'c', 0xff]), 0..4)
}

fn cf() -> impl Strategy<Value = Cf> {
    prop::sample::select(Cf::ALL.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (cf(), small_key(), prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(c, k, v)| Op::Put(c, k, v)),
        3 => (cf(), small_key()).prop_map(|(c, k)| Op::Delete(c, k)),
        1 => (cf(), small_key(), prop::option::of(small_key())).prop_map(|(c, s, e)| Op::DeleteRange(c, s, e)),
        3 => any::<bool>().prop_map(Op::Commit),
        1 => Just(Op::Snapshot),
        2 => (small_key(), prop::option::of(small_key()), any::<bool>(), 1usize..5, 1usize..40)
            .prop_map(|(s, e, rev, k, b)| Op::Scan(s, e, rev, k, b)),
    ]
}

fn range_of(start: &[u8], end: &Option<Vec<u8>>) -> Option<KeyRange> {
    KeyRange::new(start.to_vec(), end.clone()).ok()
}

fn apply_model(model: &mut Model, op: &Op) {
    match op {
        Op::Put(c, k, v) => {
            model[c.index()].insert(k.clone(), v.clone());
        }
        Op::Delete(c, k) => {
            model[c.index()].remove(k);
        }
        Op::DeleteRange(c, s, e) => {
            if let Some(r) = range_of(s, e) {
                model[c.index()].retain(|k, _| !r.contains(k));
            }
        }
        _ => {}
    }
}

fn model_scan(model: &Model, cf: Cf, r: &KeyRange, rev: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<_> =
        model[cf.index()].iter().filter(|(k, _)| r.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    if rev {
        out.reverse();
    }
    out
}

fn run<E: Engine>(e: &E, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut committed: Model = Default::default();
    let mut pending = committed.clone();
    let mut batch = WriteBatch::new();
    let mut snaps: Vec<(E::Snapshot, Model)> = Vec::new();
    for op in ops {
        match op {
            Op::Put(c, k, v) => {
                batch.put(*c, k.clone(), v.clone());
            }
            Op::Delete(c, k) => {
                batch.delete(*c, k.clone());
            }
            Op::DeleteRange(c, s, e) => {
                if let Some(r) = range_of(s, e) {
                    batch.delete_range(*c, r);
                }
            }
            Op::Commit(sync) => {
                e.write(&batch, WriteOptions { sync: *sync }).map_err(|err| TestCaseError::fail(err.to_string()))?;
                batch = WriteBatch::new();
                committed = pending.clone();
            }
            Op::Snapshot => snaps.push((e.snapshot(), committed.clone())),
            Op::Scan(s, end, rev, max_keys, max_bytes) => {
                let Some(r) = range_of(s, end) else { continue };
                let order = if *rev { ScanOrder::Reverse } else { ScanOrder::Forward };
                let limit = ScanLimit::new(*max_keys, *max_bytes);
                for cf in Cf::ALL {
                    prop_assert_eq!(
                        scan_all(e, cf, &r, order, limit),
                        model_scan(&committed, cf, &r, *rev),
                        "live scan {:?} {}",
                        cf,
                        r
                    );
                }
            }
        }
        apply_model(&mut pending, op);
    }
    // Everything committed is readable by point reads and full scans; snapshots still show
    // their moment.
    for cf in Cf::ALL {
        for (k, v) in &committed[cf.index()] {
            let got = e.get(cf, k).map_err(|err| TestCaseError::fail(err.to_string()))?;
            prop_assert_eq!(got.as_ref(), Some(v));
        }
        let all = KeyRange::all();
        prop_assert_eq!(
            scan_all(e, cf, &all, ScanOrder::Forward, ScanLimit::new(3, 64)),
            model_scan(&committed, cf, &all, false)
        );
        for (i, (snap, model)) in snaps.iter().enumerate() {
            prop_assert_eq!(
                scan_all(snap, cf, &all, ScanOrder::Reverse, ScanLimit::new(2, 1 << 20)),
                model_scan(model, cf, &all, true),
                "snapshot {}",
                i
            );
        }
    }
    Ok(())
}

/// Runs the model check with a fixed seed; `make` builds a fresh engine per case.
pub fn check_against_model<F, E, D>(make: F)
where
    F: Fn() -> D,
    D: Deref<Target = E>,
    E: Engine,
{
    let seed = crate::fixture::seed();
    let config = Config { cases: 48, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..120), |ops| {
        let fixture = make();
        run(&*fixture, &ops)
    });
    if let Err(e) = result {
        panic!("model check failed with seed {seed} (replay with PRESAGE_TEST_SEED={seed}): {e}");
    }
}
