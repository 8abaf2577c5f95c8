//! The one duration parser: flags and environment (`--min-healthy 10s`, `--renew-before
//! 720h`, `TUNNELFLEET_MIN_HEALTHY`) and playbook parameters (`timeout: 60s`) read durations
//! with the same code, each with its own [`Grammar`].
//!
//! A duration is one or more `<number><unit>` parts (`500ms`, `10s`, `5m`, `1h30m`); units
//! are `ms`, `s`, `m`, `h`, and for flags also `d`. Flags also take a fraction (`1.5s`) and
//! a bare number of seconds (`3`); playbooks refuse both, so that a playbook says its unit.

use std::time::Duration;

/// Which durations a caller accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    /// Command-line flags and environment: fractions, days, and a bare number of seconds.
    Flag,
    /// Playbook parameters: whole numbers with a unit of ms, s, m or h.
    Playbook,
}

/// Parses `text` as a duration of `grammar`; the error says what was expected.
pub fn parse(text: &str, grammar: Grammar) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("'{t}' is not a duration (e.g. 500ms, 60s, 5m, 1h30m)");
    if t.is_empty() {
        return Err(bad());
    }
    let flag = grammar == Grammar::Flag;
    let number_len = |s: &str| {
        s.bytes()
            .take_while(|b| b.is_ascii_digit() || (flag && *b == b'.'))
            .count()
    };
    if flag && number_len(t) == t.len() {
        // A bare number of seconds.
        let secs: f64 = t.parse().map_err(|_| bad())?;
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("'{t}' is too long a duration"));
    }
    let mut rest = t;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let n = number_len(rest);
        if n == 0 {
            return Err(bad());
        }
        let num = &rest[..n];
        rest = &rest[n..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs_per_unit: u64 = match unit {
            "ms" => 0,
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" if flag => 86_400,
            "" => return Err(bad()),
            _ if flag => {
                return Err(format!(
                    "'{t}': unknown unit '{unit}' (use ms, s, m, h or d)"
                ));
            }
            _ => return Err(bad()),
        };
        let part = if num.contains('.') {
            let x: f64 = num.parse().map_err(|_| bad())?;
            let secs = if secs_per_unit == 0 {
                x / 1000.0
            } else {
                x * secs_per_unit as f64
            };
            Duration::try_from_secs_f64(secs)
                .map_err(|_| format!("'{t}' is too long a duration"))?
        } else {
            let n: u64 = num
                .parse()
                .map_err(|_| format!("'{t}' is too long a duration"))?;
            if secs_per_unit == 0 {
                Duration::from_millis(n)
            } else {
                Duration::from_secs(
                    n.checked_mul(secs_per_unit)
                        .ok_or_else(|| format!("'{t}' is too long a duration"))?,
                )
            }
        };
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("'{t}' is too long a duration"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(s: &str) -> Result<Duration, String> {
        parse(s, Grammar::Flag)
    }

    fn playbook(s: &str) -> Result<Duration, String> {
        parse(s, Grammar::Playbook)
    }

    #[test]
    fn both_grammars_read_units_and_compounds() {
        for p in [flag, playbook] {
            assert_eq!(p("500ms"), Ok(Duration::from_millis(500)));
            assert_eq!(p(" 60s "), Ok(Duration::from_secs(60)));
            assert_eq!(p("5m"), Ok(Duration::from_secs(300)));
            assert_eq!(p("1h30m"), Ok(Duration::from_secs(5400)));
            assert_eq!(p("0s"), Ok(Duration::ZERO));
            for bad in ["", "s", "5 m", "-1s", "ten", "5y", "99999999999999999999s"] {
                assert!(p(bad).is_err(), "{bad}");
            }
        }
    }

    #[test]
    fn flags_take_days_fractions_and_bare_seconds_playbooks_do_not() {
        assert_eq!(flag("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(flag("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(flag("3"), Ok(Duration::from_secs(3)));
        assert_eq!(flag("0.25"), Ok(Duration::from_millis(250)));
        for s in ["1d", "1.5s", "3", "60"] {
            assert!(playbook(s).is_err(), "{s}");
        }
        assert!(flag("5y").is_err_and(|e| e.contains("unknown unit 'y'")));
        assert_eq!(
            playbook("5 minutes"),
            Err("'5 minutes' is not a duration (e.g. 500ms, 60s, 5m, 1h30m)".into())
        );
        // Found by fuzzing: these panicked once.
        assert!(flag("99999999999999999999999").is_err());
        assert!(flag("99999999999999999999d").is_err());
        assert!(flag("1e400").is_err());
    }
}
