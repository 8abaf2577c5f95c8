//! The `check` probe: one POSIX sh script that reports, as `key=value` lines, what a deploy
//! needs to know about a host. Read-only except for a temp file created and removed to prove
//! the deploy directory (or its nearest existing parent) is writable.

use std::collections::HashMap;

/// Builds the probe script for a host whose deploy dir is `deploy_dir`.
pub fn check_script(deploy_dir: &str) -> String {
    let dir = super::quote(deploy_dir);
    format!(
        r#"echo "time_ns=$(date +%s%N)"
dir={dir}
echo "os=$(. /etc/os-release 2>/dev/null; echo "${{PRETTY_NAME:-$(uname -s)}}")"
echo "kernel=$(uname -sr)"
if v=$(docker compose version --short 2>/dev/null); then
  echo "compose=v2 $v"
elif command -v docker-compose >/dev/null 2>&1; then
  echo "compose=v1 $(docker-compose version --short 2>/dev/null)"
else
  echo "compose=none"
fi
p="$dir"
while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname "$p"); done
echo "dir_exists=$([ -d "$dir" ] && echo yes || echo no)"
echo "dir_probe=$p"
if t=$(mktemp "$p/.tunnelfleet-check.XXXXXX" 2>/dev/null); then rm -f "$t"; echo writable=yes; else echo writable=no; fi
echo "free_kb=$(df -Pk "$p" 2>/dev/null | awk 'NR==2 {{print $4}}')"
echo "time_end_ns=$(date +%s%N)"
"#
    )
}

/// Parses `key=value` lines (later keys win).
pub fn parse_facts(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_runs_under_sh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("a b/deploy");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(check_script(&target.to_string_lossy()))
            .output()
            .expect("run sh");
        assert!(out.status.success());
        let f = parse_facts(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(f.get("dir_exists").map(String::as_str), Some("no"));
        assert_eq!(
            f.get("dir_probe").map(String::as_str),
            Some(dir.path().to_string_lossy().as_ref())
        );
        assert_eq!(f.get("writable").map(String::as_str), Some("yes"));
        assert!(f["free_kb"].parse::<u64>().is_ok(), "{f:?}");
        assert!(f["time_ns"].parse::<u128>().is_ok(), "{f:?}");
        assert!(f["compose"].starts_with('v') || f["compose"] == "none");
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
