//! Per-host progress on stderr: a spinner line per host on a terminal (one summary bar when
//! hosts outnumber the terminal's rows), plain `host: message` lines otherwise. stdout is kept
//! for the recap and `--json`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

enum Mode {
    Lines,
    PerHost {
        _multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
    Summary {
        bar: ProgressBar,
    },
}

/// Reports progress for a set of hosts.
pub struct Progress {
    mode: Mutex<Mode>,
}

impl Progress {
    /// Progress for `hosts`, on stderr; `verb` labels the summary bar.
    pub fn new(verb: &str, hosts: &[String]) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let rows = console::Term::stderr().size().0 as usize;
        let mode = if !tty {
            Mode::Lines
        } else if hosts.len() + 3 <= rows {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let width = hosts.iter().map(|h| h.len()).max().unwrap_or(4);
            let style = ProgressStyle::with_template(&format!(
                "{{spinner}} {{prefix:<{width}}} {{elapsed:>4}} {{wide_msg}}"
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
            Mode::PerHost {
                _multi: multi,
                bars,
            }
        } else {
            let bar = ProgressBar::with_draw_target(
                Some(hosts.len() as u64),
                ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{verb} {{bar:30}} {{pos}}/{{len}} hosts {{elapsed}} {{wide_msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Mode::Summary { bar }
        };
        Progress {
            mode: Mutex::new(mode),
        }
    }

    /// A step started or advanced on `host`.
    pub fn step(&self, host: &str, msg: &str) {
        let Ok(mode) = self.mode.lock() else { return };
        match &*mode {
            Mode::Lines => {}
            Mode::PerHost { bars, .. } => {
                if let Some(b) = bars.get(host) {
                    b.set_message(msg.to_string());
                }
            }
            Mode::Summary { bar } => bar.set_message(format!("{host}: {msg}")),
        }
    }

    /// `host` finished: `ok` or failed, with a one-line summary.
    pub fn done(&self, host: &str, ok: bool, msg: &str) {
        let Ok(mode) = self.mode.lock() else { return };
        let mark = if ok { "ok" } else { "FAILED" };
        match &*mode {
            Mode::Lines => eprintln!("{host}: {mark}: {msg}"),
            Mode::PerHost { bars, .. } => {
                if let Some(b) = bars.get(host) {
                    b.finish_with_message(format!("{mark}: {msg}"));
                }
            }
            Mode::Summary { bar } => {
                bar.inc(1);
                if !ok {
                    bar.println(format!("{host}: {mark}: {msg}"));
                }
            }
        }
    }

    /// Clears the live display (the recap follows on stdout).
    pub fn finish(&self) {
        let Ok(mode) = self.mode.lock() else { return };
        match &*mode {
            Mode::Lines => {}
            Mode::PerHost { bars, .. } => {
                for b in bars.values() {
                    if !b.is_finished() {
                        b.finish();
                    }
                }
            }
            Mode::Summary { bar } => bar.finish_and_clear(),
        }
    }
}

/// Renders rows as an aligned text table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}
