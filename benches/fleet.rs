//! Fleet benchmarks against the real testbed (needs root). Not a test: it prints wall times.
//!
//! `cargo bench --bench fleet` runs `check` on 1 host and on 50 hosts, both with 20 ms of
//! one-way latency between the controller and each host, and prints the median of 3 runs.
//! Goal (issue 2): 50 hosts in at most 2x the time of 1.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_check(hosts: usize, latency_ms: u32, runs: usize) -> Duration {
    let lat = latency_ms.to_string();
    let tb = common::Testbed::up(hosts, &["--latency-ms", &lat]);
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = tb.tf("check", &["--json"]);
        times.push(t.elapsed());
        assert!(out.status.success(), "{}", common::describe(&out));
    }
    median(times)
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if !filter.is_empty() && !filter.iter().any(|f| "check".contains(f.as_str())) {
        return;
    }
    let one = time_check(1, 20, 3);
    let fifty = time_check(50, 20, 3);
    println!("check, 20 ms one-way latency, median of 3 runs:");
    println!("  1 host:   {:>8.1} ms", one.as_secs_f64() * 1000.0);
    println!("  50 hosts: {:>8.1} ms", fifty.as_secs_f64() * 1000.0);
    println!(
        "  ratio 50/1: {:.2} (goal: <= 2.0)",
        fifty.as_secs_f64() / one.as_secs_f64()
    );
}
