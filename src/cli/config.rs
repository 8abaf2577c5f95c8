//! The project file: an optional `tunnelfleet.toml` in the current directory, so `-i` and
//! `--state-dir` need not be repeated.
//!
//! ```toml
//! # tunnelfleet.toml
//! inventory = "inventory.yaml"     # relative to this file's directory
//! state_dir = "~/.local/state/tunnelfleet"
//! ```
//!
//! Precedence, highest first: the flag, the environment (`TUNNELFLEET_INVENTORY`,
//! `TUNNELFLEET_STATE_DIR`), this file, the built-in default. The file holds paths only
//! (never a secret). It is read with a small parser of TOML's `key = "string"` lines (basic
//! and literal strings, comments); anything else is refused with its line.

use std::path::{Path, PathBuf};

/// The file's name, looked up in the current directory.
pub const PROJECT_FILE: &str = "tunnelfleet.toml";

/// The keys the project file may set.
const KEYS: &[&str] = &["inventory", "state_dir"];

/// What a project file sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectConfig {
    /// The file read.
    pub path: PathBuf,
    /// Default for `-i/--inventory` (resolved against the file's directory).
    pub inventory: Option<String>,
    /// Default for `--state-dir` (resolved against the file's directory unless absolute or
    /// starting with `~`).
    pub state_dir: Option<String>,
}

fn unquote(raw: &str, file: &Path, line: usize) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "{}:{line}: {why} (hint: write key = \"value\"; the keys are {})",
            file.display(),
            KEYS.join(", ")
        )
    };
    if let Some(rest) = raw.strip_prefix('\'') {
        let end = rest.find('\'').ok_or_else(|| bad("unterminated string"))?;
        let (v, tail) = rest.split_at(end);
        return check_tail(&tail[1..], v.to_string(), &bad);
    }
    let Some(rest) = raw.strip_prefix('"') else {
        return Err(bad("the value is not a string"));
    };
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return check_tail(&rest[i + 1..], out, &bad),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                _ => return Err(bad("unsupported escape in a string")),
            },
            c => out.push(c),
        }
    }
    Err(bad("unterminated string"))
}

fn check_tail(tail: &str, value: String, bad: &dyn Fn(&str) -> String) -> Result<String, String> {
    let tail = tail.trim();
    if tail.is_empty() || tail.starts_with('#') {
        Ok(value)
    } else {
        Err(bad("unexpected text after the value"))
    }
}

/// Levenshtein distance (for "did you mean").
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parses a project file's text; `file` names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<ProjectConfig, String> {
    let mut cfg = ProjectConfig {
        path: file.to_path_buf(),
        ..ProjectConfig::default()
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((key, value)) = l.split_once('=') else {
            return Err(format!(
                "{}:{n}: expected key = \"value\", found `{l}`",
                file.display()
            ));
        };
        let key = key.trim();
        let value = unquote(value.trim(), file, n)?;
        let slot = match key {
            "inventory" => &mut cfg.inventory,
            "state_dir" => &mut cfg.state_dir,
            other => {
                let hint = KEYS
                    .iter()
                    .find(|k| edit_distance(k, other) <= 2)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_else(|| format!(" (the keys are {})", KEYS.join(", ")));
                return Err(format!(
                    "{}:{n}: unknown key `{other}`{hint}",
                    file.display()
                ));
            }
        };
        if slot.is_some() {
            return Err(format!("{}:{n}: `{key}` is set twice", file.display()));
        }
        if value.is_empty() {
            return Err(format!("{}:{n}: `{key}` is empty", file.display()));
        }
        *slot = Some(value);
    }
    Ok(cfg)
}

/// `value` resolved against `dir` when relative (and not `~`-based).
fn resolve(dir: &Path, value: &str) -> String {
    if value.starts_with('~') || Path::new(value).is_absolute() {
        value.to_string()
    } else {
        dir.join(value).to_string_lossy().into_owned()
    }
}

/// Reads `dir/tunnelfleet.toml` if it exists, with its paths resolved against `dir`.
pub fn load(dir: &Path) -> Result<Option<ProjectConfig>, String> {
    let path = dir.join(PROJECT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut cfg = parse(&text, Path::new(PROJECT_FILE))?;
    cfg.path = path;
    cfg.inventory = cfg.inventory.map(|v| resolve(dir, &v));
    cfg.state_dir = cfg.state_dir.map(|v| resolve(dir, &v));
    Ok(Some(cfg))
}

/// Makes the file's values the defaults of the `inventory` and `state_dir` arguments of
/// every subcommand (a flag or environment variable still wins).
pub fn apply(cmd: clap::Command, cfg: &ProjectConfig) -> clap::Command {
    // clap keeps defaults as 'static strings; these two live for the whole run anyway.
    let inv: Option<&'static str> = cfg
        .inventory
        .clone()
        .map(|s| &*Box::leak(s.into_boxed_str()));
    let state: Option<&'static str> = cfg
        .state_dir
        .clone()
        .map(|s| &*Box::leak(s.into_boxed_str()));
    set_defaults(cmd, inv, state)
}

fn set_defaults(
    cmd: clap::Command,
    inv: Option<&'static str>,
    state: Option<&'static str>,
) -> clap::Command {
    cmd.mut_args(move |a| match (a.get_id().as_str(), inv, state) {
        ("inventory", Some(v), _) => a.default_value(v).required(false),
        ("state_dir", _, Some(v)) => a.default_value(v),
        _ => a,
    })
    .mut_subcommands(move |sc| set_defaults(sc, inv, state))
}

/// What `-v` says about the project file.
pub fn describe(cfg: &ProjectConfig) -> String {
    let mut parts = Vec::new();
    if let Some(i) = &cfg.inventory {
        parts.push(format!("inventory = {i}"));
    }
    if let Some(s) = &cfg.state_dir {
        parts.push(format!("state_dir = {s}"));
    }
    format!(
        "read {} ({}; a flag or TUNNELFLEET_* variable wins over it)",
        cfg.path.display(),
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strings_and_comments() {
        let c = parse(
            "# project\ninventory = \"inv.yaml\"  # the fleet\nstate_dir = '/var/lib/tf'\n",
            Path::new("tunnelfleet.toml"),
        );
        assert_eq!(
            c.map(|c| (c.inventory, c.state_dir)),
            Ok((Some("inv.yaml".into()), Some("/var/lib/tf".into())))
        );
    }

    #[test]
    fn refuses_with_file_line_and_hint() {
        let f = Path::new("tunnelfleet.toml");
        assert_eq!(
            parse("inventroy = \"a\"\n", f),
            Err("tunnelfleet.toml:1: unknown key `inventroy` (did you mean `inventory`?)".into())
        );
        let e = parse("\ninventory = inv.yaml\n", f).unwrap_err();
        assert!(
            e.starts_with("tunnelfleet.toml:2: the value is not a string"),
            "{e}"
        );
        let e = parse("inventory = \"a\"\ninventory = \"b\"\n", f).unwrap_err();
        assert!(e.contains(":2: `inventory` is set twice"), "{e}");
    }

    #[test]
    fn relative_paths_are_the_files() {
        assert_eq!(resolve(Path::new("/p"), "inv.yaml"), "/p/inv.yaml");
        assert_eq!(resolve(Path::new("/p"), "/abs"), "/abs");
        assert_eq!(resolve(Path::new("/p"), "~/s"), "~/s");
    }
}
