//! Snapshot transfer: the data behind a Raft snapshot travels as the engine's export chunks
//! (zstd-compressed, crc32-checked, 1 MiB), not inside the Raft message.
//!
//! Sender (the leader): when Raft wants to send `MsgSnapshot`, the store holds the message
//! back and starts an [`OutgoingSnapshot`] over the engine snapshot taken when Raft asked for
//! the snapshot. Chunks go out within a window of unacknowledged chunks and the node's byte
//! budget (`snapshot_rate_bytes_per_sec`, shared by all transfers). Each acknowledgement
//! carries the receiver's durable resume point; a gap, a restart of either side or a lost
//! chunk is repaired by resuming the export there. When the receiver reports the stream
//! complete and verified, the held `MsgSnapshot` goes out.
//!
//! Receiver: each chunk goes through an `Importer` that stages it durably (nothing touches
//! the shard's range yet) and answers with an acknowledgement. A `MsgSnapshot` reaches Raft
//! only if its stream is complete; when Raft then installs it, the staged range is switched
//! in atomically and the log restarts after the snapshot index.

use std::collections::VecDeque;

use bytes::Bytes;
use presage_engine::transfer::{abort_import, ImportOptions, Importer, ResumePoint};
use presage_engine::{Cf, Engine, ExportOptions, Exporter, KeyRange, TransferError};
use raft::eraftpb::Message;

use crate::config::RaftConfig;
use crate::error::{Error, Result};
use crate::wire::{RaftEnvelope, ShardDescriptor, SnapshotAck, SnapshotChunk};

/// Import id under which a node stages the incoming snapshot of a shard (one at a time).
pub fn import_id(shard_id: u64) -> u64 {
    shard_id
}

/// A snapshot being streamed to one receiver.
pub struct OutgoingSnapshot<E: Engine> {
    /// The shard.
    pub shard_id: u64,
    /// The receiving node.
    pub to: u64,
    /// Raft index of the snapshot (also the export's stream id).
    pub index: u64,
    /// The Raft message to deliver once the data is there.
    pub msg: Message,
    descriptor: ShardDescriptor,
    exporter: Option<Exporter<E::Snapshot>>,
    next_seq: u64,
    unacked: VecDeque<(u64, Bytes)>,
    exhausted: bool,
    idle_ticks: u64,
    /// Bytes sent so far (resends included).
    pub bytes_sent: u64,
}

/// What an acknowledgement means for the sender.
pub enum AckOutcome {
    /// More to send.
    Continue,
    /// The receiver has everything: deliver the Raft message.
    Complete,
    /// The transfer cannot go on.
    Failed(String),
}

impl<E: Engine> OutgoingSnapshot<E> {
    /// Starts streaming `data` (the engine as of `index`) of `descriptor`'s range to `to`.
    pub fn new(
        to: u64,
        msg: Message,
        descriptor: ShardDescriptor,
        data: E::Snapshot,
        config: &RaftConfig,
    ) -> Result<Self> {
        let index = msg.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.index);
        let opts = ExportOptions { max_chunk_bytes: config.snapshot_chunk_bytes, ..ExportOptions::new(index) };
        let exporter = Exporter::new(data, Cf::Data, descriptor.range()?, opts);
        Ok(OutgoingSnapshot {
            shard_id: descriptor.id,
            to,
            index,
            msg,
            descriptor,
            exporter: Some(exporter),
            next_seq: 0,
            unacked: VecDeque::new(),
            exhausted: false,
            idle_ticks: 0,
            bytes_sent: 0,
        })
    }

    fn envelope(&self, from: u64, frame: &Bytes) -> RaftEnvelope {
        RaftEnvelope {
            shard_id: self.shard_id,
            from_node: from,
            to_node: self.to,
            descriptor: Some(self.descriptor.clone()),
            snapshot_chunk: Some(SnapshotChunk { index: self.index, frame: frame.to_vec() }),
            ..RaftEnvelope::default()
        }
    }

    /// Sends new chunks while the window and `budget_bytes` allow; returns the bytes used.
    pub fn pump(
        &mut self,
        from: u64,
        config: &RaftConfig,
        budget_bytes: i64,
        out: &mut Vec<RaftEnvelope>,
    ) -> Result<i64> {
        let mut used = 0i64;
        while !self.exhausted && self.unacked.len() < config.snapshot_window_chunks && used < budget_bytes {
            let Some(exporter) = self.exporter.as_mut() else { break };
            match exporter.next() {
                Some(Ok(frame)) => {
                    used += frame.len() as i64;
                    self.bytes_sent += frame.len() as u64;
                    out.push(self.envelope(from, &frame));
                    self.unacked.push_back((self.next_seq, frame));
                    self.next_seq += 1;
                }
                Some(Err(e)) => return Err(e.into()),
                None => self.exhausted = true,
            }
        }
        Ok(used)
    }

    /// One tick without an acknowledgement: after `snapshot_resend_ticks`, the window goes
    /// out again; after `snapshot_timeout_ticks`, the transfer fails.
    pub fn on_tick(&mut self, from: u64, config: &RaftConfig, out: &mut Vec<RaftEnvelope>) -> bool {
        self.idle_ticks += 1;
        if self.idle_ticks > config.snapshot_timeout_ticks {
            return false;
        }
        if self.idle_ticks.is_multiple_of(config.snapshot_resend_ticks) {
            for (_, frame) in &self.unacked {
                self.bytes_sent += frame.len() as u64;
                out.push(self.envelope(from, frame));
            }
        }
        true
    }

    /// Applies the receiver's acknowledgement.
    pub fn on_ack(&mut self, ack: &SnapshotAck) -> AckOutcome {
        if ack.index != self.index {
            return AckOutcome::Continue; // an older transfer's echo
        }
        self.idle_ticks = 0;
        if ack.ended {
            return AckOutcome::Complete;
        }
        while self.unacked.front().is_some_and(|(seq, _)| *seq < ack.next_seq) {
            self.unacked.pop_front();
        }
        let oldest = self.unacked.front().map_or(self.next_seq, |(seq, _)| *seq);
        if ack.next_seq == oldest {
            return AckOutcome::Continue;
        }
        // The receiver is elsewhere in the stream (it restarted, or kept an earlier
        // attempt's chunks): restart the export at its resume point.
        let Some(exporter) = self.exporter.take() else { return AckOutcome::Failed("exporter missing".into()) };
        let (cf, range): (Cf, KeyRange) = {
            let (cf, r) = exporter.target();
            (cf, r.clone())
        };
        let opts = exporter.options();
        let at = ResumePoint {
            stream_id: Some(self.index),
            next_seq: ack.next_seq,
            after_key: ack.after_key.clone(),
            ended: false,
        };
        match Exporter::resume(exporter.into_reader(), cf, range, opts, &at) {
            Ok(ex) => {
                self.exporter = Some(ex);
                self.unacked.clear();
                self.next_seq = ack.next_seq;
                self.exhausted = false;
                AckOutcome::Continue
            }
            Err(e) => AckOutcome::Failed(format!("cannot resume at {at:?}: {e}")),
        }
    }
}

/// Receiver: stages one chunk and returns the acknowledgement to send back.
pub fn receive_chunk<E: Engine>(
    engine: &E,
    node_id: u64,
    env: &RaftEnvelope,
    chunk: &SnapshotChunk,
) -> Result<RaftEnvelope> {
    let desc =
        env.descriptor.as_ref().ok_or(Error::Corrupt { what: "snapshot chunk", reason: "no descriptor".into() })?;
    let range = desc.range()?;
    let id = import_id(env.shard_id);
    let opts = ImportOptions::default();
    let mut importer = match Importer::open(engine, id, Cf::Data, range.clone(), opts) {
        Ok(imp) if imp.resume_point().stream_id.is_none_or(|s| s == chunk.index) => imp,
        Ok(_) | Err(TransferError::ImportConflict { .. }) => {
            // Staging of another snapshot (an older index, or the shard's range changed).
            abort_import(engine, id)?;
            Importer::open(engine, id, Cf::Data, range, opts).map_err(transfer_err)?
        }
        Err(e) => return Err(transfer_err(e)),
    };
    if let Err(e) = importer.push(&chunk.frame) {
        // Out of order, duplicated or damaged: the acknowledgement below tells the sender
        // where to resume.
        tracing::debug!(node = node_id, shard = env.shard_id, error = %e, "snapshot chunk refused");
    }
    let at = importer.resume_point();
    Ok(RaftEnvelope {
        shard_id: env.shard_id,
        from_node: node_id,
        to_node: env.from_node,
        snapshot_ack: Some(SnapshotAck {
            index: chunk.index,
            next_seq: at.next_seq,
            after_key: at.after_key,
            ended: at.ended,
        }),
        ..RaftEnvelope::default()
    })
}

/// Receiver: is the data of snapshot `index` of `shard_id` fully staged and verified?
pub fn is_staged<E: Engine>(engine: &E, shard_id: u64, range: &KeyRange, index: u64) -> bool {
    match Importer::open(engine, import_id(shard_id), Cf::Data, range.clone(), ImportOptions::default()) {
        Ok(imp) => {
            let at = imp.resume_point();
            at.ended && at.stream_id == Some(index)
        }
        Err(_) => false,
    }
}

/// Receiver: switches the staged data of `shard_id` into its range (atomically).
pub fn install<E: Engine>(engine: &E, shard_id: u64, range: &KeyRange) -> Result<()> {
    let mut importer = Importer::open(engine, import_id(shard_id), Cf::Data, range.clone(), ImportOptions::default())
        .map_err(transfer_err)?;
    importer.finish().map_err(transfer_err)?;
    Ok(())
}

fn transfer_err(e: TransferError) -> Error {
    Error::Engine(e.to_string())
}
