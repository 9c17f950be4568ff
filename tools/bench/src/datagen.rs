//! Deterministic keys and values for the demo and the benchmarks.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The `i`-th key: `user:` and a zero-padded number, so keys sort by `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("user:{i:010}").into_bytes()
}

/// What the values look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValueKind {
    /// JSON-like text with repeated field names: compresses several-fold, like most user data.
    Compressible,
    /// Uniformly random bytes: does not compress at all.
    Incompressible,
}

/// Makes values of a fixed size from a seeded RNG.
pub struct ValueGen {
    rng: SmallRng,
    kind: ValueKind,
    value_bytes: usize,
}

impl ValueGen {
    /// A generator of `value_bytes`-byte values of `kind`, seeded with `seed`.
    pub fn new(kind: ValueKind, value_bytes: usize, seed: u64) -> Self {
        ValueGen { rng: SmallRng::seed_from_u64(seed), kind, value_bytes }
    }

    /// The value of key number `i`.
    pub fn value(&mut self, i: u64) -> Vec<u8> {
        match self.kind {
            ValueKind::Incompressible => (0..self.value_bytes).map(|_| self.rng.random()).collect(),
            ValueKind::Compressible => {
                let mut v = Vec::with_capacity(self.value_bytes + 64);
                while v.len() < self.value_bytes {
                    let score: u32 = self.rng.random_range(0..1000);
                    let city = ["paris", "lisbon", "osaka", "lima", "oslo"][self.rng.random_range(0..5)];
                    v.extend_from_slice(
                        format!("{{\"id\":{i},\"city\":\"{city}\",\"score\":{score},\"active\":true}}").as_bytes(),
                    );
                }
                v.truncate(self.value_bytes);
                v
            }
        }
    }
}
