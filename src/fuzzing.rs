//! Fuzz targets: every parser of outside input, each as a function of arbitrary bytes that
//! must not panic and must keep a few invariants. The same functions run under cargo-fuzz
//! (`fuzz/`, nightly or `RUSTC_BOOTSTRAP=1`) and as a bounded, seeded property loop in
//! `cargo test` (`tests/fuzz_smoke.rs`, with [`mutate`] over the corpus in `fuzz/corpus/`).
//!
//! Not part of the program's behaviour: nothing here is called by the CLI.

use std::path::Path;

/// A fuzz target: arbitrary bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// The targets, by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: [(&str, Target); 7] = [
    ("inventory", inventory),
    ("limit", limit),
    ("playbook", playbook),
    ("known_hosts", known_hosts),
    ("ssh_config", ssh_config),
    ("token", token),
    ("duration", duration),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// The inventory readers, YAML and INI, on the same bytes: parse, list as ansible-inventory
/// does, resolve every host's connection. Invariant: a selection holds only hosts of the
/// inventory.
pub fn inventory(data: &[u8]) {
    use crate::inventory::Inventory;
    let t = text(data);
    if let Ok(inv) = Inventory::from_str(&t, Path::new("fuzz.yaml")) {
        inventory_invariants(&inv);
    }
    if let Ok(inv) = Inventory::from_ini_str(&t, Path::new("fuzz.ini")) {
        inventory_invariants(&inv);
    }
}

fn inventory_invariants(inv: &crate::inventory::Inventory) {
    let _ = inv.ansible_list();
    if let Ok(hosts) = inv.select(None) {
        for h in &hosts {
            assert!(
                inv.host(&h.name).is_some(),
                "selected a host not in the inventory"
            );
            let _ = inv.connection(h);
        }
    }
}

const LIMIT_INVENTORY: &str = "all:
  hosts:
    solo:
  children:
    web:
      hosts:
        web1:
        web2:
        web10:
    db:
      hosts:
        db1:
        web2:
      children:
        replicas:
          hosts:
            db2:
";

/// `--limit` patterns against a fixed inventory (names, groups, globs, `!`, `&`, `:`/`,`).
/// Invariant: the selection is a subset of the inventory, without duplicates.
pub fn limit(data: &[u8]) {
    // Parsed once: parsing it per input dominated the target (~140 execs/s under libFuzzer).
    static INVENTORY: std::sync::OnceLock<crate::inventory::Inventory> = std::sync::OnceLock::new();
    let inv = INVENTORY.get_or_init(|| {
        match crate::inventory::Inventory::from_str(LIMIT_INVENTORY, Path::new("limit.yaml")) {
            Ok(inv) => inv,
            Err(e) => panic!("the fixed inventory must parse: {e}"),
        }
    });
    let pattern = text(data);
    if let Ok(hosts) = inv.select(Some(&pattern)) {
        let mut names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        for n in &names {
            assert!(inv.host(n).is_some(), "{n} is not in the inventory");
        }
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(before, names.len(), "a host selected twice");
    }
}

/// Playbooks, with the deploy and rotation steps registered.
pub fn playbook(data: &[u8]) {
    let mut registry = crate::playbook::StepRegistry::new();
    crate::ops::rotate::register_rotation_steps(
        &mut registry,
        "fuzz",
        std::time::Duration::from_secs(1),
        None,
    );
    let _ = crate::playbook::Playbook::from_str(&text(data), Path::new("fuzz.yaml"), &registry);
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

/// known_hosts: parse, check a key for a few names. Invariant: an entry appended with a
/// hashed name (as `--accept-new` does for a hashed file) is found again.
pub fn known_hosts(data: &[u8]) {
    use crate::ssh::known_hosts::{KnownHosts, Verdict, hash_host_name};
    let Ok(key) = russh::keys::PublicKey::from_openssh(KEY) else {
        panic!("the fixed key must parse");
    };
    let t = text(data);
    let kh = KnownHosts::parse(&t, Path::new("known_hosts"));
    for (host, port) in [("10.0.0.2", 22), ("h1", 2222), ("", 0)] {
        let _ = kh.check(host, port, &key);
        let _ = kh.known_algorithms(host, port);
    }
    let salt: Vec<u8> = data.iter().take(20).copied().collect();
    let line = format!("{} {KEY}\n", hash_host_name("[h9]:2200", &salt));
    let kh = KnownHosts::parse(&format!("{t}\n{line}"), Path::new("known_hosts"));
    let v = kh.check("h9", 2200, &key);
    assert!(
        matches!(v, Verdict::Known | Verdict::Revoked { .. }),
        "a hashed entry was not found again: {v:?}"
    );
}

/// ssh_config (the file, and `ssh -G` output).
pub fn ssh_config(data: &[u8]) {
    let t = text(data);
    let _ = crate::ssh::config::parse_config(&t, "h1");
    let _ = crate::ssh::config::parse_config(&t, "");
    let _ = crate::ssh::config::parse_g_output(&t);
}

/// Token validation. Invariant: no error message repeats the input (a token, or most of one,
/// must never reach a terminal or a log through an error).
pub fn token(data: &[u8]) {
    let t = text(data);
    if let Err(e) = crate::secrets::validate_tunnel_token(&t) {
        let msg = e.to_string();
        if t.trim().len() >= 12 {
            assert!(
                !msg.contains(t.trim()),
                "the error repeats the input: {msg}"
            );
        }
    }
    let _ = crate::secrets::redact_token_shaped(&t);
}

/// The duration parsers (playbook `1h30m` style, and the CLI's `10s`/`2d`/bare seconds), and
/// the Go-style formatter. Invariant: what the formatter prints parses back.
pub fn duration(data: &[u8]) {
    let t = text(data);
    if let Ok(d) = crate::playbook::parse_duration(&t) {
        let go = crate::stack::scripts::go_duration(d);
        assert!(
            crate::playbook::parse_duration(&go).is_ok(),
            "{go} (from {d:?}) does not parse back"
        );
    }
    let _ = crate::cli::parse_duration(&t);
}

/// A small deterministic mutator for the property loop: xorshift state in, one mutated copy
/// of `input` out (bit flips, inserted or deleted bytes, interesting tokens, duplicated or
/// spliced ranges from `other`). Output length stays below 64 KiB.
pub fn mutate(input: &[u8], other: &[u8], state: &mut u64) -> Vec<u8> {
    const TOKENS: [&[u8]; 20] = [
        b":",
        b"\n",
        b"  ",
        b"- ",
        b"{",
        b"}",
        b"[",
        b"]",
        b"|1|",
        b"*",
        b"!",
        b"&",
        b",",
        b"99999999999999999999999",
        b"\"",
        b"'",
        b"#",
        b"\t",
        b"=",
        b"\xff",
    ];
    let mut next = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    let mut out = input.to_vec();
    let rounds = 1 + next() % 4;
    for _ in 0..rounds {
        let len = out.len();
        let at = if len == 0 { 0 } else { (next() as usize) % len };
        match next() % 7 {
            0 if len > 0 => out[at] ^= 1 << (next() % 8),
            1 => out.insert(at, next() as u8),
            2 if len > 0 => {
                let n = 1 + (next() as usize) % 8;
                out.drain(at..(at + n).min(len));
            }
            3 => {
                let t = TOKENS[(next() as usize) % TOKENS.len()];
                out.splice(at..at, t.iter().copied());
            }
            4 if len > 0 => {
                let n = 1 + (next() as usize) % 32;
                let piece: Vec<u8> = out[at..(at + n).min(len)].to_vec();
                out.splice(at..at, piece);
            }
            5 if !other.is_empty() => {
                let from = (next() as usize) % other.len();
                let n = 1 + (next() as usize) % 64;
                let piece = &other[from..(from + n).min(other.len())];
                out.splice(at..at, piece.iter().copied());
            }
            _ if len > 0 => out[at] = next() as u8,
            _ => out.push(next() as u8),
        }
    }
    out.truncate(64 * 1024 - 1);
    out
}
