//! `tunnelfleet audit`: the merged history of the fleet: the controller's audit log
//! (`<state_dir>/audit.log`) and each selected host's (`<deploy_dir>/.tunnelfleet/audit.log`,
//! read over SSH by `crate::ops::audit::read_logs`), oldest first. Entries of one operation on several hosts with the same
//! outcome collapse into one line (`h1–h5`). Read-only.

use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::common::{ConnArgs, StateArgs, parse_duration};
use super::render::{Table, host_ranges};
use super::{CliError, EXIT_HOST_FAILED, EXIT_OK, style};

/// Flags of `audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    state: StateArgs,
    /// Only this host's entries (and the controller's that name it).
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Only entries since this long ago (`7d`, `12h`) or this time (RFC 3339).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Print one JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// One audit entry, from the controller or a host.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    /// When (RFC 3339 UTC as written).
    pub time: String,
    /// `controller` or the host's name.
    pub source: String,
    /// Who ran it.
    pub operator: String,
    /// The verb.
    pub operation: String,
    /// How it ended (`succeeded`, `failed`, ... on hosts; `ok` or `N failed` on the
    /// controller).
    pub outcome: String,
    /// Release, token fingerprint, certificate serial, hosts: what the line records besides.
    pub detail: String,
    /// The hosts it concerned.
    pub hosts: Vec<String>,
    #[serde(skip)]
    unix: i64,
}

fn text(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn list(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Parses one audit log (`source` is `controller` or a host name); lines that are not
/// JSON objects are skipped and counted.
pub fn parse_log(source: &str, log: &str) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            bad += 1;
            continue;
        };
        let Some(time) = text(&v, "time") else {
            bad += 1;
            continue;
        };
        let unix = chrono::DateTime::parse_from_rfc3339(&time)
            .map(|t| t.timestamp())
            .unwrap_or(0);
        let mut detail = Vec::new();
        if let Some(r) = text(&v, "release") {
            detail.push(format!("release {r}"));
        }
        if let Some(t) = text(&v, "token_fingerprint") {
            detail.push(format!("token {t}"));
        }
        if let Some(c) = text(&v, "cert_serial") {
            detail.push(format!("cert {c}"));
        }
        let mut hosts = vec![source.to_string()];
        let outcome = if source == "controller" {
            let ok = list(&v, "ok");
            let failed = list(&v, "failed");
            let tunnels = list(&v, "tunnels");
            hosts = ok.iter().chain(&failed).cloned().collect();
            if !tunnels.is_empty() {
                detail.insert(0, format!("tunnel {}", tunnels.join(", ")));
            }
            let names =
                |l: &[String]| host_ranges(&l.iter().map(String::as_str).collect::<Vec<_>>());
            if !ok.is_empty() {
                detail.push(format!("ok: {}", names(&ok)));
            }
            if failed.is_empty() {
                "ok".to_string()
            } else {
                detail.push(format!("failed: {}", names(&failed)));
                "FAILED".to_string()
            }
        } else {
            match text(&v, "outcome").as_deref() {
                Some("failed") => "FAILED".to_string(),
                Some("succeeded") => "ok".to_string(),
                Some(o) => o.replace('_', " "),
                None => "-".to_string(),
            }
        };
        out.push(Entry {
            time,
            source: source.to_string(),
            operator: text(&v, "operator").unwrap_or_else(|| "-".into()),
            operation: text(&v, "operation").unwrap_or_else(|| "-".into()),
            outcome,
            detail: detail.join(", "),
            hosts,
            unix,
        });
    }
    (out, bad)
}

/// Sorts entries by time and collapses host entries of the same operation, operator,
/// outcome and detail within two minutes into one (`h1–h5`).
pub fn merge(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| a.unix.cmp(&b.unix).then(a.source.cmp(&b.source)));
    let mut out: Vec<(Entry, Vec<String>)> = Vec::new();
    for e in entries {
        let same = out.iter_mut().rev().take(8).find(|(g, _)| {
            g.source != "controller"
                && e.source != "controller"
                && g.operation == e.operation
                && g.operator == e.operator
                && g.outcome == e.outcome
                && g.detail == e.detail
                && (e.unix - g.unix).abs() <= 120
        });
        match same {
            Some((g, hosts)) => {
                g.hosts.push(e.source.clone());
                hosts.push(e.source)
            }
            None => {
                let s = e.source.clone();
                out.push((e, vec![s]));
            }
        }
    }
    out.into_iter()
        .map(|(mut e, mut hosts)| {
            if hosts.len() > 1 {
                hosts.sort_by_key(|h| {
                    let d = h.chars().rev().take_while(char::is_ascii_digit).count();
                    let (p, n) = h.split_at(h.len() - d);
                    (p.to_string(), n.parse::<u64>().unwrap_or(0), h.clone())
                });
                hosts.dedup();
                e.source = host_ranges(&hosts.iter().map(String::as_str).collect::<Vec<_>>());
            }
            e
        })
        .collect()
}

/// The Unix time `--since` means.
fn since_unix(since: &str) -> Result<i64, CliError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(since) {
        return Ok(t.timestamp());
    }
    let d: Duration = parse_duration(since).map_err(|e| {
        CliError::input(format!(
            "--since {since}: {e}; or give a time such as 2026-12-01T00:00:00Z"
        ))
    })?;
    Ok(chrono::Utc::now().timestamp() - d.as_secs() as i64)
}

/// Runs `audit`.
pub async fn run(args: AuditArgs) -> Result<i32, CliError> {
    let since = args.since.as_deref().map(since_unix).transpose()?;
    let (_inv, hosts) = args.conn.select().await?;
    let hosts: Vec<_> = match &args.host {
        Some(h) => {
            let sel: Vec<_> = hosts.into_iter().filter(|x| &x.name == h).collect();
            if sel.is_empty() {
                return Err(CliError::input(format!(
                    "--host {h}: not a host of the inventory (or not selected by --limit)"
                )));
            }
            sel
        }
        None => hosts,
    };
    let state = crate::ssh::config::expand_tilde(&args.state.state_dir);
    let connector = args.conn.connector()?;
    let logs =
        crate::ops::audit::read_logs(&state, &hosts, connector, &super::engine_report::TerminalUi)
            .await;
    let controller_log = logs.controller_path;
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    match logs.controller {
        Ok(Some(t)) => {
            let (mut e, bad) = parse_log("controller", &t);
            if let Some(h) = &args.host {
                e.retain(|x| x.hosts.contains(h));
            }
            if bad > 0 {
                warnings.push(format!(
                    "{}: {bad} line(s) are not audit records",
                    controller_log.display()
                ));
            }
            entries.extend(e);
        }
        Ok(None) => {}
        Err(e) => warnings.push(e),
    }
    let results = logs.hosts;
    let mut failed = Vec::new();
    for (name, r) in results {
        match r {
            Ok(log) => {
                let (e, bad) = parse_log(&name, &log);
                if bad > 0 {
                    warnings.push(format!("{name}: {bad} line(s) are not audit records"));
                }
                entries.extend(e);
            }
            Err(e) => failed.push((name, e)),
        }
    }
    if let Some(s) = since {
        entries.retain(|e| e.unix >= s);
    }
    let entries = merge(entries);
    if args.json {
        let doc = serde_json::json!({
            "entries": entries,
            "unreachable": failed.iter().map(|(h, e)| serde_json::json!({"host": h, "error": e})).collect::<Vec<_>>(),
            "warnings": warnings,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        let mut t = Table::new(&[
            "TIME",
            "WHERE",
            "OPERATOR",
            "OPERATION",
            "OUTCOME",
            "DETAIL",
        ])
        .painted("OUTCOME")
        .shrinkable("WHERE", 10)
        .drop_order(&["OPERATOR"]);
        for e in &entries {
            t.row(vec![
                e.time.replace('T', " "),
                e.source.clone(),
                e.operator.clone(),
                e.operation.clone(),
                e.outcome.clone(),
                e.detail.clone(),
            ]);
        }
        if t.is_empty() {
            println!(
                "no audit entries{}",
                if since.is_some() { " in that time" } else { "" }
            );
        } else {
            print!("{}", t.render(style::width()));
        }
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        for (h, e) in &failed {
            println!("{h}: {}: {e}", style::paint("FAILED"));
        }
    }
    Ok(if failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_HOST_FAILED
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_hosts_and_the_controller_in_time_order() {
        let host = |h: &str, t: &str| {
            format!(
                r#"{{"time":"{t}","operator":"ada","operation":"deploy","outcome":"succeeded","release":"r1"}}"#
            ) + "\n"
                + if h == "h2" { "garbage\n" } else { "" }
        };
        let mut all = Vec::new();
        for (h, t) in [
            ("h1", "2026-12-03T10:00:01Z"),
            ("h2", "2026-12-03T10:00:03Z"),
            ("h3", "2026-12-03T10:00:02Z"),
        ] {
            let (e, bad) = parse_log(h, &host(h, t));
            assert_eq!(bad, usize::from(h == "h2"));
            all.extend(e);
        }
        let (c, _) = parse_log(
            "controller",
            r#"{"time":"2026-12-03T10:00:09Z","operator":"ada","operation":"deploy","tunnels":["t"],"ok":["h1","h2"],"failed":["h3"]}"#,
        );
        all.extend(c);
        let m = merge(all);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].source, "h1–h3");
        assert_eq!(m[0].outcome, "ok");
        assert_eq!(m[0].detail, "release r1");
        assert_eq!(m[1].source, "controller");
        assert_eq!(m[1].outcome, "FAILED");
        assert_eq!(m[1].detail, "tunnel t, ok: h1, h2, failed: h3");
    }
}
