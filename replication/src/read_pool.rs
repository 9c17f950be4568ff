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
//! A full queue refuses the read ([`Admitted::Refused`]: the job answers `Busy`, which a
//! client retries elsewhere) rather than run it on the loop: on a slow disk that is exactly
//! when the queue fills. A job that panics loses its answer (its caller sees the node
//! stopped), not its thread. Dropping the pool lets the threads finish what is queued and
//! waits for them, so no snapshot outlives the store. With `read-threads = 0` there is no
//! pool and every read runs on the loop.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Whether a job was taken by the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Run it: read and answer.
    Run,
    /// The queue is full: answer at once that the node is busy.
    Refused,
}

/// The engine work of one served read, with its callback: run with [`Admitted::Run`] on a
/// pool thread, or with [`Admitted::Refused`] where it was submitted.
pub type ReadJob = Box<dyn FnOnce(Admitted) + Send>;

/// Most threads a pool may have.
pub const MAX_READ_THREADS: usize = 64;

/// Threads running [`ReadJob`]s from a bounded queue (see the module doc).
pub struct ReadPool {
    /// `None` once dropping.
    queue: Option<SyncSender<ReadJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl ReadPool {
    /// Starts `threads` threads (1 to [`MAX_READ_THREADS`]) sharing a queue of at most
    /// `max_queued_reads` jobs.
    pub fn start(node_id: u64, threads: usize, max_queued_reads: usize) -> Result<ReadPool> {
        if !(1..=MAX_READ_THREADS).contains(&threads) || max_queued_reads == 0 {
            return Err(Error::Config(format!(
                "a read pool needs 1 to {MAX_READ_THREADS} threads and room for a read \
                 (read-threads {threads}, max-queued-reads {max_queued_reads})"
            )));
        }
        let (queue, jobs) = sync_channel::<ReadJob>(max_queued_reads);
        let jobs = Arc::new(Mutex::new(jobs));
        let mut pool = ReadPool { queue: Some(queue), threads: Vec::with_capacity(threads) };
        for i in 0..threads {
            let jobs = Arc::clone(&jobs);
            let thread = std::thread::Builder::new()
                .name(format!("presage-read-{node_id}-{i}"))
                .spawn(move || work(&jobs))
                .map_err(|e| Error::Thread(format!("starting read thread {i}: {e}")))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Runs `job` on the pool, or refuses it here at once when the queue is full.
    pub fn run(&self, job: ReadJob) {
        let Some(queue) = &self.queue else { return job(Admitted::Refused) };
        match queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job(Admitted::Refused),
        }
    }
}

impl Drop for ReadPool {
    fn drop(&mut self) {
        // The threads end once the queue is closed and drained.
        drop(self.queue.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn work(jobs: &Mutex<Receiver<ReadJob>>) {
    loop {
        // The lock is held only to take a job, never while running one.
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            // A panic drops the job's callback (its caller learns the read is lost), not
            // the thread.
            Ok(job) => drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Admitted::Run)))),
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
    fn jobs_run_off_the_caller_and_a_full_queue_refuses_them() {
        let pool = ReadPool::start(1, 1, 1).expect("pool");
        let (release_tx, release_rx) = channel::<()>();
        let (done_tx, done_rx) = channel::<(u32, Admitted, std::thread::ThreadId)>();
        let here = std::thread::current().id();
        let job = |n: u32, tx: &std::sync::mpsc::Sender<_>| {
            let tx = tx.clone();
            Box::new(move |a| tx.send((n, a, std::thread::current().id())).expect("send")) as ReadJob
        };
        // The only thread blocks in the first job; the second fills the queue.
        let (started_tx, started_rx) = channel::<()>();
        let d = done_tx.clone();
        pool.run(Box::new(move |a| {
            started_tx.send(()).expect("send");
            release_rx.recv().expect("released");
            d.send((1, a, std::thread::current().id())).expect("send");
        }));
        started_rx.recv_timeout(Duration::from_secs(10)).expect("the first job started");
        pool.run(job(2, &done_tx));
        pool.run(job(3, &done_tx));
        let third = done_rx.recv_timeout(Duration::from_secs(10)).expect("the third job answered");
        assert_eq!(third, (3, Admitted::Refused, here), "a full queue refuses the job where it was submitted");
        // A panicking job costs its answer, not the thread.
        release_tx.send(()).expect("release");
        let mut rest: Vec<_> = (0..2).map(|_| done_rx.recv_timeout(Duration::from_secs(10)).expect("ran")).collect();
        rest.sort_by_key(|(n, _, _)| *n);
        assert!(
            rest.iter().all(|(_, a, t)| *a == Admitted::Run && *t != here),
            "queued jobs run on the pool: {rest:?}"
        );
        pool.run(Box::new(|_| panic!("a job that panics")));
        // Until the panicking job leaves the one-job queue, the next is refused.
        let mut ran = false;
        for _ in 0..1_000 {
            pool.run(job(4, &done_tx));
            let (_, admitted, _) = done_rx.recv_timeout(Duration::from_secs(10)).expect("answered");
            if admitted == Admitted::Run {
                ran = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ran, "the only thread survived the panic");
        drop(pool);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(ReadPool::start(1, 0, 10).is_err());
        assert!(ReadPool::start(1, MAX_READ_THREADS + 1, 10).is_err());
        assert!(ReadPool::start(1, 1, 0).is_err());
    }
}
