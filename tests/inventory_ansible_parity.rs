//! Parity with Ansible: for each fixture inventory, `Inventory::ansible_list()` must equal
//! (as a JSON value) what `ansible-inventory -i FILE --list` prints.
//!
//! `ansible-inventory` is found through `$ANSIBLE_INVENTORY_BIN` or `PATH`. When it is
//! missing the test fails (CI installs ansible-core 2.19): `pip install 'ansible-core==2.19.*'`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tunnelfleet::inventory::{Inventory, VAULTED_FILE_VALUE, VaultKeys};

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

// ------------------------------------------------------------------ INI, layouts, vault

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory")
}

/// Starts `ansible-inventory` with the INI and YAML plugins (the ones tunnelfleet reads)
/// in `dir` with `args`.
fn spawn_ansible_json(dir: &Path, args: &[&str]) -> std::process::Child {
    let bin = ansible_inventory_bin();
    let tmp = std::env::temp_dir().join("tunnelfleet-parity-ansible");
    Command::new(&bin)
        .current_dir(dir)
        .args(args)
        .env("ANSIBLE_INVENTORY_ENABLED", "yaml,ini")
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
        .env("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "true")
        .env("ANSIBLE_HASH_BEHAVIOUR", "replace")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCAL_TEMP", &tmp)
        .env("ANSIBLE_HOME", &tmp)
        .env_remove("ANSIBLE_VAULT_PASSWORD_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// The JSON a started `ansible-inventory` prints; a parse failure is an error.
fn ansible_output(child: std::process::Child, what: &str) -> Value {
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("ansible-inventory {what}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ansible-inventory {what} failed:\n{stderr}"
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("ansible-inventory {what} printed no JSON: {e}\n{stderr}"))
}

/// `ansible-inventory` in `dir` with `args`, run to the end.
fn ansible_json(dir: &Path, args: &[&str]) -> Value {
    ansible_output(
        spawn_ansible_json(dir, args),
        &format!("{args:?} in {}", dir.display()),
    )
}

/// Compares `--list` and `--host H` (every host) of ours and Ansible's for `sources`
/// (relative to `dir`); returns the differences.
fn compare(dir: &Path, sources: &[&str], inv: &Inventory, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<&str> = Vec::new();
    for s in sources {
        args.push("-i");
        args.push(s);
    }
    args.extend_from_slice(extra);
    let mut list_args = args.clone();
    list_args.push("--list");
    // Start every ansible-inventory first: each takes about a second.
    let list_child = spawn_ansible_json(dir, &list_args);
    let host_children: Vec<_> = inv
        .hosts()
        .map(|host| {
            let mut host_args = args.clone();
            host_args.push("--host");
            host_args.push(&host.name);
            (host, spawn_ansible_json(dir, &host_args))
        })
        .collect();
    let mut failures = Vec::new();
    let expected = ansible_output(list_child, &format!("{sources:?} --list"));
    let ours = inv.ansible_list();
    if ours != expected {
        failures.push(format!(
            "{} {sources:?} --list:\n--- ansible-inventory\n{}\n--- ours\n{}",
            dir.display(),
            serde_json::to_string_pretty(&expected).unwrap_or_default(),
            serde_json::to_string_pretty(&ours).unwrap_or_default()
        ));
    }
    for (host, child) in host_children {
        let expected = ansible_output(child, &format!("{sources:?} --host {}", host.name));
        let ours = inv.ansible_host(host);
        if ours != expected {
            failures.push(format!(
                "{} {sources:?} --host {}: ansible {expected}, ours {ours}",
                dir.display(),
                host.name
            ));
        }
    }
    failures
}

fn load_in(dir: &Path, sources: &[&str], keys: &VaultKeys) -> Inventory {
    let paths: Vec<PathBuf> = sources.iter().map(|s| dir.join(s)).collect();
    Inventory::load_sources(&paths, keys)
        .unwrap_or_else(|e| panic!("our loader refused {sources:?} in {}: {e}", dir.display()))
}

/// INI files, an inventory directory (INI + YAML + a nested directory, ignored files,
/// group_vars files and directories, host_vars) and several `-i` with vars beside each.
#[test]
fn ini_and_mixed_layouts_match_ansible_inventory() {
    let root = fixture_root();
    let mut cases: Vec<(PathBuf, Vec<String>)> = Vec::new();
    let ini_dir = root.join("parity_ini");
    let mut ini: Vec<String> = std::fs::read_dir(&ini_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", ini_dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ini"))
        .collect();
    ini.sort();
    assert!(ini.len() >= 4, "expected the INI fixtures, found {ini:?}");
    for f in ini {
        cases.push((ini_dir.clone(), vec![f]));
    }
    for layout in ["dir_with_vars", "multi_i"] {
        let dir = root.join("layouts").join(layout);
        let sources = std::fs::read_to_string(dir.join("sources"))
            .unwrap_or_else(|e| panic!("{layout}/sources: {e}"));
        cases.push((dir, sources.lines().map(str::to_owned).collect()));
    }
    let mut failures = Vec::new();
    for (dir, sources) in &cases {
        let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
        let inv = load_in(dir, &sources, &VaultKeys::none());
        failures.extend(compare(dir, &sources, &inv, &[]));
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}

fn ansible_vault(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let bin = ansible_inventory_bin().with_file_name("ansible-vault");
    let tmp = std::env::temp_dir().join("tunnelfleet-parity-ansible");
    let mut child = Command::new(&bin)
        .current_dir(dir)
        .args(args)
        .env("ANSIBLE_LOCAL_TEMP", &tmp)
        .env("ANSIBLE_HOME", &tmp)
        .env("ANSIBLE_NOCOLOR", "1")
        .env_remove("ANSIBLE_VAULT_PASSWORD_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .map(|mut s| s.write_all(input.as_bytes()))
            .transpose()
            .unwrap_or_else(|e| panic!("ansible-vault stdin: {e}"));
    }
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("ansible-vault: {e}"));
    assert!(
        out.status.success(),
        "ansible-vault {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Inline `!vault` values (format 1.1, and 1.2 with a vault id) and a vault-encrypted
/// group_vars file, made by `ansible-vault` in the test: the same listing as Ansible's,
/// except that values from the encrypted file are not shown; the decrypted values are
/// secrets; no password is a clear error naming the file and var.
#[test]
fn vault_values_and_files_match_ansible_and_stay_secret() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = tmp.path();
    std::fs::write(dir.join("pw"), "correct horse\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("pw-prod"), "battery staple").unwrap_or_else(|e| panic!("{e}"));
    let token = "eyJhIjoiYWNjb3VudCIsInQiOiJ0dW5uZWwiLCJzIjoic2VjcmV0In0";
    let inline = ansible_vault(
        dir,
        &[
            "encrypt_string",
            "--vault-password-file",
            "pw",
            "--stdin-name",
            "tunnel_token",
        ],
        Some(token),
    );
    let labelled = ansible_vault(
        dir,
        &[
            "encrypt_string",
            "--vault-id",
            "prod@pw-prod",
            "--stdin-name",
            "api_credential",
        ],
        Some("cred-value-1234"),
    );
    assert!(
        labelled.contains("$ANSIBLE_VAULT;1.2;AES256;prod"),
        "{labelled}"
    );
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let inventory = format!(
        "tunnel_one:\n  hosts:\n    h1:\n{}{}    h2:\n      ansible_host: 10.0.0.2\n",
        indent(&inline),
        indent(&labelled)
    );
    std::fs::write(dir.join("hosts.yaml"), inventory).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dir.join("group_vars/tunnel_one")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.join("group_vars/tunnel_one/plain.yml"),
        "tunnel_domain: one.example.com\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.join("group_vars/tunnel_one/vault.yml"),
        "db_password: hunter2-from-file\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    ansible_vault(
        dir,
        &[
            "encrypt",
            "--vault-password-file",
            "pw",
            "group_vars/tunnel_one/vault.yml",
        ],
        None,
    );

    // Without a password: refused, naming the file (and for inline values the var).
    let e = Inventory::load_sources(&[dir.join("hosts.yaml")], &VaultKeys::none())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("vault.yml") && e.contains("no vault password was given"),
        "{e}"
    );
    std::fs::remove_file(dir.join("group_vars/tunnel_one/vault.yml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = Inventory::load_sources(&[dir.join("hosts.yaml")], &VaultKeys::none())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("hosts.yaml:") && e.contains("tunnel_token: vault-encrypted"),
        "{e}"
    );
    assert!(!e.contains(token));
    // Put the encrypted file back.
    std::fs::write(
        dir.join("group_vars/tunnel_one/vault.yml"),
        "db_password: hunter2-from-file\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    ansible_vault(
        dir,
        &[
            "encrypt",
            "--vault-password-file",
            "pw",
            "group_vars/tunnel_one/vault.yml",
        ],
        None,
    );

    let mut keys = VaultKeys::none();
    keys.add_file(&dir.join("pw").to_string_lossy())
        .unwrap_or_else(|e| panic!("{e}"));
    keys.add_vault_id(&format!("prod@{}", dir.join("pw-prod").display()))
        .unwrap_or_else(|e| panic!("{e}"));
    let inv = load_in(dir, &["hosts.yaml"], &keys);
    let h1 = inv.host("h1").unwrap_or_else(|| panic!("no h1"));
    assert_eq!(
        inv.vaulted_var(h1, "tunnel_token")
            .map(|s| s.expose().to_owned()),
        Some(token.to_owned())
    );
    assert_eq!(
        inv.vaulted_var(h1, "api_credential")
            .map(|s| s.expose().to_owned()),
        Some("cred-value-1234".to_owned())
    );
    assert_eq!(
        inv.vaulted_var(h1, "db_password")
            .map(|s| s.expose().to_owned()),
        Some("hunter2-from-file".to_owned())
    );
    let listing = serde_json::to_string(&inv.ansible_list()).unwrap_or_default();
    for secret in [token, "cred-value-1234", "hunter2-from-file"] {
        assert!(!listing.contains(secret), "--list shows a decrypted value");
    }

    // Ansible prints the encrypted file's values in clear; we print a placeholder there and
    // must agree on everything else.
    let extra = ["--vault-password-file", "pw", "--vault-id", "prod@pw-prod"];
    let mut expected = ansible_json(
        dir,
        &[&["-i", "hosts.yaml", "--list"][..], &extra[..]].concat(),
    );
    for host in ["h1", "h2"] {
        let slot = expected
            .pointer_mut(&format!("/_meta/hostvars/{host}/db_password"))
            .unwrap_or_else(|| panic!("ansible shows no db_password for {host}"));
        assert_eq!(slot, &Value::from("hunter2-from-file"));
        *slot = Value::from(VAULTED_FILE_VALUE);
    }
    assert_eq!(inv.ansible_list(), expected);
}

/// What Ansible would read and tunnelfleet cannot is refused by name, never skipped.
#[test]
fn unreadable_sources_are_refused_by_name() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = tmp.path();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        p
    };
    let err = |p: PathBuf| {
        Inventory::load_sources(&[p], &VaultKeys::none())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("should be refused"))
    };
    let script = write("inv.py", "#!/usr/bin/env python3\nprint('{}')\n");
    assert!(
        err(script.clone()).contains("inventory script"),
        "{}",
        err(script)
    );
    let exe = write("hosts", "h1\n");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    // Executable without `#!`: Ansible's script plugin fails to exec it and the INI plugin
    // reads it; so do we.
    let names: Vec<String> = Inventory::load_sources(&[exe], &VaultKeys::none())
        .unwrap_or_else(|e| panic!("{e}"))
        .hosts()
        .map(|h| h.name.clone())
        .collect();
    assert_eq!(names, ["h1"]);
    let toml = write("hosts.toml", "[web.hosts]\n");
    assert!(err(toml.clone()).contains("TOML"), "{}", err(toml));
    let plugin = write("aws_ec2.yml", "plugin: amazon.aws.aws_ec2\n");
    assert!(
        err(plugin.clone()).contains("inventory plugin"),
        "{}",
        err(plugin)
    );
    let ini = write("bad.ini", "[web]\nh1 novalue\n");
    assert_eq!(
        err(ini.clone()),
        format!(
            "{}:2:1: expected key=value host variable assignment, got: novalue",
            ini.display()
        )
    );
    let undefined = write("undef.ini", "[a:children]\nb\n");
    assert!(
        err(undefined.clone()).contains(":2:1: section [a:children] includes undefined group: b"),
        "{}",
        err(undefined)
    );
    assert!(err(PathBuf::from("/dev/zero")).contains("is a character device"));
    let big = dir.join("huge.ini");
    let f = std::fs::File::create(&big).unwrap_or_else(|e| panic!("{e}"));
    f.set_len(17 * 1024 * 1024)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        err(big.clone()).contains("larger than 16 MiB"),
        "{}",
        err(big)
    );
}
