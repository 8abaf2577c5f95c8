//! Per-host progress on stderr, gone when the run ends (as Docker Compose does): the recap on
//! stdout is the one record of what happened.
//!
//! - On a terminal: a header (`deploy · tunnel tunnel_main · 5 hosts`), then a spinner line
//!   per host saying in plain words what happens (`reading facts`, `waiting for canary h1`,
//!   `batch 2/5: waiting for a new connector`); one summary bar when hosts outnumber the
//!   terminal's rows. Everything is cleared by [`Progress::finish`].
//! - Not a terminal (or `-v`): one line per host event (`h1: reading facts`, `h1: done`,
//!   `h3: FAILED at apply`), no spinner; the detail of a failure is in the recap, once.
//! - `-q`: nothing.
//!
//! Verbs: `let p = Progress::for_tunnels("deploy", &tunnels, &hosts);` then `p.step(host,
//! "connecting")` / `p.done(host, ok, msg)` (or hand `&p` to the rollout engine, whose step
//! names are turned into phrases by [`phrase`]), `p.suspend(|| prompt())` around anything
//! that reads the terminal (or [`suspend_current`] where no `Progress` is at hand), and
//! `p.finish()` before printing the recap.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::style::{self, Verbosity};

/// The phrase an operator reads for an engine step name; unknown names pass through with
/// `_` as spaces.
pub fn phrase(step: &str) -> String {
    let p = match step {
        "connect" => "connecting",
        "facts" => "reading facts",
        "apply" => "writing files and restarting what changed",
        "health_gate" => "waiting for a new connector",
        "healthy" => "checking the connector is ready",
        "lock" => "taking the fleet lock",
        "persist_token" => "saving the new token",
        "start_connector" => "starting a connector on the new token",
        "recreate_connector" => "recreating the connector on the new token",
        "wait_connector" => "new connector registering",
        "stop_old" => "retiring the old connector",
        "audit" => "writing the audit line",
        "unlock" => "releasing the lock",
        "rollback" => "switching back to the previous release",
        "settle" => "waiting for a change still completing on the host",
        "stage" => "staging the release and its images",
        "surge_connector" => "starting a second connector beside the old one",
        "retire_old" => "retiring the old connector",
        "switch" => "switching to the release",
        "switch_back" => "switching back to the release it ran before",
        "releases" => "listing the releases",
        "setup_renew_cert" => "renewing the certificate (setup component)",
        "setup_rotate" => "rotating the token (setup component)",
        other => return other.replace('_', " "),
    };
    p.to_string()
}

/// The header of a run: `deploy · tunnel tunnel_main · 5 hosts`.
pub fn header(operation: &str, tunnels: &[String], hosts: usize) -> String {
    let mut h = operation.to_string();
    match tunnels {
        [] => {}
        [t] => h.push_str(&format!(" · tunnel {t}")),
        ts => h.push_str(&format!(" · tunnels {}", ts.join(", "))),
    }
    h.push_str(&format!(
        " · {hosts} host{}",
        if hosts == 1 { "" } else { "s" }
    ));
    h
}

/// The live display of the run, if any, for prompts far from the [`Progress`] value (the
/// engine's pause hook asks the operator between batches).
enum Live {
    Multi(MultiProgress),
    Bar(ProgressBar),
}

static ACTIVE: Mutex<Option<Live>> = Mutex::new(None);

fn set_active(live: Option<Live>) {
    if let Ok(mut a) = ACTIVE.lock() {
        *a = live;
    }
}

/// Runs `f` (a prompt, or a message on stderr) with the run's live display cleared, and
/// redraws it after; without a live display, just runs `f`. For code that has no
/// [`Progress`] at hand; with one, use [`Progress::suspend`].
pub fn suspend_current<R>(f: impl FnOnce() -> R) -> R {
    let live = ACTIVE.lock().ok().and_then(|a| match &*a {
        Some(Live::Multi(m)) => Some(Live::Multi(m.clone())),
        Some(Live::Bar(b)) => Some(Live::Bar(b.clone())),
        None => None,
    });
    match live {
        Some(Live::Multi(m)) => m.suspend(f),
        Some(Live::Bar(b)) => b.suspend(f),
        None => f(),
    }
}

enum Mode {
    Quiet,
    Lines,
    PerHost {
        multi: MultiProgress,
        head: ProgressBar,
        bars: HashMap<String, ProgressBar>,
    },
    Summary {
        bar: ProgressBar,
    },
}

#[derive(Default)]
struct Batches {
    /// Hosts that ran (or run) in a batch of the current phase.
    started: HashSet<String>,
    phase: String,
    /// `batch 2/5` while a batch of several runs.
    label: Option<String>,
    finished: HashSet<String>,
}

/// Reports progress for a set of hosts.
pub struct Progress {
    mode: Mutex<Mode>,
    batches: Mutex<Batches>,
    hosts: Vec<String>,
}

impl Progress {
    /// Progress for `hosts`, on stderr, headed by the operation's name and host count.
    pub fn new(verb: &str, hosts: &[String]) -> Progress {
        Progress::titled(&header(verb, &[], hosts.len()), hosts)
    }

    /// Progress headed by the operation, its tunnels and the host count.
    pub fn for_tunnels(verb: &str, tunnels: &[String], hosts: &[String]) -> Progress {
        Progress::titled(&header(verb, tunnels, hosts.len()), hosts)
    }

    /// Progress for the hosts of `inputs`, headed by the operation and their tunnels.
    pub fn for_inputs(verb: &str, inputs: &[crate::ops::deploy::HostInput]) -> Progress {
        let mut tunnels: Vec<String> = Vec::new();
        for i in inputs {
            if !tunnels.contains(&i.settings.tunnel_name) {
                tunnels.push(i.settings.tunnel_name.clone());
            }
        }
        let names: Vec<String> = inputs.iter().map(|i| i.host.name.clone()).collect();
        Progress::for_tunnels(verb, &tunnels, &names)
    }

    /// Progress with the header `title`.
    pub fn titled(title: &str, hosts: &[String]) -> Progress {
        let v = style::verbosity();
        let tty = std::io::stderr().is_terminal();
        let rows = console::Term::stderr().size().0 as usize;
        let mode = if v == Verbosity::Quiet {
            Mode::Quiet
        } else if !tty || v >= Verbosity::Verbose {
            eprintln!("{title}");
            Mode::Lines
        } else if hosts.len() + 4 <= rows {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let head = multi.add(ProgressBar::new_spinner());
            head.set_style(
                ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            head.set_message(style::bold_err(title));
            head.tick();
            let width = hosts.iter().map(|h| h.len()).max().unwrap_or(4);
            let style = ProgressStyle::with_template(&format!(
                "  {{spinner}} {{prefix:<{width}}} {{wide_msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
            let mut bars = HashMap::new();
            for h in hosts {
                let b = multi.add(ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(h.clone());
                b.set_message("waiting");
                b.enable_steady_tick(Duration::from_millis(120));
                bars.insert(h.clone(), b);
            }
            set_active(Some(Live::Multi(multi.clone())));
            Mode::PerHost { multi, head, bars }
        } else {
            let bar = ProgressBar::with_draw_target(
                Some(hosts.len() as u64),
                ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{title} {{bar:30}} {{pos}}/{{len}} {{elapsed}} {{wide_msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            set_active(Some(Live::Bar(bar.clone())));
            Mode::Summary { bar }
        };
        Progress {
            mode: Mutex::new(mode),
            batches: Mutex::new(Batches::default()),
            hosts: hosts.to_vec(),
        }
    }

    /// A step started or advanced on `host` (`msg` in plain words).
    pub fn step(&self, host: &str, msg: &str) {
        let label = self
            .batches
            .lock()
            .ok()
            .and_then(|b| b.label.clone().filter(|_| b.started.contains(host)));
        let msg = match label {
            Some(l) => format!("{l}: {msg}"),
            None => msg.to_string(),
        };
        let Ok(mode) = self.mode.lock() else { return };
        match &*mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{host}: {msg}"),
            Mode::PerHost { bars, .. } => {
                if let Some(b) = bars.get(host) {
                    b.set_message(msg);
                }
            }
            Mode::Summary { bar } => bar.set_message(format!("{host}: {msg}")),
        }
    }

    /// `host` finished: `ok` or failed, with a one-line summary (shown on the terminal until
    /// the run ends; the recap carries the detail).
    pub fn done(&self, host: &str, ok: bool, msg: &str) {
        if let Ok(mut b) = self.batches.lock() {
            b.finished.insert(host.to_string());
        }
        let Ok(mode) = self.mode.lock() else { return };
        let mark = if ok { "done" } else { "FAILED" };
        match &*mode {
            Mode::Quiet => {}
            Mode::Lines if ok || msg.is_empty() => eprintln!("{host}: {}", style::paint_err(mark)),
            Mode::Lines => eprintln!(
                "{host}: {} {}",
                style::paint_err(mark),
                super::render::first_line(msg, 72)
            ),
            Mode::PerHost { bars, .. } => {
                if let Some(b) = bars.get(host) {
                    let text = if msg.is_empty() {
                        style::paint_err(mark)
                    } else {
                        format!("{}: {msg}", style::paint_err(mark))
                    };
                    b.finish_with_message(text);
                }
            }
            Mode::Summary { bar } => {
                bar.inc(1);
                if !ok {
                    bar.set_message(format!("{host}: {}", style::paint_err(mark)));
                }
            }
        }
    }

    /// `host` was not run (`msg` says why: a canary failed, a stop was requested).
    pub fn skipped(&self, host: &str, msg: &str) {
        if let Ok(mut b) = self.batches.lock() {
            b.finished.insert(host.to_string());
        }
        let Ok(mode) = self.mode.lock() else { return };
        match &*mode {
            Mode::Quiet | Mode::Summary { .. } => {}
            Mode::Lines => eprintln!("{host}: {}", style::paint_err(msg)),
            Mode::PerHost { bars, .. } => {
                if let Some(b) = bars.get(host) {
                    b.finish_with_message(style::paint_err(msg));
                }
            }
        }
    }

    /// A batch of a phase starts: its hosts say `batch 2/5` while it runs; in the first batch
    /// of a canary phase, the other hosts say `waiting for canary h1`.
    pub fn batch(&self, phase: &str, index: usize, count: usize, hosts: &[String]) {
        let waiting: Vec<String> = {
            let Ok(mut b) = self.batches.lock() else {
                return;
            };
            if b.phase != phase {
                b.phase = phase.to_string();
                b.started.clear();
            }
            b.started.extend(hosts.iter().cloned());
            b.label = (count > 1 && index > 0).then(|| format!("batch {}/{count}", index + 1));
            if count > 1 && index == 0 {
                self.hosts
                    .iter()
                    .filter(|h| !b.started.contains(*h) && !b.finished.contains(*h))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            }
        };
        if waiting.is_empty() {
            return;
        }
        let canary =
            super::render::host_ranges(&hosts.iter().map(String::as_str).collect::<Vec<_>>());
        let Ok(mode) = self.mode.lock() else { return };
        match &*mode {
            Mode::PerHost { bars, .. } => {
                for h in &waiting {
                    if let Some(b) = bars.get(h) {
                        b.set_message(format!("waiting for canary {canary}"));
                    }
                }
            }
            Mode::Lines => eprintln!(
                "{}: waiting for canary {canary}",
                super::render::host_ranges(&waiting.iter().map(String::as_str).collect::<Vec<_>>())
            ),
            Mode::Summary { bar } => bar.set_message(format!("canary {canary}")),
            Mode::Quiet => {}
        }
    }

    /// Runs `f` (a prompt) with the live display cleared, and redraws it after; on a plain
    /// stream, just runs `f`.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        let Ok(mode) = self.mode.lock() else {
            return f();
        };
        match &*mode {
            Mode::PerHost { multi, .. } => multi.suspend(f),
            Mode::Summary { bar } => bar.suspend(f),
            Mode::Quiet | Mode::Lines => f(),
        }
    }

    /// Clears the live display (the recap follows on stdout).
    pub fn finish(&self) {
        let Ok(mode) = self.mode.lock() else { return };
        if matches!(&*mode, Mode::PerHost { .. } | Mode::Summary { .. }) {
            set_active(None);
        }
        match &*mode {
            Mode::Quiet | Mode::Lines => {}
            Mode::PerHost { multi, head, bars } => {
                for b in bars.values() {
                    b.finish_and_clear();
                }
                head.finish_and_clear();
                let _ = multi.clear();
            }
            Mode::Summary { bar } => bar.finish_and_clear(),
        }
    }
}

/// Renders rows as an aligned text table fitted to stdout's width (see [`super::render`]).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = super::render::Table::new(header).painted("STATUS");
    for r in rows {
        t.row(r.clone());
    }
    t.render(style::width())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words() {
        assert_eq!(phrase("facts"), "reading facts");
        assert_eq!(phrase("health_gate"), "waiting for a new connector");
        assert_eq!(phrase("stop_old"), "retiring the old connector");
        assert_eq!(phrase("unlock"), "releasing the lock");
        assert_eq!(phrase("my_step"), "my step");
    }

    #[test]
    fn headers() {
        assert_eq!(
            header("deploy", &["tunnel_main".into()], 5),
            "deploy · tunnel tunnel_main · 5 hosts"
        );
        assert_eq!(header("check", &[], 1), "check · 1 host");
    }
}
