#!/bin/bash
# Phase 2 self-test: stand-in docker/compose, cloudflared, mcp-proxy and edge.
# Usage: selftest-phase2.sh TESTBED_BIN WORKDIR   (called by selftest.sh)
set -euo pipefail
T=$1
C=$2
D=$C-bastion
PY=/usr/bin/python3
cleanup() { "$T" down --dir "$C" >/dev/null 2>&1 || true; "$T" down --dir "$D" >/dev/null 2>&1 || true; }
trap cleanup EXIT
step() { echo "== phase 2: $*"; }
fail() { echo "selftest: FAIL: $*" >&2; exit 1; }
tfp() { printf '%s' "$(cat "$1")" | sha256sum | cut -c1-12; }

# Poll edge-stats with a Python predicate over d (the stats JSON) until true.
wait_edge() {
    local dir=$1 expr=$2 what=$3
    for _ in $(seq 100); do
        if "$T" edge-stats --dir "$dir" | $PY -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)"; then
            return 0
        fi
        sleep 0.1
    done
    "$T" edge-stats --dir "$dir" >&2
    fail "edge: $what"
}

# Writes the stack by hand on a host: release dir, current symlink, shared .env
# (token sent on stdin, file 0600), certificates.
deploy_stack() {
    local dir=$1 host=$2 tokenfile=$3
    local S=(ssh -F "$dir/ssh_config" "$host")
    "${S[@]}" 'set -e
        mkdir -p /srv/mcp-tunnel/releases/r1/config /srv/mcp-tunnel/shared/data
        cd /srv/mcp-tunnel/releases/r1
        cat > docker-compose.yaml <<EOF
services:
  mcp-proxy:
    image: "us-docker.pkg.dev/anthropic-public-registry/images/mcp-proxy@sha256:6b9adedbf2763143ec72f106ecaf0ce7fd3294e89b208f54a1db97a33d14c5ba"
    command: ["-config", "/config/mcp-proxy.yaml"]
    volumes:
      - "./config:/config:ro"
      - "./data:/data:ro"
    restart: unless-stopped
    user: "65532:65532"
  cloudflared:
    image: "cloudflare/cloudflared@sha256:6b599ca3e974349ead3286d178da61d291961182ec3fe9c505e1dd02c8ac31b0"
    command: ["tunnel", "--no-autoupdate", "run", "--url", "http://localhost:8080"]
    environment:
      - TUNNEL_TOKEN
    network_mode: "service:mcp-proxy"
    depends_on: [mcp-proxy]
    restart: unless-stopped
EOF
        cat > config/mcp-proxy.yaml <<EOF
listen_addr: ":8080"
tunnel_domain: "t-1.tunnels.example.com"
tls: {cert_file: /data/tls.crt, key_file: /data/tls.key}
routes:
  echo: "http://10.0.0.5:9000"
EOF
        ln -sfn ../../shared/data data
        ln -sfn ../../shared/.env .env
        # The proxy serves TLS: a real (self-signed) certificate for its domain.
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj /CN=t-1.tunnels.example.com -addext subjectAltName=DNS:t-1.tunnels.example.com \
            -keyout /srv/mcp-tunnel/shared/data/tls.key -out /srv/mcp-tunnel/shared/data/tls.crt 2>/dev/null
        chmod 644 /srv/mcp-tunnel/shared/data/tls.key
        ln -sfn releases/r1 /srv/mcp-tunnel/current'
    set_token "$dir" "$host" "$tokenfile"
}

set_token() {   # the token travels on stdin only
    local dir=$1 host=$2 tokenfile=$3
    { printf 'TUNNEL_TOKEN=%s\n' "$(cat "$tokenfile")"; } |
        ssh -F "$dir/ssh_config" "$host" 'umask 077; cat > /srv/mcp-tunnel/shared/.env.tmp && mv /srv/mcp-tunnel/shared/.env.tmp /srv/mcp-tunnel/shared/.env'
}

DC='cd /srv/mcp-tunnel/current && docker compose -p mcp-tunnel'

step "up C: 2 hosts; the edge accepts DIR/token"
"$T" up --dir "$C" --hosts 2 >/dev/null
[ "$(stat -c %a "$C/token")" = 600 ] || fail "token mode"
head -c 3 "$C/token" | grep -q '^eyJ' || fail "token shape"
FP1=$(tfp "$C/token")
wait_edge "$C" "d['valid_token_fps'] == ['$FP1'] and d['current'] == []" "initial state"

step "docker compose up -d with a hand-written compose file and .env"
deploy_stack "$C" h1 "$C/token"
ssh -F "$C/ssh_config" h1 "$DC up -d" 2>/dev/null
wait_edge "$C" "[(c['host'], c['token_fp']) for c in d['current']] == [('h1', '$FP1')]" "h1 connector up"
ready=$("$T" exec --dir "$C" h1 -- curl -s 127.0.0.1:20241/ready)
echo "$ready" | $PY -c 'import json,sys; r=json.load(sys.stdin); assert r["status"]==200 and r["readyConnections"]==4' \
    || fail "/ready: $ready"
"$T" exec --dir "$C" h1 -- curl -sf --cacert /srv/mcp-tunnel/shared/data/tls.crt \
    --resolve t-1.tunnels.example.com:8080:127.0.0.1 https://t-1.tunnels.example.com:8080/testbed/info >/dev/null \
    || fail "proxy not serving TLS"
ssh -F "$C/ssh_config" h1 "$DC logs cloudflared" | grep -c "Registered tunnel connection" | grep -qx 4 \
    || fail "expected four Registered lines"
names=$(ssh -F "$C/ssh_config" h1 "$DC ps --format json" | $PY -c 'import json,sys; print(" ".join(sorted(json.loads(l)["Name"] for l in sys.stdin)))')
[ "$names" = "mcp-tunnel-cloudflared-1 mcp-tunnel-mcp-proxy-1" ] || fail "ps names: $names"

step "up -d again changes nothing"
n_before=$("$T" edge-stats --dir "$C" | $PY -c 'import json,sys; print(len(json.load(sys.stdin)["timeline"]))')
ssh -F "$C/ssh_config" h1 "$DC up -d" 2>&1 | grep -q "Recreate" && fail "up -d recreated without a change"
sleep 0.5
n_after=$("$T" edge-stats --dir "$C" | $PY -c 'import json,sys; print(len(json.load(sys.stdin)["timeline"]))')
[ "$n_before" = "$n_after" ] || fail "timeline changed on a no-op up"

step "Tunnels API reveal_token"
api() {
    $PY - "$C" <<'EOF'
import json, sys, urllib.request
d = sys.argv[1]
e = json.load(open(d + "/state.json"))["helpers"]["edge"]
req = urllib.request.Request(
    f"http://{e['connector_addr']}:{e['api_port']}/v1/organizations/tunnels/{e['tunnel_id']}/reveal_token",
    method="POST", data=b"", headers={
        "anthropic-version": "2023-06-01", "anthropic-beta": "mcp-tunnels-2026-05-19",
        "Authorization": "Bearer " + open(d + "/api-credential").read().strip()})
r = json.load(urllib.request.urlopen(req, timeout=5))
import hashlib
print(r["id"], r["type"], hashlib.sha256(r["tunnel_token"].encode()).hexdigest()[:12])
EOF
}
read -r id1 typ fpa < <(api)
[ "$typ" = tunnel_token ] && [ "$fpa" = "$FP1" ] || fail "reveal_token before rotation"

step "rotation: running connector kept, new token taken by up -d"
"$T" edge-rotate --dir "$C" >/dev/null
FP2=$(tfp "$C/token.next")
wait_edge "$C" "d['valid_token_fps'] == ['$FP2'] and [c['token_fp'] for c in d['current']] == ['$FP1']" \
    "old connection must stay up after rotate"
read -r id2 typ fpb < <(api)
[ "$fpb" = "$FP2" ] && [ "$id2" != "$id1" ] || fail "reveal_token after rotation"
set_token "$C" h1 "$C/token.next"
ssh -F "$C/ssh_config" h1 "$DC up -d" 2>/dev/null
wait_edge "$C" "[c['token_fp'] for c in d['current']] == ['$FP2'] and d['refused'] == []" "connector on new token"

step "reboot brings the connector back (restart: unless-stopped)"
"$T" fault --dir "$C" h1 reboot >/dev/null
wait_edge "$C" "[c['token_fp'] for c in d['current'] if c['host']=='h1'] == ['$FP2'] and d['timeline'][-1]['event'] == 'up'" \
    "connector back after reboot"

step "make-before-break with --scale 2 --no-recreate"
"$T" edge-rotate --dir "$C" >/dev/null
FP3=$(tfp "$C/token.next")
set_token "$C" h1 "$C/token.next"
ssh -F "$C/ssh_config" h1 "$DC up -d --no-deps --no-recreate --scale cloudflared=2 cloudflared" 2>/dev/null
wait_edge "$C" "sorted(c['token_fp'] for c in d['current']) == sorted(['$FP2', '$FP3'])" "two connectors"
ssh -F "$C/ssh_config" h1 "$DC up -d --no-deps --scale cloudflared=1 cloudflared" 2>/dev/null
wait_edge "$C" "[c['token_fp'] for c in d['current']] == ['$FP3']" "old connector removed, new kept"

step "a connector restarted on a rotated-away token is refused"
"$T" edge-rotate --dir "$C" >/dev/null
ssh -F "$C/ssh_config" h1 "$DC restart cloudflared" 2>/dev/null   # keeps its stored (old) token
wait_edge "$C" "len(d['refused']) >= 1 and d['refused'][-1]['token_fp'] == '$FP3' and d['current'] == []" \
    "refusal of the old token"
FP4=$(tfp "$C/token.next")
set_token "$C" h1 "$C/token.next"
ssh -F "$C/ssh_config" h1 "$DC up -d" 2>/dev/null
wait_edge "$C" "[c['token_fp'] for c in d['current']] == ['$FP4']" "recovered on the newest token"

step "stopped container stays stopped across a reboot"
ssh -F "$C/ssh_config" h1 "$DC stop cloudflared" 2>/dev/null
wait_edge "$C" "d['current'] == []" "connector down after stop"
"$T" fault --dir "$C" h1 reboot >/dev/null
sleep 1.5
state=$(ssh -F "$C/ssh_config" h1 "$DC ps -a --format '{{.Service}}={{.State}}'" | sort | tr '\n' ' ')
[ "$state" = "cloudflared=exited mcp-proxy=running " ] || fail "after reboot: $state"
wait_edge "$C" "d['current'] == []" "stopped connector must not come back"

step "h2 is untouched; docker-compose (v1 spelling) answers"
ssh -F "$C/ssh_config" h2 'test ! -e /srv/mcp-tunnel && docker ps -q | wc -l' | grep -qx 0 || fail "h2 not pristine"
ssh -F "$C/ssh_config" h2 'docker-compose version' | head -1 | grep -q '^docker-compose version 1.29' || fail "v1"

step "the host's engine answers docker; without it the client runs the same program itself"
H1=(ssh -F "$C/ssh_config" h1)
"${H1[@]}" 'test -S /run/standin-docker.sock' || fail "no engine socket on h1"
# (outputs without relative times, which could differ between the two calls)
for cmd in "docker ps -a --format '{{.ID}} {{.Names}} {{.State}} {{.Image}}'" \
           "docker compose -p mcp-tunnel --project-directory /srv/mcp-tunnel/current ps -a --format '{{.Name}} {{.Service}} {{.State}}'" \
           "docker inspect -f '{{.Name}} {{.State.Status}}' mcp-tunnel-mcp-proxy-1" "docker-compose version"; do
    via=$("${H1[@]}" "$cmd" 2>&1) || fail "via the engine: $cmd"
    own=$("${H1[@]}" "TESTBED_ENGINE_SOCKET=/nonexistent $cmd" 2>&1) || fail "without the engine: $cmd"
    [ "$via" = "$own" ] || fail "engine and fallback differ for $cmd: [$via] vs [$own]"
done
set +e
"${H1[@]}" 'docker inspect no-such-container' >/dev/null 2>&1; rc_via=$?
"${H1[@]}" 'TESTBED_ENGINE_SOCKET=/nonexistent docker inspect no-such-container' >/dev/null 2>&1; rc_own=$?
err=$("${H1[@]}" 'docker inspect no-such-container 2>&1 >/dev/null')
set -e
[ "$rc_via" = 1 ] && [ "$rc_own" = 1 ] || fail "exit codes: engine $rc_via, fallback $rc_own (want 1)"
[ "$err" = "Error: No such object: no-such-container" ] || fail "stderr through the engine: $err"
# stdin reaches the command (cwd and environment too: the compose project from .env and cwd).
out=$(printf 'x\n' | "${H1[@]}" 'cd /srv/mcp-tunnel/current && COMPOSE_PROJECT_NAME=mcp-tunnel docker compose ps --services; cat')
printf '%s\n' "$out" | grep -qx mcp-proxy || fail "compose ps --services from cwd: $out"
printf '%s\n' "$out" | tail -1 | grep -qx x || fail "stdin after docker: $out"

step "no token on any remote command line, log or output"
# Legitimate homes of a token: DIR/token*, the edge's store, the hosts' .env
# and the stand-in docker's container state (0600, like Docker's own).
# (grep -f: the patterns come from the files, not from our command line.)
for f in "$C/token" "$C/token.next"; do
    if grep -rlF -f "$f" "$C" --exclude=token --exclude=token.next --exclude=store.json \
            --exclude=.env --exclude=state.json >&2; then
        fail "a token leaked into the file(s) above"
    fi
done

step "bastion: hosts behind it reach the edge through it"
"$T" up --dir "$D" --hosts 1 --bastion >/dev/null
deploy_stack "$D" h1 "$D/token"
ssh -F "$D/ssh_config" h1 "$DC up -d" 2>/dev/null
wait_edge "$D" "[(c['host'], c['token_fp']) for c in d['current']] == [('h1', '$(tfp "$D/token")')]" \
    "h1 behind the bastion connected"
"$T" down --dir "$D" >/dev/null
"$T" down --dir "$C" >/dev/null
echo "== phase 2: ok"
