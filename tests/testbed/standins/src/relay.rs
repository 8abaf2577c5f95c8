//! Delaying TCP relay of the testbed hosts (the kernel here has no netem).
//!
//! `standin relay --map LISTEN_ADDR:PORT=TARGET_ADDR:PORT:DELAY_MS [--map ...]`
//!
//! Runs inside a host's network namespace. For every accepted connection it opens one to the
//! target and copies bytes both ways. Each chunk read is queued with its due time (the time
//! it was read plus the delay) and a per-direction writer sends it when it is due, so the
//! delay is a fixed one-way latency, byte order is preserved, and throughput is not limited
//! by the delay (several chunks are in flight at once). EOF is forwarded (half-close) after
//! the same delay; a reset after the same delay aborts the connection. A direction holding
//! more than 4 MiB stops reading until its writer catches up, so a slow reader on one side
//! back-pressures the other side as TCP would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const MAX_BUFFERED: usize = 4 * 1024 * 1024;

enum Chunk {
    Data(Vec<u8>),
    Eof,
    Reset,
}

struct Map {
    listen: String,
    target: String,
    delay: Duration,
}

fn parse_map(spec: &str) -> Result<Map, String> {
    let (listen, target) = spec
        .split_once('=')
        .ok_or_else(|| format!("bad --map {spec:?}: want LADDR:LPORT=TADDR:TPORT:DELAY_MS"))?;
    let (target, delay) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("bad --map {spec:?}: no DELAY_MS"))?;
    let delay: u64 = delay
        .parse()
        .map_err(|_| format!("bad --map {spec:?}: DELAY_MS is not a number"))?;
    Ok(Map {
        listen: listen.to_string(),
        target: target.to_string(),
        delay: Duration::from_millis(delay),
    })
}

/// Aborts a connection: a reset instead of an orderly close.
fn abort(s: &TcpStream) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(s);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket with a correctly sized option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

/// Copies src -> dst with every chunk delayed; returns whether it ended in order (EOF).
fn pump(src: TcpStream, dst: TcpStream, delay: Duration) -> bool {
    let (tx, rx) = mpsc::channel::<(Instant, Chunk)>();
    let room = Arc::new((Mutex::new(0usize), Condvar::new()));
    let reader = {
        let room = Arc::clone(&room);
        let mut src = src;
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            loop {
                {
                    let (m, cv) = &*room;
                    let mut b = m.lock().unwrap_or_else(|p| p.into_inner());
                    while *b > MAX_BUFFERED {
                        b = cv.wait(b).unwrap_or_else(|p| p.into_inner());
                    }
                }
                let chunk = match src.read(&mut buf) {
                    Ok(0) => Chunk::Eof,
                    Ok(n) => Chunk::Data(buf[..n].to_vec()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => Chunk::Reset,
                };
                let end = !matches!(chunk, Chunk::Data(_));
                if let Chunk::Data(d) = &chunk {
                    let (m, _) = &*room;
                    *m.lock().unwrap_or_else(|p| p.into_inner()) += d.len();
                }
                if tx.send((Instant::now() + delay, chunk)).is_err() || end {
                    return;
                }
            }
        })
    };
    let mut dst = dst;
    let ok = loop {
        let Ok((due, chunk)) = rx.recv() else {
            break false;
        };
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            thread::sleep(wait);
        }
        match chunk {
            Chunk::Data(d) => {
                if dst.write_all(&d).is_err() {
                    abort(&dst);
                    break false;
                }
                let (m, cv) = &*room;
                let mut b = m.lock().unwrap_or_else(|p| p.into_inner());
                *b -= d.len();
                if *b <= MAX_BUFFERED {
                    cv.notify_all();
                }
            }
            Chunk::Eof => {
                let _ = dst.shutdown(Shutdown::Write);
                break true;
            }
            Chunk::Reset => {
                abort(&dst);
                break false;
            }
        }
    };
    drop(rx);
    if !ok {
        // Unblock a reader waiting for room (its receiver is gone now).
        let (m, cv) = &*room;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = 0;
        cv.notify_all();
    }
    let _ = reader.join();
    ok
}

fn handle(client: TcpStream, target: &str, delay: Duration) {
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    let Some(server) = addrs
        .iter()
        .find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(10)).ok())
    else {
        abort(&client);
        return;
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
    }
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || pump(c2, s2, delay));
    let down_ok = {
        let (Ok(s3), Ok(c3)) = (server.try_clone(), client.try_clone()) else {
            return;
        };
        pump(s3, c3, delay)
    };
    if !down_ok {
        // One direction failed: close all, which also ends the other one.
        abort(&client);
        abort(&server);
    }
    let _ = up.join();
}

/// Runs the relay; `args` are `--map SPEC` pairs.
pub fn main(args: &[String]) -> i32 {
    let mut maps = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--map", Some(spec)) => match parse_map(spec) {
                Ok(m) => maps.push(m),
                Err(e) => {
                    eprintln!("relay: {e}");
                    return 2;
                }
            },
            _ => {
                eprintln!("usage: standin relay --map LADDR:LPORT=TADDR:TPORT:DELAY_MS [...]");
                return 2;
            }
        }
    }
    if maps.is_empty() {
        eprintln!("relay: no --map given");
        return 2;
    }
    let mut servers = Vec::new();
    for m in maps {
        let listener = match TcpListener::bind(m.listen.as_str()) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("relay: listen {}: {e}", m.listen);
                return 1;
            }
        };
        servers.push(thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let target = m.target.clone();
                let delay = m.delay;
                thread::spawn(move || handle(conn, &target, delay));
            }
        }));
    }
    for s in servers {
        let _ = s.join();
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps() {
        let m = parse_map("10.213.1.2:22=127.0.0.1:22:10").expect("map");
        assert_eq!(m.listen, "10.213.1.2:22");
        assert_eq!(m.target, "127.0.0.1:22");
        assert_eq!(m.delay, Duration::from_millis(10));
        assert!(parse_map("10.213.1.2:22").is_err());
        assert!(parse_map("a:1=b:2:x").is_err());
    }

    #[test]
    fn bytes_arrive_in_order_delayed_and_eof_is_forwarded() {
        // An echo-less sink: the target collects what it gets until EOF.
        let target = TcpListener::bind("127.0.0.1:0").expect("bind target");
        let taddr = target.local_addr().expect("addr");
        let sink = thread::spawn(move || {
            let (mut s, _) = target.accept().expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
            s.write_all(b"done").expect("reply");
            got
        });
        let front = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let faddr = front.local_addr().expect("addr");
        let delay = Duration::from_millis(50);
        thread::spawn(move || {
            let (c, _) = front.accept().expect("accept");
            handle(c, &taddr.to_string(), delay);
        });
        let mut c = TcpStream::connect(faddr).expect("connect");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&data).expect("write");
        c.shutdown(Shutdown::Write).expect("half-close");
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).expect("reply");
        assert_eq!(sink.join().expect("sink"), data);
        assert_eq!(reply, b"done");
    }
}
