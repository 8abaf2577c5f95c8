//! Recaps a person can read: tables that fit the terminal, hosts grouped by outcome, relative
//! dates. Pure functions of their input (the width is a parameter), so they are tested as
//! golden text at 80 columns.
//!
//! How a verb uses it:
//!
//! ```ignore
//! let mut t = Table::new(&["HOST", "STATUS", "TOKEN", "CERT", "DETAIL"])
//!     .painted("STATUS")          // outcome words coloured (see style::paint)
//!     .shrinkable("TOKEN", 8)     // may be cut with … down to 8 columns
//!     .drop_order(&["CERT"]);     // dropped first when even that does not fit
//! t.row(vec!["h1".into(), "ok".into(), fp, serial, detail]);
//! print!("{}", t.render(style::width()));
//! ```
//!
//! - The last column is the detail: when the table is too wide it is cut with `…`, and the
//!   whole text of every cut cell is printed once below the table, grouped by host
//!   (`h1–h3: connection refused`).
//! - Then shrinkable columns are cut down to their minimum, then columns are dropped in
//!   `drop_order`. A header is never cut or wrapped: a column is never narrower than its
//!   header.
//! - `width: None` (output piped) renders every value whole.
//!
//! [`group_by_outcome`] and [`host_ranges`] turn per-host outcomes into `h1–h5: up to date`
//! lines; [`relative`] says `in 89d` or `3h ago`.

use std::fmt::Write as _;

use super::style;

/// The narrowest a cut detail column gets (or its header, if wider).
const MIN_DETAIL: usize = 20;

/// A table of rows under a header, fitted to a width at rendering.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    shrink: Vec<(usize, usize)>,
    drop: Vec<usize>,
    painted: Vec<usize>,
    grouped: bool,
}

fn len(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `w` characters, the last one `…` when anything was cut.
fn cut(s: &str, w: usize) -> String {
    if len(s) <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(w - 1).collect();
    out.push('…');
    out
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            ..Table::default()
        }
    }

    fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// Column `name` may be cut with `…` down to `min` characters (never below its header).
    pub fn shrinkable(mut self, name: &str, min: usize) -> Table {
        if let Some(i) = self.col(name) {
            self.shrink.push((i, min.max(len(&self.header[i]))));
        }
        self
    }

    /// Columns to drop, first to last, when cutting is not enough.
    pub fn drop_order(mut self, names: &[&str]) -> Table {
        self.drop = names.iter().filter_map(|n| self.col(n)).collect();
        self
    }

    /// Column `name` holds outcome words, coloured when colours are on.
    pub fn painted(mut self, name: &str) -> Table {
        if let Some(i) = self.col(name) {
            self.painted.push(i);
        }
        self
    }

    /// Rows identical but for their first cell (the host) become one row naming the hosts
    /// as ranges (`h1–h5`), in the order the rows first appear.
    pub fn grouped(mut self) -> Table {
        self.grouped = true;
        self
    }

    /// Adds a row (missing cells render empty, extra cells are ignored).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn cell(&self, r: usize, c: usize) -> &str {
        self.rows[r].get(c).map(String::as_str).unwrap_or("")
    }

    /// Column widths for the visible columns `vis` within `width`, or `None` if they cannot fit.
    fn fit(&self, vis: &[usize], natural: &[usize], width: usize) -> Option<Vec<usize>> {
        let mut w: Vec<usize> = vis.iter().map(|&c| natural[c]).collect();
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
        if total(&w) <= width {
            return Some(w);
        }
        // The detail (last visible, when it is the table's last column) first.
        let last = vis.len() - 1;
        if vis[last] == self.header.len() - 1 {
            let min = MIN_DETAIL.max(len(&self.header[vis[last]])).min(w[last]);
            let over = total(&w) - width;
            w[last] = w[last].saturating_sub(over).max(min);
            if total(&w) <= width {
                return Some(w);
            }
        }
        for &(c, min) in &self.shrink {
            if let Some(k) = vis.iter().position(|&v| v == c) {
                let min = min.min(w[k]);
                let over = total(&w) - width;
                w[k] = w[k].saturating_sub(over).max(min);
                if total(&w) <= width {
                    return Some(w);
                }
            }
        }
        None
    }

    /// Renders the table within `width` columns (`None`: no limit), then the whole text of
    /// every detail cut short, once, grouped by host.
    pub fn render(&self, width: Option<usize>) -> String {
        self.render_painted(width, style::stdout_colors())
    }

    /// [`Table::render`] with colours on or off (for tests).
    pub fn render_painted(&self, width: Option<usize>, colors: bool) -> String {
        if self.grouped {
            let mut merged: Vec<(Vec<String>, Vec<&str>)> = Vec::new();
            for r in &self.rows {
                let rest: Vec<String> = r.iter().skip(1).cloned().collect();
                let host = r.first().map(String::as_str).unwrap_or("");
                match merged.iter_mut().find(|(k, _)| *k == rest) {
                    Some((_, hosts)) => hosts.push(host),
                    None => merged.push((rest, vec![host])),
                }
            }
            let mut t = Table {
                grouped: false,
                rows: Vec::new(),
                ..self.clone()
            };
            for (rest, hosts) in merged {
                let label = group_by_outcome(hosts.iter().map(|h| (*h, "")).collect())
                    .into_iter()
                    .next()
                    .map(|(l, _)| l)
                    .unwrap_or_default();
                let mut row = vec![label];
                row.extend(rest);
                t.rows.push(row);
            }
            return t.render_painted(width, colors);
        }
        let n = self.header.len();
        if n == 0 {
            return String::new();
        }
        let natural: Vec<usize> = (0..n)
            .map(|c| {
                (0..self.rows.len())
                    .map(|r| len(self.cell(r, c)))
                    .max()
                    .unwrap_or(0)
                    .max(len(&self.header[c]))
            })
            .collect();
        let mut vis: Vec<usize> = (0..n).collect();
        let widths = match width {
            None => natural.clone(),
            Some(width) => {
                let mut drops = self.drop.iter();
                loop {
                    if let Some(w) = self.fit(&vis, &natural, width) {
                        break w;
                    }
                    match drops.next() {
                        Some(d) => vis.retain(|c| c != d),
                        None => {
                            // Cannot fit: every column at its narrowest, header whole.
                            let mut w: Vec<usize> = vis.iter().map(|&c| natural[c]).collect();
                            for (k, &c) in vis.iter().enumerate() {
                                if let Some(&(_, min)) = self.shrink.iter().find(|s| s.0 == c) {
                                    w[k] = min.min(w[k]);
                                }
                                if c == n - 1 {
                                    w[k] = MIN_DETAIL.max(len(&self.header[c])).min(w[k]);
                                }
                            }
                            break w;
                        }
                    }
                }
            }
        };
        let mut out = String::new();
        let mut line = |cells: Vec<(String, bool)>| {
            let mut s = String::new();
            let k = cells.len();
            for (i, (text, paint)) in cells.into_iter().enumerate() {
                let pad = widths[i].saturating_sub(len(&text));
                if paint {
                    s.push_str(&style::paint_with(&text, colors));
                } else {
                    s.push_str(&text);
                }
                if i + 1 < k {
                    s.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(
            vis.iter()
                .map(|&c| (self.header[c].clone(), false))
                .collect(),
        );
        let mut cut_details: Vec<(String, String)> = Vec::new();
        for r in 0..self.rows.len() {
            let cells = vis
                .iter()
                .enumerate()
                .map(|(k, &c)| {
                    let full = self.cell(r, c);
                    let shown = cut(full, widths[k]);
                    if shown != full && c == n - 1 {
                        cut_details.push((self.cell(r, 0).to_string(), full.to_string()));
                    }
                    (shown, self.painted.contains(&c))
                })
                .collect();
            line(cells);
        }
        if !cut_details.is_empty() {
            out.push('\n');
            for (hosts, text) in group_by_outcome(
                cut_details
                    .iter()
                    .map(|(h, t)| (h.as_str(), t.as_str()))
                    .collect::<Vec<_>>(),
            ) {
                let _ = writeln!(out, "{hosts}: {text}");
            }
        }
        out
    }
}

/// The first line of `s`, cut to `w` characters with `…`.
pub fn first_line(s: &str, w: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let mut out = cut(line, w);
    if s.lines().nth(1).is_some() && !out.ends_with('…') {
        out.push('…');
    }
    out
}

/// Splits `h12` into (`h`, 12, digits) when the name ends in digits.
fn numbered(name: &str) -> Option<(&str, u64, usize)> {
    let digits = name.chars().rev().take_while(char::is_ascii_digit).count();
    if digits == 0 || digits > 18 {
        return None;
    }
    let (prefix, num) = name.split_at(name.len() - digits);
    num.parse().ok().map(|n| (prefix, n, digits))
}

/// Host names as short ranges: `h1, h2, h3, h5, web` -> `h1–h3, h5, web`. Runs of three or
/// more consecutive numbers with the same prefix (and the same number of digits) become a
/// range with an en dash; names keep their first-seen order otherwise.
pub fn host_ranges(names: &[&str]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < names.len() {
        let mut j = i;
        if let Some((p, mut n, d)) = numbered(names[i]) {
            while j + 1 < names.len() {
                match numbered(names[j + 1]) {
                    Some((p2, n2, d2)) if p2 == p && n2 == n + 1 && (d2 == d || n2 > n) => {
                        n = n2;
                        j += 1;
                    }
                    _ => break,
                }
            }
        }
        if j >= i + 2 {
            parts.push(format!("{}–{}", names[i], names[j]));
        } else {
            parts.extend(names[i..=j].iter().map(|s| s.to_string()));
        }
        i = j + 1;
    }
    parts.join(", ")
}

/// Groups hosts with the same outcome, in the order outcomes first appear; each group's
/// hosts as [`host_ranges`] (sorted by name, numbers numerically).
pub fn group_by_outcome<'a>(items: Vec<(&'a str, &'a str)>) -> Vec<(String, String)> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (host, outcome) in items {
        match groups.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, hosts)) => hosts.push(host),
            None => groups.push((outcome, vec![host])),
        }
    }
    groups
        .into_iter()
        .map(|(outcome, mut hosts)| {
            hosts.sort_by(|a, b| match (numbered(a), numbered(b)) {
                (Some((pa, na, _)), Some((pb, nb, _))) if pa == pb => na.cmp(&nb),
                _ => a.cmp(b),
            });
            (host_ranges(&hosts), outcome.to_string())
        })
        .collect()
}

/// `h1–h5: outcome` lines, one per distinct outcome.
pub fn grouped_lines(items: Vec<(&str, &str)>) -> String {
    let mut out = String::new();
    for (hosts, outcome) in group_by_outcome(items) {
        let _ = writeln!(out, "{hosts}: {outcome}");
    }
    out
}

/// How far `t` is from `now`, in the largest unit that reads well: `in 89d`, `in 5h`,
/// `3m ago`, `now` (under a minute).
pub fn relative(now: chrono::DateTime<chrono::Utc>, t: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (t - now).num_seconds();
    let a = secs.unsigned_abs();
    let amount = if a < 60 {
        return "now".into();
    } else if a < 3600 {
        format!("{}m", a / 60)
    } else if a < 48 * 3600 {
        format!("{}h", a / 3600)
    } else {
        format!("{}d", a / 86400)
    };
    if secs > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// [`relative`] to now of a Unix time.
pub fn relative_unix(unix: i64) -> String {
    match chrono::DateTime::from_timestamp(unix, 0) {
        Some(t) => relative(chrono::Utc::now(), t),
        None => format!("@{unix}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_table() -> Table {
        // `status` at 80 columns with the data of a 5-host fleet.
        let mut t = crate::cli::status::table();
        for i in 1..=5 {
            t.row(vec![
                format!("h{i}"),
                if i == 3 { "ATTENTION" } else { "ok" }.into(),
                "20261203T172001Z-3fa9c2d1".into(),
                "3fa9c2d1e0b4".into(),
                "5d2c8f0e91a47b3c".into(),
                "in 89d".into(),
                if i == 3 { "NOT READY" } else { "ready" }.into(),
                if i == 3 {
                    "drift: config/mcp-proxy.yaml differs from the last deploy; cloudflared exited"
                } else {
                    "no drift"
                }
                .into(),
            ]);
        }
        t
    }

    #[test]
    fn status_at_80_columns_cuts_then_lists_the_detail_once() {
        let got = status_table().render_painted(Some(80), false);
        let want = "\
HOST  STATUS     TOKEN         EXPIRES  CONNECTOR  DETAIL
h1    ok         3fa9c2d1e0b4  in 89d   ready      no drift
h2    ok         3fa9c2d1e0b4  in 89d   ready      no drift
h3    ATTENTION  3fa9c2d1e0b4  in 89d   NOT READY  drift: config/mcp-proxy.yaml…
h4    ok         3fa9c2d1e0b4  in 89d   ready      no drift
h5    ok         3fa9c2d1e0b4  in 89d   ready      no drift

h3: drift: config/mcp-proxy.yaml differs from the last deploy; cloudflared exited
";
        assert_eq!(got, want, "\n{got}");
        // The table fits; the details below it are whole (the terminal may wrap them).
        for l in got.lines().take_while(|l| !l.is_empty()) {
            assert!(l.chars().count() <= 80, "{l:?}");
        }
    }

    #[test]
    fn narrower_drops_columns_in_order_and_never_cuts_a_header() {
        // At 120 columns only the detail is cut; at 60 the droppable columns are gone.
        let wide = status_table().render_painted(Some(120), false);
        assert!(wide.starts_with(
            "HOST  STATUS     RELEASE                    TOKEN         CERT              EXPIRES  CONNECTOR  DETAIL\n"
        ), "{wide}");
        let got = status_table().render_painted(Some(60), false);
        let want = "\
HOST  STATUS     TOKEN         EXPIRES  CONNECTOR  DETAIL
h1    ok         3fa9c2d1e0b4  in 89d   ready      no drift
h2    ok         3fa9c2d1e0b4  in 89d   ready      no drift
h3    ATTENTION  3fa9c2d1e0b4  in 89d   NOT READY  drift: config/mcp-p…
h4    ok         3fa9c2d1e0b4  in 89d   ready      no drift
h5    ok         3fa9c2d1e0b4  in 89d   ready      no drift

h3: drift: config/mcp-proxy.yaml differs from the last deploy; cloudflared exited
";
        assert_eq!(got, want, "\n{got}");
        assert!(!got.contains("CO\n"));
    }

    #[test]
    fn wide_or_piped_is_whole() {
        let got = status_table().render_painted(None, false);
        assert!(got.contains("20261203T172001Z-3fa9c2d1"));
        assert!(got.contains("cloudflared exited\n"));
        assert_eq!(got.lines().count(), 6);
    }

    #[test]
    fn colours_do_not_shift_columns() {
        let mut t = Table::new(&["HOST", "STATUS", "DETAIL"]).painted("STATUS");
        t.row(vec!["h1".into(), "FAILED".into(), "x".into()]);
        t.row(vec!["h2".into(), "ok".into(), "y".into()]);
        let got = t.render_painted(Some(80), true);
        assert_eq!(
            got,
            "HOST  STATUS  DETAIL\nh1    \x1b[31mFAILED\x1b[0m  x\nh2    \x1b[32mok\x1b[0m      y\n"
        );
    }

    #[test]
    fn identical_rows_are_grouped() {
        let mut t = Table::new(&["HOST", "STATUS", "DETAIL"]).grouped();
        for h in ["h2", "h1", "h3", "h5"] {
            t.row(vec![
                h.into(),
                "ok".into(),
                "wrote tls.crt; nothing restarted".into(),
            ]);
        }
        t.row(vec![
            "h4".into(),
            "FAILED".into(),
            "connection refused".into(),
        ]);
        assert_eq!(
            t.render_painted(Some(80), false),
            "HOST       STATUS  DETAIL\nh1–h3, h5  ok      wrote tls.crt; nothing restarted\nh4         FAILED  connection refused\n"
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(host_ranges(&["h1", "h2", "h3", "h4", "h5"]), "h1–h5");
        assert_eq!(host_ranges(&["h1", "h2", "h4"]), "h1, h2, h4");
        assert_eq!(
            host_ranges(&["web1", "web2", "web3", "db", "h9", "h10", "h11"]),
            "web1–web3, db, h9–h11"
        );
        assert_eq!(host_ranges(&["h01", "h02", "h03"]), "h01–h03");
        assert_eq!(host_ranges(&[]), "");
    }

    #[test]
    fn grouping_keeps_first_seen_order() {
        let got = grouped_lines(vec![
            ("h2", "up to date"),
            ("h10", "FAILED: connection refused"),
            ("h1", "up to date"),
            ("h3", "up to date"),
            ("h4", "would write .env"),
        ]);
        assert_eq!(
            got,
            "h1–h3: up to date\nh10: FAILED: connection refused\nh4: would write .env\n"
        );
    }

    #[test]
    fn relative_dates() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let at =
            |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default();
        assert_eq!(relative(now, at(89 * 86400 + 5)), "in 89d");
        assert_eq!(relative(now, at(-3 * 3600)), "3h ago");
        assert_eq!(relative(now, at(30)), "now");
        assert_eq!(relative(now, at(47 * 3600)), "in 47h");
        assert_eq!(relative(now, at(-120)), "2m ago");
    }
}
