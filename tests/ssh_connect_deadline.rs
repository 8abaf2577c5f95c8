//! The connect deadline is per attempt: it starts once the attempt holds a start slot
//! (`--max-starts`), so hosts queued behind slow ones still get their whole deadline.
//!
//! The hosts are loopback listeners that accept a TCP connection and never say a word (a hung
//! sshd). With one start slot, each attempt must reach its host and time out there; before the
//! fix, the hosts behind the first one spent their deadline waiting in line and never connected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tunnelfleet::ssh::{Connector, ErrorKind, Hop, SshOptions, Target};

/// A listener that accepts connections, counts them and holds them open without answering.
async fn hung_sshd() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(sock);
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_gets_the_whole_deadline_once_it_holds_a_start_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, "").expect("write known_hosts");
    let connector = Arc::new(
        Connector::new(SshOptions {
            known_hosts,
            accept_new: false,
            connect_timeout: Duration::from_millis(300),
            command_timeout: Duration::from_secs(5),
            max_starts: 1,
            keepalive: Duration::from_secs(15),
        })
        .expect("connector"),
    );

    let mut hosts = Vec::new();
    for _ in 0..4 {
        hosts.push(hung_sshd().await);
    }
    let tasks: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, (addr, _))| {
            let connector = connector.clone();
            let target = Target {
                name: format!("h{}", i + 1),
                hop: Hop {
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    user: "nobody".into(),
                    key_files: Vec::new(),
                },
                proxy_jump: Vec::new(),
                become_: false,
            };
            tokio::spawn(async move { connector.connect(&target).await.map(|_| ()) })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let err = t
            .await
            .expect("task")
            .expect_err("a hung host gives no session");
        assert_eq!(err.kind, ErrorKind::Timeout, "h{}: {err}", i + 1);
        assert!(
            err.message.contains("connect deadline"),
            "h{}: {err}",
            i + 1
        );
    }
    for (i, (_, accepted)) in hosts.iter().enumerate() {
        assert!(
            accepted.load(Ordering::SeqCst) >= 1,
            "h{}: never reached: its deadline ran out while it waited for a start slot",
            i + 1
        );
    }
}
