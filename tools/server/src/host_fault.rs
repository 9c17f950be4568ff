//! Host faults inside a node process, set at run time (the admin API's `/v1/faults/host`,
//! `presage-ctl faults --host`): the resource shapes of a noisy neighbour, for the fault
//! library's scenarios and the no-false-evacuation checks. Off unless set.
//!
//! - **CPU contention**: `cpu-threads` threads spin in the node until the fault ends;
//! - **memory pressure**: `memory-bytes` are allocated and touched (every page written) and
//!   held until the fault ends.
//!
//! A fault lasts `duration-ms` (at most [`MAX_HOST_FAULT_MS`]) or until it is cleared or
//! replaced. Each setting is bounded, so a mistyped configuration cannot take the host down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most spinning threads a fault may start.
pub const MAX_CPU_THREADS: u32 = 64;
/// Most bytes a memory-pressure fault may hold (16 GiB).
pub const MAX_MEMORY_BYTES: u64 = 16 << 30;
/// Longest a host fault may last, in milliseconds (one hour).
pub const MAX_HOST_FAULT_MS: u64 = 3_600_000;
/// How often a spinning thread checks whether its fault ended, in milliseconds.
const SPIN_CHECK_MS: u64 = 1;

/// Why a host fault configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct HostFaultError(String);

/// A host fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct HostFaultConfig {
    /// Threads that spin (CPU contention).
    pub cpu_threads: u32,
    /// Bytes allocated and touched (memory pressure).
    pub memory_bytes: u64,
    /// How long the fault lasts, in milliseconds.
    pub duration_ms: u64,
}

impl HostFaultConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), HostFaultError> {
        let bad = |msg: String| Err(HostFaultError(msg));
        if self.cpu_threads > MAX_CPU_THREADS {
            return bad(format!("cpu-threads {} > {MAX_CPU_THREADS}", self.cpu_threads));
        }
        if self.memory_bytes > MAX_MEMORY_BYTES {
            return bad(format!("memory-bytes {} > {MAX_MEMORY_BYTES}", self.memory_bytes));
        }
        let active = self.cpu_threads > 0 || self.memory_bytes > 0;
        if active && (self.duration_ms == 0 || self.duration_ms > MAX_HOST_FAULT_MS) {
            return bad(format!("duration-ms must be within 1..={MAX_HOST_FAULT_MS}, not {}", self.duration_ms));
        }
        Ok(())
    }
}

/// The host fault in force on a node.
#[derive(Default)]
pub struct HostFaults {
    /// The configuration and when it ends.
    current: Mutex<Option<(HostFaultConfig, Instant)>>,
    /// Bumped by every change: spinners and holders of an older one stop.
    generation: Arc<AtomicU64>,
    /// Threads spinning now.
    spinning: Arc<AtomicU64>,
    /// The memory held, released when the fault ends.
    held: Arc<Mutex<Option<Vec<u8>>>>,
}

impl HostFaults {
    /// The fault in force (the default when none, or it ended).
    pub fn config(&self) -> HostFaultConfig {
        match *self.lock() {
            Some((cfg, ends)) if Instant::now() < ends => cfg,
            _ => HostFaultConfig::default(),
        }
    }

    /// Threads spinning now.
    pub fn spinning_threads(&self) -> u64 {
        self.spinning.load(Ordering::Relaxed)
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> u64 {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map_or(0, |v| v.len() as u64)
    }

    /// Replaces the fault in force with `config` (validated first), starting now.
    pub fn set(&self, config: HostFaultConfig) -> Result<(), HostFaultError> {
        config.validate()?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let ends = Instant::now() + Duration::from_millis(config.duration_ms);
        *self.lock() = Some((config, ends));
        for i in 0..config.cpu_threads {
            let (current, spinning) = (Arc::clone(&self.generation), Arc::clone(&self.spinning));
            let spawned = std::thread::Builder::new()
                .name(format!("fault-cpu-{i}"))
                .spawn(move || spin(&current, generation, ends, &spinning));
            if let Err(e) = spawned {
                return Err(HostFaultError(format!("could not start a spinning thread: {e}")));
            }
        }
        if config.memory_bytes > 0 {
            let (current, held) = (Arc::clone(&self.generation), Arc::clone(&self.held));
            let bytes = usize::try_from(config.memory_bytes)
                .map_err(|_| HostFaultError(format!("memory-bytes {} does not fit here", config.memory_bytes)))?;
            let spawned = std::thread::Builder::new()
                .name("fault-memory".into())
                .spawn(move || hold_memory(&current, generation, ends, bytes, &held));
            if let Err(e) = spawned {
                return Err(HostFaultError(format!("could not start the memory holder: {e}")));
            }
        }
        Ok(())
    }

    /// Ends the fault in force now.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        *self.lock() = None;
        *self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(HostFaultConfig, Instant)>> {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for HostFaults {
    fn drop(&mut self) {
        // The node is going: its spinners and held memory go with it.
        self.clear();
    }
}

/// Spins until `ends` or until the fault of `generation` is replaced.
fn spin(current: &AtomicU64, generation: u64, ends: Instant, spinning: &AtomicU64) {
    spinning.fetch_add(1, Ordering::Relaxed);
    let mut x = 0u64;
    while current.load(Ordering::Relaxed) == generation && Instant::now() < ends {
        let slice = Instant::now() + Duration::from_millis(SPIN_CHECK_MS);
        while Instant::now() < slice {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    spinning.fetch_sub(1, Ordering::Relaxed);
}

/// Allocates and touches `bytes`, holds them until `ends` or until the fault of `generation`
/// is replaced, then releases them.
fn hold_memory(current: &AtomicU64, generation: u64, ends: Instant, bytes: usize, held: &Mutex<Option<Vec<u8>>>) {
    // Every page written, so the memory is resident, not only reserved.
    let block = vec![0xa5u8; bytes];
    {
        let mut slot = held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.load(Ordering::SeqCst) != generation {
            return;
        }
        *slot = Some(block);
    }
    while current.load(Ordering::SeqCst) == generation && Instant::now() < ends {
        std::thread::sleep(Duration::from_millis(10).min(ends.saturating_duration_since(Instant::now())));
    }
    let mut slot = held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if current.load(Ordering::SeqCst) == generation {
        *slot = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn bad_settings_are_refused_and_change_nothing() {
        let faults = HostFaults::default();
        for bad in [
            HostFaultConfig { cpu_threads: MAX_CPU_THREADS + 1, duration_ms: 10, ..Default::default() },
            HostFaultConfig { memory_bytes: MAX_MEMORY_BYTES + 1, duration_ms: 10, ..Default::default() },
            HostFaultConfig { cpu_threads: 1, duration_ms: 0, ..Default::default() },
        ] {
            assert!(faults.set(bad).is_err(), "{bad:?}");
        }
        assert_eq!(faults.config(), HostFaultConfig::default());
        assert_eq!(faults.spinning_threads(), 0);
    }

    #[test]
    fn cpu_and_memory_faults_start_and_end_when_cleared_or_due() {
        let faults = HostFaults::default();
        let cfg = HostFaultConfig { cpu_threads: 2, memory_bytes: 8 << 20, duration_ms: 60_000 };
        faults.set(cfg).expect("valid");
        assert_eq!(faults.config(), cfg);
        eventually("two threads spin", || faults.spinning_threads() == 2);
        eventually("the memory is held", || faults.held_bytes() == 8 << 20);
        faults.clear();
        eventually("spinning stops when cleared", || faults.spinning_threads() == 0);
        assert_eq!(faults.held_bytes(), 0, "the memory is released when cleared");

        faults.set(HostFaultConfig { cpu_threads: 1, memory_bytes: 1 << 20, duration_ms: 50 }).expect("valid");
        eventually("a fault ends when due", || {
            faults.spinning_threads() == 0 && faults.held_bytes() == 0 && faults.config() == HostFaultConfig::default()
        });
    }
}
