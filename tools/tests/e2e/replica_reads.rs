//! Replica reads on real node processes: a client with `replica_reads` reads back every
//! acknowledged write, some reads are served by followers (`presage_replica_reads_total`),
//! and none is stale.

use std::collections::BTreeMap;

use presage_client::{Client, ClientConfig};
use presage_playground::{ClusterFile, Playground};

/// Sum of `presage_replica_reads_total` over every node.
async fn served_by_followers(pg: &Playground, cluster: &ClusterFile) -> f64 {
    let mut total = 0.0;
    for n in &cluster.nodes {
        let admin = pg.admin(n.id).expect("admin").client();
        let text =
            tokio::task::spawn_blocking(move || admin.get_raw("/metrics")).await.expect("join").expect("metrics");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("presage_replica_reads_total "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        total += value.expect("presage_replica_reads_total on every node");
    }
    total
}

/// Reads every pair of `acked` through a replica-reading client, then overwrites a few and
/// reads them at once: followers answer, and with the newest values.
pub(super) async fn check(pg: &Playground, cluster: &ClusterFile, acked: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
    let cfg = ClientConfig { replica_reads: true, ..cluster.security.client_config() };
    let reader = Client::connect(&cluster.native_addrs(), cfg).await.expect("replica-reading client");
    let writer = Client::connect(&cluster.native_addrs(), cluster.security.client_config()).await.expect("client");
    let before = served_by_followers(pg, cluster).await;
    for (k, v) in acked.iter() {
        assert_eq!(reader.get(k).await.expect("replica read").as_ref(), Some(v), "{}", String::from_utf8_lossy(k));
    }
    // Read-your-writes across clients: a write acknowledged by the leader is seen by the
    // next replica read, wherever it lands.
    for i in 0..50u32 {
        let (k, v) = (format!("replica-read-{i:03}").into_bytes(), format!("v{i}").into_bytes());
        writer.put(&k, &v).await.expect("put");
        assert_eq!(reader.get(&k).await.expect("replica read"), Some(v.clone()), "replica-read-{i:03}");
        acked.insert(k, v);
    }
    let served = served_by_followers(pg, cluster).await - before;
    assert!(served > 0.0, "no read was served by a follower");
    eprintln!("replica reads: {served} of {} served by followers", acked.len());

    // RESP: READONLY makes a connection's reads replica reads (pipelined ones too), READWRITE
    // ends it.
    let mut resp = super::redis_conn(&cluster.security, &cluster.nodes[0].resp).await;
    let () = redis::cmd("READONLY").query_async(&mut resp).await.expect("READONLY");
    let before = served_by_followers(pg, cluster).await;
    let keys: Vec<&Vec<u8>> = acked.keys().take(60).collect();
    for k in &keys {
        let got: Option<Vec<u8>> = redis::cmd("GET").arg(k.as_slice()).query_async(&mut resp).await.expect("GET");
        assert_eq!(got.as_ref(), acked.get(*k), "{}", String::from_utf8_lossy(k));
    }
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("GET").arg(k.as_slice());
    }
    let got: Vec<Option<Vec<u8>>> = pipe.query_async(&mut resp).await.expect("pipelined GETs");
    assert!(got.iter().zip(&keys).all(|(v, k)| v.as_ref() == acked.get(*k)), "pipelined replica reads");
    let served = served_by_followers(pg, cluster).await - before;
    assert!(served > 0.0, "READONLY: no read was served by a follower");
    let () = redis::cmd("READWRITE").query_async(&mut resp).await.expect("READWRITE");
}
