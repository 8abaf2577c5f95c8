//! Ansible's INI value typing: `ast.literal_eval` on the text, the text itself when that
//! fails (`ValueError`/`SyntaxError`).
//!
//! Supported: `None`, `True`, `False`, ints (decimal, `0x`, `0o`, `0b`, `_` separators, a
//! unary sign), floats (`1.5`, `.5`, `1e3`), string literals (quotes, prefixes `r`/`u`,
//! escapes, implicit concatenation), lists, tuples (as lists) and dicts with string keys,
//! parentheses, and a trailing `#` comment. A literal that Python accepts but JSON cannot
//! carry the way Ansible prints it (sets, complex numbers, bytes, ints beyond 64 bits, dicts
//! with non-string keys, `...`) is an error: tunnelfleet refuses it instead of guessing.

use serde_json::{Map, Number, Value};

/// Result of typing one INI value.
pub(super) enum Typed {
    /// A Python literal, converted to JSON.
    Value(Value),
    /// Not a literal: the value stays the string it was.
    NotLiteral,
    /// A literal of a kind tunnelfleet does not carry (named in the message).
    Unsupported(&'static str),
}

/// Types `text` as Ansible's INI parser does (`_parse_value`).
#[cfg(test)]
fn parse_value(text: &str) -> Value {
    match literal(text) {
        Typed::Value(v) => v,
        _ => Value::String(text.to_owned()),
    }
}

/// `ast.literal_eval(text)`, as far as JSON can carry it.
pub(super) fn literal(text: &str) -> Typed {
    let mut p = P {
        s: text.trim_start_matches([' ', '\t']).chars().collect(),
        i: 0,
    };
    match p.expr() {
        Ok(v) => {
            p.skip_ws_and_comment();
            if p.i == p.s.len() {
                Typed::Value(v)
            } else {
                Typed::NotLiteral
            }
        }
        Err(Fail::No) => Typed::NotLiteral,
        Err(Fail::Unsupported(what)) => Typed::Unsupported(what),
    }
}

enum Fail {
    No,
    Unsupported(&'static str),
}

struct P {
    s: Vec<char>,
    i: usize,
}

type R = Result<Value, Fail>;

impl P {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            if c == ' ' || c == '\t' || c == '\x0c' || (newlines && (c == '\n' || c == '\r')) {
                self.i += 1;
            } else if c == '\\' && self.s.get(self.i + 1) == Some(&'\n') {
                self.i += 2;
            } else {
                break;
            }
        }
    }

    fn skip_ws_and_comment(&mut self) {
        loop {
            self.skip_ws(true);
            if self.peek() == Some('#') {
                while let Some(c) = self.peek() {
                    if c == '\n' {
                        break;
                    }
                    self.i += 1;
                }
            } else {
                break;
            }
        }
    }

    /// An expression: a unary-signed number, a string, a container, a name.
    fn expr(&mut self) -> R {
        self.skip_ws(false);
        match self.peek() {
            None => Err(Fail::No),
            Some('-') | Some('+') => {
                let neg = self.peek() == Some('-');
                self.i += 1;
                self.skip_ws(false);
                let v = self.number()?;
                if !neg {
                    return Ok(v);
                }
                match v {
                    Value::Number(n) => {
                        if let Some(i) = n.as_i64() {
                            i.checked_neg()
                                .map(Value::from)
                                .ok_or(Fail::Unsupported("an integer beyond 64 bits"))
                        } else if let Some(u) = n.as_u64() {
                            if u == 1 << 63 {
                                Ok(Value::from(i64::MIN))
                            } else {
                                Err(Fail::Unsupported("an integer beyond 64 bits"))
                            }
                        } else {
                            Ok(float(-n.as_f64().unwrap_or(0.0)))
                        }
                    }
                    _ => Err(Fail::No),
                }
            }
            Some('[') => {
                self.i += 1;
                Ok(Value::Array(self.items(']')?))
            }
            Some('(') => {
                self.i += 1;
                self.skip_ws_and_comment();
                if self.peek() == Some(')') {
                    self.i += 1;
                    return Ok(Value::Array(Vec::new()));
                }
                let first = self.expr()?;
                self.skip_ws_and_comment();
                match self.peek() {
                    Some(')') => {
                        self.i += 1;
                        Ok(first)
                    }
                    Some(',') => {
                        self.i += 1;
                        let mut rest = self.items(')')?;
                        rest.insert(0, first);
                        Ok(Value::Array(rest))
                    }
                    _ => Err(Fail::No),
                }
            }
            Some('{') => {
                self.i += 1;
                self.dict()
            }
            Some(c) if c == '\'' || c == '"' => self.strings(),
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(),
            Some(c) if c.is_alphabetic() || c == '_' => {
                let start = self.i;
                while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    self.i += 1;
                }
                let word: String = self.s[start..self.i].iter().collect();
                if matches!(self.peek(), Some('\'') | Some('"')) {
                    let lower = word.to_ascii_lowercase();
                    return match lower.as_str() {
                        "r" | "u" => {
                            self.i = start;
                            self.strings()
                        }
                        "b" | "br" | "rb" => Err(Fail::Unsupported("a bytes literal")),
                        _ => Err(Fail::No),
                    };
                }
                match word.as_str() {
                    "None" => Ok(Value::Null),
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    "set" if self.peek() == Some('(') => Err(Fail::Unsupported("a set")),
                    _ => Err(Fail::No),
                }
            }
            _ => Err(Fail::No),
        }
    }

    /// Comma-separated items up to `close` (trailing comma allowed).
    fn items(&mut self, close: char) -> Result<Vec<Value>, Fail> {
        let mut out = Vec::new();
        loop {
            self.skip_ws_and_comment();
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(out);
            }
            out.push(self.expr()?);
            self.skip_ws_and_comment();
            match self.peek() {
                Some(',') => self.i += 1,
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => return Err(Fail::No),
            }
        }
    }

    fn dict(&mut self) -> R {
        let mut out = Map::new();
        let mut first = true;
        loop {
            self.skip_ws_and_comment();
            if self.peek() == Some('}') {
                self.i += 1;
                return Ok(Value::Object(out));
            }
            let key = self.expr()?;
            self.skip_ws_and_comment();
            if self.peek() != Some(':') {
                // `{1, 2}` is a set.
                return Err(
                    if first && self.peek().is_some_and(|c| c == ',' || c == '}') {
                        Fail::Unsupported("a set")
                    } else {
                        Fail::No
                    },
                );
            }
            first = false;
            self.i += 1;
            let value = self.expr()?;
            let Value::String(key) = key else {
                return Err(Fail::Unsupported("a dict with non-string keys"));
            };
            out.insert(key, value);
            self.skip_ws_and_comment();
            match self.peek() {
                Some(',') => self.i += 1,
                Some('}') => {
                    self.i += 1;
                    return Ok(Value::Object(out));
                }
                _ => return Err(Fail::No),
            }
        }
    }

    /// One or more adjacent string literals, concatenated.
    fn strings(&mut self) -> R {
        let mut out = String::new();
        let mut any = false;
        loop {
            self.skip_ws(false);
            let save = self.i;
            let mut raw = false;
            match self.peek() {
                Some('r') | Some('R') => {
                    raw = true;
                    self.i += 1;
                }
                Some('u') | Some('U') => self.i += 1,
                _ => {}
            }
            let Some(q) = self.peek().filter(|c| *c == '\'' || *c == '"') else {
                self.i = save;
                break;
            };
            let triple = self.s.get(self.i + 1) == Some(&q) && self.s.get(self.i + 2) == Some(&q);
            self.i += if triple { 3 } else { 1 };
            loop {
                let Some(c) = self.peek() else {
                    return Err(Fail::No);
                };
                if c == q {
                    if !triple {
                        self.i += 1;
                        break;
                    }
                    if self.s.get(self.i + 1) == Some(&q) && self.s.get(self.i + 2) == Some(&q) {
                        self.i += 3;
                        break;
                    }
                }
                if c == '\n' && !triple {
                    return Err(Fail::No);
                }
                self.i += 1;
                if c != '\\' {
                    out.push(c);
                    continue;
                }
                let Some(e) = self.peek() else {
                    return Err(Fail::No);
                };
                self.i += 1;
                if raw {
                    out.push('\\');
                    out.push(e);
                    continue;
                }
                match e {
                    '\n' => {}
                    '\\' | '\'' | '"' => out.push(e),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = self.s.iter().skip(self.i).take(n).collect();
                        if hex.len() != n || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                            return Err(Fail::No);
                        }
                        self.i += n;
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or(Fail::No)?;
                        out.push(c);
                    }
                    '0'..='7' => {
                        let mut v = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            match self.peek().and_then(|c| c.to_digit(8)) {
                                Some(d) => {
                                    v = v * 8 + d;
                                    self.i += 1;
                                }
                                None => break,
                            }
                        }
                        out.push(char::from_u32(v).ok_or(Fail::No)?);
                    }
                    'N' => return Err(Fail::Unsupported("a \\N{...} escape")),
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            }
            any = true;
        }
        if any {
            Ok(Value::String(out))
        } else {
            Err(Fail::No)
        }
    }

    /// A Python number literal (no sign).
    fn number(&mut self) -> R {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            let c = self.s[self.i];
            self.i += 1;
            // Exponent sign.
            if (c == 'e' || c == 'E')
                && !self.s[start..self.i].iter().any(|c| *c == 'x' || *c == 'X')
                && matches!(self.peek(), Some('+') | Some('-'))
            {
                self.i += 1;
            }
        }
        let text: String = self.s[start..self.i].iter().collect();
        if text.ends_with(['j', 'J']) {
            return Err(Fail::Unsupported("a complex number"));
        }
        number(&text)
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Digits with single `_` between them.
fn digits_ok(s: &str, radix: u32) -> bool {
    !s.is_empty()
        && !s.starts_with('_')
        && !s.ends_with('_')
        && !s.contains("__")
        && s.chars().all(|c| c == '_' || c.is_digit(radix))
}

fn number(text: &str) -> R {
    let lower = text.to_ascii_lowercase();
    let radix = |prefix: &str, radix: u32| -> Option<R> {
        let body = lower.strip_prefix(prefix)?;
        let body = body.strip_prefix('_').unwrap_or(body);
        if !digits_ok(body, radix) {
            return Some(Err(Fail::No));
        }
        Some(
            u64::from_str_radix(&body.replace('_', ""), radix)
                .map(Value::from)
                .map_err(|_| Fail::Unsupported("an integer beyond 64 bits")),
        )
    };
    for (p, r) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(v) = radix(p, r) {
            return v;
        }
    }
    let is_float = lower.contains('.') || lower.contains('e');
    if !is_float {
        if !digits_ok(&lower, 10) {
            return Err(Fail::No);
        }
        let clean = lower.replace('_', "");
        // Python refuses leading zeros in non-zero decimal ints ("01").
        if clean.len() > 1 && clean.starts_with('0') && clean.chars().any(|c| c != '0') {
            return Err(Fail::No);
        }
        return clean
            .parse::<u64>()
            .map(|u| {
                i64::try_from(u)
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::from(u))
            })
            .map_err(|_| Fail::Unsupported("an integer beyond 64 bits"));
    }
    let (mantissa, exponent) = match lower.find('e') {
        Some(i) => (&lower[..i], Some(&lower[i + 1..])),
        None => (lower.as_str(), None),
    };
    if let Some(e) = exponent {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        if !digits_ok(e, 10) {
            return Err(Fail::No);
        }
    }
    let (int_part, frac) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], Some(&mantissa[i + 1..])),
        None => (mantissa, None),
    };
    if int_part.is_empty() && frac.is_none_or(|f| f.is_empty()) {
        return Err(Fail::No);
    }
    if !int_part.is_empty() && !digits_ok(int_part, 10) {
        return Err(Fail::No);
    }
    if let Some(f) = frac
        && !f.is_empty()
        && !digits_ok(f, 10)
    {
        return Err(Fail::No);
    }
    let f: f64 = lower.replace('_', "").parse().map_err(|_| Fail::No)?;
    if !f.is_finite() {
        return Err(Fail::Unsupported("an infinite float"));
    }
    Ok(float(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn like_literal_eval() {
        let cases = [
            ("1", json!(1)),
            ("-3", json!(-3)),
            ("+3", json!(3)),
            ("0x1F", json!(31)),
            ("0o17", json!(15)),
            ("1_000", json!(1000)),
            ("01", json!("01")),
            ("00", json!(0)),
            ("1.5", json!(1.5)),
            ("1e3", json!(1000.0)),
            (".5", json!(0.5)),
            ("True", json!(true)),
            ("None", Value::Null),
            ("yes", json!("yes")),
            ("true", json!("true")),
            ("'5'", json!("5")),
            ("\"a\" 'b'", json!("ab")),
            ("'a\\tb'", json!("a\tb")),
            ("r'a\\tb'", json!("a\\tb")),
            ("[1, 'a', [2]]", json!([1, "a", [2]])),
            ("(1, 2)", json!([1, 2])),
            ("(1)", json!(1)),
            ("()", json!([])),
            ("{'k': 3}", json!({"k": 3})),
            ("{k:3}", json!("{k:3}")),
            ("1 # comment", json!(1)),
            ("hello # c", json!("hello # c")),
            ("1+2", json!("1+2")),
            ("", json!("")),
            ("  7", json!(7)),
            ("10.0.0.1", json!("10.0.0.1")),
            ("1.", json!(1.0)),
            ("a b", json!("a b")),
            ("/srv/x", json!("/srv/x")),
        ];
        for (text, want) in cases {
            assert_eq!(parse_value(text), want, "{text}");
        }
        for text in ["{1, 2}", "1j", "b'x'", "set()", "99999999999999999999"] {
            assert!(
                matches!(literal(text), Typed::Unsupported(_)),
                "{text} should be unsupported"
            );
        }
    }
}
