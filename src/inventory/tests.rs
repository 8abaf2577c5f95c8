use super::*;
use serde_json::json;

fn inv(text: &str) -> Inventory {
    match Inventory::from_str(text, Path::new("inventory.yaml")) {
        Ok(i) => i,
        Err(e) => panic!("inventory should load: {e}"),
    }
}

fn load_err(text: &str) -> String {
    match Inventory::from_str(text, Path::new("inventory.yaml")) {
        Ok(_) => panic!("inventory should be refused"),
        Err(e) => e.to_string(),
    }
}

fn var<'a>(i: &'a Inventory, host: &str, name: &str) -> Option<&'a Value> {
    i.host(host).and_then(|h| h.vars.get(name))
}

fn names(hosts: Result<Vec<&Host>, InventoryError>) -> Result<Vec<String>, String> {
    hosts
        .map(|v| v.into_iter().map(|h| h.name.clone()).collect())
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- loading and precedence

const PRECEDENCE: &str = "\
all:
  vars: {v: all, only_all: 1, map: {a: 1, b: 2}}
  children:
    zeta:
      vars: {v: zeta, same_depth: zeta}
      hosts: {h1: , h2: }
    alpha:
      vars: {v: alpha, same_depth: alpha, map: {c: 3}}
      hosts: {h1: }
    parent:
      vars: {v: parent, deep: parent}
      children:
        child:
          vars: {v: child, deep: child}
          hosts:
            h1: {v: host}
            h3:
top:
  vars: {same_depth: top, ansible_group_priority: 0}
  hosts: {h2: }
";

#[test]
fn vars_merge_all_then_groups_by_depth_priority_name_then_host() {
    let i = inv(PRECEDENCE);
    // Host vars beat every group.
    assert_eq!(var(&i, "h1", "v"), Some(&json!("host")));
    // The deeper group wins over its parent and over shallower groups.
    assert_eq!(var(&i, "h1", "deep"), Some(&json!("child")));
    assert_eq!(var(&i, "h3", "v"), Some(&json!("child")));
    // Same depth, same priority: merged by name, so 'zeta' beats 'alpha'.
    assert_eq!(var(&i, "h1", "same_depth"), Some(&json!("zeta")));
    // Same depth: lower ansible_group_priority first, so 'zeta' (1) beats 'top' (0).
    assert_eq!(var(&i, "h2", "same_depth"), Some(&json!("zeta")));
    // all vars are the base; dict values are replaced, not merged (hash_behaviour=replace).
    assert_eq!(var(&i, "h3", "only_all"), Some(&json!(1)));
    assert_eq!(var(&i, "h1", "map"), Some(&json!({"c": 3})));
    assert_eq!(var(&i, "h3", "map"), Some(&json!({"a": 1, "b": 2})));
    // ansible_group_priority is consumed, not a variable.
    assert_eq!(var(&i, "h2", "ansible_group_priority"), None);
    assert_eq!(i.group("top").map(|g| g.priority), Some(0));
    assert_eq!(i.group("child").map(|g| g.depth), Some(2));
}

#[test]
fn priority_beats_name_at_same_depth() {
    let i = inv("\
a_group:
  vars: {x: a, ansible_group_priority: 10}
  hosts: {h: }
b_group:
  vars: {x: b}
  hosts: {h: }
");
    assert_eq!(var(&i, "h", "x"), Some(&json!("a")));
}

#[test]
fn depth_is_the_longest_path_from_all() {
    let i = inv("\
all:
  children:
    p:
      children:
        c:
          children:
            g:
              vars: {x: deep_path}
    shortcut:
      vars: {x: shortcut}
      children:
        g:
          hosts: {h: }
");
    assert_eq!(i.group("g").map(|g| g.depth), Some(3));
    assert_eq!(var(&i, "h", "x"), Some(&json!("deep_path")));
}

#[test]
fn names_kept_as_written_and_ungrouped_like_ansible() {
    let i = inv("\
all:
  hosts:
    10.0.0.1:
    '123':
    '0755':
    '1.10':
    both:
  children:
    g:
      hosts: {both: }
");
    // Unquoted, PyYAML makes them numbers, and Ansible refuses non-string names.
    for (name, kind) in [
        ("123", "an integer"),
        ("0755", "an integer"),
        ("1.10", "a float"),
    ] {
        let e = load_err(&format!("all:\n  hosts:\n    {name}:\n"));
        assert_eq!(
            e,
            format!(
                "inventory.yaml:3:5: group 'all': host name {name} is {kind}, not a string \
                 (Ansible refuses it): quote it"
            )
        );
    }
    let hosts: Vec<&str> = i.hosts().map(|h| h.name.as_str()).collect();
    assert_eq!(hosts, ["10.0.0.1", "123", "0755", "1.10", "both"]);
    let ungrouped = i.group("ungrouped").map(|g| g.hosts.clone());
    assert_eq!(
        ungrouped,
        Some(vec![
            "10.0.0.1".into(),
            "123".into(),
            "0755".into(),
            "1.10".into()
        ])
    );
    assert_eq!(
        i.host("both").map(|h| h.groups.clone()),
        Some(vec!["g".into()])
    );
    assert_eq!(
        i.host("123").map(|h| h.groups.clone()),
        Some(vec!["ungrouped".into()])
    );
}

#[test]
fn a_host_in_several_groups_and_groups_defined_twice() {
    let i = inv("\
web:
  hosts:
    h1: {a: 1}
all:
  children:
    db:
      hosts:
        h1: {b: 2}
    web:
      vars: {w: 1}
      hosts:
        h2:
");
    let h1 = i.host("h1");
    assert_eq!(
        h1.map(|h| h.groups.clone()),
        Some(vec!["db".into(), "web".into()])
    );
    assert_eq!(var(&i, "h1", "a"), Some(&json!(1)));
    assert_eq!(var(&i, "h1", "b"), Some(&json!(2)));
    assert_eq!(var(&i, "h1", "w"), Some(&json!(1)));
    assert_eq!(
        i.group("web").map(|g| g.hosts.clone()),
        Some(vec!["h1".into(), "h2".into()])
    );
}

#[test]
fn ansible_list_shape() {
    let i = inv("\
all:
  vars: {x: 1}
  hosts: {lone: }
  children:
    empty:
    g:
      hosts: {h: }
");
    assert_eq!(
        i.ansible_list(),
        json!({
            "_meta": {
                "hostvars": {"lone": {"x": 1}, "h": {"x": 1}},
                "profile": "inventory_legacy"
            },
            "all": {"children": ["ungrouped", "empty", "g"]},
            "ungrouped": {"hosts": ["lone"]},
            "g": {"hosts": ["h"]}
        })
    );
}

// ---------------------------------------------------------------- errors with positions

#[test]
fn hosts_as_a_list_is_located() {
    let text = "\
all:
  children:
    web:
      vars:
        x: 1
      hosts:
        - web1
        - web2
";
    assert_eq!(
        load_err(text),
        "inventory.yaml:7:9: group 'web': 'hosts' must be a mapping of host names (got a list)"
    );
}

#[test]
fn structural_errors_are_located() {
    assert_eq!(
        load_err("all:\n  children:\n    web: [a, b]\n"),
        "inventory.yaml:3:10: group 'web' must be a mapping with 'hosts', 'children' or 'vars' (got a list)"
    );
    assert_eq!(
        load_err("all:\n  host:\n    a:\n"),
        "inventory.yaml:2:3: group 'all': unexpected key 'host' (a group has 'hosts', 'children' and 'vars')"
    );
    assert_eq!(
        load_err("web:\n  hosts:\n    w1: yes\n"),
        "inventory.yaml:3:9: group 'web': host 'w1' must have a mapping of variables or nothing (got a boolean)"
    );
    assert_eq!(
        load_err("web:\n  vars:\n    ansible_group_priority: high\n"),
        "inventory.yaml:3:29: group 'web': ansible_group_priority must be an integer (got a string)"
    );
    assert_eq!(
        load_err("a:\n  children:\n    b:\n      children:\n        a:\n"),
        "inventory.yaml:3:5: group 'b' as a child of 'a' makes a cycle of groups"
    );
    assert_eq!(
        load_err("- a\n- b\n"),
        "inventory.yaml:1:1: an inventory must be a mapping of group names (got a list)"
    );
    assert_eq!(
        load_err("# nothing\n"),
        "inventory.yaml:1:1: inventory is empty"
    );
    assert_eq!(
        load_err("web:\n  hosts:\n    w1:\n    w1:\n"),
        "inventory.yaml:4:5: duplicate key 'w1' (first at line 3, column 5)"
    );
}

#[test]
fn yaml_syntax_errors_are_located() {
    assert_eq!(
        load_err("all:\n  hosts:\n    a: [1, 2\n"),
        "inventory.yaml:3:8: YAML syntax error: unclosed bracket '['"
    );
    let e = load_err("all:\n  hosts: {a: 1}}\n");
    assert!(
        e.starts_with("inventory.yaml:2:16: YAML syntax error: "),
        "{e}"
    );
}

#[test]
fn missing_file() {
    let e = Inventory::load(Path::new("/nonexistent/inv.yaml")).map(|_| ());
    assert!(matches!(&e, Err(InventoryError::Read { .. })), "{e:?}");
}

// ---------------------------------------------------------------- --limit

const LIMIT: &str = "\
all:
  hosts:
    bastion:
  children:
    web:
      hosts: {web1: , web2: , web3: }
    db:
      hosts: {db1: , db2: , web3: }
    prod:
      children:
        web:
        db:
    staging:
      hosts: {stg1: }
";

#[test]
fn limit_patterns() {
    let i = inv(LIMIT);
    let sel = |p: &str| names(i.select(Some(p)));
    let v = |s: &[&str]| Ok(s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    assert_eq!(
        names(i.select(None)),
        v(&["bastion", "web1", "web2", "web3", "db1", "db2", "stg1"])
    );
    assert_eq!(sel("all"), sel("*"));
    assert_eq!(sel("db,web1"), v(&["web1", "web3", "db1", "db2"]));
    assert_eq!(sel("db:web1"), v(&["web1", "web3", "db1", "db2"]));
    assert_eq!(sel("web*"), v(&["web1", "web2", "web3"]));
    assert_eq!(sel("prod:!db"), v(&["web1", "web2"]));
    assert_eq!(sel("web:&db"), v(&["web3"]));
    assert_eq!(sel("!prod"), v(&["bastion", "stg1"]));
    assert_eq!(sel("ungrouped"), v(&["bastion"]));
    assert_eq!(sel("web[0]"), v(&["web1"]));
    assert_eq!(sel("web[-1]"), v(&["web3"]));
    assert_eq!(sel("prod[1:2]"), v(&["web2", "web3"]));
    assert_eq!(sel("db?"), v(&["db1", "db2"]));
    assert_eq!(sel(" stg1 , bastion "), v(&["bastion", "stg1"]));
}

#[test]
fn limit_errors_name_the_column() {
    let i = inv(LIMIT);
    let err = |p: &str| names(i.select(Some(p))).err();
    assert_eq!(
        err("web*,dbz"),
        Some("--limit:1:6: no host or group named 'dbz'".into())
    );
    assert_eq!(
        err("web,!dbz"),
        Some("--limit:1:6: no host or group named 'dbz'".into())
    );
    assert_eq!(
        err("x*"),
        Some("--limit:1:1: 'x*' matches no host or group".into())
    );
    assert_eq!(
        err("web:&staging"),
        Some("--limit:1:1: 'web:&staging' selects no hosts".into())
    );
    assert_eq!(
        err("web,~we.*"),
        Some(
            "--limit:1:5: regular expression patterns are not supported ('~we.*'); use globs"
                .into()
        )
    );
    assert_eq!(
        err("web[7]"),
        Some("--limit:1:1: subscript of 'web[7]' is out of range".into())
    );
    assert_eq!(err(","), Some("--limit:1:1: empty pattern".into()));
}

// ---------------------------------------------------------------- connections

const CONN: &str = "\
all:
  vars:
    ansible_user: deploy
  hosts:
    bastion:
      ansible_host: 203.0.113.10
      ansible_port: 2222
      ansible_user: jump
      ansible_ssh_private_key_file: keys/jump
    inner_bastion:
      ansible_host: 10.0.0.2
      proxy_jump: bastion
  children:
    app:
      vars:
        become: yes
        deploy_dir: /opt/mcp/
      hosts:
        app1:
          ansible_host: 10.0.0.11
          ansible_port: \"2200\"
          proxy_jump: inner_bastion
          ansible_ssh_private_key_file: /abs/key
        app2:
          proxy_jump: ops@jump1.example.com:2201, jump2.example.com
          ansible_become: \"no\"
          become: \"off\"
        app3:
          ansible_ssh_private_key_file: ~/.ssh/id
          proxy_jump: [bastion, \"[2001:db8::7]:23\"]
";

#[test]
fn connection_defaults_and_values() {
    let i = Inventory::from_str(CONN, Path::new("/etc/fleet/inventory.yaml"));
    let i = match i {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    };
    let conn = |h: &str| match i.host(h).map(|h| i.connection(h)) {
        Some(Ok(c)) => c,
        Some(Err(e)) => panic!("{e}"),
        None => panic!("no host {h}"),
    };
    let b = conn("bastion");
    assert_eq!(
        b,
        Connection {
            host: "bastion".into(),
            address: "203.0.113.10".into(),
            port: 2222,
            user: "jump".into(),
            key_file: Some(PathBuf::from("/etc/fleet/keys/jump")),
            become_: false,
            proxy_jump: vec![],
            deploy_dir: DEFAULT_DEPLOY_DIR.into(),
        }
    );
    let a1 = conn("app1");
    assert_eq!(a1.address, "10.0.0.11");
    assert_eq!(a1.port, 2200);
    assert_eq!(a1.user, "deploy");
    assert!(a1.become_);
    assert_eq!(a1.deploy_dir, "/opt/mcp");
    assert_eq!(a1.key_file, Some(PathBuf::from("/abs/key")));
    // app1 -> inner_bastion -> bastion: the outermost hop comes first.
    assert_eq!(
        a1.proxy_jump,
        vec![
            JumpHost {
                address: "203.0.113.10".into(),
                port: 2222,
                user: Some("jump".into()),
                key_file: Some(PathBuf::from("/etc/fleet/keys/jump")),
            },
            JumpHost {
                address: "10.0.0.2".into(),
                port: 22,
                user: Some("deploy".into()),
                key_file: None,
            },
        ]
    );
    let a2 = conn("app2");
    assert_eq!(a2.address, "app2");
    assert_eq!(a2.port, 22);
    assert!(!a2.become_);
    assert_eq!(
        a2.proxy_jump,
        vec![
            JumpHost {
                address: "jump1.example.com".into(),
                port: 2201,
                user: Some("ops".into()),
                key_file: None,
            },
            JumpHost {
                address: "jump2.example.com".into(),
                port: 22,
                user: None,
                key_file: None,
            },
        ]
    );
    let a3 = conn("app3");
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        assert_eq!(a3.key_file, Some(PathBuf::from(home).join(".ssh/id")));
    }
    assert_eq!(a3.proxy_jump.len(), 2);
    assert_eq!(a3.proxy_jump[1].address, "2001:db8::7");
    assert_eq!(a3.proxy_jump[1].port, 23);
}

#[test]
fn default_user_when_unset() {
    let i = inv("all:\n  hosts:\n    h:\n");
    let c = i.host("h").map(|h| i.connection(h));
    let Some(Ok(c)) = c else {
        panic!("connection");
    };
    assert_eq!(c.user, connection_default_user());
    assert_eq!(c.port, 22);
    assert_eq!(c.key_file, None);
}

fn connection_default_user() -> String {
    ["USER", "LOGNAME"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|u| !u.is_empty() && !u.starts_with('-') && !u.contains(char::is_whitespace))
        .unwrap_or_else(|| "root".to_owned())
}

fn conn_err(text: &str, host: &str) -> String {
    let i = inv(text);
    match i.host(host).map(|h| i.connection(h)) {
        Some(Err(e)) => e.to_string(),
        Some(Ok(c)) => panic!("connection should be refused: {c:?}"),
        None => panic!("no host {host}"),
    }
}

#[test]
fn invalid_connection_vars_name_host_var_and_place() {
    assert_eq!(
        conn_err(
            "web:\n  vars:\n    ansible_port: ssh\n  hosts:\n    w1:\n",
            "w1"
        ),
        "inventory.yaml:3:19: host 'w1': ansible_port: must be a port number 1-65535 (got 'ssh')"
    );
    assert_eq!(
        conn_err("web:\n  hosts:\n    w1: {ansible_port: 70000}\n", "w1"),
        "inventory.yaml:3:24: host 'w1': ansible_port: must be a port number 1-65535 (got 70000)"
    );
    assert_eq!(
        conn_err("web:\n  hosts:\n    w1: {become: maybe}\n", "w1"),
        "inventory.yaml:3:18: host 'w1': become: must be a boolean (true/false, yes/no, on/off, 1/0; got 'maybe')"
    );
    assert_eq!(
        conn_err("web:\n  hosts:\n    w1: {ansible_host: [a]}\n", "w1"),
        "inventory.yaml:3:24: host 'w1': ansible_host: must be a host name or address (got a list)"
    );
    assert_eq!(
        conn_err(
            "web:\n  hosts:\n    w1: {ansible_user: -oProxyCommand=x}\n",
            "w1"
        ),
        "inventory.yaml:3:24: host 'w1': ansible_user: leading '-' in a user name '-oProxyCommand=x'"
    );
    assert_eq!(
        conn_err("web:\n  hosts:\n    w1: {deploy_dir: srv/x}\n", "w1"),
        "inventory.yaml:3:22: host 'w1': deploy_dir: must be an absolute path (got 'srv/x')"
    );
    assert_eq!(
        conn_err(
            "web:\n  hosts:\n    w1: {proxy_jump: 'bastion:22x'}\n",
            "w1"
        ),
        "inventory.yaml:3:22: host 'w1': proxy_jump: 'bastion:22x' is not an inventory host, and its port '22x' is not a port number 1-65535"
    );
    assert_eq!(
        conn_err(
            "web:\n  hosts:\n    a: {proxy_jump: b}\n    b: {proxy_jump: a}\n",
            "a"
        ),
        "inventory.yaml:4:21: host 'b': proxy_jump: jump hosts form a loop: a -> b -> a"
    );
}

#[test]
fn connections_reports_every_bad_host() {
    let i = inv("web:\n  hosts:\n    w1: {ansible_port: x}\n    w2:\n    w3: {become: 7}\n");
    let hosts: Vec<&Host> = i.hosts().collect();
    let e = i.connections(&hosts).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(
        e,
        Err("inventory.yaml:3:24: host 'w1': ansible_port: must be a port number 1-65535 (got 'x')\n\
             inventory.yaml:5:18: host 'w3': become: must be a boolean (true/false, yes/no, on/off, 1/0; got 7)"
            .into())
    );
}

#[test]
fn example_inventory_loads_and_resolves() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory/example.yaml");
    let i = match Inventory::load(&path) {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    };
    let prod = names(i.select(Some("tunnel_prod")));
    assert_eq!(
        prod,
        Ok(vec![
            "prod-eu-1".into(),
            "prod-eu-2".into(),
            "prod-us-1".into()
        ])
    );
    let hosts: Vec<&Host> = i.hosts().collect();
    let conns = match i.connections(&hosts) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let eu1 = conns.iter().find(|c| c.host == "prod-eu-1");
    assert_eq!(
        eu1.map(|c| (c.proxy_jump.len(), c.proxy_jump[0].port, c.become_)),
        Some((1, 2222, true))
    );
    let stg = conns.iter().find(|c| c.host == "staging-1");
    assert_eq!(
        stg.map(|c| (c.deploy_dir.as_str(), c.become_)),
        Some(("/opt/mcp-tunnel-staging", false))
    );
}

#[test]
fn long_values_are_bounded_and_not_echoed() {
    let long = "a".repeat(100_000);
    let e = conn_err(
        &format!("all:\n  hosts:\n    h1:\n      ansible_host: {long}\n"),
        "h1",
    );
    assert!(e.len() < 300, "{} bytes", e.len());
    assert!(
        e.contains("100000 characters is too long (at most 253)"),
        "{e}"
    );
    let e = conn_err(
        &format!("all:\n  hosts:\n    h1:\n      ansible_user: 'x {long}'\n"),
        "h1",
    );
    assert!(e.len() < 300, "{} bytes", e.len());
    let e = conn_err(&format!("all:\n  hosts:\n    ? '{long}'\n"), &long);
    assert!(e.len() < 400, "{} bytes", e.len());
    assert!(e.contains("…(100000 chars)"), "{e}");
}
