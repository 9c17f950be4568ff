//! The engine crate's one integration-test binary: the conformance suite run against every
//! engine, export/import, and RocksDB-specific behaviour (persistence, ingest, metrics).

mod conformance;
mod corruption;
mod fixture;
mod model;
mod rocks;
mod transfer;
