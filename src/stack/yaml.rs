//! Minimal, deterministic YAML writing: every string is emitted double-quoted with escapes, so
//! no value can change the document's structure or be re-typed (`on`, `010`, `null`, ...).

/// A YAML double-quoted scalar holding exactly `s`.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            // Line/paragraph separators and the BOM are line breaks or invisible in YAML.
            '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quotes_and_round_trips() {
        for s in [
            "plain",
            "",
            "on",
            "010",
            "a: b",
            "- x",
            "#c",
            "q\"uo\\te",
            "line\nbreak\t\u{1}",
            "é\u{2028}",
        ] {
            let doc = format!("k: {}\n", quote(s));
            let parsed: std::collections::BTreeMap<String, String> =
                serde_saphyr::from_str(&doc).unwrap_or_else(|e| panic!("{doc:?}: {e}"));
            assert_eq!(parsed.get("k").map(String::as_str), Some(s), "{doc:?}");
        }
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
    }
}
