//! The hostile corpus of `tests/hostile.rs`, in process (no HTTP, no TLS), on one thread, with
//! a counting allocator: wall time, CPU time and the peak of extra live heap per review, and the
//! answer's size. Release numbers for the README's "what a hostile review costs".
//!
//! ```text
//! cargo bench -p portico-webhook --bench hostile [-- FILTER] [--repeat N]
//! ```
//!
//! Peak extra allocation: the most bytes live at once through the global allocator while
//! `Handlers::answer` runs, above what was live before it (the body itself was allocated before,
//! so it is not counted). The `/mutate` rows run against `ServiceAllocator::in_memory`.

#[path = "../tests/hostile/alloc.rs"]
mod alloc;
#[path = "../tests/hostile/corpus.rs"]
mod corpus;

use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_allocation::{AllocationConfig, ServiceAllocator};
use portico_webhook::validation::Options;
use portico_webhook::{Endpoint, Handlers, Validator};

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((t(11) + t(12)) * 10)
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut repeat = 3usize;
    let mut filter = None;
    let mut i = 0;
    while i < argv.len() {
        if argv[i] == "--repeat" {
            repeat = argv.get(i + 1).and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
            i += 2;
            continue;
        }
        filter = Some(argv[i].clone());
        i += 1;
    }
    let allocator = ServiceAllocator::in_memory(
        AllocationConfig::parse("10.96.0.0/16", "30000-32767").expect("allocation config"),
    )
    .expect("in-memory allocator");
    let handlers = Handlers::new(Validator::new(Options::default())).with_mutator(Arc::new(allocator));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut cases = corpus::all(1);
    cases.insert(1, corpus::mutate_ports(20_000));
    println!(
        "{:<58} {:>9} {:>9} {:>9} {:>12} {:>10} {:>6}",
        "case", "body", "wall", "cpu", "peak extra", "answer", "status"
    );
    for case in cases {
        if filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let endpoint = if case.path == "/mutate" {
            Endpoint::Mutate
        } else {
            Endpoint::Validate
        };
        let (mut wall, mut cpu, mut peak, mut size, mut status) = (Duration::MAX, Duration::MAX, 0, 0, 0);
        for _ in 0..repeat {
            let (w0, c0) = (Instant::now(), thread_cpu());
            let window = alloc::Peak::start();
            let answer = rt.block_on(handlers.answer(endpoint, &case.body, Duration::from_secs(25), None));
            let extra = window.extra();
            let (w, c) = (w0.elapsed(), thread_cpu().saturating_sub(c0));
            wall = wall.min(w);
            cpu = cpu.min(c);
            peak = peak.max(extra);
            size = answer.body.len();
            status = answer.http_status;
        }
        println!(
            "{:<58} {:>8.2}M {:>7.1}ms {:>7.0}ms {:>11.2}M {:>9}B {:>6}",
            case.name,
            case.body.len() as f64 / 1e6,
            wall.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3,
            peak as f64 / (1 << 20) as f64,
            size,
            status
        );
    }
}
