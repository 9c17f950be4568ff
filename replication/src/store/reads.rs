//! Reads on the store: where a linearizable read enters (`Store::read`), and the read pool
//! that served reads do their engine work on (`crate::read_pool`; the walk-through of a read
//! is in `peer/read.rs`).

use super::*;
use crate::read_pool::ReadPool;

impl<E: Engine> Store<E> {
    /// Starts a linearizable read on `shard_id`; with `replica`, a follower serves it too
    /// (a replica read: one ReadIndex round trip to its leader, see `peer/read.rs`).
    pub fn read(&mut self, shard_id: u64, epoch: Epoch, request: ReadRequest, replica: bool, cb: ReadCallback) {
        self.wake_leader(shard_id);
        let Some(peer) = self.peers.get_mut(&shard_id) else {
            return cb(Err(Error::ShardNotFound { shard_id }));
        };
        peer.read(epoch, request, self.now, self.config.lease(), replica, self.read_pool.as_ref(), cb);
        if !peer.is_leader() && peer.has_pending_reads() {
            // Not woken (a sleeping follower would campaign): visited this round to send the
            // ReadIndex request, and its reads aged by the ticks until they are answered.
            self.touched.insert(shard_id);
            self.reading.insert(shard_id);
        }
    }

    /// Serves reads' engine work on `read-threads` threads of their own from now on (none
    /// with `read-threads = 0`: on the loop). What a node process does; the deterministic
    /// test runtime keeps reads on the loop so that a seed replays exactly.
    pub fn start_read_pool(&mut self) -> Result<()> {
        if self.config.read_threads == 0 || self.read_pool.is_some() {
            return Ok(());
        }
        self.read_pool = Some(ReadPool::start(self.node_id, self.config.read_threads, self.config.max_queued_reads)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::super::tests::{deliver, get_a, put, three_leasing_stores};
    use crate::peer::ReadResponse;

    /// A lease fenced off the loop (a stuck loop's hand-off, `crate::lease`) is honoured
    /// nowhere: the loop answers no read at once under it, publishes it no more, and the
    /// leader hands its leadership on at its next round.
    #[test]
    fn a_fenced_lease_serves_nothing_and_its_leader_hands_on() {
        let (mut stores, epoch, _) = three_leasing_stores();
        let (tx, rx) = channel();
        let read = |tx: &std::sync::mpsc::Sender<_>| {
            let tx = tx.clone();
            Box::new(move |r| drop(tx.send(r))) as crate::peer::ReadCallback
        };
        stores[0].read(1, epoch, get_a(), false, read(&tx));
        deliver(&mut stores, Vec::new());
        assert!(rx.try_recv().is_ok(), "the first read started the lease");
        stores[0].read(1, epoch, get_a(), false, read(&tx));
        assert!(rx.try_recv().is_ok(), "answered inside the call, under the lease");
        assert_eq!(stores[0].lease_views().published(), 1);

        let (term, _) = stores[0].lease_views().fence(1).expect("a published lease");
        assert!(stores[0].status(1).expect("replica").is_leader());
        stores[0].read(1, epoch, get_a(), false, read(&tx));
        assert!(rx.try_recv().is_err(), "no read answered at once under a fenced lease");
        deliver(&mut stores, Vec::new());
        assert_eq!(stores[0].lease_views().published(), 0, "the fenced term is not published again");
        assert!(!stores[0].status(1).expect("replica").is_leader(), "the fenced leader handed on");
        let leaders: Vec<_> =
            stores[1..].iter().filter(|s| s.status(1).is_some_and(|st| st.is_leader())).map(|s| s.node_id()).collect();
        assert_eq!(leaders.len(), 1, "another voter leads after term {term}");
    }

    /// With a read pool, a read the loop serves, by ReadIndex or at once under the lease, is
    /// answered on a pool thread, and sees every write acknowledged before it.
    #[test]
    fn served_reads_do_their_engine_work_on_the_pool() {
        let (mut stores, epoch, _) = three_leasing_stores();
        stores[0].start_read_pool().expect("pool");
        let here = std::thread::current().id();
        let (tx, rx) = channel();
        let read = |tx: &std::sync::mpsc::Sender<_>| {
            let tx = tx.clone();
            Box::new(move |r| drop(tx.send((r, std::thread::current().id())))) as crate::peer::ReadCallback
        };
        stores[0].propose(1, epoch, put("a"), None, Box::new(|r| assert!(r.is_ok(), "{r:?}")));
        deliver(&mut stores, Vec::new());
        // The first read confirms the leadership with a round: served by the ready round.
        stores[0].read(1, epoch, get_a(), false, read(&tx));
        deliver(&mut stores, Vec::new());
        // The second is served at once, under the lease the first started.
        stores[0].read(1, epoch, get_a(), false, read(&tx));
        for n in 0..2 {
            let (answer, thread) = rx.recv_timeout(Duration::from_secs(10)).expect("answered");
            assert!(matches!(answer, Ok(ReadResponse::Value(Some(ref v))) if v == b"v"), "read {n}: {answer:?}");
            assert_ne!(thread, here, "read {n} ran on the pool, not the loop");
        }
    }
}
