//! The fuzz targets (`tunnelfleet::fuzzing`) as a bounded, seeded property loop: every corpus
//! file in `fuzz/corpus/<target>/` as is, then `TUNNELFLEET_FUZZ_ITERS` (default 3000)
//! deterministic mutations of them per target. A panic is a failure; its message names the
//! target and the input (hex) to reproduce it. `TUNNELFLEET_FUZZ_SECS` (scripts/fuzz) runs a
//! target for that many seconds instead, with a seed from `TUNNELFLEET_FUZZ_SEED`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tunnelfleet::fuzzing::{TARGETS, mutate};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    assert!(!seeds.is_empty(), "{}: no corpus", dir.display());
    seeds
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn run_one(name: &str, f: fn(&[u8]), input: &[u8]) {
    let r = std::panic::catch_unwind(|| f(input));
    if let Err(e) = r {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "fuzz target {name} panicked ({msg}) on input (hex) {}",
            hex::encode(input)
        );
    }
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations_of_it() {
    let only = std::env::var("TUNNELFLEET_FUZZ_TARGET").ok();
    let secs = env_u64("TUNNELFLEET_FUZZ_SECS");
    let iters = env_u64("TUNNELFLEET_FUZZ_ITERS").unwrap_or(3000);
    let mut total = 0u64;
    for (name, f) in TARGETS {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let seeds = corpus(name);
        for s in &seeds {
            run_one(name, f, s);
        }
        let mut state = env_u64("TUNNELFLEET_FUZZ_SEED").unwrap_or(0x9e37_79b9_7f4a_7c15) | 1;
        let until = secs.map(|s| Instant::now() + Duration::from_secs(s));
        let mut i = 0u64;
        let mut current = seeds[0].clone();
        loop {
            match until {
                Some(t) if Instant::now() >= t => break,
                None if i >= iters => break,
                _ => {}
            }
            // Walk: mutate the last input most of the time, restart from a seed otherwise.
            let base = if i.is_multiple_of(8) {
                &seeds[(i as usize / 8) % seeds.len()]
            } else {
                &current
            };
            let other = &seeds[(i as usize * 7 + 3) % seeds.len()];
            let input = mutate(base, other, &mut state);
            run_one(name, f, &input);
            current = input;
            i += 1;
        }
        total += i;
        eprintln!("fuzz {name}: {} seeds, {i} mutations", seeds.len());
    }
    assert!(only.is_some() || total > 0);
}
