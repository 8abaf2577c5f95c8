//! The playbook loader: a valid playbook becomes phases; each schema error names
//! file:line:column exactly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tunnelfleet::playbook::{Params, Playbook, PlaybookError, StepRegistry};
use tunnelfleet::rollout::{
    BatchSize, Engine, HostCtx, HostFilter, NullReporter, Step, StepCx, StepFailure, StepOutcome,
    Strategy,
};

struct Host(String);

impl HostCtx for Host {
    fn name(&self) -> &str {
        &self.0
    }
}

/// A step that only reports its type and parameters.
struct Fake {
    name: String,
    timeout: Option<Duration>,
}

#[async_trait::async_trait]
impl Step<Host> for Fake {
    fn name(&self) -> &str {
        &self.name
    }
    async fn run(&self, _: &mut Host, _: &StepCx) -> Result<StepOutcome, StepFailure> {
        Ok(StepOutcome::unchanged(match self.timeout {
            Some(t) => format!("{} timeout {}ms", self.name, t.as_millis()),
            None => self.name.clone(),
        }))
    }
}

fn registry() -> StepRegistry<Host> {
    let mut r = StepRegistry::new();
    for name in [
        "check_host",
        "write_release",
        "write_env",
        "compose_apply",
        "release_lock",
    ] {
        r.register(name, move |params| {
            Params::new(params, &[])?;
            Ok(Arc::new(Fake {
                name: name.to_owned(),
                timeout: None,
            }) as Arc<dyn Step<Host>>)
        });
    }
    r.register("health_gate", |params| {
        let p = Params::new(params, &["timeout"])?;
        let timeout = p.duration("timeout")?.unwrap_or(Duration::from_secs(60));
        Ok(Arc::new(Fake {
            name: "health_gate".to_owned(),
            timeout: Some(timeout),
        }) as Arc<dyn Step<Host>>)
    });
    r
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/playbooks")
        .join(name)
}

#[tokio::test]
async fn a_valid_playbook_becomes_phases() {
    let path = fixture("deploy.yaml");
    let pb = Playbook::load(&path, &registry()).expect("deploy.yaml loads");
    assert_eq!(pb.name(), "deploy");
    assert_eq!(
        pb.description(),
        Some("Replicate the stack to every host, health-gated.")
    );
    assert_eq!(pb.path(), path.as_path());
    let shape: Vec<(&str, Strategy, usize, HostFilter, Vec<&str>)> = pb
        .phases()
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.strategy,
                p.max_unavailable,
                p.hosts,
                p.steps.iter().map(|s| s.name()).collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (
                "preflight",
                Strategy::Parallel,
                0,
                HostFilter::Passed,
                vec!["check_host"]
            ),
            (
                "apply",
                Strategy::Canary {
                    count: 1,
                    then: BatchSize::Percent(50)
                },
                1,
                HostFilter::Passed,
                vec!["write_release", "write_env", "compose_apply", "health_gate"]
            ),
            (
                "settle",
                Strategy::Batches(BatchSize::Percent(25)),
                0,
                HostFilter::Passed,
                vec!["health_gate"]
            ),
            (
                "unlock",
                Strategy::Batches(BatchSize::Count(2)),
                0,
                HostFilter::All,
                vec!["release_lock"]
            ),
        ]
    );

    // The parameters reached the steps: run it and read the details.
    let report = Engine::new(&NullReporter)
        .run(pb.into_phases(), vec![Host("h1".to_owned())])
        .await;
    assert!(report.is_success());
    let details: Vec<&str> = report.timeline.iter().map(|s| s.detail.as_str()).collect();
    assert_eq!(
        details,
        [
            "check_host",
            "write_release",
            "write_env",
            "compose_apply",
            "health_gate timeout 60000ms",
            "health_gate timeout 500ms",
            "release_lock"
        ]
    );
}

#[test]
fn defaults_and_steps_without_params() {
    let text = "name: x\nphases:\n  - name: p\n    steps: [write_env, {health_gate: }]\n";
    let pb = Playbook::from_str(text, Path::new("x.yaml"), &registry()).expect("loads");
    let p = &pb.phases()[0];
    assert_eq!(p.strategy, Strategy::Parallel);
    assert_eq!(p.max_unavailable, 0);
    assert_eq!(p.hosts, HostFilter::Passed);
    assert_eq!(p.steps.len(), 2);
    assert_eq!(pb.description(), None);
    let text = "name: x\nphases:\n  - name: p\n    strategy: {canary: 2}\n    steps: [write_env]\n";
    let pb = Playbook::from_str(text, Path::new("x.yaml"), &registry()).expect("loads");
    assert_eq!(
        pb.phases()[0].strategy,
        Strategy::Canary {
            count: 2,
            then: BatchSize::Percent(100)
        }
    );
}

fn error_of(text: &str) -> String {
    match Playbook::from_str(text, Path::new("playbooks/x.yaml"), &registry()) {
        Ok(_) => "loaded".to_owned(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_problem_in_a_file_is_reported_with_its_place() {
    let e = Playbook::load(&fixture("typo.yaml"), &registry()).err();
    let lines: Vec<String> = match &e {
        Some(PlaybookError::Many(all)) => all.iter().map(|e| e.to_string()).collect(),
        other => panic!("expected several errors, got {other:?}"),
    };
    let file = fixture("typo.yaml").display().to_string();
    assert_eq!(
        lines,
        [
            format!(
                "{file}:7:9: unknown step 'wirte_env' (known: check_host, compose_apply, \
                 health_gate, release_lock, write_env, write_release)"
            ),
            format!(
                "{file}:8:32: step 'health_gate': parameter 'timeout': expected a duration \
                 such as 60s, got an integer"
            ),
        ]
    );
}

#[test]
fn schema_errors_name_line_and_column() {
    let cases: &[(&str, &str)] = &[
        // Unknown top-level key.
        (
            "name: x\nphase:\n  - name: p\n",
            "playbooks/x.yaml:1:1: missing 'phases' (a list of phases)\n\
             playbooks/x.yaml:2:1: unknown key 'phase' in a playbook (known: name, description, phases)",
        ),
        // Wrong types.
        (
            "name: [x]\nphases: {}\n",
            "playbooks/x.yaml:1:7: 'name' must be a non-empty string, not a list\n\
             playbooks/x.yaml:2:9: 'phases' must be a list of phases, not a mapping",
        ),
        // Unknown key in a phase.
        (
            "name: x\nphases:\n  - name: p\n    stratgy: parallel\n    steps: [write_env]\n",
            "playbooks/x.yaml:4:5: unknown key 'stratgy' in a phase (known: name, strategy, max_unavailable, hosts, steps)",
        ),
        // Bad strategy values.
        (
            "name: x\nphases:\n  - name: p\n    strategy: fast\n    steps: [write_env]\n",
            "playbooks/x.yaml:4:15: unknown strategy 'fast' (expected parallel, {canary: N, then: SIZE} or {batches: SIZE}, SIZE a count or \"P%\")",
        ),
        (
            "name: x\nphases:\n  - name: p\n    strategy: {batches: 0}\n    steps: [write_env]\n",
            "playbooks/x.yaml:4:25: 'batches' must be a host count of at least 1 or a percentage such as \"25%\", not '0'",
        ),
        (
            "name: x\nphases:\n  - name: p\n    strategy: {batches: 150%}\n    steps: [write_env]\n",
            "playbooks/x.yaml:4:25: 'batches': '150%' is not a percentage from 1% to 100%",
        ),
        (
            "name: x\nphases:\n  - name: p\n    strategy: {canary: 1, then: 50%, every: 2}\n    steps: [write_env]\n",
            "playbooks/x.yaml:4:38: unknown key 'every' in a canary strategy (known: canary, then)",
        ),
        (
            "name: x\nphases:\n  - name: p\n    strategy:\n      canary: -1\n    steps: [write_env]\n",
            "playbooks/x.yaml:5:15: 'canary' must be a host count of at least 1, not '-1'",
        ),
        // max_unavailable and hosts.
        (
            "name: x\nphases:\n  - name: p\n    max_unavailable: \"2\"\n    hosts: some\n    steps: [write_env]\n",
            "playbooks/x.yaml:4:22: 'max_unavailable' must be a non-negative integer (failed hosts tolerated) or `all`, not '2'\n\
             playbooks/x.yaml:5:12: 'hosts' must be passed (hosts that passed earlier phases) or all, not 'some'",
        ),
        // Steps: unknown, malformed, bad and unknown params.
        (
            "name: x\nphases:\n  - name: p\n    steps:\n      - write_env\n      - wirte_env\n",
            "playbooks/x.yaml:6:9: unknown step 'wirte_env' (known: check_host, compose_apply, health_gate, release_lock, write_env, write_release)",
        ),
        (
            "name: x\nphases:\n  - name: p\n    steps:\n      - {write_env: , compose_apply: }\n      - [x]\n",
            "playbooks/x.yaml:5:9: a step is a step name or a one-key mapping `name: {params}`, not a mapping\n\
             playbooks/x.yaml:6:9: a step is a step name or a one-key mapping `name: {params}`, not a list",
        ),
        (
            "name: x\nphases:\n  - name: p\n    steps:\n      - health_gate:\n          timout: 5s\n",
            "playbooks/x.yaml:6:11: step 'health_gate': unknown parameter 'timout' (known: timeout)",
        ),
        (
            "name: x\nphases:\n  - name: p\n    steps:\n      - health_gate: {timeout: 5 minutes}\n",
            "playbooks/x.yaml:5:32: step 'health_gate': parameter 'timeout': '5 minutes' is not a duration (e.g. 500ms, 60s, 5m, 1h30m)",
        ),
        (
            "name: x\nphases:\n  - name: p\n    steps:\n      - write_env: {force: true}\n",
            "playbooks/x.yaml:5:21: step 'write_env': unknown parameter 'force' (this step takes none)",
        ),
        (
            "name: x\nphases:\n  - name: p\n    steps:\n      - health_gate: 60s\n",
            "playbooks/x.yaml:5:22: step 'health_gate': expected a mapping of parameters (timeout), got a string",
        ),
        // Phases: missing parts, empty lists, duplicate names.
        (
            "name: x\nphases:\n  - strategy: parallel\n  - name: q\n    steps: []\n",
            "playbooks/x.yaml:3:5: a phase needs a 'name'\n\
             playbooks/x.yaml:3:5: a phase needs 'steps' (a list of steps)\n\
             playbooks/x.yaml:5:12: 'steps' is empty: a phase needs at least one step",
        ),
        (
            "name: x\nphases:\n  - name: p\n    steps: [write_env]\n  - name: p\n    steps: [write_env]\n",
            "playbooks/x.yaml:5:11: duplicate phase name 'p' (first at line 3, column 11)",
        ),
        (
            "name: x\nphases: []\n",
            "playbooks/x.yaml:2:9: 'phases' is empty: a playbook needs at least one",
        ),
        // Not a playbook at all.
        (
            "",
            "playbooks/x.yaml:1:1: empty playbook: expected a mapping with name and phases",
        ),
        (
            "- a\n",
            "playbooks/x.yaml:1:1: a playbook must be a mapping, not a list",
        ),
        // YAML syntax and duplicate keys, from the located reader.
        (
            "name: x\nname: y\nphases: [a\n",
            "playbooks/x.yaml:2:1: duplicate key 'name' (first at line 1, column 1)",
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(text, want)| error_of(text) != *want)
        .map(|(text, want)| format!("for:\n{text}\nwant: {want}\n got: {}", error_of(text)))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn a_yaml_syntax_error_is_located() {
    let e = error_of("name: x\nphases:\n  - name: p\n    steps: [write_env\n");
    assert!(e.starts_with("playbooks/x.yaml:"), "{e}");
    assert!(e.contains("YAML syntax error"), "{e}");
}

#[test]
fn an_unreadable_file_is_named() {
    let e = Playbook::load(Path::new("/nonexistent/p.yaml"), &registry())
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.starts_with("/nonexistent/p.yaml: cannot read playbook:")),
        "{e:?}"
    );
}

#[test]
fn max_unavailable_all_tolerates_every_failure() {
    let reg = registry();
    let pb = Playbook::from_str(
        "name: x\nphases:\n  - name: p\n    max_unavailable: all\n    steps: [write_env]\n",
        Path::new("playbooks/x.yaml"),
        &reg,
    )
    .expect("valid playbook");
    assert_eq!(pb.phases()[0].max_unavailable, usize::MAX);
}
