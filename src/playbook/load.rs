//! The playbook schema check: YAML node tree (with positions) -> phases, collecting every
//! problem with its `line:column`.

use super::{Playbook, PlaybookError, StepRegistry};
use crate::inventory::yaml::{self, Entry, Kind, Loc, Node};
use crate::rollout::{BatchSize, HostCtx, HostFilter, Phase, Strategy};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

const PLAYBOOK_KEYS: &[&str] = &["name", "description", "phases"];
const PHASE_KEYS: &[&str] = &["name", "strategy", "max_unavailable", "hosts", "steps"];
const STRATEGY_HELP: &str =
    "expected parallel, {canary: N, then: SIZE} or {batches: SIZE}, SIZE a count or \"P%\"";

pub(super) fn parse<C: HostCtx>(
    text: &str,
    path: &Path,
    registry: &StepRegistry<C>,
) -> Result<Playbook<C>, PlaybookError> {
    let mut cx = Checker {
        errors: Vec::new(),
        registry,
    };
    let root = match yaml::parse(text) {
        Ok(r) => r,
        Err(e) => {
            cx.error(e.loc, e.message);
            return Err(cx.finish(path));
        }
    };
    let Some(root) = root else {
        cx.error(
            Loc {
                line: 1,
                column: 1,
                file: 0,
            },
            "empty playbook: expected a mapping with name and phases",
        );
        return Err(cx.finish(path));
    };
    let playbook = cx.playbook(&root, path);
    match playbook {
        Some(p) if cx.errors.is_empty() => Ok(p),
        _ => Err(cx.finish(path)),
    }
}

struct Checker<'r, C: HostCtx> {
    errors: Vec<(Loc, String)>,
    registry: &'r StepRegistry<C>,
}

impl<C: HostCtx> Checker<'_, C> {
    fn error(&mut self, loc: Loc, message: impl Into<String>) {
        self.errors.push((loc, message.into()));
    }

    fn finish(mut self, path: &Path) -> PlaybookError {
        self.errors.sort_by_key(|(loc, _)| (loc.line, loc.column));
        let mut all: Vec<PlaybookError> = self
            .errors
            .into_iter()
            .map(|(loc, message)| PlaybookError::At {
                file: path.to_owned(),
                line: loc.line.max(1),
                column: loc.column.max(1),
                message,
            })
            .collect();
        if all.len() == 1
            && let Some(e) = all.pop()
        {
            return e;
        }
        PlaybookError::Many(all)
    }

    /// The entries of a mapping node, refusing keys not in `known`; `what` names the mapping
    /// in messages. `None` (with an error) if the node is not a mapping.
    fn mapping<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        known: &[&str],
    ) -> Option<HashMap<&'n str, &'n Entry>> {
        let Kind::Map(entries) = &node.kind else {
            self.error(
                node.loc,
                format!("{what} must be a mapping, not {}", node.type_name()),
            );
            return None;
        };
        let mut out = HashMap::new();
        for e in entries {
            if known.contains(&e.key.as_str()) {
                out.insert(e.key.as_str(), e);
            } else {
                self.error(
                    e.key_loc,
                    format!(
                        "unknown key '{}' in {what} (known: {})",
                        e.key,
                        known.join(", ")
                    ),
                );
            }
        }
        Some(out)
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            Kind::Scalar {
                value: Value::String(s),
                ..
            } if !s.trim().is_empty() => Some(s.clone()),
            _ => {
                self.error(
                    node.loc,
                    format!("{what} must be a non-empty string, not {}", describe(node)),
                );
                None
            }
        }
    }

    fn playbook(&mut self, root: &Node, path: &Path) -> Option<Playbook<C>> {
        let map = self.mapping(root, "a playbook", PLAYBOOK_KEYS)?;
        let name = match map.get("name") {
            Some(e) => self.string(&e.value, "'name'"),
            None => {
                self.error(root.loc, "missing 'name' (the playbook's name)");
                None
            }
        };
        let description = match map.get("description") {
            Some(e) if e.value.is_null() => None,
            Some(e) => self.string(&e.value, "'description'"),
            None => None,
        };
        let phases = match map.get("phases") {
            Some(e) => self.phases(&e.value),
            None => {
                self.error(root.loc, "missing 'phases' (a list of phases)");
                None
            }
        };
        Some(Playbook {
            name: name?,
            description,
            path: path.to_owned(),
            phases: phases?,
        })
    }

    fn phases(&mut self, node: &Node) -> Option<Vec<Phase<C>>> {
        let Kind::Seq(items) = &node.kind else {
            self.error(
                node.loc,
                format!("'phases' must be a list of phases, not {}", describe(node)),
            );
            return None;
        };
        if items.is_empty() {
            self.error(node.loc, "'phases' is empty: a playbook needs at least one");
            return None;
        }
        let mut seen: HashMap<String, Loc> = HashMap::new();
        let mut phases = Vec::new();
        let mut ok = true;
        for item in items {
            match self.phase(item, &mut seen) {
                Some(p) => phases.push(p),
                None => ok = false,
            }
        }
        ok.then_some(phases)
    }

    fn phase(&mut self, node: &Node, seen: &mut HashMap<String, Loc>) -> Option<Phase<C>> {
        let map = self.mapping(node, "a phase", PHASE_KEYS)?;
        let name = match map.get("name") {
            Some(e) => {
                let name = self.string(&e.value, "a phase's 'name'");
                if let Some(n) = &name {
                    if let Some(first) = seen.get(n) {
                        self.error(
                            e.value.loc,
                            format!(
                                "duplicate phase name '{n}' (first at line {}, column {})",
                                first.line, first.column
                            ),
                        );
                    } else {
                        seen.insert(n.clone(), e.value.loc);
                    }
                }
                name
            }
            None => {
                self.error(node.loc, "a phase needs a 'name'");
                None
            }
        };
        let strategy = match map.get("strategy") {
            Some(e) => self.strategy(&e.value),
            None => Some(Strategy::Parallel),
        };
        let max_unavailable = match map.get("max_unavailable") {
            None => Some(0),
            Some(e) => match &e.value.kind {
                Kind::Scalar {
                    value: Value::Number(n),
                    ..
                } if n.as_u64().is_some() => n.as_u64().and_then(|n| usize::try_from(n).ok()),
                // `all`: failures in this phase never halt the rollout (each failed host is
                // still left out of later phases).
                _ if scalar_str(&e.value) == Some("all") => Some(usize::MAX),
                _ => {
                    self.error(
                        e.value.loc,
                        format!(
                            "'max_unavailable' must be a non-negative integer (failed hosts tolerated) or `all`, not {}",
                            describe(&e.value)
                        ),
                    );
                    None
                }
            },
        };
        let hosts = match map.get("hosts") {
            None => Some(HostFilter::Passed),
            Some(e) => match scalar_str(&e.value) {
                Some("passed") => Some(HostFilter::Passed),
                Some("all") => Some(HostFilter::All),
                _ => {
                    self.error(
                        e.value.loc,
                        format!(
                            "'hosts' must be passed (hosts that passed earlier phases) or all, not {}",
                            describe(&e.value)
                        ),
                    );
                    None
                }
            },
        };
        let steps = match map.get("steps") {
            Some(e) => self.steps(&e.value),
            None => {
                self.error(node.loc, "a phase needs 'steps' (a list of steps)");
                None
            }
        };
        Some(Phase {
            name: name?,
            strategy: strategy?,
            max_unavailable: max_unavailable?,
            steps: steps?,
            hosts: hosts?,
            pause_between_batches: false,
        })
    }

    fn strategy(&mut self, node: &Node) -> Option<Strategy> {
        match &node.kind {
            Kind::Scalar { .. } => {
                if scalar_str(node) == Some("parallel") {
                    Some(Strategy::Parallel)
                } else {
                    self.error(
                        node.loc,
                        format!("unknown strategy {} ({STRATEGY_HELP})", describe(node)),
                    );
                    None
                }
            }
            Kind::Seq(_) => {
                self.error(
                    node.loc,
                    format!("a strategy is not a list ({STRATEGY_HELP})"),
                );
                None
            }
            Kind::Map(entries) => {
                let has = |k: &str| entries.iter().any(|e| e.key == k);
                if has("canary") {
                    let map = self.mapping(node, "a canary strategy", &["canary", "then"])?;
                    let count = map
                        .get("canary")
                        .and_then(|e| self.count(&e.value, "'canary'"));
                    let then = match map.get("then") {
                        Some(e) => self.batch_size(&e.value, "'then'"),
                        None => Some(BatchSize::Percent(100)),
                    };
                    Some(Strategy::Canary {
                        count: count?,
                        then: then?,
                    })
                } else if has("batches") {
                    let map = self.mapping(node, "a batches strategy", &["batches"])?;
                    let size = map
                        .get("batches")
                        .and_then(|e| self.batch_size(&e.value, "'batches'"));
                    Some(Strategy::Batches(size?))
                } else {
                    self.error(node.loc, format!("unknown strategy ({STRATEGY_HELP})"));
                    None
                }
            }
        }
    }

    /// A positive host count.
    fn count(&mut self, node: &Node, what: &str) -> Option<usize> {
        match &node.kind {
            Kind::Scalar {
                value: Value::Number(n),
                ..
            } if n.as_u64().is_some_and(|n| n >= 1) => {
                n.as_u64().and_then(|n| usize::try_from(n).ok())
            }
            _ => {
                self.error(
                    node.loc,
                    format!(
                        "{what} must be a host count of at least 1, not {}",
                        describe(node)
                    ),
                );
                None
            }
        }
    }

    /// A host count (`2`) or a percentage (`25%`, 1 to 100).
    fn batch_size(&mut self, node: &Node, what: &str) -> Option<BatchSize> {
        if let Kind::Scalar {
            value: Value::String(s),
            ..
        } = &node.kind
            && let Some(p) = s.strip_suffix('%')
        {
            return match p.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Some(BatchSize::Percent(p)),
                _ => {
                    self.error(
                        node.loc,
                        format!("{what}: '{s}' is not a percentage from 1% to 100%"),
                    );
                    None
                }
            };
        }
        match &node.kind {
            Kind::Scalar {
                value: Value::Number(n),
                ..
            } if n.as_u64().is_some_and(|n| n >= 1) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(BatchSize::Count),
            _ => {
                self.error(
                    node.loc,
                    format!(
                        "{what} must be a host count of at least 1 or a percentage such as \"25%\", not {}",
                        describe(node)
                    ),
                );
                None
            }
        }
    }

    fn steps(&mut self, node: &Node) -> Option<Vec<std::sync::Arc<dyn crate::rollout::Step<C>>>> {
        let Kind::Seq(items) = &node.kind else {
            self.error(
                node.loc,
                format!("'steps' must be a list of steps, not {}", describe(node)),
            );
            return None;
        };
        if items.is_empty() {
            self.error(
                node.loc,
                "'steps' is empty: a phase needs at least one step",
            );
            return None;
        }
        let mut steps = Vec::new();
        let mut ok = true;
        for item in items {
            // `- name` or `- name: {params}`.
            let (name, name_loc, params) = match &item.kind {
                Kind::Scalar {
                    value: Value::String(s),
                    ..
                } => (s.as_str(), item.loc, None),
                Kind::Map(entries) if entries.len() == 1 => {
                    let e = &entries[0];
                    (e.key.as_str(), e.key_loc, Some(&e.value))
                }
                _ => {
                    self.error(
                        item.loc,
                        format!(
                            "a step is a step name or a one-key mapping `name: {{params}}`, not {}",
                            describe(item)
                        ),
                    );
                    ok = false;
                    continue;
                }
            };
            let json = params.map_or(Value::Null, Node::to_json);
            match self.registry.build(name, &json) {
                None => {
                    let known: Vec<&str> = self.registry.names().collect();
                    let known = if known.is_empty() {
                        "no step types are registered".to_owned()
                    } else {
                        format!("known: {}", known.join(", "))
                    };
                    self.error(name_loc, format!("unknown step '{name}' ({known})"));
                    ok = false;
                }
                Some(Err(message)) => {
                    let loc = match params {
                        Some(p) if !p.is_null() => param_loc(p, &message),
                        _ => name_loc,
                    };
                    self.error(loc, format!("step '{name}': {message}"));
                    ok = false;
                }
                Some(Ok(step)) => steps.push(step),
            }
        }
        ok.then_some(steps)
    }
}

/// Where a factory's error points: at the key it names as `parameter 'KEY'` (the key itself
/// for an unknown parameter, its value otherwise), else at the parameters.
fn param_loc(params: &Node, message: &str) -> Loc {
    let Kind::Map(entries) = &params.kind else {
        return params.loc;
    };
    for e in entries {
        if message.contains(&format!("unknown parameter '{}'", e.key)) {
            return e.key_loc;
        }
        if message.contains(&format!("parameter '{}'", e.key)) {
            return e.value.loc;
        }
    }
    params.loc
}

fn scalar_str(node: &Node) -> Option<&str> {
    match &node.kind {
        Kind::Scalar {
            value: Value::String(s),
            ..
        } => Some(s),
        _ => None,
    }
}

/// A node for a message: a scalar as written (`'fast'`, `-1`), else its type.
fn describe(node: &Node) -> String {
    match &node.kind {
        Kind::Scalar {
            value: Value::Null, ..
        } => "an empty value".to_owned(),
        Kind::Scalar { raw, .. } => format!("'{raw}'"),
        _ => node.type_name().to_owned(),
    }
}
