//! Empty: this crate exists only to build `librocksdb-sys` (see Cargo.toml).
