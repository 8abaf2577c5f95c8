//! Parity with Ansible: for each fixture inventory, `Inventory::ansible_list()` must equal
//! (as a JSON value) what `ansible-inventory -i FILE --list` prints.
//!
//! `ansible-inventory` is found through `$ANSIBLE_INVENTORY_BIN` or `PATH`. When it is
//! missing the test fails (CI installs ansible-core 2.19): `pip install 'ansible-core==2.19.*'`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tunnelfleet::inventory::Inventory;

fn ansible_inventory_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ANSIBLE_INVENTORY_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("ansible-inventory"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(bin) => bin,
        None => panic!(
            "ansible-inventory not found: install ansible-core 2.19 \
             (pip install 'ansible-core==2.19.*') or set ANSIBLE_INVENTORY_BIN"
        ),
    }
}

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fixtures/inventory/parity");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files.push(root.join("inventory/example.yaml"));
    files
}

/// Starts `ansible-inventory --list` on `file` with settings that make a parse failure an
/// error instead of a warning and an empty inventory.
fn spawn_ansible(bin: &Path, file: &Path) -> std::process::Child {
    let tmp = std::env::temp_dir().join("tunnelfleet-parity-ansible");
    Command::new(bin)
        .arg("-i")
        .arg(file)
        .arg("--list")
        .env("ANSIBLE_INVENTORY_ENABLED", "yaml")
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
        .env("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "true")
        .env("ANSIBLE_HASH_BEHAVIOUR", "replace")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCAL_TEMP", &tmp)
        .env("ANSIBLE_HOME", &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

#[test]
fn ansible_list_matches_ansible_inventory() {
    let bin = ansible_inventory_bin();
    let files = fixtures();
    assert!(
        files.len() >= 8,
        "expected the parity fixtures, found {files:?}"
    );
    // Start all ansible-inventory processes first: each takes about a second.
    let children: Vec<_> = files.iter().map(|f| (f, spawn_ansible(&bin, f))).collect();
    let mut failures = Vec::new();
    for (file, child) in children {
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("ansible-inventory on {}: {e}", file.display()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "ansible-inventory failed on {}:\n{stderr}",
            file.display()
        );
        let expected: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "ansible-inventory printed no JSON for {}: {e}\n{stderr}",
                file.display()
            )
        });
        let ours = Inventory::load(file)
            .unwrap_or_else(|e| panic!("our loader refused {}: {e}", file.display()))
            .ansible_list();
        if ours != expected {
            failures.push(format!(
                "{}:\n--- ansible-inventory\n{}\n--- ours\n{}\n",
                file.display(),
                serde_json::to_string_pretty(&expected).unwrap_or_default(),
                serde_json::to_string_pretty(&ours).unwrap_or_default()
            ));
        }
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}

/// `--limit` parity: the hosts we select equal (as a set) what `ansible PATTERN --list-hosts`
/// lists; we return them in inventory order. Uses the `ansible` binary next to
/// `ansible-inventory`.
#[test]
fn limit_matches_ansible_list_hosts() {
    let inventory_bin = ansible_inventory_bin();
    let bin = inventory_bin.with_file_name("ansible");
    assert!(
        bin.is_file(),
        "{} not found next to {}",
        bin.display(),
        inventory_bin.display()
    );
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory/limit.yaml");
    let inv = Inventory::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let patterns = [
        "all",
        "*",
        "prod",
        "prod:!db",
        "web:&db",
        "!prod",
        "ungrouped",
        "web[0]",
        "web[-1]",
        "prod[1:2]",
        "db?",
        "w*",
        "prod,!web[0]",
        "web1,stg1",
        "*.example.com",
        "eu_*:&tunnel_*",
        "tunnel_*:!~never",
        "10.0.0.1",
        "[ds]*",
    ];
    let tmp = std::env::temp_dir().join("tunnelfleet-parity-ansible");
    let children: Vec<_> = patterns
        .iter()
        .map(|p| {
            let child = Command::new(&bin)
                .arg(p)
                .arg("-i")
                .arg(&file)
                .arg("--list-hosts")
                .env("ANSIBLE_INVENTORY_ENABLED", "yaml")
                .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
                .env("ANSIBLE_NOCOLOR", "1")
                .env("ANSIBLE_LOCAL_TEMP", &tmp)
                .env("ANSIBLE_HOME", &tmp)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            (p, child)
        })
        .collect();
    let mut failures = Vec::new();
    for (pattern, child) in children {
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("ansible {pattern}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "ansible '{pattern}' --list-hosts failed:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // "  hosts (N):" then one indented host per line.
        let mut theirs: Vec<String> = stdout
            .lines()
            .skip(1)
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        theirs.sort();
        // Ansible ignores the `!~never` regex exclusion that matches nothing; we do not
        // support regexes, so compare that one without it.
        let ours_pattern = pattern.replace(":!~never", "");
        let mut ours: Vec<String> = inv
            .select(Some(&ours_pattern))
            .unwrap_or_else(|e| panic!("select '{pattern}': {e}"))
            .into_iter()
            .map(|h| h.name.clone())
            .collect();
        ours.sort();
        if ours != theirs {
            failures.push(format!("'{pattern}': ansible {theirs:?}, ours {ours:?}"));
        }
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}
