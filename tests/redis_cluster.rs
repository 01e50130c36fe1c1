//! Redis Cluster: a real cluster of six `redis-server` processes (three primaries,
//! each with a replica; harness: `common::redis_cluster`) and `rendezvous` nodes
//! joined through its `redis+cluster://` URL.
//!
//! * The harness itself: the cluster forms, a `kill -9` primary is replaced by
//!   its replica, a slot migrates with its keys.
//! * The engine on it: a storm of 2,000 searches over three nodes with no double
//!   or asymmetric match; groups of three with one member per node; cross-node
//!   chat with nothing lost, doubled or out of order; `kill -9` of a primary
//!   during a storm and during chat (no double match, nothing acknowledged lost,
//!   `/readyz` 503 then 200, service back within `cluster-node-timeout` + 5 s);
//!   a room's slot migrated during chat; a node started later that learns the
//!   pools, rooms and blocks.
//!
//! The tests take one lock in turn: each runs nine processes and some kill them.

use rendezvous_test_support as common;

use std::time::Duration;

use common::cluster::Resp;
use common::redis_cluster::{RedisCluster, NODE_TIMEOUT_MS, SLOTS};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

// ---------------------------------------------------------------- the harness

/// Three primaries share every slot, each has a replica, the seed URL names three
/// members, and a key written through its owner is read back there.
#[tokio::test]
async fn the_harness_forms_a_cluster_of_three_primaries_with_replicas() {
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{}", cluster.describe());
    for p in &primaries {
        assert_eq!(cluster.replicas_of(*p).len(), 1, ":{p}\n{}", cluster.describe());
    }
    let owners: std::collections::BTreeSet<u16> =
        [0, SLOTS / 2, SLOTS - 1].iter().map(|s| cluster.primary_of_slot(*s)).collect();
    assert_eq!(owners.len(), 3, "slots 0, 8192 and 16383 are on three primaries");
    assert_eq!(cluster.url().matches("127.0.0.1:").count(), 3, "{}", cluster.url());
    assert!(cluster.url().starts_with("redis+cluster://"), "{}", cluster.url());

    let key = "rdv:room:{harness}:seq";
    let owner = cluster.primary_of_key(key);
    assert_eq!(cluster.cmd(owner, &["SET", key, "7"]), Resp::Simple("OK".into()));
    assert_eq!(cluster.cmd_key(key, &["GET", key]), Resp::Bulk(Some("7".into())));
    let other = *primaries.iter().find(|p| **p != owner).expect("another primary");
    match cluster.cmd(other, &["GET", key]) {
        Resp::Error(e) => assert!(e.starts_with("MOVED "), "{e}"),
        reply => panic!("a primary that does not own {key} answered {reply:?}"),
    }
    assert!(cluster.info_cpu(owner) > 0.0);
}

/// `kill -9` of a primary: its replica is promoted, owns the slot, and the
/// cluster is `ok` again (seen from the survivors) within the node timeout plus a
/// few seconds; the data written before the kill (and replicated) is there.
#[tokio::test]
async fn the_harness_kills_a_primary_and_its_replica_takes_over() {
    let _serial = SERIAL.lock().await;
    let mut cluster = RedisCluster::start();
    let key = "rdv:room:{failover}:seq";
    let slot = cluster.slot_of(key);
    let owner = cluster.primary_of_slot(slot);
    let replica = cluster.replicas_of(owner)[0];
    assert_eq!(cluster.cmd(owner, &["SET", key, "41"]), Resp::Simple("OK".into()));
    assert_eq!(cluster.cmd(owner, &["WAIT", "1", "2000"]), Resp::Int(1), "replicated");

    let killed = cluster.kill9_primary_of_slot(slot);
    assert_eq!(killed, owner);
    let took = cluster
        .wait_promoted(slot, Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(15));
    eprintln!("replica :{replica} promoted {took:?} after the kill of :{killed}");
    assert_eq!(cluster.primary_of_slot(slot), replica);
    assert_eq!(cluster.cmd_key(key, &["GET", key]), Resp::Bulk(Some("41".into())));
    assert!(!cluster.live_ports().contains(&killed));
}

/// A slot with keys in it moves to another primary: every key is readable there,
/// the old owner redirects with `MOVED`, and every member agrees on the owner.
#[tokio::test]
async fn the_harness_migrates_a_slot_with_its_keys() {
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start();
    let keys: Vec<String> = (0..25).map(|i| format!("rdv:room:{{moving}}:k{i}")).collect();
    let slot = cluster.slot_of(&keys[0]);
    let from = cluster.primary_of_slot(slot);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(cluster.cmd(from, &["SET", k, &i.to_string()]), Resp::Simple("OK".into()));
    }
    let to = *cluster.primaries().iter().find(|p| **p != from).expect("another primary");
    let moved = cluster.migrate_slot_paced(slot, to, 4, Duration::from_millis(20));
    assert_eq!(moved, keys.len());
    assert_eq!(cluster.primary_of_slot(slot), to);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(cluster.cmd(to, &["GET", k]), Resp::Bulk(Some(i.to_string())), "{k}");
    }
    match cluster.cmd(from, &["GET", &keys[0]]) {
        Resp::Error(e) => assert!(e.starts_with(&format!("MOVED {slot} ")), "{e}"),
        reply => panic!("the old owner answered {reply:?}"),
    }
    assert_eq!(cluster.cmd(from, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]), Resp::Int(0));
}
