//! Output conventions shared by every verb: colours, verbosity, the terminal's width.
//!
//! Set once by [`init`] from the global flags (`--color auto|always|never`, `-q`, `-v`, `-vv`)
//! before a verb runs; read anywhere after:
//!
//! - [`paint`] colours an outcome word for stdout (`ok`, `ready`, `up to date` green;
//!   `FAILED`, `NOT READY` red; `ATTENTION`, `skipped`, `drift` yellow) and returns it plain
//!   when colours are off; [`paint_err`] does the same for stderr (progress).
//! - [`verbosity`]: [`Verbosity::Quiet`] (`-q`: no progress, the recap only),
//!   [`Verbosity::Normal`], [`Verbosity::Verbose`] (`-v`: which files were read, every host
//!   event), [`Verbosity::Trace`] (`-vv`: also every remote command, secrets redacted).
//! - [`width`]: the width to fit tables to (stdout's terminal, else `$COLUMNS`, else none).
//!
//! Colours follow <https://no-color.org>: `NO_COLOR` set and non-empty turns them off under
//! `--color auto`; `--color always` wins over it, `--color never` always wins.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

static COLOR_OUT: AtomicBool = AtomicBool::new(false);
static COLOR_ERR: AtomicBool = AtomicBool::new(false);
static VERBOSITY: AtomicU8 = AtomicU8::new(1);

/// `--color`: when to colour the output.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set (or `TERM=dumb`).
    #[default]
    Auto,
    /// Always, even piped.
    Always,
    /// Never.
    Never,
}

/// How much the run says besides its recap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: no progress; the recap and errors only.
    Quiet,
    /// The default: progress and the recap.
    Normal,
    /// `-v`: also which configuration files were read, and every host event.
    Verbose,
    /// `-vv`: also every remote command (secrets never appear in them; redacted anyway).
    Trace,
}

/// Whether colours are on for a stream, from the choice and the environment (pure, for tests).
pub fn colors_enabled(
    choice: ColorChoice,
    no_color: Option<&str>,
    term: Option<&str>,
    is_terminal: bool,
) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            is_terminal && no_color.is_none_or(str::is_empty) && term != Some("dumb")
        }
    }
}

/// The verbosity the flags ask for (`-q` wins over `-v`).
pub fn verbosity_of(quiet: bool, verbose: u8) -> Verbosity {
    match (quiet, verbose) {
        (true, _) => Verbosity::Quiet,
        (false, 0) => Verbosity::Normal,
        (false, 1) => Verbosity::Verbose,
        _ => Verbosity::Trace,
    }
}

/// Sets the run's colours and verbosity (called once by `cli::main`).
pub fn init(choice: ColorChoice, quiet: bool, verbose: u8) {
    let no_color = std::env::var("NO_COLOR").ok();
    let term = std::env::var("TERM").ok();
    let out = colors_enabled(
        choice,
        no_color.as_deref(),
        term.as_deref(),
        std::io::stdout().is_terminal(),
    );
    let err = colors_enabled(
        choice,
        no_color.as_deref(),
        term.as_deref(),
        std::io::stderr().is_terminal(),
    );
    COLOR_OUT.store(out, Ordering::Relaxed);
    COLOR_ERR.store(err, Ordering::Relaxed);
    let v = verbosity_of(quiet, verbose);
    VERBOSITY.store(v as u8, Ordering::Relaxed);
    crate::ssh::set_trace(v >= Verbosity::Trace);
}

/// The run's verbosity.
pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        2 => Verbosity::Verbose,
        _ => Verbosity::Trace,
    }
}

/// Whether stdout gets colours.
pub fn stdout_colors() -> bool {
    COLOR_OUT.load(Ordering::Relaxed)
}

/// The ANSI colour of an outcome word, if it has one.
fn colour_of(word: &str) -> Option<&'static str> {
    let w = word.trim();
    let lower = w.to_ascii_lowercase();
    if w == "FAILED" || w == "NOT READY" || lower.starts_with("failed") {
        Some("31")
    } else if matches!(
        lower.as_str(),
        "ok" | "ready" | "up to date" | "no drift" | "done"
    ) || lower.starts_with("ok ")
    {
        Some("32")
    } else if w == "ATTENTION"
        || lower.starts_with("skipped")
        || lower.starts_with("drift")
        || lower == "stopped"
    {
        Some("33")
    } else {
        None
    }
}

/// Colours `text` when `on` and it is an outcome word (pure, for tests).
pub fn paint_with(text: &str, on: bool) -> String {
    match colour_of(text) {
        Some(c) if on => format!("\x1b[{c}m{text}\x1b[0m"),
        _ => text.to_string(),
    }
}

/// Colours an outcome word for stdout (plain when colours are off).
pub fn paint(text: &str) -> String {
    paint_with(text, stdout_colors())
}

/// Colours an outcome word for stderr (plain when colours are off).
pub fn paint_err(text: &str) -> String {
    paint_with(text, COLOR_ERR.load(Ordering::Relaxed))
}

/// Bold for a heading on stderr (plain when colours are off).
pub fn bold_err(text: &str) -> String {
    if COLOR_ERR.load(Ordering::Relaxed) {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// The width to fit stdout's tables to: the terminal's when stdout is one, else `$COLUMNS`
/// when set, else `None` (piped output is not cut, so scripts see every value whole).
pub fn width() -> Option<usize> {
    if std::io::stdout().is_terminal() {
        let (_, cols) = console::Term::stdout().size();
        if cols > 0 {
            return Some(cols as usize);
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_and_the_flag() {
        assert!(colors_enabled(ColorChoice::Auto, None, None, true));
        assert!(!colors_enabled(ColorChoice::Auto, None, None, false));
        assert!(!colors_enabled(ColorChoice::Auto, Some("1"), None, true));
        assert!(colors_enabled(ColorChoice::Auto, Some(""), None, true));
        assert!(!colors_enabled(ColorChoice::Auto, None, Some("dumb"), true));
        assert!(colors_enabled(ColorChoice::Always, Some("1"), None, false));
        assert!(!colors_enabled(ColorChoice::Never, None, None, true));
    }

    #[test]
    fn outcome_words() {
        assert_eq!(paint_with("FAILED", true), "\x1b[31mFAILED\x1b[0m");
        assert_eq!(paint_with("ok", true), "\x1b[32mok\x1b[0m");
        assert_eq!(paint_with("ATTENTION", true), "\x1b[33mATTENTION\x1b[0m");
        assert_eq!(paint_with("h1", true), "h1");
        assert_eq!(paint_with("FAILED", false), "FAILED");
    }

    #[test]
    fn quiet_wins() {
        assert_eq!(verbosity_of(true, 2), Verbosity::Quiet);
        assert_eq!(verbosity_of(false, 0), Verbosity::Normal);
        assert_eq!(verbosity_of(false, 1), Verbosity::Verbose);
        assert_eq!(verbosity_of(false, 5), Verbosity::Trace);
    }
}
