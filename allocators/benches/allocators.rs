//! Allocator benchmarks; workloads mirror the ones run against upstream's bitmap allocator.
//!
//! Every benchmark uses `iter_custom` with one criterion iteration = one operation, so the
//! reported time is per allocation / per op. Setup (filling, picking random addresses) is kept
//! out of the timed sections; state that stays valid across samples is built once.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portico_allocators::{Allocator, IpAllocator, IpRange, PortAllocator, PortRange, ValueRange};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0x5eed_1234;
const OPS: usize = 100_000;

fn range(cidr: &str) -> IpRange {
    cidr.parse().expect("bench range")
}

fn filled(cidr: &str, count: u64) -> (IpAllocator, Vec<IpAddr>) {
    let mut a = IpAllocator::new(range(cidr));
    let held = (0..count)
        .map(|_| a.allocate_next().expect("room left"))
        .collect();
    (a, held)
}

/// Time of `iters` `allocate_next` calls, each on a fresh allocator from `new` until it is full.
fn fill_time<R: ValueRange>(iters: u64, new: impl Fn() -> Allocator<R>) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let start = Instant::now();
        let mut a = new();
        while left > 0 {
            match a.allocate_next() {
                Ok(v) => {
                    black_box(v);
                    left -= 1;
                }
                Err(_) => break,
            }
        }
        total += start.elapsed();
        drop(a);
    }
    total
}

fn ip_fill_slash16(c: &mut Criterion) {
    let mut g = c.benchmark_group("ip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fill_slash16", |b| {
        b.iter_custom(|iters| fill_time(iters, || IpAllocator::new(range("10.0.0.0/16"))))
    });
    g.finish();
}

fn ip_churn_90pct_slash16(c: &mut Criterion) {
    let mut g = c.benchmark_group("ip");
    g.throughput(Throughput::Elements(1));
    let size = range("10.0.0.0/16").size();
    let (mut a, mut held) = filled("10.0.0.0/16", size * 9 / 10);
    let mut rng = StdRng::seed_from_u64(SEED);
    g.bench_function("churn_90pct_slash16", |b| {
        b.iter_custom(|iters| {
            let picks: Vec<usize> = (0..iters).map(|_| rng.random_range(0..held.len())).collect();
            let start = Instant::now();
            for i in picks {
                a.release(held[i]);
                held[i] = a.allocate_next().expect("10% free");
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn ip_specific_slash12(c: &mut Criterion) {
    let mut g = c.benchmark_group("ip");
    g.throughput(Throughput::Elements(1));
    let r = range("10.0.0.0/12");
    let mut a = IpAllocator::new(r);
    let mut rng = StdRng::seed_from_u64(SEED);
    let ips: Vec<IpAddr> = (0..OPS)
        .map(|_| r.ip_at(rng.random_range(0..r.size() as u32)).expect("in range"))
        .collect();
    g.bench_function("specific_slash12", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for ip in ips.iter().cycle().take(iters as usize) {
                a.allocate(*ip).expect("empty allocator");
                a.release(*ip);
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn ip_last_free_slash12(c: &mut Criterion) {
    let mut g = c.benchmark_group("ip");
    g.throughput(Throughput::Elements(1));
    let r = range("10.0.0.0/12");
    let mut a = IpAllocator::new(r);
    while a.allocate_next().is_ok() {}
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut free = r.ip_at(rng.random_range(0..r.size() as u32)).expect("in range");
    a.release(free);
    g.bench_function("last_free_slash12", |b| {
        b.iter_custom(|iters| {
            let picks: Vec<u32> = (0..iters).map(|_| rng.random_range(0..r.size() as u32)).collect();
            let start = Instant::now();
            for k in picks {
                let victim = r.ip_at(k).expect("in range");
                // Releasing the one free address would be a no-op; one pick in a million.
                if victim == free {
                    continue;
                }
                a.release(victim);
                let got = a.allocate_next().expect("two free");
                free = if got == victim { free } else { victim };
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn ip_snapshot_slash12_half(c: &mut Criterion) {
    let mut g = c.benchmark_group("ip");
    g.throughput(Throughput::Elements(1));
    let r = range("10.0.0.0/12");
    let (a, _) = filled("10.0.0.0/12", r.size() / 2);
    let snap = a.snapshot();
    let rounds = 200;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(a.snapshot());
    }
    let take = start.elapsed() / rounds;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(IpAllocator::from_snapshot(r, &snap).expect("same range"));
    }
    let restore = start.elapsed() / rounds;
    eprintln!(
        "ip/snapshot_slash12_half: {} used addresses -> {} bytes of bitmap ({} with range, to_bytes); \
         snapshot {take:?}, restore {restore:?}; upstream: 131072 bytes",
        a.used(),
        snap.data.len(),
        snap.to_bytes().len(),
    );
    g.bench_function("snapshot_slash12_half", |b| {
        b.iter(|| {
            let snap = a.snapshot();
            let restored = IpAllocator::from_snapshot(r, &snap).expect("same range");
            black_box(restored)
        })
    });
    g.finish();
}

fn port_fill_default_range(c: &mut Criterion) {
    let mut g = c.benchmark_group("port");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fill_default_range", |b| {
        b.iter_custom(|iters| fill_time(iters, || PortAllocator::new(PortRange::default())))
    });
    g.finish();
}

criterion_group!(
    benches,
    ip_fill_slash16,
    ip_churn_90pct_slash16,
    ip_specific_slash12,
    ip_last_free_slash12,
    ip_snapshot_slash12_half,
    port_fill_default_range
);
criterion_main!(benches);
