//! Log writes off the store loop. Walk-through of one write:
//!
//! 1. **hand over**: a ready round puts every replica's new entries and hard state into one
//!    batch, tells raft-rs with `advance_append_async` (the entries stay readable from the
//!    entry cache), and hands the batch over as a [`LogJob`] with the ready numbers it
//!    persists and the messages that may go only once it is durable (a follower's
//!    acknowledgements, votes);
//! 2. **write**: the writer takes every job queued and writes their batches as one engine
//!    write, unsynced, then syncs the engine's WAL once (group commit across rounds; a slow
//!    disk is paid once per write, not once per round). Not a synced write: RocksDB keeps
//!    its write queue for the whole of a synced write, so the store loop's own unsynced
//!    writes (the apply of committed entries) would wait for this disk sync; measured, 9% of
//!    them took over 1.28 ms that way, and under 1% once the sync left the queue;
//! 3. **result**: a writer thread given a sender sends the messages itself as soon as the
//!    write is durable (a follower's acknowledgement does not wait for the loop to wake);
//!    the loop takes the [`Persisted`] result, calls `on_persist_ready` for each ready and
//!    marks the log durable in the entry cache, then sends the messages not sent yet;
//!    entries this made committable come in the replica's next ready.
//!
//! Meanwhile the loop goes on: a leader counts its followers' acknowledgements, applies and
//! answers while its own sync runs, and the next proposals gather into the next batch.
//!
//! Three modes, one path: [`LogWrites::Inline`] writes at hand-over (the store driven by
//! hand, in unit tests); [`LogWrites::Deferred`] completes the jobs on the loop itself, after
//! the messages that arrived meanwhile (the runtime on paused time: replays exactly from a
//! seed); [`LogWrites::Thread`] writes on a thread of its own (a node process).
//!
//! Order: jobs complete in the order handed over. Rounds that change which replicas exist or
//! what their metadata is (snapshot installs, splits, merges, removals) first wait for every
//! job in flight ([`Store::flush_log_writes`]) and write their own batch at once, so that no
//! older log write lands after a replica's destruction or a snapshot's metadata.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;

use presage_engine::{Engine, WriteBatch, WriteOptions};

use super::Store;
use crate::error::{Error, Result};
use crate::wire::RaftEnvelope;

/// Most log jobs queued for the writer thread; the loop waits when it is full.
pub const MAX_QUEUED_LOG_JOBS: usize = 64;

/// Sends a Raft message from the writer thread (the node's transport).
pub type SendFromWriter = Arc<dyn Fn(RaftEnvelope) + Send + Sync>;

/// One ready of one replica that a job persists.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PersistedReady {
    pub(crate) shard_id: u64,
    /// raft-rs's number of the ready.
    pub(crate) number: u64,
    /// Its last log entry (index, term), if it appended any.
    pub(crate) last_entry: Option<(u64, u64)>,
}

/// A batch of log writes handed over by one ready round.
pub(crate) struct LogJob {
    pub(crate) batch: WriteBatch,
    /// Must reach the disk before its messages go (new entries, a new term or vote).
    pub(crate) sync: bool,
    pub(crate) readies: Vec<PersistedReady>,
    /// Messages that may go only once the batch is durable.
    pub(crate) messages: Vec<RaftEnvelope>,
}

/// What the writer did with one or more jobs.
pub(crate) struct Persisted {
    /// How many jobs this is the result of.
    jobs: usize,
    readies: Vec<PersistedReady>,
    messages: Vec<RaftEnvelope>,
    /// The engine's error: the node must stop (nothing after it was written).
    result: std::result::Result<(), presage_engine::EngineError>,
}

/// How a store writes its log (see the module doc).
pub(crate) enum LogWrites {
    Inline,
    Deferred(VecDeque<LogJob>),
    Thread(ThreadWriter),
}

/// The writer thread's ends, as the loop holds them.
pub(crate) struct ThreadWriter {
    jobs: Option<mpsc::SyncSender<LogJob>>,
    results: mpsc::Receiver<Persisted>,
    /// Jobs handed over and not yet taken back.
    in_flight: usize,
    notify: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ThreadWriter {
    fn drop(&mut self) {
        // The writer ends once its queue is closed and drained; waiting for it releases the
        // engine before anyone opens it again.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Most bytes of log writes merged into one engine write (each job alone may be larger).
pub const MAX_MERGED_LOG_WRITE_BYTES: usize = 16 << 20;

/// Writes the batches of `jobs` in order, merged into as few engine writes as the byte limit
/// allows (one usually: a slow disk is paid once per write, not once per round), then syncs
/// once if any job asks for it. The writes are unsynced and the sync is [`Engine::sync_wal`]:
/// a synced RocksDB write would keep the engine's write queue for the whole sync, and the
/// store loop's apply writes would wait behind it.
fn write_jobs<E: Engine>(engine: &E, jobs: &mut [LogJob]) -> std::result::Result<(), presage_engine::EngineError> {
    let sync = jobs.iter().any(|j| j.sync);
    let mut merged: Vec<WriteBatch> = Vec::new();
    for job in jobs.iter_mut() {
        let batch = std::mem::take(&mut job.batch);
        if batch.is_empty() {
            continue;
        }
        match merged.last_mut() {
            Some(m) if m.size_bytes() + batch.size_bytes() <= MAX_MERGED_LOG_WRITE_BYTES => {
                m.append(batch);
            }
            _ => merged.push(batch),
        }
    }
    for batch in &merged {
        engine.write(batch, WriteOptions::NO_SYNC)?;
    }
    fail::fail_point!("raft_log_before_sync");
    if sync {
        engine.sync_wal()?;
    }
    Ok(())
}

fn merge(jobs: Vec<LogJob>, result: std::result::Result<(), presage_engine::EngineError>) -> Persisted {
    let mut out = Persisted { jobs: jobs.len(), readies: Vec::new(), messages: Vec::new(), result };
    for job in jobs {
        out.readies.extend(job.readies);
        out.messages.extend(job.messages);
    }
    out
}

fn writer_loop<E: Engine>(
    engine: E,
    jobs: mpsc::Receiver<LogJob>,
    results: mpsc::Sender<Persisted>,
    notify: Arc<tokio::sync::Notify>,
    send: Option<SendFromWriter>,
) {
    while let Ok(first) = jobs.recv() {
        let mut taken = vec![first];
        while taken.len() < MAX_QUEUED_LOG_JOBS {
            match jobs.try_recv() {
                Ok(job) => taken.push(job),
                Err(_) => break,
            }
        }
        let result = write_jobs(&engine, &mut taken);
        let failed = result.is_err();
        if let (Some(send), false) = (&send, failed) {
            // Durable now: what waited for it goes at once.
            for job in &mut taken {
                std::mem::take(&mut job.messages).into_iter().for_each(|env| send(env));
            }
        }
        if results.send(merge(taken, result)).is_err() {
            return; // the store is gone
        }
        notify.notify_one();
        if failed {
            return; // nothing is written after a failed write
        }
    }
}

impl<E: Engine> Store<E> {
    /// Writes the log on a thread of its own from now on; returns what the thread signals
    /// when results wait in [`Store::complete_log_writes`]. With `send`, the thread sends the
    /// messages that waited for a write as soon as it is durable.
    pub fn use_log_writer_thread(&mut self, send: Option<SendFromWriter>) -> Result<Arc<tokio::sync::Notify>> {
        self.flush_log_writes()?;
        let (job_tx, job_rx) = mpsc::sync_channel(MAX_QUEUED_LOG_JOBS);
        // Unbounded in type, bounded in use: one result per taken batch of jobs, and at most
        // `MAX_QUEUED_LOG_JOBS` queued plus as many being written are ever handed over and
        // not taken back.
        let (result_tx, result_rx) = mpsc::channel();
        let notify = Arc::new(tokio::sync::Notify::new());
        let engine = self.engine.clone();
        let signal = Arc::clone(&notify);
        let thread = std::thread::Builder::new()
            .name(format!("raft-log-{}", self.node_id))
            .spawn(move || writer_loop(engine, job_rx, result_tx, signal, send))
            .map_err(|e| Error::Thread(e.to_string()))?;
        self.log_writes = LogWrites::Thread(ThreadWriter {
            jobs: Some(job_tx),
            results: result_rx,
            in_flight: 0,
            notify: Arc::clone(&notify),
            thread: Some(thread),
        });
        Ok(notify)
    }

    /// Completes log writes on the loop, one round after they were handed over (see the
    /// module doc): for a runtime that must replay exactly.
    pub fn defer_log_writes(&mut self) -> Result<()> {
        self.flush_log_writes()?;
        self.log_writes = LogWrites::Deferred(VecDeque::new());
        Ok(())
    }

    /// True while deferred log writes wait for [`Store::complete_log_writes`].
    pub fn has_deferred_log_writes(&self) -> bool {
        matches!(&self.log_writes, LogWrites::Deferred(q) if !q.is_empty())
    }

    /// The signal of the writer thread, if there is one.
    pub fn log_writer_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        match &self.log_writes {
            LogWrites::Thread(w) => Some(Arc::clone(&w.notify)),
            _ => None,
        }
    }

    /// Takes in the log writes done since the last call (deferred ones are written now);
    /// returns the messages that waited for them. An error means the engine failed a write:
    /// the node must stop.
    pub fn complete_log_writes(&mut self) -> Result<Vec<RaftEnvelope>> {
        self.take_log_writes(false)
    }

    /// Hands a ready round's log writes over; returns the messages that may go now (all of
    /// them when the write was made at once).
    pub(super) fn submit_log_job(&mut self, job: LogJob) -> Result<Vec<RaftEnvelope>> {
        match &mut self.log_writes {
            LogWrites::Inline => {
                let mut jobs = vec![job];
                let result = write_jobs(&self.engine, &mut jobs);
                self.on_persisted(merge(jobs, result))
            }
            LogWrites::Deferred(queue) => {
                queue.push_back(job);
                Ok(Vec::new())
            }
            LogWrites::Thread(w) => {
                let Some(tx) = &w.jobs else { return Err(Error::Thread("the log writer is closed".into())) };
                tx.send(job).map_err(|_| Error::Thread("the log writer stopped".into()))?;
                w.in_flight += 1;
                Ok(Vec::new())
            }
        }
    }

    /// Waits for every log write in flight and takes it in; returns the messages that waited.
    pub(super) fn flush_log_writes(&mut self) -> Result<Vec<RaftEnvelope>> {
        self.take_log_writes(true)
    }

    /// Takes in the finished log writes (with `wait`, every one in flight, waiting for the
    /// writer); deferred ones are written now.
    fn take_log_writes(&mut self, wait: bool) -> Result<Vec<RaftEnvelope>> {
        let mut done = Vec::new();
        match &mut self.log_writes {
            LogWrites::Inline => {}
            LogWrites::Deferred(queue) => {
                if !queue.is_empty() {
                    let mut jobs: Vec<LogJob> = queue.drain(..).collect();
                    let result = write_jobs(&self.engine, &mut jobs);
                    done.push(merge(jobs, result));
                }
            }
            LogWrites::Thread(w) => loop {
                let next = if wait && w.in_flight > 0 {
                    Some(w.results.recv().map_err(|_| Error::Thread("the log writer stopped".into()))?)
                } else {
                    w.results.try_recv().ok()
                };
                let Some(p) = next else { break };
                w.in_flight -= p.jobs;
                done.push(p);
            },
        }
        let mut out = Vec::new();
        for p in done {
            out.extend(self.on_persisted(p)?);
        }
        Ok(out)
    }

    /// Tells each replica its ready is durable; the messages that waited may go.
    fn on_persisted(&mut self, p: Persisted) -> Result<Vec<RaftEnvelope>> {
        p.result?;
        for r in &p.readies {
            let Some(peer) = self.peers.get_mut(&r.shard_id) else { continue };
            peer.raw.on_persist_ready(r.number);
            if let Some((index, term)) = r.last_entry {
                peer.raw.mut_store().mark_persisted(index, term);
            }
            // An installed snapshot counts as applied once durable.
            peer.report_applied();
            // Entries this made committable, or a leader's new commit: next round.
            self.touched.insert(r.shard_id);
        }
        Ok(p.messages)
    }
}
