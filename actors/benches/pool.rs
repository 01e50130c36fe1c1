//! Matching throughput of one pool shard holding 10,000 waiting users.
//!
//! Each iteration is one full match cycle at steady state: a newcomer arrives, the
//! shard scores candidates through the interest index and picks a partner (both
//! leave the pool), and a replacement waiter arrives so the pool stays at 10,000.
//! Waiters are set up so they cannot match each other (distinct regions at a step
//! that wants the same region), as in a pool that has already matched everything
//! it could; the newcomer shares its target's region and two interests.
//!
//! * `sparse`: every waiter has its own interests (index lists of length 1).
//! * `dense`: interests drawn from 200 popular slugs, 5 each (lists of ~250), so a
//!   search scores over a thousand candidates.
//!
//! Run: `cargo bench -p rendezvous-actors --bench pool`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rendezvous_actors::config::LadderStep;
use rendezvous_actors::ids::{Interest, UserId};
use rendezvous_actors::matching::pool::{Criteria, Entry, Pool, Roam};

const WAITING: usize = 10_000;

fn ladder() -> Vec<LadderStep> {
    vec![
        LadderStep { after_ms: 0, same_region: true, min_shared: 2 },
        LadderStep { after_ms: 60_000, same_region: false, min_shared: 0 },
    ]
}

struct Setup {
    pool: Pool<()>,
    /// Interests of each waiter slot, to build newcomers and replacements.
    slots: Vec<Vec<Interest>>,
    next_ticket: u64,
    t0: Instant,
}

fn entry(
    ticket: u64,
    user: String,
    interests: Vec<Interest>,
    region: String,
    t0: Instant,
) -> Entry<()> {
    Entry {
        ticket,
        user: UserId::from(user),
        criteria: Criteria {
            interests,
            language: Arc::from("en"),
            roam: Roam::Stays,
            region: Some(Arc::from(region)),
            group_size: 2,
        },
        joined: t0,
        deadline: t0 + Duration::from_secs(3600),
        step: 0,
        link: (),
    }
}

fn setup(dense: bool) -> Setup {
    let t0 = Instant::now();
    let mut pool = Pool::new(ladder());
    let mut slots = Vec::with_capacity(WAITING);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..WAITING {
        let mut interests: Vec<Interest> = if dense {
            (0..5).map(|_| Interest::from(format!("topic{}", rand() % 200))).collect()
        } else {
            (0..5).map(|k| Interest::from(format!("w{i}-{k}"))).collect()
        };
        interests.sort();
        interests.dedup();
        pool.insert(
            entry(i as u64, format!("u{i}"), interests.clone(), format!("region{i}"), t0),
            t0,
        );
        slots.push(interests);
    }
    Setup { pool, slots, next_ticket: WAITING as u64, t0 }
}

fn cycle(s: &mut Setup, slot: usize) {
    let t0 = s.t0;
    let interests = s.slots[slot].clone();
    let ticket = s.next_ticket;
    s.next_ticket += 1;
    // The newcomer shares the slot's region and interests.
    s.pool.insert(
        entry(ticket, format!("n{ticket}"), interests.clone(), format!("region{slot}"), t0),
        t0,
    );
    let m = s
        .pool
        .try_match(ticket, t0, |_, _| false, |_| true)
        .expect("a partner in the slot's region");
    black_box(&m);
    // A replacement waiter takes the matched slot.
    let ticket = s.next_ticket;
    s.next_ticket += 1;
    s.pool.insert(entry(ticket, format!("r{ticket}"), interests, format!("region{slot}"), t0), t0);
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_10k_waiting");
    group.throughput(Throughput::Elements(1));
    for (name, dense) in [("sparse", false), ("dense", true)] {
        let mut s = setup(dense);
        let mut slot = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                slot = (slot + 7_919) % WAITING;
                cycle(&mut s, slot);
            })
        });
        assert_eq!(s.pool.len(), WAITING, "steady state holds 10,000 waiting");
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
