//! The SSH layer's exec against real sshd hosts: stdin streaming, exit codes, stderr.

mod common;

use std::time::Duration;

use common::Testbed;
use tunnelfleet::cli::ConnArgs;
use tunnelfleet::ssh::Connector;

fn conn_args(tb: &Testbed) -> ConnArgs {
    ConnArgs {
        inventory: vec![tb.inventory()],
        vault: Default::default(),
        limit: None,
        known_hosts: tb.known_hosts().to_string_lossy().into_owned(),
        accept_new: false,
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(60),
        max_starts: 10,
        ssh_config: "none".into(),
    }
}

fn payload(len: usize) -> Vec<u8> {
    // Deterministic bytes covering every value, including NUL and newlines.
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x & 0xff) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_round_trips_and_exit_codes_come_back() {
    let tb = Testbed::up(5, &[]);
    let args = conn_args(&tb);
    let (_inv, hosts) = args.select().await.expect("select hosts");
    assert_eq!(hosts.len(), 5);
    let connector = Connector::new(args.ssh_options()).expect("connector");
    let data = payload(1024 * 1024);

    let mut tasks = Vec::new();
    for host in hosts {
        let data = data.clone();
        let session = connector.connect(&host.target).await.expect("connect");
        tasks.push(tokio::spawn(async move {
            // 1 MiB in, the same 1 MiB out, byte for byte, on the one connection.
            let out = session.exec("cat", &data).await.expect("exec cat");
            assert_eq!(out.status, Some(0));
            assert!(out.stdout == data, "{}: payload differs", host.name);

            // The host really received it: its own hash of stdin matches ours.
            let out = session
                .exec("sha256sum | cut -d' ' -f1", &data)
                .await
                .expect("exec sha256sum");
            let ours = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&data))
            };
            assert_eq!(out.stdout_text().trim(), ours);

            // Exit status and stderr come back separately from stdout; the shell is POSIX sh.
            let out = session
                .exec("echo out; echo boom >&2; hostname >&2; exit 7", b"")
                .await
                .expect("exec exit 7");
            assert_eq!(out.status, Some(7));
            assert_eq!(out.stdout_text(), "out\n");
            assert_eq!(out.stderr_text(), format!("boom\n{}", host.name));

            // Quoting: the script reaches the host intact, quotes and all.
            let out = session
                .exec("printf '%s|' \"it's\" '$HOME' \"a  b\"", b"")
                .await
                .expect("exec quoting");
            assert_eq!(out.stdout_text(), "it's|$HOME|a  b|");
            session.close().await;
        }));
    }
    for t in tasks {
        t.await.expect("host task");
    }
    // What reached the hosts' command lines is the scripts, wrapped in `sh -c`.
    let log = tb.recorded_commands();
    assert!(log.contains("sh -c 'sha256sum"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_command_hits_its_deadline() {
    let tb = Testbed::up(1, &[]);
    let args = conn_args(&tb);
    let (_inv, hosts) = args.select().await.expect("select hosts");
    let connector = Connector::new(args.ssh_options()).expect("connector");
    let session = connector.connect(&hosts[0].target).await.expect("connect");
    let err = session
        .exec_timeout("sleep 30", b"", Duration::from_millis(500))
        .await
        .expect_err("must time out");
    assert_eq!(err.kind, tunnelfleet::ssh::ErrorKind::Timeout);
    // The connection is still usable after a timed-out command.
    let out = session.exec("echo alive", b"").await.expect("exec");
    assert_eq!(out.stdout_text(), "alive\n");
}
