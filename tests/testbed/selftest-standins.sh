#!/bin/bash
# Self-test of the stand-ins' image store, failure modes, inspect shape and TLS.
# Usage: selftest-standins.sh TESTBED_BIN WORKDIR   (called by selftest.sh)
set -euo pipefail
T=$1
E=$2
PY=/usr/bin/python3
cleanup() { "$T" down --dir "$E" >/dev/null 2>&1 || true; }
trap cleanup EXIT
step() { echo "== stand-ins: $*"; }
fail() { echo "selftest: FAIL: $*" >&2; exit 1; }
must_fail() { if "$@" >/dev/null 2>&1; then fail "expected failure: $*"; fi; }

DOMAIN=t-1.tunnels.example.com
PROXY=us-docker.pkg.dev/anthropic-public-registry/images/mcp-proxy@sha256:6b9adedbf2763143ec72f106ecaf0ce7fd3294e89b208f54a1db97a33d14c5ba
CF=cloudflare/cloudflared@sha256:6b599ca3e974349ead3286d178da61d291961182ec3fe9c505e1dd02c8ac31b0
S() { ssh -F "$E/ssh_config" h1 "$@"; }
X() { "$T" exec --dir "$E" h1 -- sh -c "$1"; }
DC='cd /srv/mcp-tunnel/current && docker compose -p mcp-tunnel'

# Poll a shell condition run on h1 (through exec) until it holds, 30 s at most.
wait_h1() {
    local cond=$1 what=$2
    for _ in $(seq 300); do
        if X "$cond" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    fail "timed out waiting for: $what"
}
wait_edge() {
    local expr=$1 what=$2
    for _ in $(seq 300); do
        if "$T" edge-stats --dir "$E" | $PY -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)"; then
            return 0
        fi
        sleep 0.1
    done
    "$T" edge-stats --dir "$E" >&2
    fail "edge: $what"
}
# The compose file of release r1 with the given images.
compose() {
    S 'cat > /srv/mcp-tunnel/releases/r1/docker-compose.yaml' <<EOF
services:
  mcp-proxy:
    image: "$1"
    command: ["-config", "/config/mcp-proxy.yaml"]
    volumes:
      - "./config:/config:ro"
      - "./data:/data:ro"
    restart: unless-stopped
    user: "65532:65532"
  cloudflared:
    image: "$2"
    command: ["tunnel", "--no-autoupdate", "run", "--url", "https://localhost:8080"]
    environment:
      - TUNNEL_TOKEN
    network_mode: "service:mcp-proxy"
    depends_on: [mcp-proxy]
    restart: unless-stopped
EOF
}
inspect() { S "docker inspect -f '$2' mcp-tunnel-$1-1"; }
# A leaf for $DOMAIN signed by the CA in /root/pki/$1.{crt,key}, written over the proxy's
# certificate (key first, then the certificate, each by rename).
new_leaf() {
    X "set -e; cd /root/pki
       openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=$DOMAIN \
           -keyout leaf.key -out leaf.csr 2>/dev/null
       printf 'subjectAltName=DNS:$DOMAIN,DNS:*.$DOMAIN\n' > leaf.ext
       openssl x509 -req -in leaf.csr -CA $1.crt -CAkey $1.key -CAcreateserial -days 30 \
           -extfile leaf.ext -out leaf.crt 2>/dev/null
       D=/srv/mcp-tunnel/shared/data
       install -m 644 leaf.key \$D/tls.key.tmp && mv \$D/tls.key.tmp \$D/tls.key
       install -m 644 leaf.crt \$D/tls.crt.tmp && mv \$D/tls.crt.tmp \$D/tls.crt
       openssl x509 -noout -serial -in leaf.crt | cut -d= -f2"
}
# GET /testbed/info over TLS, verified against CA $1 with SNI $2 (default $DOMAIN).
info() {
    X "curl -sf --cacert /root/pki/$1.crt --resolve ${2:-$DOMAIN}:8080:127.0.0.1 https://${2:-$DOMAIN}:8080/testbed/info"
}
served_serial() {
    X "openssl s_client -connect 127.0.0.1:8080 -servername $DOMAIN </dev/null 2>/dev/null \
        | openssl x509 -noout -serial | cut -d= -f2"
}

step "up E: 1 host, a stack by hand with a CA-signed certificate"
"$T" up --dir "$E" --hosts 1 >/dev/null
X "set -e; mkdir -p /root/pki /srv/mcp-tunnel/releases/r1/config /srv/mcp-tunnel/shared/data
   cd /root/pki
   for ca in fleet other; do
       openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
           -subj /CN=\$ca-ca -keyout \$ca.key -out \$ca.crt 2>/dev/null
   done
   cd /srv/mcp-tunnel/releases/r1
   printf 'listen_addr: \":8080\"\ntunnel_domain: \"$DOMAIN\"\ntls: {cert_file: /data/tls.crt, key_file: /data/tls.key}\nroutes:\n  echo: \"http://10.0.0.5:9000\"\n' > config/mcp-proxy.yaml
   ln -sfn ../../shared/data data
   ln -sfn ../../shared/.env .env
   ln -sfn releases/r1 /srv/mcp-tunnel/current"
SERIAL1=$(new_leaf fleet)
{ printf 'TUNNEL_TOKEN=%s\n' "$(cat "$E/token")"; } |
    S 'umask 077; cat > /srv/mcp-tunnel/shared/.env.tmp && mv /srv/mcp-tunnel/shared/.env.tmp /srv/mcp-tunnel/shared/.env'

step "image store: inspect/pull/images before anything runs"
out=$(S "docker image inspect $CF" 2>&1) && fail "inspect of an absent image succeeded"
echo "$out" | grep -qx "Error: No such image: $CF" || fail "absent image: $out"
[ "$(S 'docker images -q | wc -l')" = 0 ] || fail "a fresh host has images"
S "docker pull cloudflare/cloudflared:2024.6.1" | grep -q "^Status: Downloaded newer image for cloudflare/cloudflared:2024.6.1$" \
    || fail "pull by tag"
S "docker pull -q cloudflare/cloudflared:2024.6.1" | grep -qx "cloudflare/cloudflared:2024.6.1" || fail "pull -q"
S "docker images --format '{{.Repository}}:{{.Tag}}'" | grep -qx "cloudflare/cloudflared:2024.6.1" || fail "images --format"
id=$(S "docker image inspect -f '{{.Id}}' cloudflare/cloudflared:2024.6.1")
[[ "$id" =~ ^sha256:[0-9a-f]{64}$ ]] || fail "image id: $id"
[ "$(S 'docker images -q')" = "${id:7:12}" ] || fail "images -q"
[ "$(S "docker image ls --format '{{.ID}}' cloudflare/cloudflared")" = "${id:7:12}" ] || fail "image ls REPO"
out=$(S "docker pull cloudflare/cloudflared:unpullable" 2>&1) && fail "pull of an unpullable image succeeded"
echo "$out" | grep -q "manifest for cloudflare/cloudflared:unpullable not found: manifest unknown" || fail "unpullable: $out"
must_fail S "docker image inspect cloudflare/cloudflared:unpullable"

step "compose pull: every service's image; an unpullable one fails, named, exit 1"
compose "$PROXY" "cloudflare/cloudflared:unpullable"
out=$(S "$DC pull" 2>&1) && fail "compose pull with an unpullable image succeeded"
echo "$out" | grep -q "manifest for cloudflare/cloudflared:unpullable not found" || fail "compose pull: $out"
S "docker image inspect $PROXY" >/dev/null || fail "the pullable image of the same pull is there"
out=$(S "cd /srv/mcp-tunnel/current && docker-compose -p mcp-tunnel pull -q cloudflared" 2>&1) \
    && fail "v1 pull of an unpullable image succeeded"
echo "$out" | grep -q "cloudflare/cloudflared:unpullable" || fail "v1 pull: $out"

step "up with an unpullable image fails before creating anything"
out=$(S "$DC up -d" 2>&1) && fail "up with an unpullable image succeeded"
echo "$out" | grep -q "manifest for cloudflare/cloudflared:unpullable not found: manifest unknown" || fail "up: $out"
[ "$(S 'docker ps -aq | wc -l')" = 0 ] || fail "up created containers although an image was missing"

step "up pulls a missing image implicitly; the stack serves TLS with the fleet's certificate"
compose "$PROXY" "$CF"
must_fail S "docker image inspect $CF"
S "$DC up -d" 2>/dev/null
S "docker image inspect $CF" >/dev/null || fail "up did not pull $CF"
S "$DC pull --quiet" 2>&1 | grep -q . && fail "compose pull -q printed something"
wait_edge "[c['host'] for c in d['current']] == ['h1']" "h1 connector up"
wait_h1 "curl -sf --cacert /root/pki/fleet.crt --resolve $DOMAIN:8080:127.0.0.1 https://$DOMAIN:8080/testbed/info" "proxy over TLS"
info fleet | $PY -c 'import json,sys; d=json.load(sys.stdin); assert d["cert_reloads"] == 0 and d["routes"] == ["echo"], d' \
    || fail "/testbed/info over TLS"
[ "$(served_serial)" = "$SERIAL1" ] || fail "served serial"
must_fail info other
must_fail info fleet other.example.com
must_fail X "curl -sf http://127.0.0.1:8080/testbed/info"

step "rmi refuses an image in use unless -f"
out=$(S "docker rmi $CF" 2>&1) && fail "rmi of an image in use succeeded"
echo "$out" | grep -q "(must force) - container [0-9a-f]\{12\} is using its referenced image" || fail "rmi: $out"
S "docker rmi cloudflare/cloudflared:2024.6.1" | grep -q "^Untagged: cloudflare/cloudflared:2024.6.1$" || fail "rmi unused"
must_fail S "docker image inspect cloudflare/cloudflared:2024.6.1"
S "$DC config --images" | sort | tr '\n' ' ' | grep -qx "$CF $PROXY " || fail "config --images"

step "registry offline: pulls fail, up with images in the store still works"
X "touch /var/lib/standin-docker/registry-offline"
out=$(S "docker pull $CF" 2>&1) && fail "pull with the registry offline succeeded"
echo "$out" | grep -q "registry unreachable" || fail "offline pull: $out"
S "$DC up -d" 2>/dev/null || fail "up with every image present needs no registry"
must_fail S "docker pull cloudflare/cloudflared:2024.6.1"
X "rm /var/lib/standin-docker/registry-offline"

step "images survive a reboot"
"$T" fault --dir "$E" h1 reboot >/dev/null
S "docker image inspect -f '{{.Id}}' $CF" >/dev/null || fail "images lost over a reboot"
wait_edge "[c['host'] for c in d['current']] == ['h1']" "h1 connector back after the reboot"

step "docker inspect: Docker's shape for State, RestartCount, Config, NetworkSettings"
wait_h1 "docker inspect -f '{{.State.Status}}' mcp-tunnel-mcp-proxy-1 | grep -qx running" "proxy running"
rec=$(S "docker inspect mcp-tunnel-mcp-proxy-1 mcp-tunnel-cloudflared-1")
echo "$rec" | $PY -c '
import json, re, sys
p, c = json.load(sys.stdin)
rfc = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
for r in (p, c):
    s = r["State"]
    assert s["Status"] == "running" and s["Running"] is True and s["Restarting"] is False, s
    assert rfc.match(s["StartedAt"]), s["StartedAt"]
    assert r["RestartCount"] == 0, r["RestartCount"]
    assert r["Config"]["Labels"]["com.docker.compose.project.working_dir"] == "/srv/mcp-tunnel/current", r["Config"]["Labels"]
    assert r["Image"].startswith("sha256:"), r["Image"]
assert p["Config"]["Image"].startswith("us-docker.pkg.dev/") and c["Config"]["Image"].startswith("cloudflare/")
assert p["NetworkSettings"]["IPAddress"] == "127.0.0.1", p["NetworkSettings"]
assert p["NetworkSettings"]["Networks"]["mcp-tunnel_default"]["IPAddress"] == "127.0.0.1", p["NetworkSettings"]
assert c["NetworkSettings"]["IPAddress"] == "" and c["NetworkSettings"]["Networks"] == {}, c["NetworkSettings"]
assert c["HostConfig"]["NetworkMode"] == "container:" + p["Id"], c["HostConfig"]
' || fail "inspect shape"
[ "$(inspect mcp-proxy '{{index .Config.Labels "com.docker.compose.service"}}')" = mcp-proxy ] || fail "index template"
[ "$(inspect mcp-proxy '{{.NetworkSettings.IPAddress}}')" = 127.0.0.1 ] || fail "IPAddress template"

step "TLS: a renewed certificate is served to new connections, without a restart"
started=$(inspect mcp-proxy '{{.State.StartedAt}}')
SERIAL2=$(new_leaf fleet)
[ "$SERIAL2" != "$SERIAL1" ] || fail "the renewal made the same serial"
wait_h1 "[ \"\$(openssl s_client -connect 127.0.0.1:8080 -servername $DOMAIN </dev/null 2>/dev/null | openssl x509 -noout -serial | cut -d= -f2)\" = $SERIAL2 ]" \
    "the renewed certificate served"
S "$DC logs mcp-proxy" | grep -q "reloaded TLS certificate /data/tls.crt" || fail "reload log line"
info fleet | $PY -c 'import json,sys; assert json.load(sys.stdin)["cert_reloads"] == 1' || fail "cert_reloads"
[ "$(inspect mcp-proxy '{{.State.StartedAt}}')" = "$started" ] || fail "the proxy restarted for a certificate"
# A certificate from another CA is served as it is (the proxy does not judge), and fails verification.
new_leaf other >/dev/null
wait_h1 "! curl -sf --cacert /root/pki/fleet.crt --resolve $DOMAIN:8080:127.0.0.1 https://$DOMAIN:8080/testbed/info" \
    "the other CA's certificate served"
info other >/dev/null || fail "the other CA's certificate verifies against that CA"
new_leaf fleet >/dev/null

step "never-ready cloudflared: runs, logs its connector id, never registers"
compose "$PROXY" "cloudflare/cloudflared:never-ready"
S "$DC up -d" 2>/dev/null
wait_edge "d['current'] == []" "the good connector replaced"
wait_h1 "docker logs mcp-tunnel-cloudflared-1 2>&1 | grep -q 'Failed to dial a quic connection'" "never-ready's failed attempts"
S "docker logs mcp-tunnel-cloudflared-1" 2>&1 | grep -q "Generated Connector ID: " || fail "never-ready: connector id"
code=$(X "curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:20241/ready")
[ "$code" = 503 ] || fail "never-ready /ready answered $code"
[ "$(inspect cloudflared '{{.State.Running}} {{.RestartCount}}')" = "true 0" ] || fail "never-ready must keep running"
"$T" edge-stats --dir "$E" | $PY -c 'import json,sys; d=json.load(sys.stdin); assert d["current"] == [] and d["refused"] == [], d' \
    || fail "never-ready registered"

step "crash-after-Ns cloudflared: registers, exits 1, is restarted, registers again"
compose "$PROXY" "cloudflare/cloudflared:crash-after-1s"
ups_before=$("$T" edge-stats --dir "$E" | $PY -c 'import json,sys; print(sum(e["event"] == "up" for e in json.load(sys.stdin)["timeline"]))')
S "$DC up -d" 2>/dev/null
wait_h1 "[ \$(docker inspect -f '{{.RestartCount}}' mcp-tunnel-cloudflared-1) -ge 2 ]" "two restarts"
wait_edge "sum(e['event'] == 'up' for e in d['timeline']) >= $ups_before + 2" "a registration per run"
S "docker logs mcp-tunnel-cloudflared-1" 2>&1 | grep -q "testbed crash-after-1s image" || fail "crash log line"
[ "$(S "docker logs mcp-tunnel-cloudflared-1" 2>&1 | grep -c 'Registered tunnel connection connIndex=0')" -ge 2 ] \
    || fail "registered once per run"

step "bad-config mcp-proxy: exits 1 at start with a config error, crash-loops"
compose "us-docker.pkg.dev/anthropic-public-registry/images/mcp-proxy:bad-config" "$CF"
S "$DC up -d" 2>/dev/null
wait_h1 "[ \$(docker inspect -f '{{.RestartCount}}' mcp-tunnel-mcp-proxy-1) -ge 1 ]" "the proxy restarted"
S "$DC logs mcp-proxy" | grep -q '"level": "fatal", "msg": "config: /config/mcp-proxy.yaml: ' || fail "fatal config line"
[ "$(inspect mcp-proxy '{{.State.ExitCode}}')" = 1 ] || fail "exit code"
must_fail X "curl -sf --cacert /root/pki/fleet.crt --resolve $DOMAIN:8080:127.0.0.1 https://$DOMAIN:8080/testbed/info"

step "no token in any log or output"
for f in "$E/token"; do
    if grep -rlF -f "$f" "$E" --exclude=token --exclude=token.next --exclude=store.json \
            --exclude=.env --exclude=state.json >&2; then
        fail "a token leaked into the file(s) above"
    fi
done
"$T" down --dir "$E" >/dev/null
echo "== stand-ins: ok"
