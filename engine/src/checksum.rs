//! Range checksums: crc32 over the canonical encoding of a range's pairs, in key order, plus
//! exact pair and byte counts. Shared by the engine's `range_checksum`, the export/import
//! stream (which checks every import against the source's) and replica verification.

use std::fmt;

/// Order-dependent checksum of a sequence of pairs: crc32 over `len(k) k len(v) v` for each
/// pair in key order, plus exact pair and byte counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct RangeChecksum {
    /// Number of pairs.
    pub pairs: u64,
    /// Sum of key and value lengths.
    pub bytes: u64,
    /// crc32 over the pairs' canonical encoding.
    pub crc32: u32,
}

impl fmt::Display for RangeChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pairs, {} bytes, crc32 {:08x}", self.pairs, self.bytes, self.crc32)
    }
}

/// Builds a [`RangeChecksum`] incrementally; its state can be saved and resumed.
#[derive(Debug, Clone)]
pub struct ChecksumBuilder {
    hasher: crc32fast::Hasher,
    pairs: u64,
    bytes: u64,
}

impl Default for ChecksumBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChecksumBuilder {
    /// An empty checksum.
    pub fn new() -> Self {
        ChecksumBuilder { hasher: crc32fast::Hasher::new(), pairs: 0, bytes: 0 }
    }

    /// Continues from a checksum computed over a prefix of the pairs.
    pub fn resume(from: RangeChecksum) -> Self {
        ChecksumBuilder {
            hasher: crc32fast::Hasher::new_with_initial(from.crc32),
            pairs: from.pairs,
            bytes: from.bytes,
        }
    }

    /// Adds the next pair.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.hasher.update(&(key.len() as u32).to_le_bytes());
        self.hasher.update(key);
        self.hasher.update(&(value.len() as u32).to_le_bytes());
        self.hasher.update(value);
        self.pairs += 1;
        self.bytes += (key.len() + value.len()) as u64;
    }

    /// The checksum so far.
    pub fn finish(&self) -> RangeChecksum {
        RangeChecksum { pairs: self.pairs, bytes: self.bytes, crc32: self.hasher.clone().finalize() }
    }
}
