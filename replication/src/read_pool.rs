//! The read pool: threads that do the engine work of reads the store loop has served, so a
//! slow read (a degrading disk, a cold block, a long scan) never holds up the loop, and with
//! it every other replica's heartbeats, appends and leadership transfers on the node.
//!
//! Walk-through of a read through the loop (`peer/read.rs`):
//!
//! 1. **serve** (on the loop): the read's index is applied here and its lease or ReadIndex
//!    round says it may be answered. The loop checks the keys against the range, takes the
//!    expiry clock's `now` and an engine snapshot, and wraps them with the callback in a
//!    [`ReadJob`]. Everything that decides *what* the read sees happens here, in the loop's
//!    order: the snapshot holds exactly what was applied when the read was served.
//! 2. **submit**: the job goes to the pool's bounded queue (`max-queued-reads`).
//! 3. **execute** (on a pool thread): the engine reads run on the snapshot and the callback
//!    gets the answer.
//!
//! A full queue is back-pressure, never a refusal: [`ReadPool::run`] then runs the job on the
//! caller's thread, as every read ran before the pool existed. With `read-threads = 0` there
//! is no pool and every read runs on the loop.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};

/// The engine work of one served read, with its callback.
pub type ReadJob = Box<dyn FnOnce() + Send>;

/// Most threads a pool may have.
pub const MAX_READ_THREADS: usize = 64;

/// Threads running [`ReadJob`]s from a bounded queue (see the module doc).
pub struct ReadPool {
    queue: SyncSender<ReadJob>,
}

impl ReadPool {
    /// Starts `threads` threads (1 to [`MAX_READ_THREADS`]) sharing a queue of at most
    /// `max_queued_reads` jobs. The threads stop once the pool is dropped and the queue
    /// drained.
    pub fn start(node_id: u64, threads: usize, max_queued_reads: usize) -> Result<ReadPool> {
        if !(1..=MAX_READ_THREADS).contains(&threads) || max_queued_reads == 0 {
            return Err(Error::Config(format!(
                "a read pool needs 1 to {MAX_READ_THREADS} threads and room for a read \
                 (read-threads {threads}, max-queued-reads {max_queued_reads})"
            )));
        }
        let (queue, jobs) = sync_channel::<ReadJob>(max_queued_reads);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads {
            let jobs = Arc::clone(&jobs);
            std::thread::Builder::new()
                .name(format!("presage-read-{node_id}-{i}"))
                .spawn(move || work(&jobs))
                .map_err(|e| Error::Config(format!("starting read thread {i}: {e}")))?;
        }
        Ok(ReadPool { queue })
    }

    /// Runs `job` on the pool, or here at once when its queue is full.
    pub fn run(&self, job: ReadJob) {
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job(),
        }
    }
}

/// Runs `job` on `pool`, or here at once without one.
pub fn run_on(pool: Option<&ReadPool>, job: ReadJob) {
    match pool {
        Some(pool) => pool.run(job),
        None => job(),
    }
}

fn work(jobs: &Mutex<Receiver<ReadJob>>) {
    loop {
        // The lock is held only to take a job, never while running one.
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[test]
    fn jobs_run_off_the_caller_and_a_full_queue_runs_them_here() {
        let pool = ReadPool::start(1, 1, 1).expect("pool");
        let (release_tx, release_rx) = channel::<()>();
        let (done_tx, done_rx) = channel::<(u32, std::thread::ThreadId)>();
        let here = std::thread::current().id();
        // The only thread blocks in the first job; the second fills the queue.
        let (started_tx, started_rx) = channel::<()>();
        let d = done_tx.clone();
        pool.run(Box::new(move || {
            started_tx.send(()).expect("send");
            release_rx.recv().expect("released");
            d.send((1, std::thread::current().id())).expect("send");
        }));
        started_rx.recv_timeout(Duration::from_secs(10)).expect("the first job started");
        let d = done_tx.clone();
        pool.run(Box::new(move || d.send((2, std::thread::current().id())).expect("send")));
        let d = done_tx.clone();
        pool.run(Box::new(move || d.send((3, std::thread::current().id())).expect("send")));
        let (n, thread) = done_rx.recv_timeout(Duration::from_secs(10)).expect("the third job ran");
        assert_eq!((n, thread), (3, here), "a full queue runs the job on the caller");
        release_tx.send(()).expect("release");
        let mut rest: Vec<_> = (0..2).map(|_| done_rx.recv_timeout(Duration::from_secs(10)).expect("ran")).collect();
        rest.sort_by_key(|(n, _)| *n);
        assert_eq!(rest.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
        assert!(rest.iter().all(|(_, t)| *t != here), "queued jobs run on the pool");
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(ReadPool::start(1, 0, 10).is_err());
        assert!(ReadPool::start(1, MAX_READ_THREADS + 1, 10).is_err());
        assert!(ReadPool::start(1, 1, 0).is_err());
    }
}
