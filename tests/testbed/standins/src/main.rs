//! The testbed's compiled stand-ins, one static binary with a subcommand per program:
//!
//! ```text
//! standin cloudflared ARGS...   the connector (see cloudflared.rs)
//! standin mcp-proxy ARGS...     the proxy (see mcp_proxy.rs)
//! standin docker ARGS...        the thin client of the host's docker engine (see docker.rs)
//! standin docker-compose ARGS...
//! standin relay --map ...       the latency relay of a host's sshd (see relay.rs)
//! ```
//!
//! Called by a name of one of them (a link or a copy named `cloudflared`, `mcp-proxy`,
//! `docker`, `docker-compose`), the name is the subcommand, so a container image can use the
//! binary as its entrypoint directly and DIR/bin/docker is a copy of it. Built by the testbed itself
//! (`tests/testbed/testbed` runs cargo) as a static binary:
//!
//! ```text
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
//!   cargo build --release -p tunnelfleet-testbed-standins --target x86_64-unknown-linux-gnu
//! ```

mod cloudflared;
mod common;
mod docker;
mod mcp_proxy;
mod relay;

const USAGE: &str = "usage: standin cloudflared|mcp-proxy|docker|docker-compose|relay ARGS...";

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let named = matches!(
        name.as_str(),
        "cloudflared" | "mcp-proxy" | "docker" | "docker-compose"
    );
    let (prog, rest) = if named {
        (name, args.split_off(1))
    } else if args.len() >= 2 {
        let rest = args.split_off(2);
        (args[1].clone(), rest)
    } else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let code = match prog.as_str() {
        "cloudflared" => cloudflared::main(&rest),
        "mcp-proxy" => mcp_proxy::main(&rest),
        "docker" => docker::main("docker", &rest),
        "docker-compose" => docker::main("compose-v1", &rest),
        "relay" => relay::main(&rest),
        other => {
            eprintln!("standin: unknown program {other:?}; {USAGE}");
            2
        }
    };
    std::process::exit(code);
}
