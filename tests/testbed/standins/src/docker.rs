//! The thin `docker` / `docker-compose` client of the testbed's per-host engine.
//!
//! DIR/bin/docker and DIR/bin/docker-compose are this binary. It connects to the host's
//! engine (`standin_docker.py __engine`, started at boot, socket /run/standin-docker.sock)
//! and sends its mode (`docker` or `compose-v1`), arguments, environment, cwd and umask, with
//! its fds 0, 1 and 2 (SCM_RIGHTS). The engine forks a child that runs the Python model of
//! Docker and Compose on those fds, exactly as `standin_docker.py MODE ARGS...` would; the
//! client forwards SIGINT, SIGTERM and SIGHUP to that child and exits with its exit code.
//! Without an engine (not started yet, or gone), it runs the same Python program itself.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

/// The engine's socket on every testbed host (/run is the host's own tmpfs, gone at reboot).
pub const ENGINE_SOCKET: &str = "/run/standin-docker.sock";

/// The engine child's pid, for the signal forwarder.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The directory of the testbed's lib (DIR/lib): this binary is DIR/bin/docker or DIR/lib/standin.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "bin") {
        dir.parent().map(|p| p.join("lib")).unwrap_or(dir)
    } else {
        dir
    }
}

/// Runs the Python program in this process (no engine): what DIR/bin/docker did before.
fn exec_python(mode: &str, args: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let lib = lib_dir();
    let err = std::process::Command::new("/usr/bin/python3")
        .arg("-S")
        .arg(lib.join("standin_run.py"))
        .arg("standin_docker")
        .arg(mode)
        .args(args)
        .exec();
    eprintln!("standin docker: cannot run /usr/bin/python3: {err}");
    127
}

fn json_escape(s: &[u8]) -> String {
    // Arguments and environment are text on a testbed host; anything else is passed lossily.
    crate::common::json_str(&String::from_utf8_lossy(s))
}

/// The request: 4-byte little-endian length, then JSON.
fn request(mode: &str, args: &[String]) -> Vec<u8> {
    let argv: Vec<String> = args.iter().map(|a| json_escape(a.as_bytes())).collect();
    let env: Vec<String> = std::env::vars_os()
        .map(|(k, v)| {
            format!(
                "{}: {}",
                json_escape(k.as_bytes()),
                json_escape(v.as_bytes())
            )
        })
        .collect();
    let cwd = std::env::current_dir()
        .map(|p| json_escape(p.as_os_str().as_bytes()))
        .unwrap_or_else(|_| "\"/\"".into());
    // SAFETY: umask is always successful; set it back at once.
    let umask = unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    };
    let body = format!(
        "{{\"mode\": {}, \"argv\": [{}], \"env\": {{{}}}, \"cwd\": {cwd}, \"umask\": {umask}}}",
        json_escape(mode.as_bytes()),
        argv.join(", "),
        env.join(", ")
    );
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Sends `data` with fds 0, 1, 2 attached to its first bytes.
fn send_with_fds(sock: &UnixStream, data: &[u8]) -> std::io::Result<()> {
    let fds: [libc::c_int; 3] = [0, 1, 2];
    let fd_bytes = std::mem::size_of_val(&fds);
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr zeroed then filled with pointers to live buffers; the control message
    // is written inside cbuf, whose size is CMSG_SPACE of the payload.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), fd_bytes);
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sent = sent as usize;
    if sent < data.len() {
        (&*sock).write_all(&data[sent..])?;
    }
    Ok(())
}

fn read_i32(sock: &mut UnixStream) -> Option<i32> {
    let mut b = [0u8; 4];
    loop {
        match sock.read_exact(&mut b) {
            Ok(()) => return Some(i32::from_le_bytes(b)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// Runs `docker` (mode `docker`) or `docker-compose` (mode `compose-v1`) with `args`.
pub fn main(mode: &str, args: &[String]) -> i32 {
    let socket = std::env::var("TESTBED_ENGINE_SOCKET").unwrap_or_else(|_| ENGINE_SOCKET.into());
    let Ok(mut sock) = UnixStream::connect(&socket) else {
        return exec_python(mode, args);
    };
    if send_with_fds(&sock, &request(mode, args)).is_err() {
        return exec_python(mode, args);
    }
    // Nothing has run before the engine's child reports its pid: falling back is safe.
    let Some(pid) = read_i32(&mut sock) else {
        return exec_python(mode, args);
    };
    CHILD.store(pid, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler (it only calls kill).
        unsafe {
            libc::signal(sig, forward as *const () as libc::sighandler_t);
        }
    }
    match read_i32(&mut sock) {
        Some(code) => code,
        None => {
            eprintln!("standin docker: lost the engine before the command finished");
            125
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_a_length_prefixed_json_object() {
        let args = vec!["ps".to_string(), "-a\"é".to_string()];
        let r = request("docker", &args);
        let n = u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize;
        assert_eq!(n, r.len() - 4);
        let v: serde_json::Value = serde_json::from_slice(&r[4..]).expect("json");
        assert_eq!(v["mode"], "docker");
        assert_eq!(v["argv"], serde_json::json!(["ps", "-a\"é"]));
        assert_eq!(
            v["env"]["PATH"].as_str(),
            std::env::var("PATH").ok().as_deref()
        );
        assert_eq!(
            v["cwd"].as_str().map(PathBuf::from),
            std::env::current_dir().ok()
        );
        assert!(v["umask"].as_u64().is_some_and(|m| m <= 0o777));
    }
}
