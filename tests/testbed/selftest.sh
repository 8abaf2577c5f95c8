#!/bin/bash
# Self-test of the testbed: brings up testbeds, checks them with OpenSSH and
# tears them down. Run as root: tests/testbed/selftest.sh [--phase1-only]
# Prints "selftest: PASS" at the end; exits non-zero on the first failure.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
T="$HERE/testbed"
PY=/usr/bin/python3
BASE=$(mktemp -d /tmp/testbed-selftest.XXXXXX)
A=$BASE/a
B=$BASE/b
C=$BASE/c
PHASE2=1
[ "${1:-}" = "--phase1-only" ] && PHASE2=0

cleanup() {
    local ok=1
    for d in "$A" "$B" "$C" "$C-bastion" "$C-standins"; do
        "$T" down --dir "$d" >/dev/null 2>&1 || ok=0
    done
    # Files only, once nothing runs from them any more.
    [ "$ok" = 1 ] && rm -rf "$BASE"
}
trap cleanup EXIT

step() { echo "== $*"; }
fail() { echo "selftest: FAIL: $*" >&2; exit 1; }
addr() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]+"/state.json"))["hosts"][sys.argv[2]]["addr"])' "$1" "$2"; }
# ssh with exactly the options an operator would use (no ssh_config file)
xssh() {
    local d=$1 a=$2; shift 2
    ssh -i "$d/id_ed25519" -o UserKnownHostsFile="$d/known_hosts" -o StrictHostKeyChecking=yes \
        -o BatchMode=yes -o IdentitiesOnly=yes -o ConnectTimeout="${CT:-10}" "root@$a" "$@"
}
must_fail() { if "$@" >/dev/null 2>&1; then fail "expected failure: $*"; fi; }

step "up A: 3 hosts"
"$T" up --dir "$A" --hosts 3
for h in h1 h2 h3; do
    got=$(xssh "$A" "$(addr "$A" $h)" hostname)
    [ "$got" = "$h" ] || fail "$h answered hostname '$got'"
done
grep -q "ansible_ssh_private_key_file: $A/id_ed25519" "$A/inventory.yaml" || fail "inventory key path"
$PY -c 'import yaml,sys; inv=yaml.safe_load(open(sys.argv[1])); assert set(inv["all"]["children"]["fleet"]["hosts"])=={"h1","h2","h3"}' "$A/inventory.yaml" \
    || fail "inventory.yaml does not parse as expected"

step "second up on a running DIR fails"
must_fail "$T" up --dir "$A" --hosts 1

step "/srv and /root are private per host"
xssh "$A" "$(addr "$A" h1)" 'echo one > /srv/only-h1'
xssh "$A" "$(addr "$A" h2)" 'test ! -e /srv/only-h1' || fail "h2 sees h1's /srv"
[ "$("$T" exec --dir "$A" h1 -- cat /srv/only-h1)" = one ] || fail "exec h1 cat /srv"
[ "$("$T" exec --dir "$A" h2 -- hostname)" = h2 ] || fail "exec h2 hostname"
[ -f "$A/hosts/h1/srv/only-h1" ] || fail "host srv not in DIR/hosts/h1/srv"
xssh "$A" "$(addr "$A" h3)" 'test ! -e /root/.pyenv' || fail "h3 sees the machine's /root"

step "commands.log records commands (JSON lines)"
xssh "$A" "$(addr "$A" h2)" 'echo "marker-$((6*7))" "q\"uote"' >/dev/null
$PY - "$A" <<'EOF' || fail "commands.log"
import json, sys
d = sys.argv[1]
def find(path):
    for line in open(path):
        e = json.loads(line)
        if e["cmd"] == 'echo "marker-$((6*7))" "q\\"uote"':
            return e
e = find(d + "/hosts/h2/commands.log")
assert e and e["host"] == "h2" and isinstance(e["t_ms"], int), e
assert find(d + "/commands.log")
EOF

step "sftp subsystem works"
echo payload > "$BASE/payload"
sftp -b - -i "$A/id_ed25519" -o UserKnownHostsFile="$A/known_hosts" -o StrictHostKeyChecking=yes \
    "root@$(addr "$A" h3)" >/dev/null <<EOF
put $BASE/payload /srv/payload
EOF
[ "$(cat "$A/hosts/h3/srv/payload")" = payload ] || fail "sftp put"

step "PATH has DIR/bin first"
[ "$(xssh "$A" "$(addr "$A" h1)" 'echo $PATH' | cut -d: -f1)" = "$A/bin" ] || fail "PATH"

step "fault down / resume"
"$T" fault --dir "$A" h1 down
"$T" status --dir "$A" | grep -E '^ +h1 .* down$' >/dev/null || fail "status h1 down"
CT=3 must_fail xssh "$A" "$(addr "$A" h1)" true
"$T" fault --dir "$A" h1 resume
[ "$(xssh "$A" "$(addr "$A" h1)" cat /srv/only-h1)" = one ] || fail "/srv lost over down/resume"

step "fault hang / resume"
"$T" fault --dir "$A" h2 hang
"$T" status --dir "$A" | grep -E '^ +h2 .* hung$' >/dev/null || fail "status h2 hung"
CT=2 must_fail timeout 20 ssh -i "$A/id_ed25519" -o UserKnownHostsFile="$A/known_hosts" \
    -o BatchMode=yes -o ConnectTimeout=2 "root@$(addr "$A" h2)" true
"$T" fault --dir "$A" h2 resume
[ "$(xssh "$A" "$(addr "$A" h2)" hostname)" = h2 ] || fail "h2 after resume"

step "fault reboot: /run lost, /srv and home kept, boot.d runs"
cat > "$A/hosts/h3/boot.d/10-mark" <<'EOF'
#!/bin/sh
echo "booted $(hostname)" > /run/boot-mark
EOF
chmod +x "$A/hosts/h3/boot.d/10-mark"
xssh "$A" "$(addr "$A" h3)" 'touch /run/volatile /srv/durable /root/homefile'
"$T" fault --dir "$A" h3 reboot
xssh "$A" "$(addr "$A" h3)" 'test ! -e /run/volatile && test -e /srv/durable && test -e /root/homefile' \
    || fail "reboot semantics"
for _ in $(seq 50); do
    [ "$("$T" exec --dir "$A" h3 -- cat /run/boot-mark 2>/dev/null)" = "booted h3" ] && break
    sleep 0.1
done
[ "$("$T" exec --dir "$A" h3 -- cat /run/boot-mark)" = "booted h3" ] || fail "boot.d did not run"

step "fault partition / heal"
"$T" fault --dir "$A" h1 partition
CT=3 must_fail xssh "$A" "$(addr "$A" h1)" true
[ "$("$T" exec --dir "$A" h1 -- hostname)" = h1 ] || fail "h1 processes should keep running"
"$T" status --dir "$A" | grep -E '^ +h1 .* up\+partitioned$' >/dev/null || fail "status partitioned"
"$T" fault --dir "$A" h1 heal
[ "$(xssh "$A" "$(addr "$A" h1)" hostname)" = h1 ] || fail "h1 after heal"

step "up B: 2 hosts behind a bastion, 20 ms latency, coexisting with A"
"$T" up --dir "$B" --hosts 2 --bastion --latency-ms 20
ia=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["index"])' "$A/state.json")
ib=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["index"])' "$B/state.json")
[ "$ia" != "$ib" ] || fail "A and B share index $ia"
[ "$(xssh "$B" "$(addr "$B" bastion)" hostname)" = bastion ] || fail "bastion hostname"
# -J: options for the jump host come from the -F file
[ "$(ssh -F "$B/ssh_config" -J "root@$(addr "$B" bastion)" "root@$(addr "$B" h2)" hostname)" = h2 ] \
    || fail "h2 through -J"
[ "$(ssh -F "$B/ssh_config" h1 hostname)" = h1 ] || fail "h1 through ssh_config ProxyJump"
must_fail timeout 5 bash -c "echo > /dev/tcp/$(addr "$B" h1)/22"
[ "$("$T" exec --dir "$B" bastion -- getent hosts h2 | awk '{print $1}')" = "$(addr "$B" h2)" ] \
    || fail "bastion /etc/hosts"
grep -q 'proxy_jump: bastion' "$B/inventory.yaml" || fail "inventory proxy_jump"
# The relay delays each direction: the SSH banner cannot arrive sooner than
# the one-way latency after connecting (a lower bound, not a timing race).
$PY - "$(addr "$B" bastion)" <<'EOF' || fail "latency"
import socket, sys, time
t = time.monotonic()
s = socket.create_connection((sys.argv[1], 22), timeout=5)
assert s.recv(64).startswith(b"SSH-")
dt = (time.monotonic() - t) * 1000
print(f"   banner after {dt:.1f} ms")
assert dt >= 20, dt
EOF
[ "$(xssh "$A" "$(addr "$A" h1)" hostname)" = h1 ] || fail "A still answers"

if [ "$PHASE2" = 1 ] && [ -x "$HERE/selftest-phase2.sh" ]; then
    "$HERE/selftest-phase2.sh" "$T" "$C"
fi
if [ "$PHASE2" = 1 ] && [ -x "$HERE/selftest-standins.sh" ]; then
    "$HERE/selftest-standins.sh" "$T" "$C-standins"
fi

step "down A and B; down is idempotent"
"$T" down --dir "$A"
"$T" down --dir "$A"
"$T" down --dir "$B"
for i in "$ia" "$ib"; do
    [ ! -e "/sys/class/net/tfb$i" ] || fail "bridge tfb$i left behind"
    ! ip netns list | grep -q "^tf$i-" || fail "namespaces tf$i-* left behind"
done
[ ! -e "$A/state.json" ] || fail "state.json left"
! ip route | grep -q "10.214.$ib." || fail "route left"
echo "selftest: PASS"
