//! Ansible's INI inventory format, as its `ini` inventory plugin reads it (ansible-core
//! 2.19): `[group]` sections of host lines (`host[:port] [key=value ...]`, shell-quoted,
//! `#` comments), `[group:vars]` with `key = value` lines, `[group:children]` with group
//! names (which may be declared later in the file). Values are typed by
//! [`super::pyliteral`] as `ast.literal_eval` would. Errors say `file:line`.

use super::build::{Builder, UNGROUPED, expand_host_pattern};
use super::pyliteral::{self, Typed};
use super::yaml::Loc;
use super::{InventoryError, clip};
use indexmap::IndexMap;
use serde_json::Value;

/// Adds the groups and hosts of INI `text` (file index `file`) to `b`.
pub(super) fn ini_source(b: &mut Builder, text: &str, file: usize) -> Result<(), InventoryError> {
    let mut group = UNGROUPED.to_owned();
    let mut state = State::Hosts;
    // Groups named in [x:children] (or [x:vars]) before their own section: name -> (line,
    // kind, parents).
    let mut pending: IndexMap<String, Pending> = IndexMap::new();
    for (i, raw) in py_splitlines(text).into_iter().enumerate() {
        let loc = Loc {
            line: i + 1,
            column: 1,
            file,
        };
        let err = |b: &Builder, m: String| b.err(loc, m);
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some((name, tag)) = section(line) {
            let kind = match tag {
                None | Some("hosts") => State::Hosts,
                Some("children") => State::Children,
                Some("vars") => State::Vars,
                Some(other) => {
                    return Err(err(
                        b,
                        format!(
                            "section [{}:{}] has unknown type: {} (use hosts, children or vars)",
                            clip(name),
                            clip(other),
                            clip(other)
                        ),
                    ));
                }
            };
            group = name.to_owned();
            state = kind;
            if !b.groups.contains_key(&group) {
                if state == State::Vars && !pending.contains_key(&group) {
                    pending.insert(
                        group.clone(),
                        Pending {
                            line: i + 1,
                            vars: true,
                            parents: Vec::new(),
                        },
                    );
                }
                b.add_group(&group, loc);
            }
            if state != State::Vars
                && let Some(p) = pending.get(&group)
            {
                if p.vars {
                    pending.shift_remove(&group);
                } else {
                    add_pending_children(b, &group, &mut pending, loc)?;
                }
            }
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            return Err(err(
                b,
                format!(
                    "invalid section entry '{}': a section is [group], [group:vars] or \
                     [group:children], without spaces",
                    clip(line)
                ),
            ));
        }
        match state {
            State::Hosts => {
                let tokens = shlex_split(line).map_err(|m| {
                    err(
                        b,
                        format!("error parsing host definition '{}': {m}", clip(line)),
                    )
                })?;
                let Some(pattern) = tokens.first() else {
                    continue;
                };
                if pattern.trim().ends_with(':') {
                    return Err(err(
                        b,
                        format!(
                            "invalid host pattern '{}': a trailing ':' is reserved for a port",
                            clip(pattern)
                        ),
                    ));
                }
                let (names, port) = expand_host_pattern(pattern)
                    .map_err(|m| err(b, format!("group '{group}': {m}")))?;
                if names.iter().any(|n| n.trim() == "---") {
                    return Err(err(
                        b,
                        "invalid host pattern '---': is this a YAML file? Name it .yaml".into(),
                    ));
                }
                let mut vars = Vec::new();
                for t in &tokens[1..] {
                    let Some((k, v)) = t.split_once('=') else {
                        return Err(err(
                            b,
                            format!(
                                "expected key=value host variable assignment, got: {}",
                                clip(t)
                            ),
                        ));
                    };
                    vars.push((k.to_owned(), typed(b, loc, k, v)?));
                }
                for name in names {
                    b.add_host(&name, &group, port, loc);
                    for (k, v) in &vars {
                        b.set_host_value(&name, k, v.clone(), loc);
                    }
                }
            }
            State::Vars => {
                let Some((k, v)) = line.split_once('=') else {
                    return Err(err(b, format!("expected key=value, got: {}", clip(line))));
                };
                let (k, v) = (k.trim(), v.trim());
                let value = typed(b, loc, k, v)?;
                b.set_group_value(&group, k, value, loc)?;
            }
            State::Children => {
                let Some(child) = group_name(line) else {
                    return Err(err(b, format!("expected group name, got: {}", clip(line))));
                };
                if b.groups.contains_key(child) {
                    b.add_child(&group, child, loc)?;
                } else {
                    pending
                        .entry(child.to_owned())
                        .or_insert_with(|| Pending {
                            line: i + 1,
                            vars: false,
                            parents: Vec::new(),
                        })
                        .parents
                        .push(group.clone());
                }
            }
        }
    }
    if let Some((name, p)) = pending.into_iter().next() {
        let loc = Loc {
            line: p.line,
            column: 1,
            file,
        };
        return Err(if p.vars {
            b.err(
                loc,
                format!("section [{name}:vars] is not valid for undefined group: {name}"),
            )
        } else {
            b.err(
                loc,
                format!(
                    "section [{}:children] includes undefined group: {name}",
                    p.parents.last().map(String::as_str).unwrap_or("?")
                ),
            )
        });
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Hosts,
    Vars,
    Children,
}

struct Pending {
    line: usize,
    vars: bool,
    parents: Vec<String>,
}

fn add_pending_children(
    b: &mut Builder,
    group: &str,
    pending: &mut IndexMap<String, Pending>,
    loc: Loc,
) -> Result<(), InventoryError> {
    let parents = pending
        .get(group)
        .map(|p| p.parents.clone())
        .unwrap_or_default();
    for parent in parents {
        b.add_child(&parent, group, loc)?;
        if pending.get(&parent).is_some_and(|p| !p.vars) {
            add_pending_children(b, &parent, pending, loc)?;
        }
    }
    pending.shift_remove(group);
    Ok(())
}

/// A value typed as Ansible's `_parse_value`; a literal JSON cannot carry is refused.
fn typed(b: &Builder, loc: Loc, key: &str, text: &str) -> Result<Value, InventoryError> {
    match pyliteral::literal(text) {
        Typed::Value(v) => Ok(v),
        Typed::NotLiteral => Ok(Value::String(text.to_owned())),
        Typed::Unsupported(what) => Err(b.err(
            loc,
            format!(
                "{}: the value is {what} (a Python literal Ansible would keep but \
                 tunnelfleet cannot carry); quote it to make it a string",
                clip(key)
            ),
        )),
    }
}

/// `^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:\#.*)?$`: a section header.
fn section(line: &str) -> Option<(&str, Option<&str>)> {
    let rest = line.strip_prefix('[')?;
    let end = rest.find(|c: char| c == ':' || c == ']' || c.is_whitespace())?;
    let name = &rest[..end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &rest[end..];
    let mut tag = None;
    if let Some(r) = rest.strip_prefix(':') {
        let e = r
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        if e == 0 {
            return None;
        }
        tag = Some(&r[..e]);
        rest = &r[e..];
    }
    let rest = rest.strip_prefix(']')?.trim_start();
    (rest.is_empty() || rest.starts_with('#')).then_some((name, tag))
}

/// `^([^:\]\s]+)\s*(?:\#.*)?$`: a group name line in a `:children` section.
fn group_name(line: &str) -> Option<&str> {
    let end = line
        .find(|c: char| c == ':' || c == ']' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..end];
    let rest = line[end..].trim_start();
    (!name.is_empty() && (rest.is_empty() || rest.starts_with('#'))).then_some(name)
}

/// Python's `str.splitlines()`.
fn py_splitlines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let brk = matches!(
            c,
            '\n' | '\r'
                | '\x0b'
                | '\x0c'
                | '\x1c'
                | '\x1d'
                | '\x1e'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if brk {
            out.push(&text[start..i]);
            let mut next = i + c.len_utf8();
            if c == '\r'
                && let Some((j, '\n')) = chars.peek().copied()
            {
                chars.next();
                next = j + 1;
            }
            start = next;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Python's `shlex.split(line, comments=True)` (POSIX mode).
fn shlex_split(line: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    let mut token = String::new();
    let mut in_token = false;
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                if in_token {
                    out.push(std::mem::take(&mut token));
                    in_token = false;
                }
            }
            '#' => break,
            '\\' => {
                let e = chars.next().ok_or("no escaped character")?;
                token.push(e);
                in_token = true;
            }
            '\'' => {
                in_token = true;
                loop {
                    match chars.next() {
                        None => return Err("no closing quotation"),
                        Some('\'') => break,
                        Some(ch) => token.push(ch),
                    }
                }
            }
            '"' => {
                in_token = true;
                loop {
                    match chars.next() {
                        None => return Err("no closing quotation"),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err("no closing quotation"),
                            Some(e @ ('"' | '\\')) => token.push(e),
                            Some(e) => {
                                token.push('\\');
                                token.push(e);
                            }
                        },
                        Some(ch) => token.push(ch),
                    }
                }
            }
            other => {
                token.push(other);
                in_token = true;
            }
        }
    }
    if in_token {
        out.push(token);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shlex_like_python() {
        assert_eq!(
            shlex_split(r#"h1:22 a=1 b="x y" c='q r' d=a#b e=\"z"#),
            Ok(vec![
                "h1:22".to_owned(),
                "a=1".into(),
                "b=x y".into(),
                "c=q r".into(),
                "d=a".into(),
            ])
        );
        assert_eq!(
            shlex_split(r#"x="a\"b\n""#),
            Ok(vec![r#"x=a"b\n"#.to_owned()])
        );
        assert_eq!(shlex_split("x=''"), Ok(vec!["x=".to_owned()]));
        assert!(shlex_split("x='open").is_err());
    }

    #[test]
    fn sections_and_names() {
        assert_eq!(section("[web]"), Some(("web", None)));
        assert_eq!(section("[web:vars] # c"), Some(("web", Some("vars"))));
        assert_eq!(section("[web vars]"), None);
        assert_eq!(section("[web:]"), None);
        assert_eq!(group_name("kids # c"), Some("kids"));
        assert_eq!(group_name("a b"), None);
        assert_eq!(py_splitlines("a\r\nb\rc\n"), vec!["a", "b", "c"]);
    }
}
