//! A client's steady load for the multi-process tests: one request every 5 ms until stopped,
//! counting failed requests and keeping every acknowledged write, then reading each back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presage_client::Client;

use super::get_retrying;

/// A running load (see the module doc).
pub(super) struct Load {
    client: Arc<Client>,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Writes keys `{prefix}0000`.. (`keys` of them, round robin), each preceded by a read of
    /// the same key when `read_too`; a request counts as failed when either fails.
    pub(super) fn start(client: Arc<Client>, prefix: &'static str, keys: u64, read_too: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>> = Arc::default();
        let task = {
            let (client, stop, failed, acked) =
                (Arc::clone(&client), Arc::clone(&stop), Arc::clone(&failed), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (k, v) = (format!("{prefix}{:04}", i % keys).into_bytes(), format!("v{i}").into_bytes());
                    let read = if read_too { client.get(&k).await.map(|_| ()) } else { Ok(()) };
                    match client.put(&k, &v).await.and(read) {
                        Ok(()) => {
                            acked.lock().expect("acked").insert(k, v);
                        }
                        Err(e) => {
                            eprintln!("request {i} failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        Load { client, stop, failed, acked, task }
    }

    /// Stops the load, asserts that no request failed and that every acknowledged write
    /// reads back; returns how many keys were acknowledged.
    pub(super) async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task");
        assert_eq!(self.failed.load(Ordering::Relaxed), 0, "no request failed");
        let acked = self.acked.lock().expect("acked").clone();
        for (k, v) in &acked {
            assert_eq!(get_retrying(&self.client, k).await.as_deref(), Some(v.as_slice()), "acknowledged {k:?}");
        }
        acked.len()
    }
}
