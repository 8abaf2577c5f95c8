//! YAML reading for inventories: a small node tree with source positions, built from the
//! event stream of `granit_parser` (the parser under serde-saphyr, re-exported by it).
//!
//! Why events and not `serde_saphyr::from_str`: Ansible reads inventories with PyYAML, which
//! types plain scalars by YAML 1.1 rules (`yes` is a bool, `0755` is octal, `1e3` is a
//! string, `y` is a string). serde-saphyr's inference is close but not identical, and it
//! cannot tell a quoted `"yes"` from a plain `yes` once the value reaches a visitor. With the
//! events we see each scalar's style and text, resolve types exactly as PyYAML's `Resolver`
//! does, keep mapping keys as written (host `10.0.0.1` or `123` stays that string), and keep
//! the line:column of every key and value for error messages.

use serde_json::{Number, Value};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

/// Key of Ansible's JSON form of an `!unsafe` string.
pub(crate) const UNSAFE_KEY: &str = "__ansible_unsafe";

/// Key of Ansible's JSON form of an inline `!vault` value (what `--list` prints).
pub(crate) const VAULT_KEY: &str = "__ansible_vault";

/// 1-based line and column (in characters) of a node in the inventory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Loc {
    pub(crate) line: usize,
    pub(crate) column: usize,
    /// Index of the file in the inventory's list of files read (0 for single-file users).
    pub(crate) file: usize,
}

impl Loc {
    fn of(span: &Span) -> Loc {
        Loc {
            line: span.start.line(),
            column: span.start.col() + 1,
            file: 0,
        }
    }
}

/// A YAML node with its position.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) loc: Loc,
}

/// The shape of a node. Scalars keep the text as written (after escapes) next to their
/// resolved value, so mapping keys can be used verbatim.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Scalar { raw: String, value: Value },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_loc: Loc,
    /// The type of the key as YAML resolves it ("a string", "an integer", ...): Ansible
    /// refuses host and group names that are not strings.
    pub(crate) key_type: &'static str,
    pub(crate) value: Node,
}

/// A YAML-level error: position and message.
#[derive(Debug)]
pub(crate) struct YamlError {
    pub(crate) loc: Loc,
    pub(crate) message: String,
}

fn err(loc: Loc, message: impl Into<String>) -> YamlError {
    YamlError {
        loc,
        message: message.into(),
    }
}

impl Node {
    /// `null`, `~` or an empty value.
    pub(crate) fn is_null(&self) -> bool {
        matches!(
            &self.kind,
            Kind::Scalar {
                value: Value::Null,
                ..
            }
        )
    }

    /// A short description of the node's type for error messages ("a list", "a string", ...).
    pub(crate) fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Scalar { value, .. } => json_type_name(value),
        }
    }

    /// The node as a JSON value (mappings keep their key order).
    pub(crate) fn to_json(&self) -> Value {
        match &self.kind {
            Kind::Scalar { value, .. } => value.clone(),
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Kind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A short description of a JSON value's type for error messages.
pub(crate) fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Sets the file index of every position in `node` (the parser numbers none).
pub(crate) fn set_file(node: &mut Node, file: usize) {
    node.loc.file = file;
    match &mut node.kind {
        Kind::Scalar { .. } => {}
        Kind::Seq(items) => items.iter_mut().for_each(|n| set_file(n, file)),
        Kind::Map(entries) => {
            for e in entries {
                e.key_loc.file = file;
                set_file(&mut e.value, file);
            }
        }
    }
}

/// Parses a single-document YAML text into a node tree. An empty stream gives `None`.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let mut builder = Builder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        expanded: 0,
    };
    builder.stream()
}

struct Builder<'a> {
    parser: Parser<'a, serde_saphyr::granit_parser::StrInput<'a>>,
    /// Anchored nodes with their size in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes copied by aliases so far, bounded against "billion laughs" documents.
    expanded: usize,
}

/// At most this many nodes may be copied by aliases in one document.
const MAX_ALIAS_EXPANSION: usize = 1_000_000;

fn size(node: &Node) -> usize {
    1 + match &node.kind {
        Kind::Scalar { .. } => 0,
        Kind::Seq(items) => items.iter().map(size).sum(),
        Kind::Map(entries) => entries.iter().map(|e| 1 + size(&e.value)).sum(),
    }
}

enum Step {
    Node(Node),
    SeqEnd,
    MapEnd,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<Option<(Event<'a>, Span)>, YamlError> {
        loop {
            match self.parser.next() {
                None => return Ok(None),
                Some(Err(e)) => {
                    let m = e.marker();
                    return Err(err(
                        Loc {
                            line: m.line(),
                            column: m.col() + 1,
                            file: 0,
                        },
                        format!("YAML syntax error: {}", e.info()),
                    ));
                }
                Some(Ok((Event::Comment(..), _))) | Some(Ok((Event::Anchor(..), _))) => continue,
                Some(Ok(ev)) => return Ok(Some(ev)),
            }
        }
    }

    fn stream(&mut self) -> Result<Option<Node>, YamlError> {
        let mut doc: Option<Node> = None;
        let mut docs = 0usize;
        while let Some((event, span)) = self.next()? {
            match event {
                Event::StreamStart | Event::DocumentEnd => {}
                Event::StreamEnd => break,
                Event::DocumentStart(..) => {
                    docs += 1;
                    if docs > 1 {
                        return Err(err(
                            Loc::of(&span),
                            "expected a single YAML document, found another one",
                        ));
                    }
                    self.anchors.clear();
                    match self.step()? {
                        Step::Node(n) => doc = Some(n),
                        Step::SeqEnd | Step::MapEnd => {
                            return Err(err(Loc::of(&span), "unexpected end of collection"));
                        }
                    }
                }
                _ => return Err(err(Loc::of(&span), "unexpected YAML event")),
            }
        }
        Ok(doc)
    }

    /// Reads one node, or the end marker of the enclosing collection.
    fn step(&mut self) -> Result<Step, YamlError> {
        let Some((event, span)) = self.next()? else {
            return Err(err(Loc::default(), "unexpected end of YAML input"));
        };
        let loc = Loc::of(&span);
        match event {
            Event::SequenceEnd => Ok(Step::SeqEnd),
            Event::MappingEnd => Ok(Step::MapEnd),
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((node, n)) => {
                    self.expanded += n;
                    if self.expanded > MAX_ALIAS_EXPANSION {
                        return Err(err(loc, "aliases expand to too many nodes"));
                    }
                    Ok(Step::Node(Node {
                        kind: node.kind.clone(),
                        loc,
                    }))
                }
                None => Err(err(loc, "alias refers to an unknown anchor")),
            },
            Event::Scalar(text, style, anchor, tag) => {
                let tag = tag.map(|t| tag_name(t.handle(), t.suffix()));
                let value = resolve_scalar(&text, style, tag.as_deref())
                    .map_err(|message| err(loc, message))?;
                let node = Node {
                    kind: Kind::Scalar {
                        raw: text.into_owned(),
                        value,
                    },
                    loc,
                };
                self.remember(anchor, &node);
                Ok(Step::Node(node))
            }
            Event::SequenceStart(_, anchor, tag) => {
                if let Some(t) = tag {
                    check_collection_tag(&tag_name(t.handle(), t.suffix()), "seq", loc)?;
                }
                let mut items = Vec::new();
                loop {
                    match self.step()? {
                        Step::Node(n) => items.push(n),
                        Step::SeqEnd => break,
                        Step::MapEnd => return Err(err(loc, "malformed sequence")),
                    }
                }
                let node = Node {
                    kind: Kind::Seq(items),
                    loc,
                };
                self.remember(anchor, &node);
                Ok(Step::Node(node))
            }
            Event::MappingStart(_, anchor, tag) => {
                if let Some(t) = tag {
                    check_collection_tag(&tag_name(t.handle(), t.suffix()), "map", loc)?;
                }
                let node = self.mapping(loc)?;
                self.remember(anchor, &node);
                Ok(Step::Node(node))
            }
            _ => Err(err(loc, "unexpected YAML event")),
        }
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size(node)));
        }
    }

    /// Reads the entries of a mapping up to its end. Duplicate keys are an error (PyYAML keeps
    /// the last one with a warning; in an inventory a duplicate is almost always a mistake).
    /// `<<` merge keys are expanded as PyYAML does: explicit keys win over merged ones.
    fn mapping(&mut self, loc: Loc) -> Result<Node, YamlError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut merged: Vec<Entry> = Vec::new();
        loop {
            let key = match self.step()? {
                Step::MapEnd => break,
                Step::SeqEnd => return Err(err(loc, "malformed mapping")),
                Step::Node(k) => k,
            };
            let (key_text, is_merge, key_type) = match &key.kind {
                Kind::Scalar { raw, value } => (
                    raw.clone(),
                    raw == "<<" && matches!(value, Value::String(_)),
                    json_type_name(value),
                ),
                _ => {
                    return Err(err(
                        key.loc,
                        format!("mapping keys must be scalars (got {})", key.type_name()),
                    ));
                }
            };
            let value = match self.step()? {
                Step::Node(v) => v,
                _ => return Err(err(key.loc, "mapping key without a value")),
            };
            if is_merge {
                let sources = match &value.kind {
                    Kind::Map(_) => vec![value],
                    Kind::Seq(items) => items.clone(),
                    _ => {
                        return Err(err(
                            value.loc,
                            "merge key '<<' needs a mapping or a list of mappings",
                        ));
                    }
                };
                for source in sources {
                    let Kind::Map(source_entries) = source.kind else {
                        return Err(err(
                            source.loc,
                            "merge key '<<' needs a mapping or a list of mappings",
                        ));
                    };
                    for e in source_entries {
                        if !merged.iter().any(|m| m.key == e.key) {
                            merged.push(e);
                        }
                    }
                }
                continue;
            }
            if let Some(first) = entries.iter().find(|e| e.key == key_text) {
                return Err(err(
                    key.loc,
                    format!(
                        "duplicate key '{}' (first at line {}, column {})",
                        key_text, first.key_loc.line, first.key_loc.column
                    ),
                ));
            }
            entries.push(Entry {
                key: key_text,
                key_loc: key.loc,
                key_type,
                value,
            });
        }
        if !merged.is_empty() {
            let mut all: Vec<Entry> = merged
                .into_iter()
                .filter(|m| !entries.iter().any(|e| e.key == m.key))
                .collect();
            all.extend(entries);
            entries = all;
        }
        Ok(Node {
            kind: Kind::Map(entries),
            loc,
        })
    }
}

/// `!!str` style name for a tag: `tag:yaml.org,2002:str` -> `!!str`, local tags as written.
fn tag_name(handle: &str, suffix: &str) -> String {
    if handle == "tag:yaml.org,2002:" || handle == "!!" {
        format!("!!{suffix}")
    } else {
        format!("{handle}{suffix}")
    }
}

fn check_collection_tag(tag: &str, kind: &str, loc: Loc) -> Result<(), YamlError> {
    if tag == format!("!!{kind}") {
        Ok(())
    } else {
        Err(err(loc, format!("unsupported YAML tag '{tag}' here")))
    }
}

/// Types a scalar exactly as PyYAML's (YAML 1.1) `Resolver` + `SafeConstructor` do for plain
/// scalars; quoted and block scalars are strings. Explicit tags `!!str`, `!!int`, `!!float`,
/// `!!bool`, `!!null` and Ansible's `!unsafe` (kept as `{"__ansible_unsafe": "..."}`, the
/// form Ansible's JSON output uses) are honoured; others are refused.
fn resolve_scalar(text: &str, style: ScalarStyle, tag: Option<&str>) -> Result<Value, String> {
    match tag {
        None => {}
        Some("!!str") => return Ok(Value::String(text.to_owned())),
        // Ansible's JSON form of an unsafe (never templated) string, as `--list` prints it.
        Some("!unsafe") => {
            let mut m = serde_json::Map::new();
            m.insert(UNSAFE_KEY.to_owned(), Value::String(text.to_owned()));
            return Ok(Value::Object(m));
        }
        Some("!!int") => {
            return yaml11_int(text).ok_or_else(|| format!("'{text}' is not a valid !!int"));
        }
        Some("!!float") => {
            return yaml11_float(text)
                .or_else(|| yaml11_int(text).and_then(|v| v.as_f64()).map(float_value))
                .ok_or_else(|| format!("'{text}' is not a valid !!float"));
        }
        Some("!!bool") => {
            return yaml11_bool(text)
                .map(Value::Bool)
                .ok_or_else(|| format!("'{text}' is not a valid !!bool"));
        }
        Some("!!null") => return Ok(Value::Null),
        // An inline vault value: kept in Ansible's JSON form; the inventory decrypts it.
        Some("!vault") => {
            let mut m = serde_json::Map::new();
            m.insert(VAULT_KEY.to_owned(), Value::String(text.to_owned()));
            return Ok(Value::Object(m));
        }
        Some(other) => return Err(format!("unsupported YAML tag '{other}'")),
    }
    if style != ScalarStyle::Plain {
        return Ok(Value::String(text.to_owned()));
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if let Some(b) = yaml11_bool(text) {
        return Ok(Value::Bool(b));
    }
    if let Some(v) = yaml11_int(text) {
        return Ok(v);
    }
    if let Some(v) = yaml11_float(text) {
        return Ok(v);
    }
    Ok(Value::String(text.to_owned()))
}

fn yaml11_bool(text: &str) -> Option<bool> {
    match text {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn split_sign(text: &str) -> (i128, &str) {
    match text.as_bytes().first() {
        Some(b'-') => (-1, &text[1..]),
        Some(b'+') => (1, &text[1..]),
        _ => (1, text),
    }
}

fn sign_given(text: &str) -> bool {
    text.starts_with(['+', '-'])
}

fn int_value(v: i128) -> Option<Value> {
    if let Ok(i) = i64::try_from(v) {
        Some(Value::Number(Number::from(i)))
    } else {
        u64::try_from(v)
            .ok()
            .map(|u| Value::Number(Number::from(u)))
    }
}

fn float_value(f: f64) -> Value {
    // JSON has no NaN/inf; serde_json turns them into null, as close as JSON gets.
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// YAML 1.1 int: `[-+]?0b[01_]+ | [-+]?0[0-7_]+ | [-+]?(0|[1-9][0-9_]*) | [-+]?0x[0-9a-fA-F_]+
/// | [-+]?[1-9][0-9_]*(:[0-5]?[0-9])+` (base 60).
fn yaml11_int(text: &str) -> Option<Value> {
    let (sign, body) = split_sign(text);
    if body.is_empty() {
        return None;
    }
    let digits = |s: &str, radix: u32| -> Option<i128> {
        let clean: String = s.chars().filter(|c| *c != '_').collect();
        if clean.is_empty() || !s.chars().all(|c| c == '_' || c.is_digit(radix)) {
            return None;
        }
        i128::from_str_radix(&clean, radix).ok()
    };
    let magnitude = if let Some(b) = body.strip_prefix("0b") {
        digits(b, 2)?
    } else if let Some(x) = body.strip_prefix("0x") {
        digits(x, 16)?
    } else if body == "0" {
        0
    } else if let Some(o) = body.strip_prefix('0') {
        digits(o, 8)?
    } else if body.contains(':') {
        let mut parts = body.split(':');
        let first = parts.next()?;
        if !first.starts_with(|c: char| ('1'..='9').contains(&c)) {
            return None;
        }
        let mut acc = digits(first, 10)?;
        for p in parts {
            if p.is_empty() || p.len() > 2 || !p.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let v: i128 = p.parse().ok()?;
            if p.len() == 2 && v > 59 {
                return None;
            }
            acc = acc.checked_mul(60)?.checked_add(v)?;
        }
        acc
    } else {
        if !body.starts_with(|c: char| ('1'..='9').contains(&c)) {
            return None;
        }
        digits(body, 10)?
    };
    int_value(sign * magnitude)
}

/// YAML 1.1 float: `[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)? | [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*
/// | [-+]?\.(inf|Inf|INF) | \.(nan|NaN|NAN)`. Note the mandatory dot: `1e3` is a string.
fn yaml11_float(text: &str) -> Option<Value> {
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return Some(float_value(f64::NAN));
    }
    let (sign, body) = split_sign(text);
    let sign = sign as f64;
    if matches!(body, ".inf" | ".Inf" | ".INF") {
        return Some(float_value(sign * f64::INFINITY));
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    if let Some(e) = exponent {
        let digits = e.strip_prefix(['+', '-'])?;
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
    }
    let dot = mantissa.find('.')?;
    let (int_part, frac_part) = (&mantissa[..dot], &mantissa[dot + 1..]);
    if !frac_part.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    if int_part.contains(':') {
        // Base 60 float: no exponent allowed.
        if exponent.is_some() {
            return None;
        }
        let mut parts = int_part.split(':');
        let first = parts.next()?;
        if !first.starts_with(|c: char| c.is_ascii_digit())
            || !first.chars().all(|c| c.is_ascii_digit() || c == '_')
        {
            return None;
        }
        let mut acc: f64 = first.replace('_', "").parse().ok()?;
        for p in parts {
            if p.is_empty() || p.len() > 2 || !p.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let v: f64 = p.parse().ok()?;
            if p.len() == 2 && v > 59.0 {
                return None;
            }
            acc = acc * 60.0 + v;
        }
        let frac: f64 = format!("0.{}", frac_part.replace('_', "")).parse().ok()?;
        return Some(float_value(sign * (acc + frac)));
    }
    if !int_part.is_empty()
        && (!int_part.starts_with(|c: char| c.is_ascii_digit())
            || !int_part.chars().all(|c| c.is_ascii_digit() || c == '_'))
    {
        return None;
    }
    if int_part.is_empty()
        && (sign_given(text) || !frac_part.starts_with(|c: char| c.is_ascii_digit()))
    {
        return None;
    }
    let clean = format!(
        "{}.{}{}",
        if int_part.is_empty() { "0" } else { int_part },
        if frac_part.is_empty() { "0" } else { frac_part },
        exponent.map(|e| format!("e{e}")).unwrap_or_default()
    )
    .replace('_', "");
    let f: f64 = clean.parse().ok()?;
    Some(float_value(sign * f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scalar(text: &str) -> Value {
        resolve_scalar(text, ScalarStyle::Plain, None).expect("resolves")
    }

    #[test]
    fn yaml11_scalars_like_pyyaml() {
        assert_eq!(scalar("yes"), json!(true));
        assert_eq!(scalar("Off"), json!(false));
        assert_eq!(scalar("y"), json!("y"));
        assert_eq!(scalar("0755"), json!(493));
        assert_eq!(scalar("0x1F"), json!(31));
        assert_eq!(scalar("0b101"), json!(5));
        assert_eq!(scalar("1_000"), json!(1000));
        assert_eq!(scalar("1:30"), json!(90));
        assert_eq!(scalar("-12"), json!(-12));
        assert_eq!(scalar("1e3"), json!("1e3"));
        assert_eq!(scalar("1.0e+3"), json!(1000.0));
        assert_eq!(scalar("1.10"), json!(1.1));
        assert_eq!(scalar(".5"), json!(0.5));
        assert_eq!(scalar("10.0.0.1"), json!("10.0.0.1"));
        assert_eq!(scalar("08"), json!("08"));
        assert_eq!(scalar("~"), Value::Null);
        assert_eq!(scalar(""), Value::Null);
        assert_eq!(
            resolve_scalar("yes", ScalarStyle::DoubleQuoted, None).ok(),
            Some(json!("yes"))
        );
    }

    #[test]
    fn keys_are_kept_as_written_and_positions_recorded() {
        let node = parse("a:\n  123: x\n  0755: ~\n").ok().flatten();
        let Some(Node {
            kind: Kind::Map(top),
            ..
        }) = node
        else {
            panic!("expected a mapping");
        };
        let Kind::Map(inner) = &top[0].value.kind else {
            panic!("expected a mapping");
        };
        assert_eq!(inner[0].key, "123");
        assert_eq!(inner[1].key, "0755");
        assert_eq!(
            inner[1].key_loc,
            Loc {
                line: 3,
                column: 3,
                file: 0
            }
        );
        assert_eq!(
            inner[0].value.loc,
            Loc {
                line: 2,
                column: 8,
                file: 0
            }
        );
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            doc.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let e = parse(&doc).err().map(|e| e.message);
        assert_eq!(e.as_deref(), Some("aliases expand to too many nodes"));
    }

    #[test]
    fn duplicate_keys_and_merges() {
        let e = parse("a: 1\nb: 2\na: 3\n")
            .err()
            .map(|e| (e.loc, e.message));
        assert_eq!(
            e,
            Some((
                Loc {
                    line: 3,
                    column: 1,
                    file: 0
                },
                "duplicate key 'a' (first at line 1, column 1)".to_owned()
            ))
        );
        let node = parse("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n")
            .ok()
            .flatten()
            .map(|n| n.to_json());
        assert_eq!(
            node,
            Some(json!({"base": {"x": 1, "y": 2}, "m": {"x": 1, "y": 3}}))
        );
    }
}
