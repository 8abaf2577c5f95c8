//! `--limit` patterns, after Ansible's `InventoryManager` (`split_host_pattern`,
//! `order_patterns`, `_evaluate_patterns`, `_match_one_pattern`, `_enumerate_matches`), with
//! stricter errors: unknown names and empty selections are refused instead of warned about.

use super::{Host, Inventory, InventoryError};
use std::collections::HashSet;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Union,
    Intersect,
    Exclude,
}

/// One pattern of the list, with the column (1-based, characters) of its name.
#[derive(Debug)]
struct Pattern<'a> {
    op: Op,
    text: &'a str,
    column: usize,
}

fn limit_err(column: usize, message: String) -> InventoryError {
    InventoryError::Limit { column, message }
}

pub(super) fn select<'a>(
    inv: &'a Inventory,
    limit: Option<&str>,
) -> Result<Vec<&'a Host>, InventoryError> {
    let Some(limit) = limit else {
        if inv.hosts.is_empty() {
            return Err(limit_err(1, "the inventory has no hosts".into()));
        }
        return Ok(inv.hosts().collect());
    };
    let patterns = split(limit)?;
    if patterns.is_empty() {
        return Err(limit_err(1, "empty pattern".into()));
    }
    // order_patterns: unions first, then intersections, then exclusions; `all` if no union.
    let mut selected: Vec<usize> = Vec::new();
    let mut in_selection: HashSet<usize> = HashSet::new();
    if !patterns.iter().any(|p| p.op == Op::Union) {
        selected = (0..inv.hosts.len()).collect();
        in_selection = selected.iter().copied().collect();
    }
    for op in [Op::Union, Op::Intersect, Op::Exclude] {
        for p in patterns.iter().filter(|p| p.op == op) {
            let matched = match_one(inv, p)?;
            match op {
                Op::Union => {
                    for i in matched {
                        if in_selection.insert(i) {
                            selected.push(i);
                        }
                    }
                }
                Op::Intersect => {
                    let keep: HashSet<usize> = matched.into_iter().collect();
                    selected.retain(|i| keep.contains(i));
                    in_selection.retain(|i| keep.contains(i));
                }
                Op::Exclude => {
                    let drop: HashSet<usize> = matched.into_iter().collect();
                    selected.retain(|i| !drop.contains(i));
                    in_selection.retain(|i| !drop.contains(i));
                }
            }
        }
    }
    if selected.is_empty() {
        return Err(limit_err(1, format!("'{limit}' selects no hosts")));
    }
    selected.sort_unstable();
    Ok(selected
        .into_iter()
        .filter_map(|i| inv.hosts.get_index(i).map(|(_, h)| h))
        .collect())
}

/// `split_host_pattern`: split on commas; without commas, on colons outside `[...]`
/// (a bare IPv6 address stays whole). Whitespace around patterns is ignored.
fn split(limit: &str) -> Result<Vec<Pattern<'_>>, InventoryError> {
    let mut pieces: Vec<(usize, &str)> = Vec::new(); // (byte offset, text)
    if limit.contains(',') {
        let mut start = 0;
        for (i, c) in limit.char_indices() {
            if c == ',' {
                pieces.push((start, &limit[start..i]));
                start = i + 1;
            }
        }
        pieces.push((start, &limit[start..]));
    } else if is_ipv6(limit.trim()) {
        pieces.push((0, limit));
    } else {
        let mut start = 0;
        let mut depth = 0i32;
        for (i, c) in limit.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                ':' if depth <= 0 => {
                    pieces.push((start, &limit[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        pieces.push((start, &limit[start..]));
    }
    let mut out = Vec::new();
    for (offset, piece) in pieces {
        let lead = piece.len() - piece.trim_start().len();
        let text = piece.trim();
        if text.is_empty() {
            continue;
        }
        let (op, name) = match text.as_bytes()[0] {
            b'!' => (Op::Exclude, &text[1..]),
            b'&' => (Op::Intersect, &text[1..]),
            _ => (Op::Union, text),
        };
        let name_offset = offset + lead + (text.len() - name.len());
        let column = limit[..name_offset].chars().count() + 1;
        if name.is_empty() {
            return Err(limit_err(column, "missing host or group name".into()));
        }
        if name.starts_with('~') {
            return Err(limit_err(
                column,
                format!("regular expression patterns are not supported ('{name}'); use globs"),
            ));
        }
        out.push(Pattern {
            op,
            text: name,
            column,
        });
    }
    Ok(out)
}

fn is_ipv6(s: &str) -> bool {
    s.matches(':').count() >= 2
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
}

/// A subscript `[i]` (negative from the end) or `[i:j]` / `[i:]` (inclusive).
#[derive(Debug, PartialEq)]
enum Subscript {
    Index(i64),
    Range(usize, Option<usize>),
}

/// `_split_subscript`: `web[0]`, `web[-1]`, `web[1:3]`, `web[2:]`.
fn split_subscript(pattern: &str) -> Result<(&str, Option<Subscript>), String> {
    let Some(body) = pattern.strip_suffix(']') else {
        return Ok((pattern, None));
    };
    let Some(open) = body.rfind('[') else {
        return Ok((pattern, None));
    };
    let (base, inner) = (&body[..open], &body[open + 1..]);
    if base.is_empty() {
        return Ok((pattern, None));
    }
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if digits(inner) || inner.strip_prefix('-').is_some_and(digits) {
        let i = inner
            .parse::<i64>()
            .map_err(|_| format!("bad subscript '[{inner}]'"))?;
        return Ok((base, Some(Subscript::Index(i))));
    }
    if let Some((a, b)) = inner.split_once([':', '-'])
        && digits(a)
        && (b.is_empty() || digits(b))
    {
        if inner.contains('-') {
            return Err(format!(
                "use [{a}:{b}] (inclusive) subscripts, not [{inner}]"
            ));
        }
        let a = a
            .parse::<usize>()
            .map_err(|_| format!("bad subscript '[{inner}]'"))?;
        let b = if b.is_empty() {
            None
        } else {
            Some(
                b.parse::<usize>()
                    .map_err(|_| format!("bad subscript '[{inner}]'"))?,
            )
        };
        return Ok((base, Some(Subscript::Range(a, b))));
    }
    Ok((pattern, None))
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// `_match_one_pattern`: the hosts (as inventory indices) one pattern matches, in the order
/// Ansible lists them (matching groups in group order, each in inventory order, then
/// matching hosts), before the subscript is applied.
fn match_one(inv: &Inventory, p: &Pattern<'_>) -> Result<Vec<usize>, InventoryError> {
    // Fast path of `_evaluate_patterns`: a plain pattern that is exactly a host name.
    if p.op == Op::Union
        && let Some(h) = inv.hosts.get(p.text)
    {
        return Ok(vec![h.index]);
    }
    let (expr, subscript) = split_subscript(p.text).map_err(|m| limit_err(p.column, m))?;
    let glob = Glob::new(expr);
    let mut results: Vec<usize> = Vec::new();
    let mut seen = HashSet::new();
    let mut matched_group = false;
    for group in inv.groups() {
        if glob.matches(&group.name) {
            matched_group = true;
            let members = group_hosts(inv, &group.name);
            for i in members {
                if seen.insert(i) {
                    results.push(i);
                }
            }
        }
    }
    let mut matched_host = false;
    if !matched_group || expr.contains(['.', '?', '*', '[']) {
        for host in inv.hosts() {
            if glob.matches(&host.name) {
                matched_host = true;
                if seen.insert(host.index) {
                    results.push(host.index);
                }
            }
        }
    }
    if !matched_group && !matched_host {
        let message = if has_glob(expr) {
            format!("'{expr}' matches no host or group")
        } else {
            format!("no host or group named '{expr}'")
        };
        return Err(limit_err(p.column, message));
    }
    match subscript {
        None => Ok(results),
        Some(s) => apply_subscript(results, &s).ok_or_else(|| {
            limit_err(
                p.column,
                format!("subscript of '{}' is out of range", p.text),
            )
        }),
    }
}

fn apply_subscript(hosts: Vec<usize>, s: &Subscript) -> Option<Vec<usize>> {
    if hosts.is_empty() {
        return Some(hosts);
    }
    match *s {
        Subscript::Index(i) => {
            let n = hosts.len() as i64;
            let i = if i < 0 { n + i } else { i };
            if i < 0 || i >= n {
                return None;
            }
            hosts.get(i as usize).map(|h| vec![*h])
        }
        Subscript::Range(a, b) => {
            let end = b.unwrap_or(hosts.len() - 1).min(hosts.len() - 1);
            if a > end {
                return Some(Vec::new());
            }
            Some(hosts[a..=end].to_vec())
        }
    }
}

/// Hosts of a group and its descendants, in inventory order.
fn group_hosts(inv: &Inventory, group: &str) -> Vec<usize> {
    let mut groups = HashSet::new();
    let mut todo = vec![group.to_owned()];
    while let Some(g) = todo.pop() {
        if groups.insert(g.clone())
            && let Some(grp) = inv.group(&g)
        {
            todo.extend(grp.children.iter().cloned());
        }
    }
    let mut out: Vec<usize> = inv
        .hosts()
        .filter(|h| h.direct.iter().any(|g| groups.contains(g)))
        .map(|h| h.index)
        .collect();
    out.sort_unstable();
    out
}

/// A shell glob with Python `fnmatch` semantics: `*`, `?`, `[seq]`, `[!seq]`; an unclosed
/// `[` is literal; matching is case-sensitive and covers the whole name.
struct Glob {
    tokens: Vec<Token>,
}

enum Token {
    Lit(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    fn new(pattern: &str) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    if !matches!(tokens.last(), Some(Token::Star)) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                '[' => {
                    let mut j = i + 1;
                    let negated = chars.get(j) == Some(&'!');
                    if negated {
                        j += 1;
                    }
                    if chars.get(j) == Some(&']') {
                        j += 1;
                    }
                    while j < chars.len() && chars[j] != ']' {
                        j += 1;
                    }
                    if j >= chars.len() {
                        tokens.push(Token::Lit('['));
                        i += 1;
                        continue;
                    }
                    let body = &chars[i + 1 + usize::from(negated)..j];
                    let mut ranges = Vec::new();
                    let mut k = 0;
                    while k < body.len() {
                        if k + 2 < body.len() && body[k + 1] == '-' {
                            ranges.push((body[k], body[k + 2]));
                            k += 3;
                        } else {
                            ranges.push((body[k], body[k]));
                            k += 1;
                        }
                    }
                    tokens.push(Token::Class { negated, ranges });
                    i = j + 1;
                }
                c => {
                    tokens.push(Token::Lit(c));
                    i += 1;
                }
            }
        }
        Glob { tokens }
    }

    fn matches(&self, name: &str) -> bool {
        let chars: Vec<char> = name.chars().collect();
        // Iterative wildcard matching with backtracking to the last star.
        let (mut t, mut c) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while c < chars.len() {
            let step = match self.tokens.get(t) {
                Some(Token::Star) => {
                    star = Some((t, c));
                    t += 1;
                    continue;
                }
                Some(Token::Lit(l)) => *l == chars[c],
                Some(Token::Any) => true,
                Some(Token::Class { negated, ranges }) => {
                    let inside = ranges.iter().any(|(a, b)| *a <= chars[c] && chars[c] <= *b);
                    inside != *negated
                }
                None => false,
            };
            if step {
                t += 1;
                c += 1;
            } else if let Some((st, sc)) = star {
                t = st + 1;
                c = sc + 1;
                star = Some((st, sc + 1));
            } else {
                return false;
            }
        }
        self.tokens[t..]
            .iter()
            .all(|tok| matches!(tok, Token::Star))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_like_fnmatch() {
        let m = |p: &str, n: &str| Glob::new(p).matches(n);
        assert!(m("web*", "web1"));
        assert!(m("web*", "web"));
        assert!(!m("web*", "db1"));
        assert!(m("*", "anything.example.com"));
        assert!(m("w?b[0-9]", "web7"));
        assert!(!m("w?b[!0-9]", "web7"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(m("[]]x", "]x"));
        assert!(m("we[b", "we[b"));
        assert!(!m("web", "web1"));
    }

    #[test]
    fn subscripts() {
        assert_eq!(
            split_subscript("web[0]"),
            Ok(("web", Some(Subscript::Index(0))))
        );
        assert_eq!(
            split_subscript("web[-1]"),
            Ok(("web", Some(Subscript::Index(-1))))
        );
        assert_eq!(
            split_subscript("web[1:2]"),
            Ok(("web", Some(Subscript::Range(1, Some(2)))))
        );
        assert_eq!(
            split_subscript("web[1:]"),
            Ok(("web", Some(Subscript::Range(1, None))))
        );
        assert_eq!(split_subscript("web[ab]"), Ok(("web[ab]", None)));
        assert!(split_subscript("web[1-2]").is_err());
    }

    #[test]
    fn splitting_and_columns() {
        let cols = |s: &str| -> Vec<(Op, String, usize)> {
            split(s)
                .map(|v| {
                    v.into_iter()
                        .map(|p| (p.op, p.text.to_owned(), p.column))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            cols("web*, !db ,&prod"),
            vec![
                (Op::Union, "web*".into(), 1),
                (Op::Exclude, "db".into(), 8),
                (Op::Intersect, "prod".into(), 13)
            ]
        );
        assert_eq!(
            cols("web:!web[0]:&x"),
            vec![
                (Op::Union, "web".into(), 1),
                (Op::Exclude, "web[0]".into(), 6),
                (Op::Intersect, "x".into(), 14)
            ]
        );
        assert_eq!(
            cols("2001:db8::1"),
            vec![(Op::Union, "2001:db8::1".into(), 1)]
        );
    }
}
