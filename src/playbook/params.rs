//! Step parameters: durations, and a strict reader for factories.

use crate::inventory::yaml::json_type_name;
use serde_json::{Map, Value};
use std::time::Duration;

/// Parses a duration as playbooks write it: one or more `<integer><unit>` with unit `ms`,
/// `s`, `m` or `h`, e.g. `500ms`, `60s`, `5m`, `1h30m`. A bare number is refused (say which
/// unit). The playbooks' grammar of [`crate::duration`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::duration::parse(text, crate::duration::Grammar::Playbook)
}

/// A strict reader of a step's parameters, for factories: refuses unknown keys and values of
/// the wrong type, with messages of the form `parameter 'KEY': ...` that the playbook loader
/// locates at that key.
#[derive(Debug)]
pub struct Params<'a> {
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Params<'a> {
    /// Reads `params` (`Null`: no parameters), allowing only the keys in `known`.
    pub fn new(params: &'a Value, known: &[&str]) -> Result<Self, String> {
        let map = match params {
            Value::Null => None,
            Value::Object(m) => Some(m),
            other => {
                return Err(format!(
                    "expected a mapping of parameters ({}), got {}",
                    known.join(", "),
                    json_type_name(other)
                ));
            }
        };
        if let Some(m) = map
            && let Some(k) = m.keys().find(|k| !known.contains(&k.as_str()))
        {
            return Err(if known.is_empty() {
                format!("unknown parameter '{k}' (this step takes none)")
            } else {
                format!("unknown parameter '{k}' (known: {})", known.join(", "))
            });
        }
        Ok(Params { map })
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    /// A duration parameter (`60s`), if given.
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => parse_duration(s)
                .map(Some)
                .map_err(|e| format!("parameter '{key}': {e}")),
            Some(v) => Err(format!(
                "parameter '{key}': expected a duration such as 60s, got {}",
                json_type_name(v)
            )),
        }
    }

    /// A string parameter, if given.
    pub fn string(&self, key: &str) -> Result<Option<&'a str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(format!(
                "parameter '{key}': expected a string, got {}",
                json_type_name(v)
            )),
        }
    }

    /// A non-negative integer parameter, if given.
    pub fn uint(&self, key: &str) -> Result<Option<u64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                format!(
                    "parameter '{key}': expected a non-negative integer, got {}",
                    json_type_name(v)
                )
            }),
        }
    }

    /// A boolean parameter, if given.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(format!(
                "parameter '{key}': expected true or false, got {}",
                json_type_name(v)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "60", "s", "5 m", "1d", "-1s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn params_are_strict() {
        let v = json!({"timeout": "60s", "retries": 3});
        let p = Params::new(&v, &["timeout", "retries", "service"]);
        let p = p.as_ref().ok();
        assert_eq!(
            p.map(|p| p.duration("timeout")),
            Some(Ok(Some(Duration::from_secs(60))))
        );
        assert_eq!(p.map(|p| p.uint("retries")), Some(Ok(Some(3))));
        assert_eq!(p.map(|p| p.string("service")), Some(Ok(None)));
        assert_eq!(
            Params::new(&v, &["timeout"]).err().as_deref(),
            Some("unknown parameter 'retries' (known: timeout)")
        );
        let v = json!({"timeout": 60});
        let p = Params::new(&v, &["timeout"]);
        assert_eq!(
            p.map(|p| p.duration("timeout")).ok(),
            Some(Err(
                "parameter 'timeout': expected a duration such as 60s, got an integer".to_owned()
            ))
        );
        assert!(Params::new(&Value::Null, &[]).is_ok());
        assert!(Params::new(&json!("x"), &["a"]).is_err());
    }
}
