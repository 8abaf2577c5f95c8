//! The testbed's stand-in for the stack's setup component (`setup` in the mcp-proxy image),
//! driven the way tunnelfleet will drive it: the stack deployed by `tunnelfleet deploy`, the
//! setup service (profile `setup`) appended to the release's compose file, and
//! `docker compose run --rm -T setup ...` over SSH with the identity token exported in the
//! shell, never on a command line. The stand-in edge is the witness for the token.

mod common;

use std::cell::RefCell;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Testbed, describe, fp};
use serde_json::Value;

const DEPLOY: &str = "/srv/mcp-tunnel";
const DATA: &str = "/srv/mcp-tunnel/shared/data";
/// How tunnelfleet runs Compose on a host (project dir `current`, project mcp-tunnel-<tunnel>).
const V2: &str = "cd /srv/mcp-tunnel/current && docker compose -p mcp-tunnel-testbed \
                  --project-directory /srv/mcp-tunnel/current \
                  -f /srv/mcp-tunnel/current/docker-compose.yaml";
const V1: &str = "cd /srv/mcp-tunnel/current && docker-compose -p mcp-tunnel-testbed \
                  --project-directory /srv/mcp-tunnel/current \
                  -f /srv/mcp-tunnel/current/docker-compose.yaml";
/// Reads the identity token from stdin into the environment, as tunnelfleet sends secrets.
const READ_ID: &str = "IFS= read -r ANTHROPIC_IDENTITY_TOKEN; export ANTHROPIC_IDENTITY_TOKEN; ";

struct Fleet {
    tb: Testbed,
    state: String,
    /// Everything the setup runs printed (stdout and stderr), checked for secrets.
    printed: RefCell<String>,
}

impl Fleet {
    /// A testbed with the stack deployed on every host by `tunnelfleet deploy`.
    fn deployed(n: usize) -> Fleet {
        let tb = Testbed::up(n, &[]);
        let state = tb.state_with_ca();
        let token = tb.path().join("token").to_string_lossy().into_owned();
        let out = tb.tf("deploy", &["--state-dir", &state, "--token-file", &token]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        Fleet {
            tb,
            state,
            printed: RefCell::default(),
        }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.tb.path().join(name)).expect("testbed file")
    }

    /// `ssh -F DIR/ssh_config HOST SCRIPT` with `stdin` on its standard input.
    fn ssh(&self, host: &str, script: &str, stdin: &str) -> Output {
        let mut child = Command::new("ssh")
            .arg("-F")
            .arg(self.tb.path().join("ssh_config"))
            .arg(host)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ssh");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("write stdin");
        drop(input);
        child.wait_with_output().expect("ssh output")
    }

    /// `compose run --rm -T setup ARGS` with the identity token `id` exported (None: unset).
    fn setup(&self, host: &str, compose: &str, args: &str, id: Option<&str>) -> Output {
        let out = match id {
            Some(id) => self.ssh(
                host,
                &format!("{READ_ID}{compose} run --rm -T setup {args}"),
                &format!("{id}\n"),
            ),
            None => self.ssh(host, &format!("{compose} run --rm -T setup {args}"), ""),
        };
        let mut printed = self.printed.borrow_mut();
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&String::from_utf8_lossy(&out.stderr));
        out
    }

    fn edge(&self) -> Value {
        let out = self.tb.testbed(&["edge-stats"]);
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice(&out.stdout).expect("edge-stats json")
    }

    /// Appends the setup service, as tunnelfleet will render it, to the live compose file.
    fn add_setup_service(&self, host: &str) {
        let ids: Value = serde_json::from_str(&self.read("setup.json")).expect("setup.json");
        let compose = self
            .tb
            .host_exec(host, &format!("cat {DEPLOY}/current/docker-compose.yaml"));
        let image = compose
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("image:") && l.contains("mcp-proxy"))
            .expect("the mcp-proxy image in the compose file")
            .to_string();
        let service = format!(
            "\n  setup:\n    {image}\n    entrypoint: [\"setup\"]\n    \
             command: [\"--output=dir:/data\"]\n    environment:\n      \
             - \"TUNNEL_ID={}\"\n      - \"ANTHROPIC_FEDERATION_RULE_ID={}\"\n      \
             - \"ANTHROPIC_ORGANIZATION_ID={}\"\n      - ANTHROPIC_IDENTITY_TOKEN\n    \
             volumes:\n      - \"./data:/data\"\n    profiles: [\"setup\"]\n    \
             restart: \"no\"\n",
            ids["tunnel_id"].as_str().expect("tunnel_id"),
            ids["federation_rule_id"]
                .as_str()
                .expect("federation_rule_id"),
            ids["organization_id"].as_str().expect("organization_id"),
        );
        let out = self.ssh(
            host,
            &format!("cat >> {DEPLOY}/current/docker-compose.yaml"),
            &service,
        );
        assert!(out.status.success(), "{}", describe(&out));
    }

    /// Id, start time and restart count of every container on the host.
    fn containers(&self, host: &str) -> String {
        self.tb.host_exec(
            host,
            "docker ps -aq | xargs -r docker inspect -f \
             '{{.Name}} {{.Id}} {{.State.Status}} {{.State.StartedAt}} {{.RestartCount}}' | sort",
        )
    }

    /// `stat` of a file in the shared data dir: inode, mode, owner, size, content hash.
    fn stat(&self, host: &str, file: &str) -> String {
        self.tb.host_exec(
            host,
            &format!("cd {DATA} && stat -c '%i %a %U %s' {file} && sha256sum {file}"),
        )
    }

    fn file_fp(&self, host: &str, file: &str) -> String {
        fp(&self.tb.host_exec(host, &format!("cat {DATA}/{file}")))
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn profiled_setup_is_left_out_of_up_and_rotates_the_token_through_the_edge() {
    let f = Fleet::deployed(2);
    let old = f.read("token");
    let id = f.read("identity-token");
    assert!(
        id.split('.').count() == 3 && id.starts_with("eyJ"),
        "identity token shaped like a JWT"
    );

    // Adding the profiled service and `up -d --remove-orphans` (tunnelfleet's UpAll):
    // no setup container, nothing recreated or restarted, no connector bounced.
    let before = f.containers("h1");
    let events = f.edge()["timeline"].as_array().map_or(0, Vec::len);
    f.add_setup_service("h1");
    let out = f.ssh("h1", &format!("{V2} up -d --remove-orphans"), "");
    assert!(out.status.success(), "{}", describe(&out));
    let out = f.ssh("h1", &format!("{V2} up -d"), "");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        f.containers("h1"),
        before,
        "up -d touched the running stack"
    );
    assert_eq!(
        f.edge()["timeline"].as_array().map_or(0, Vec::len),
        events,
        "a connector went down or up"
    );
    let services = f.tb.host_exec("h1", &format!("{V2} config --services"));
    assert!(!services.contains("setup"), "{services}");
    assert!(
        f.tb.host_exec("h1", &format!("{V2} --profile setup config --services"))
            .contains("setup")
    );

    // Usage errors: no flag, no token version.
    let out = f.setup("h1", V2, "--output=dir:/data", Some(&id));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("token-version"), "{}", describe(&out));
    let out = f.setup("h1", V2, "--token-version=0 --output=dir:/data", Some(&id));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // No identity token in the environment.
    let out = f.setup("h1", V2, "--token-version=1 --output=dir:/data", None);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("setup: ANTHROPIC_IDENTITY_TOKEN is not set"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        f.tb.host_exec("h1", &format!("test -e {DATA}/tunnel-token || echo none")),
        "none\n"
    );
    assert!(f.edge()["setup_token_version"].is_null());

    // Version 1 (the install): reveals the current token, rotates nothing.
    let out = f.setup("h1", V2, "--token-version=1 --output=dir:/data", Some(&id));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains("(token version 1) written to /data/tunnel-token"),
        "{}",
        describe(&out)
    );
    assert_eq!(f.file_fp("h1", "tunnel-token"), fp(&old));
    let st = f.stat("h1", "tunnel-token");
    assert_eq!(st.split_whitespace().nth(1), Some("600"), "{st}");
    assert_eq!(st.split_whitespace().nth(2), Some("root"), "{st}");
    let edge = f.edge();
    assert_eq!(edge["setup_token_version"], 1);
    assert_eq!(edge["valid_token_fps"], serde_json::json!([fp(&old)]));

    // Version 2: rotates. The edge takes only the new token for new registrations and keeps
    // the connectors already up.
    let out = f.setup("h1", V1, "--token-version=2 --output=dir:/data", Some(&id));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains("(token version 2)"),
        "{}",
        describe(&out)
    );
    let new = f.read("token.next");
    assert_ne!(fp(&new), fp(&old));
    assert_eq!(f.file_fp("h1", "tunnel-token"), fp(&new));
    let st = f.stat("h1", "tunnel-token");
    assert_eq!(st.split_whitespace().nth(1), Some("600"), "{st}");
    assert_eq!(st.split_whitespace().nth(2), Some("root"), "{st}");
    // The bare token, no newline.
    let size = new.trim_end().len().to_string();
    assert_eq!(st.split_whitespace().nth(3), Some(size.as_str()), "{st}");
    let edge = f.edge();
    assert_eq!(edge["setup_token_version"], 2);
    assert_eq!(edge["valid_token_fps"], serde_json::json!([fp(&new)]));
    let mut current: Vec<(String, String)> = edge["current"]
        .as_array()
        .expect("current")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("host"), s("token_fp"))
        })
        .collect();
    current.sort();
    assert_eq!(
        current,
        [("h1".to_string(), fp(&old)), ("h2".to_string(), fp(&old))],
        "the connectors already up stay up"
    );
    assert_eq!(f.containers("h1"), before, "setup restarted something");

    // A new connector on the token setup wrote registers; one on the old token is refused.
    let out = f.ssh(
        "h1",
        &format!(
            "export TUNNEL_TOKEN=\"$(cat {DATA}/tunnel-token)\"; \
             {V2} run -d --no-deps --name canary-new cloudflared"
        ),
        "",
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = f.ssh(
        "h2",
        &format!(
            "IFS= read -r TUNNEL_TOKEN; export TUNNEL_TOKEN; \
             {V2} run -d --no-deps --name canary-old cloudflared"
        ),
        &format!("{}\n", old.trim_end()),
    );
    assert!(out.status.success(), "{}", describe(&out));
    wait_until("a connector on the new token from h1", || {
        f.edge()["current"].as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["host"] == "h1" && c["token_fp"] == fp(&new))
        })
    });
    wait_until("the old token refused for h2", || {
        f.edge()["refused"].as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["host"] == "h2" && c["token_fp"] == fp(&old))
        })
    });
    assert!(
        !f.edge()["refused"]
            .as_array()
            .expect("refused")
            .iter()
            .any(|c| c["token_fp"] == fp(&new)),
        "the new token was refused"
    );

    // The same version again: refused, tunnel-token left as it was (same inode and bytes).
    let st = f.stat("h1", "tunnel-token");
    let out = f.setup("h1", V2, "--token-version=2 --output=dir:/data", Some(&id));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains(
            "setup: token version 2 is unchanged (last used 2): increment --token-version to rotate"
        ),
        "{}",
        describe(&out)
    );
    assert_eq!(f.stat("h1", "tunnel-token"), st);

    // A wrong identity token: the API's 401 message, nothing written, nothing rotated.
    let wrong = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJub2JvZHkifQ.c2lnbmF0dXJl";
    let out = f.setup(
        "h1",
        V2,
        "--token-version=3 --output=dir:/data",
        Some(wrong),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("setup: workload identity federation failed"),
        "{}",
        describe(&out)
    );
    assert_eq!(f.stat("h1", "tunnel-token"), st);
    let edge = f.edge();
    assert_eq!(edge["setup_token_version"], 2);
    assert_eq!(edge["valid_token_fps"], serde_json::json!([fp(&new)]));

    // `run --rm` leaves no setup container behind.
    for all in ["ps -a", "ps -a --services"] {
        let ps = f.tb.host_exec("h1", &format!("{V2} {all}"));
        assert!(!ps.contains("setup"), "{ps}");
    }
    let ps = f.tb.host_exec("h1", "docker ps -a --format '{{.Names}}'");
    assert!(!ps.contains("setup"), "{ps}");

    // No secret on any recorded command line, in the edge's files or in what setup printed.
    let mut haystacks = vec![f.tb.recorded_commands(), f.tb.host_commands("h1")];
    for name in [
        "edge/edge.log",
        "edge/timeline.jsonl",
        "setup.json",
        "standin.json",
    ] {
        haystacks.push(std::fs::read_to_string(f.tb.path().join(name)).unwrap_or_default());
    }
    haystacks.push(f.tb.host_exec("h1", &format!("{V2} logs")));
    haystacks.push(f.printed.borrow().clone());
    assert!(haystacks[haystacks.len() - 1].contains("setup: tunnel token ttkn_"));
    assert!(
        haystacks[0].contains("run --rm -T setup"),
        "the setup runs are recorded"
    );
    for (i, hay) in haystacks.iter().enumerate() {
        for (what, secret) in [
            ("identity token", &id),
            ("old token", &old),
            ("new token", &new),
        ] {
            // The whole value, and its tail alone (the random part of a token or a JWT).
            let secret = secret.trim();
            let tail = &secret[secret.len().saturating_sub(24)..];
            assert!(
                !hay.contains(secret) && !hay.contains(tail),
                "{what} leaked into haystack {i}"
            );
        }
    }
}

#[test]
fn renew_cert_is_a_noop_while_time_is_left_and_otherwise_signs_with_the_same_ca_and_key() {
    let f = Fleet::deployed(1);
    f.add_setup_service("h1");
    let openssl = |cmd: &str| f.tb.host_exec("h1", &format!("cd {DATA} && {cmd}"));
    let serial = || openssl("openssl x509 -noout -serial -in tls.crt");
    // The CA key lives on the controller; the programmatic flow keeps it in data/.
    f.tb.host_exec(
        "h1",
        &format!(
            "install -m 600 {}/pki/testbed/ca.key {DATA}/ca.key",
            f.state
        ),
    );
    let fresh = f.stat("h1", "tls.crt");
    let first_serial = serial();

    // More than 720h left on a fresh 90-day certificate: nothing to do, nothing written.
    let out = f.setup(
        "h1",
        V2,
        "renew-cert --output=dir:/data --renew-before=720h",
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains("(more than 720h left); nothing to do"),
        "{}",
        describe(&out)
    );
    assert_eq!(f.stat("h1", "tls.crt"), fresh);
    // Compose v1 spelling, same answer.
    let out = f.setup(
        "h1",
        V1,
        "renew-cert --output=dir:/data --renew-before=1h30m",
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(f.stat("h1", "tls.crt"), fresh);

    // Bad flags are usage errors.
    let out = f.setup(
        "h1",
        V2,
        "renew-cert --output=dir:/data --renew-before=7x",
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = f.setup("h1", V2, "renew-certs --output=dir:/data", None);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // Without the CA key: an error naming it, nothing written.
    openssl("mv ca.key ca.key.away");
    let out = f.setup("h1", V2, "renew-cert --output=dir:/data", None);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains("/data/ca.key"), "{}", describe(&out));
    assert_eq!(f.stat("h1", "tls.crt"), fresh);
    openssl("mv ca.key.away ca.key");

    // Less than 2200h left (90 days = 2160h): renewed, then once more without the flag.
    let mut serials = vec![first_serial];
    for args in [
        "renew-cert --output=dir:/data --renew-before=2200h",
        "renew-cert --output=dir:/data",
    ] {
        let out = f.setup("h1", V2, args, None);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let s = serial();
        let hex = s.trim().trim_start_matches("serial=").to_lowercase();
        assert!(
            stderr(&out).contains(&format!(
                "setup: renewed certificate serial {hex} valid until"
            )),
            "{}\n{s}",
            describe(&out)
        );
        assert!(
            !serials.contains(&s),
            "a new serial each time: {serials:?} {s}"
        );
        serials.push(s);
        let st = f.stat("h1", "tls.crt");
        assert_ne!(st, fresh);
        assert_eq!(st.split_whitespace().nth(1), Some("644"), "{st}");
        assert_eq!(
            openssl("openssl verify -CAfile ca.crt tls.crt"),
            "tls.crt: OK\n"
        );
        assert_eq!(
            openssl("openssl x509 -noout -pubkey -in tls.crt"),
            openssl("openssl pkey -pubout -in tls.key"),
            "the server key is kept"
        );
        let text = openssl("openssl x509 -noout -text -in tls.crt");
        for want in [
            "Subject: CN = testbed.example.com",
            "DNS:testbed.example.com, DNS:*.testbed.example.com",
            "CA:FALSE",
            "TLS Web Server Authentication",
            "Digital Signature, Key Encipherment",
            "X509v3 Authority Key Identifier",
            "X509v3 Subject Key Identifier",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        let days = openssl(
            "openssl x509 -noout -checkend 7689600 -in tls.crt >/dev/null && \
             ! openssl x509 -noout -checkend 7862400 -in tls.crt >/dev/null && echo 89-91days",
        );
        assert_eq!(days, "89-91days\n");
    }

    // The proxy polls tls.crt and picks the renewed one up without a restart.
    wait_until("the proxy reloads the renewed certificate", || {
        f.tb.host_exec("h1", &format!("{V2} logs mcp-proxy"))
            .contains("reloaded TLS certificate")
    });
    let ps = f.tb.host_exec("h1", "docker ps -a --format '{{.Names}}'");
    assert!(!ps.contains("setup"), "{ps}");
}
