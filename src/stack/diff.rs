//! Unified diffs of the stack's text files (compose file, proxy config) for `--check --diff`.
//! Never used on `.env`: a token is shown by fingerprint only.

/// The largest product of line counts diffed line by line; beyond it the diff says only that
/// the files differ (the stack's files are a few hundred lines at most).
const MAX_CELLS: usize = 4_000_000;

/// A unified diff (3 lines of context) from `old` to `new`, with `---`/`+++` headers naming
/// `old_name` and `new_name`; empty when the texts are equal.
pub fn unified(old_name: &str, new_name: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    if a.len().saturating_mul(b.len()) > MAX_CELLS {
        out.push_str("@@ files differ (too large to show) @@\n");
        return out;
    }
    let ops = edit_script(&a, &b);
    // Group the edit script into hunks with 3 lines of context.
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| !matches!(o, Op::Same(..)))
        .map(|(i, _)| i)
        .collect();
    if changed.is_empty() {
        // Only a trailing newline differs.
        out.push_str("@@ the files differ only in their last line's newline @@\n");
        return out;
    }
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &i in &changed {
        let start = i.saturating_sub(CONTEXT);
        let end = (i + CONTEXT + 1).min(ops.len());
        match hunks.last_mut() {
            Some(h) if start <= h.1 => h.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    for (start, end) in hunks {
        let (mut a0, mut b0) = (0, 0);
        for o in &ops[..start] {
            match o {
                Op::Same(..) => {
                    a0 += 1;
                    b0 += 1;
                }
                Op::Del(_) => a0 += 1,
                Op::Add(_) => b0 += 1,
            }
        }
        let (mut al, mut bl) = (0, 0);
        let mut body = String::new();
        for o in &ops[start..end] {
            match o {
                Op::Same(l) => {
                    al += 1;
                    bl += 1;
                    body.push_str(&format!(" {l}\n"));
                }
                Op::Del(l) => {
                    al += 1;
                    body.push_str(&format!("-{l}\n"));
                }
                Op::Add(l) => {
                    bl += 1;
                    body.push_str(&format!("+{l}\n"));
                }
            }
        }
        let range = |s: usize, n: usize| {
            if n == 0 {
                format!("{s},0")
            } else if n == 1 {
                format!("{}", s + 1)
            } else {
                format!("{},{n}", s + 1)
            }
        };
        out.push_str(&format!(
            "@@ -{} +{} @@\n{body}",
            range(a0, al),
            range(b0, bl)
        ));
    }
    out
}

enum Op<'a> {
    Same(&'a str),
    Del(&'a str),
    Add(&'a str),
}

/// The shortest edit script by longest common subsequence (dynamic programming).
fn edit_script<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Op<'a>> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j] = LCS length of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if a[i] == b[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n && j < m {
        if a[i] == b[j] {
            ops.push(Op::Same(a[i]));
            i += 1;
            j += 1;
        } else if lcs[at(i + 1, j)] >= lcs[at(i, j + 1)] {
            ops.push(Op::Del(a[i]));
            i += 1;
        } else {
            ops.push(Op::Add(b[j]));
            j += 1;
        }
    }
    ops.extend(a[i..].iter().map(|l| Op::Del(l)));
    ops.extend(b[j..].iter().map(|l| Op::Add(l)));
    ops
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a", "b", "x\ny\n", "x\ny\n"), "");
    }

    #[test]
    fn a_changed_line_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nFIVE\n6\n7\n8\n9\n";
        assert_eq!(
            unified("old", "new", old, new),
            "--- old\n+++ new\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+FIVE\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn far_apart_changes_make_two_hunks_and_additions_count() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new: String = (1..=20)
            .map(|i| match i {
                2 => "two\n".to_string(),
                19 => "19\nnew\n".to_string(),
                _ => format!("{i}\n"),
            })
            .collect();
        let d = unified("o", "n", &old, &new);
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("-2\n+two\n"), "{d}");
        assert!(d.contains("@@ -17,4 +17,5 @@"), "{d}");
        assert!(d.contains(" 19\n+new\n 20\n"), "{d}");
    }

    #[test]
    fn from_nothing() {
        assert_eq!(
            unified("/dev/null", "b", "", "a\nb\n"),
            "--- /dev/null\n+++ b\n@@ -0,0 +1,2 @@\n+a\n+b\n"
        );
    }
}
