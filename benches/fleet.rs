//! Fleet benchmarks against the real testbed (needs root). Not tests: they print wall times.
//!
//! `cargo bench --bench fleet [connect|check|deploy|rotate]`:
//! - connect: connect + one trivial command on 1 and 50 hosts at 20 ms (the controller's own
//!   parallelism, without the stand-ins' CPU);
//! - check: `check` on 1 host and on 50 hosts, 20 ms one-way latency, median of 3 runs
//!   (goal, issue 2: 50 hosts in at most 2x the time of 1);
//! - deploy: a no-op `deploy` on 50 hosts at 20 ms: wall time, and remote commands per host
//!   counted from the testbed's command log (goal, issue 3: one round trip per host after
//!   connecting);
//! - rotate: `rotate-token` on 10 and on 50 hosts at 20 ms: exposure window (new token in
//!   hand -> last host ready on it), wall time, fewest hosts with a connector per the edge's
//!   timeline, when the canary and the median host were ready, and the CPU of the controller
//!   and of the whole machine during the run (the simulated hosts share its 2 cores)
//!   (goal, issue 4: the window on 50 hosts at most 1.2x the window on 10).
//! - upgrade: a staged upgrade on 10 and 50 hosts at 20 ms: a connector-only release (every
//!   host make-before-break, --batch 25%) and a proxy release (config change: every host
//!   recreated, --max-unavailable 10%), both with --min-healthy 2s: wall time, time per batch,
//!   fewest hosts up per the edge, remote commands per host, controller and machine CPU.
//! - rtt: round trips of each rotation phase on 10 hosts at 10 and 50 ms one-way latency
//!   (issue 13): process start -> token in hand (preflight), token in hand -> `.env` persisted
//!   on every host, token in hand -> every host ready on the new token (the report, and the
//!   edge's timeline), plus `status`, `check`, a no-op `deploy` and OpenSSH's `ssh h1 true`;
//!   the slope (t50 - t10) / 80 ms counts round trips whatever the CPU costs.
//! - testbed: what the simulated hosts themselves cost (issue 12, "a testbed that measures the
//!   tool, not itself"), on 10, 50 and 200 hosts at 10 ms (`TESTBED_BENCH_HOSTS=10,50` to
//!   choose): after a deploy, 60 s idle: the hosts' CPU per host per second (their cgroups,
//!   `testbed cpu`), the machine's 1-minute load average at the end, and whether the edge
//!   dropped a connector meanwhile (fewest hosts up); then a `rotate-token`: CPU per host in
//!   the rotation (cgroups), fewest hosts up (edge), wall. `TESTBED_ENGINE=0` compares with
//!   an interpreter per `docker` command (no per-host engine).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// CPU time (user + system) used so far by this process's finished children: the
/// tunnelfleet runs, not the testbed hosts (their sshd and stand-ins are not our children).
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills a zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Busy CPU time of the whole machine so far (all cores: user, nice, system, irq, softirq,
/// steal from /proc/stat), to show what the simulated hosts cost beside the controller.
fn machine_busy() -> Duration {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        .filter(|(i, _)| [0, 1, 2, 5, 6, 7].contains(i))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn time_check(hosts: usize, latency_ms: u32, runs: usize) -> (Duration, Duration) {
    let lat = latency_ms.to_string();
    let tb = common::Testbed::up(hosts, &["--latency-ms", &lat]);
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..runs {
        let c = children_cpu();
        let t = Instant::now();
        let out = tb.tf("check", &["--json"]);
        times.push(t.elapsed());
        cpu.push(children_cpu().saturating_sub(c));
        assert!(out.status.success(), "{}", common::describe(&out));
    }
    (median(times), median(cpu))
}

fn bench_check() {
    let (one, one_cpu) = time_check(1, 20, 3);
    let (fifty, fifty_cpu) = time_check(50, 20, 3);
    println!("check, 20 ms one-way latency, median of 3 runs (controller CPU in brackets):");
    println!(
        "  1 host:   {:>8.1} ms [{:.0} ms CPU]",
        ms(one),
        ms(one_cpu)
    );
    println!(
        "  50 hosts: {:>8.1} ms [{:.0} ms CPU]",
        ms(fifty),
        ms(fifty_cpu)
    );
    println!("  ratio 50/1: {:.2} (goal: <= 2.0)", ms(fifty) / ms(one));
}

fn bench_deploy() {
    let tb = common::Testbed::up(50, &["--latency-ms", "20"]);
    let state = tb.state_with_ca();
    let token = tb.path().join("token").to_string_lossy().into_owned();
    let args = [
        "--state-dir",
        state.as_str(),
        "--token-file",
        token.as_str(),
        "--json",
    ];
    let t = Instant::now();
    let out = tb.tf("deploy", &args);
    let first = t.elapsed();
    assert!(out.status.success(), "{}", common::describe(&out));
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let mut per_host = 0.0;
    for _ in 0..3 {
        let before = tb.recorded_commands().lines().count();
        let c = children_cpu();
        let t = Instant::now();
        let out = tb.tf("deploy", &args);
        times.push(t.elapsed());
        cpu.push(children_cpu().saturating_sub(c));
        assert!(out.status.success(), "{}", common::describe(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["summary"]["changed"], 0, "not a no-op");
        let after = tb.recorded_commands().lines().count();
        per_host = (after - before) as f64 / 50.0;
    }
    println!("deploy on 50 hosts, 20 ms one-way latency:");
    println!("  first deploy:           {:>8.1} ms", ms(first));
    println!(
        "  no-op deploy (median 3): {:>8.1} ms [{:.0} ms controller CPU]",
        ms(median(times)),
        ms(median(cpu))
    );
    println!("  remote commands per host in a no-op deploy: {per_host:.1} (goal: 1)");
}

/// Connect to every host and run one trivial command: the controller's own parallelism,
/// without the stand-ins' CPU (which on this 2-core machine dominates `check` at 50 hosts).
fn time_connect_exec(hosts: usize, runs: usize) -> Duration {
    let tb = common::Testbed::up(hosts, &["--latency-ms", "20"]);
    let args = tunnelfleet::cli::ConnArgs {
        inventory: vec![tb.inventory()],
        vault: Default::default(),
        limit: None,
        known_hosts: tb.known_hosts().to_string_lossy().into_owned(),
        accept_new: false,
        connect_timeout: Duration::from_secs(30),
        command_timeout: Duration::from_secs(30),
        max_starts: 32,
        ssh_config: "none".into(),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(rt.block_on(async {
            let (_inv, sel) = args.select().await.expect("select");
            let connector = args.connector().expect("connector");
            let t = Instant::now();
            let futs = sel.iter().map(|h| {
                let c = connector.clone();
                async move {
                    let s = c.connect(&h.target).await.expect("connect");
                    let out = s.exec("true", b"").await.expect("exec");
                    assert!(out.success());
                }
            });
            futures::future::join_all(futs).await;
            t.elapsed()
        }));
    }
    median(times)
}

fn bench_connect() {
    let one = time_connect_exec(1, 3);
    let fifty = time_connect_exec(50, 3);
    println!("connect + one command, 20 ms one-way latency, median of 3 runs:");
    println!("  1 host:   {:>8.1} ms", ms(one));
    println!("  50 hosts: {:>8.1} ms", ms(fifty));
    println!("  ratio 50/1: {:.2}", ms(fifty) / ms(one));
}

fn deployed(hosts: usize) -> (common::Testbed, String) {
    let tb = common::Testbed::up(hosts, &["--latency-ms", "20"]);
    let state = tb.state_with_ca();
    let token = tb.path().join("token").to_string_lossy().into_owned();
    let out = tb.tf("deploy", &["--state-dir", &state, "--token-file", &token]);
    assert!(out.status.success(), "{}", common::describe(&out));
    (tb, state)
}

/// One rotation on a fresh fleet: (window, wall, fewest hosts up per the edge, controller
/// CPU, canary ready, median host ready), times in ms.
struct RotateRun {
    window: f64,
    wall: f64,
    fewest: usize,
    cpu: f64,
    canary: f64,
    median_ready: f64,
    machine_cpu: f64,
}

fn rotate_once(hosts: usize) -> RotateRun {
    let (tb, state) = deployed(hosts);
    let out = tb.testbed(&["edge-rotate"]);
    assert!(out.status.success(), "{}", common::describe(&out));
    let next = tb.path().join("token.next").to_string_lossy().into_owned();
    let before = tb.edge_stats();
    let c = children_cpu();
    let busy = machine_busy();
    let t = Instant::now();
    let out = tb.tf(
        "rotate-token",
        &["--state-dir", &state, "--token-file", &next, "--json"],
    );
    let wall = t.elapsed();
    let machine_cpu = machine_busy().saturating_sub(busy);
    let cpu = children_cpu().saturating_sub(c);
    assert!(out.status.success(), "{}", common::describe(&out));
    let after = tb.edge_stats();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut ready: Vec<f64> = v["hosts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| h["new_ready_ms"].as_u64())
                .map(|x| x as f64)
                .collect()
        })
        .unwrap_or_default();
    ready.sort_by(f64::total_cmp);
    RotateRun {
        window: v["exposure_window_ms"].as_u64().unwrap_or(0) as f64,
        wall: ms(wall),
        fewest: common::fewest_hosts_up(&before, &after),
        cpu: ms(cpu),
        canary: ready.first().copied().unwrap_or(0.0),
        median_ready: ready.get(ready.len() / 2).copied().unwrap_or(0.0),
        machine_cpu: ms(machine_cpu),
    }
}

fn bench_rotate() {
    let mut rows = Vec::new();
    for hosts in [10usize, 50] {
        let runs: Vec<RotateRun> = (0..3).map(|_| rotate_once(hosts)).collect();
        let med = |f: &dyn Fn(&RotateRun) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let fewest = runs.iter().map(|r| r.fewest).min().unwrap_or(0);
        rows.push((
            hosts,
            med(&|r| r.window),
            med(&|r| r.wall),
            fewest,
            med(&|r| r.cpu),
            med(&|r| r.canary),
            med(&|r| r.median_ready),
            med(&|r| r.machine_cpu),
        ));
    }
    println!("rotate-token, 20 ms one-way latency, median of 3 runs:");
    for (h, w, t, f, c, canary, mid, all) in &rows {
        println!(
            "  {h:>2} hosts: exposure window {w:>7.0} ms, wall {t:>7.0} ms, fewest hosts up (edge) {f}/{h}; \
             canary ready at {canary:.0} ms, median host at {mid:.0} ms; CPU: controller {c:.0} ms, \
             whole machine {all:.0} ms ({:.0} ms per simulated host)",
            (all - c) / *h as f64
        );
    }
    if let [(_, w10, ..), (_, w50, ..)] = rows.as_slice() {
        println!("  window ratio 50/10: {:.2} (goal: <= 1.2)", w50 / w10);
    }
}

/// Sets fleet-group vars in a testbed inventory (lines under `tunnel_name: testbed`).
fn set_group_vars(tb: &common::Testbed, lines: &[&str]) {
    let inv = tb.inventory();
    let text = std::fs::read_to_string(&inv).expect("inventory");
    let mut out = String::new();
    for l in text.lines() {
        out.push_str(l);
        out.push('\n');
        if l.trim() == "tunnel_name: testbed" {
            for n in lines {
                out.push_str(&format!("        {n}\n"));
            }
        }
    }
    std::fs::write(&inv, out).expect("write inventory");
}

struct UpgradeRun {
    wall: f64,
    batches: usize,
    fewest: usize,
    commands_per_host: f64,
    cpu: f64,
    machine_cpu: f64,
}

fn upgrade_once(tb: &common::Testbed, state: &str, hosts: usize, flags: &[&str]) -> UpgradeRun {
    let token = tb.path().join("token").to_string_lossy().into_owned();
    let mut args = vec![
        "--state-dir",
        state,
        "--token-file",
        token.as_str(),
        "--json",
    ];
    args.extend(flags);
    let before = tb.edge_stats();
    let cmds = tb.recorded_commands().lines().count();
    let c = children_cpu();
    let busy = machine_busy();
    let t = Instant::now();
    let out = tb.tf("deploy", &args);
    let wall = t.elapsed();
    let machine_cpu = machine_busy().saturating_sub(busy);
    let cpu = children_cpu().saturating_sub(c);
    assert!(out.status.success(), "{}", common::describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let batches = v["staging"]["batches"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(
        v["staging"]["hosts"].as_array().map(Vec::len),
        Some(hosts),
        "every host upgrades: {v}"
    );
    UpgradeRun {
        wall: ms(wall),
        batches,
        fewest: common::fewest_hosts_up(&before, &tb.edge_stats()),
        commands_per_host: (tb.recorded_commands().lines().count() - cmds) as f64 / hosts as f64,
        cpu: ms(cpu),
        machine_cpu: ms(machine_cpu),
    }
}

fn bench_upgrade() {
    println!("staged upgrade, 20 ms one-way latency, --min-healthy 2s:");
    for hosts in [10usize, 50] {
        let (tb, state) = deployed(hosts);
        set_group_vars(
            &tb,
            &[
                "allow_unpinned_images: true",
                "cloudflared_image: cloudflare/cloudflared:2024.7",
            ],
        );
        let conn = upgrade_once(
            &tb,
            &state,
            hosts,
            &["--min-healthy", "2s", "--batch", "25%", "--drain", "2s"],
        );
        set_group_vars(&tb, &["log_level: debug"]);
        let proxy = upgrade_once(
            &tb,
            &state,
            hosts,
            &["--min-healthy", "2s", "--max-unavailable", "10%"],
        );
        for (what, r) in [
            ("connector-only (make-before-break, --batch 25%)", &conn),
            ("proxy config (recreate, --max-unavailable 10%)", &proxy),
        ] {
            println!(
                "  {hosts:>2} hosts, {what}: wall {:>7.0} ms, {} batches ({:.0} ms per batch), \
                 fewest hosts up (edge) {}/{hosts}, {:.1} remote commands per host; CPU: \
                 controller {:.0} ms, whole machine {:.0} ms ({:.0} ms per simulated host)",
                r.wall,
                r.batches,
                r.wall / r.batches.max(1) as f64,
                r.fewest,
                r.commands_per_host,
                r.cpu,
                r.machine_cpu,
                (r.machine_cpu - r.cpu) / hosts as f64
            );
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The median of `v` (0 for an empty list).
fn median_f(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The names of the phases the rtt bench measures, in print order.
const RTT_PHASES: [&str; 9] = [
    "OpenSSH `ssh h1 true` (reference)",
    "check",
    "no-op deploy",
    "status",
    "rotate: process start -> token in hand (preflight)",
    "rotate: token in hand -> .env persisted on every host",
    "rotate: token in hand -> every host ready (report)",
    "rotate: token in hand -> last host up on the new token (edge)",
    "rotate: process start -> last host up on the new token (edge)",
];

/// A deployed testbed at one latency, and what was measured on it (ms, every run, by phase
/// in [`RTT_PHASES`] order).
struct RttBed {
    tb: common::Testbed,
    state: String,
    token: String,
    hosts: usize,
    samples: Vec<Vec<f64>>,
    controller_cpu: Vec<f64>,
    machine_cpu: Vec<f64>,
}

impl RttBed {
    fn up(latency_ms: u32, hosts: usize) -> RttBed {
        let lat = latency_ms.to_string();
        let tb = common::Testbed::up(hosts, &["--latency-ms", &lat]);
        let state = tb.state_with_ca();
        let token = tb.path().join("token").to_string_lossy().into_owned();
        let bed = RttBed {
            tb,
            state,
            token,
            hosts,
            samples: vec![Vec::new(); RTT_PHASES.len()],
            controller_cpu: Vec::new(),
            machine_cpu: Vec::new(),
        };
        let out = bed.tb.tf("deploy", &bed.deploy_args());
        assert!(out.status.success(), "{}", common::describe(&out));
        bed
    }

    fn deploy_args(&self) -> [&str; 5] {
        [
            "--state-dir",
            self.state.as_str(),
            "--token-file",
            self.token.as_str(),
            "--json",
        ]
    }

    fn timed(&mut self, phase: usize, f: &dyn Fn(&Self) -> std::process::Output) {
        let t = Instant::now();
        let out = f(self);
        let d = ms(t.elapsed());
        assert!(out.status.success(), "{}", common::describe(&out));
        self.samples[phase].push(d);
    }

    /// One run of every phase.
    fn run_once(&mut self) {
        self.timed(0, &|b| {
            std::process::Command::new("ssh")
                .arg("-F")
                .arg(b.tb.path().join("ssh_config"))
                .args(["h1", "true"])
                .env_remove("SSH_AUTH_SOCK")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run ssh")
        });
        self.timed(1, &|b| b.tb.tf("check", &["--json"]));
        self.timed(2, &|b| b.tb.tf("deploy", &b.deploy_args()));
        self.timed(3, &|b| {
            b.tb.tf("status", &["--state-dir", b.state.as_str(), "--json"])
        });

        let tb = &self.tb;
        let out = tb.testbed(&["edge-rotate"]);
        assert!(out.status.success(), "{}", common::describe(&out));
        let next = tb.path().join("token.next");
        let new_fp = common::fp(&std::fs::read_to_string(&next).expect("token.next"));
        let next = next.to_string_lossy().into_owned();
        let before = tb.edge_stats();
        let c = children_cpu();
        let busy = machine_busy();
        let started = unix_ms();
        let out = tb.tf(
            "rotate-token",
            &["--state-dir", &self.state, "--token-file", &next, "--json"],
        );
        self.machine_cpu
            .push(ms(machine_busy().saturating_sub(busy)));
        self.controller_cpu
            .push(ms(children_cpu().saturating_sub(c)));
        assert!(out.status.success(), "{}", common::describe(&out));
        let after = tb.edge_stats();
        assert_eq!(
            common::fewest_hosts_up(&before, &after),
            self.hosts,
            "make-before-break: every host kept a connector (edge)"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let t0 = v["window_start_unix_ms"]
            .as_u64()
            .expect("window_start_unix_ms");
        let hosts_v = v["hosts"].as_array().cloned().unwrap_or_default();
        let last = |key: &str| {
            hosts_v
                .iter()
                .filter_map(|h| h[key].as_u64())
                .max()
                .unwrap_or(0) as f64
        };
        // The edge: when each host's first connector on the new token came up; the last one.
        let start = before["timeline"].as_array().map(Vec::len).unwrap_or(0);
        let mut first_up: std::collections::BTreeMap<String, u64> = Default::default();
        for e in after["timeline"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .skip(start)
        {
            if e["event"] == "up" && e["token_fp"] == new_fp.as_str() {
                let h = e["host"].as_str().unwrap_or_default().to_string();
                first_up.entry(h).or_insert(e["t_ms"].as_u64().unwrap_or(0));
            }
        }
        assert_eq!(
            first_up.len(),
            self.hosts,
            "every host came up on the new token"
        );
        // The fleet's token is now the one in token.next (until the next edge-rotate, which
        // comes after the next no-op deploy).
        self.token = tb.path().join("token.next").to_string_lossy().into_owned();
        let edge_last = first_up.values().copied().max().unwrap_or(0);
        self.samples[4].push(t0.saturating_sub(started) as f64);
        self.samples[5].push(last("persisted_ms"));
        self.samples[6].push(last("new_ready_ms"));
        self.samples[7].push(edge_last.saturating_sub(t0) as f64);
        self.samples[8].push(edge_last.saturating_sub(started) as f64);
    }
}

fn min_f(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn bench_rtt() {
    let hosts = 10;
    let runs: usize = std::env::var("TF_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // Both fleets at once, their runs interleaved, so that whatever else loads the machine
    // weighs on both latencies alike.
    let mut low = RttBed::up(10, hosts);
    let mut high = RttBed::up(50, hosts);
    for _ in 0..runs {
        low.run_once();
        high.run_once();
    }
    // The testbed's CPU (and anything else on the machine) only adds time: the best of the
    // runs is the least disturbed, and its slope the round trips.
    println!(
        "round trips, {hosts} hosts, 10 and 50 ms one-way latency (interleaved), best and median \
         of {runs} runs; slope = (t50 - t10) / 80 ms:"
    );
    println!(
        "  {:<64} {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6}",
        "phase", "best 10", "best 50", "RTs", "med 10", "med 50", "RTs"
    );
    for (i, name) in RTT_PHASES.iter().enumerate() {
        let (a, b) = (&low.samples[i], &high.samples[i]);
        let (a_min, b_min) = (min_f(a), min_f(b));
        let (a_med, b_med) = (median_f(a.clone()), median_f(b.clone()));
        println!(
            "  {name:<64} {a_min:>6.0} ms {b_min:>6.0} ms {:>6.1} | {a_med:>6.0} ms {b_med:>6.0} ms {:>6.1}",
            (b_min - a_min) / 80.0,
            (b_med - a_med) / 80.0
        );
    }
    for (lat, r) in [(10, &low), (50, &high)] {
        let (c, m) = (
            median_f(r.controller_cpu.clone()),
            median_f(r.machine_cpu.clone()),
        );
        println!(
            "  rotate-token CPU at {lat} ms (median): controller {c:.0} ms, whole machine {m:.0} ms \
             ({:.0} ms per simulated host; the machine is shared, so this is an upper bound)",
            (m - c) / hosts as f64
        );
    }
}

/// CPU used so far by each simulated host (`testbed cpu`: the hosts' cgroups), in ms.
fn hosts_cpu(tb: &common::Testbed) -> Vec<f64> {
    let out = tb.testbed(&["cpu", "--json"]);
    assert!(out.status.success(), "{}", common::describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cpu json");
    v["cpu_ns"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|x| x.as_u64())
                .map(|ns| ns as f64 / 1e6)
                .collect()
        })
        .unwrap_or_default()
}

/// Per-host deltas between two `hosts_cpu` readings: (mean, max) in ms.
fn per_host(before: &[f64], after: &[f64]) -> (f64, f64) {
    let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
    (mean, d.iter().copied().fold(0.0, f64::max))
}

fn loadavg1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn bench_testbed() {
    let sizes: Vec<usize> = std::env::var("TESTBED_BENCH_HOSTS")
        .unwrap_or_else(|_| "10,50,200".into())
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let engine = std::env::var("TESTBED_ENGINE").map_or(true, |v| v != "0");
    println!(
        "testbed cost, 10 ms one-way latency ({}):",
        if engine {
            "per-host engine, compiled docker client and stand-ins"
        } else {
            "TESTBED_ENGINE=0: an interpreter per docker command"
        }
    );
    let long = ["--connect-timeout", "120s", "--command-timeout", "600s"];
    for hosts in sizes {
        let tb = common::Testbed::up(hosts, &["--latency-ms", "10"]);
        let state = tb.state_with_ca();
        let token = tb.path().join("token").to_string_lossy().into_owned();
        let c0 = hosts_cpu(&tb);
        let t = Instant::now();
        let mut args = vec!["--state-dir", &state, "--token-file", &token];
        args.extend(long);
        let out = tb.tf("deploy", &args);
        assert!(out.status.success(), "{}", common::describe(&out));
        let deploy_wall = t.elapsed();
        let c1 = hosts_cpu(&tb);
        let (deploy_cpu, deploy_max) = per_host(&c0, &c1);
        // Idle: nothing runs but the stand-ins (heartbeats, certificate polls).
        let idle = Duration::from_secs(60);
        let before = tb.edge_stats();
        let busy = machine_busy();
        std::thread::sleep(idle);
        let busy = machine_busy().saturating_sub(busy);
        let c2 = hosts_cpu(&tb);
        let after = tb.edge_stats();
        let (idle_cpu, idle_max) = per_host(&c1, &c2);
        let idle_fewest = common::fewest_hosts_up(&before, &after);
        let load = loadavg1();
        // A rotation.
        let out = tb.testbed(&["edge-rotate"]);
        assert!(out.status.success(), "{}", common::describe(&out));
        let next = tb.path().join("token.next").to_string_lossy().into_owned();
        let before = tb.edge_stats();
        let c3 = hosts_cpu(&tb);
        let t = Instant::now();
        let mut args = vec!["--state-dir", &state, "--token-file", &next];
        args.extend(long);
        let out = tb.tf("rotate-token", &args);
        let wall = t.elapsed();
        let c4 = hosts_cpu(&tb);
        assert!(out.status.success(), "{}", common::describe(&out));
        let after = tb.edge_stats();
        let (rot_cpu, rot_max) = per_host(&c3, &c4);
        let idle_rate = idle_cpu / idle.as_secs_f64();
        println!(
            "  {hosts:>3} hosts: deploy {:.1} s, {deploy_cpu:.0} ms CPU per host (max {deploy_max:.0}); \
             idle 60 s: {:.1} ms CPU per host per second (max {:.1}; all hosts: {:.3} cores), \
             machine {:.0} % of 2 cores, \
             load average (1 min) {load:.2}, fewest hosts up (edge) {idle_fewest}/{hosts}; \
             rotate-token: {rot_cpu:.0} ms CPU per host (max {rot_max:.0}; {:.0} ms beyond idle), \
             wall {:.1} s, fewest hosts up (edge) {}/{hosts}",
            deploy_wall.as_secs_f64(),
            idle_rate,
            idle_max / idle.as_secs_f64(),
            idle_rate * hosts as f64 / 1000.0,
            100.0 * busy.as_secs_f64() / idle.as_secs_f64() / 2.0,
            rot_cpu - idle_rate * wall.as_secs_f64(),
            wall.as_secs_f64(),
            common::fewest_hosts_up(&before, &after),
        );
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wants("connect") {
        bench_connect();
    }
    if wants("check") {
        bench_check();
    }
    if wants("deploy") {
        bench_deploy();
    }
    if wants("rotate") {
        bench_rotate();
    }
    if wants("upgrade") {
        bench_upgrade();
    }
    if wants("rtt") {
        bench_rtt();
    }
    if wants("testbed") {
        bench_testbed();
    }
}
