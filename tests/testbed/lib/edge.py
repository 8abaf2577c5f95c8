#!/usr/bin/python3
"""Stand-in tunnel edge + Tunnels API, run on the controller by `testbed up`.

Usage: edge.py DIR CONTROLLER_ADDR

- Connector listener on CONTROLLER_ADDR:7844. Protocol (JSON lines over TCP):
    connector -> {"type":"register","token":T,"connector_id":C,"host":H}
    edge      -> {"type":"registered","location":L,"connections":4}
               | {"type":"error","error":"Unauthorized: Invalid tunnel secret"} (then close)
    connector -> {"type":"ping"} at least every second; edge -> {"type":"pong"}
    connector -> {"type":"unregister"} on graceful shutdown, then close.
  A connector silent for HEARTBEAT_TIMEOUT seconds is dropped (as the real edge
  drops a dead connection), so hosts that die, hang or get partitioned go down.
- Only tokens in the valid set are accepted for NEW registrations; rotating
  replaces the set with the new token but keeps connections already up.
- HTTP API on 127.0.0.1:P and CONTROLLER_ADDR:P (P chosen free at start):
    POST /v1/organizations/tunnels/{tunnel_id}/reveal_token   (Tunnels API stand-in)
    POST /v1/organizations/tunnels/{tunnel_id}/setup_token    (what the setup
         component calls: Workload Identity Federation exchange + rotate/reveal)
    GET  /testbed/stats, POST /testbed/rotate                  (127.0.0.1 only)
- setup_token: JSON body {federation_rule_id, organization_id, workspace_id
  (string or null), identity_token, token_version}; the first three must be
  the store's (else 401). The store keeps setup_token_version: the first call
  reveals the current token and records the version; a higher version rotates
  (exactly as /testbed/rotate); the same or a lower one is refused (409), as
  the real setup refuses an unchanged --token-version. Answers {"id",
  "tunnel_token", "type": "tunnel_token", "token_version"}.
- State (the edge's own token store, 0600) in DIR/edge/store.json; timeline in
  DIR/edge/timeline.jsonl (fingerprints only). DIR/edge/ready.json announces
  the ports once listening. Secrets are written only to DIR/token (at first
  start), DIR/token.next (on rotate), DIR/api-credential and
  DIR/identity-token (the OIDC JWT the setup component presents), mode 0600.
  DIR/setup.json (0644, no secrets) has tunnel_id, federation_rule_id and
  organization_id for the setup service's environment.
"""
import base64
import hashlib
import json
import os
import secrets
import socket
import socketserver
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEARTBEAT_TIMEOUT = 3.5
CONNECTOR_PORT = 7844
API_VERSION = "2023-06-01"
API_BETA = "mcp-tunnels-2026-05-19"

DIR = os.path.realpath(sys.argv[1])
ADDR = sys.argv[2]
EDGE_DIR = os.path.join(DIR, "edge")
STORE = os.path.join(EDGE_DIR, "store.json")
TIMELINE = os.path.join(EDGE_DIR, "timeline.jsonl")

lock = threading.Lock()
store = {}        # account, tunnel_id, tokens: [{token, id, valid}], credential,
                  # federation_rule_id, organization_id, identity_token,
                  # setup_token_version (absent until setup_token is first called)
current = {}      # key -> {host, connector, token_fp, addr, since, sock}
timeline = []
refused = []


def now_ms():
    return int(time.time() * 1000)


def fp(token):
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def log(msg):
    print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), msg, flush=True)


def write_secret(path, text):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def save_store():
    write_secret(STORE, json.dumps(store, indent=1))


def new_token():
    # Same shape as a real tunnel token: base64 of {"a":account,"t":tunnel,"s":secret}.
    body = {"a": store["account"], "t": store["tunnel_uuid"],
            "s": base64.b64encode(secrets.token_bytes(32)).decode()}
    return base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_identity_token():
    """An OIDC-shaped JWT (header.payload.signature, base64url) as a workload
    identity provider would mint for the setup component. Only compared
    byte for byte here: the signature is random, exp is informative."""
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": secrets.token_hex(8)}
    payload = {"iss": "https://oidc.testbed.invalid", "sub": "system:serviceaccount:mcp-tunnel:setup",
               "aud": "anthropic-wif-testbed", "iat": now, "exp": now + 7 * 86400,
               "jti": str(uuid.uuid4())}
    return ".".join([b64url(json.dumps(header, separators=(",", ":")).encode()),
                     b64url(json.dumps(payload, separators=(",", ":")).encode()),
                     b64url(secrets.token_bytes(256))])


def write_setup_files():
    """DIR/identity-token (0600) and DIR/setup.json (0644, no secrets)."""
    write_secret(os.path.join(DIR, "identity-token"), store["identity_token"])
    info = {"tunnel_id": store["tunnel_id"], "federation_rule_id": store["federation_rule_id"],
            "organization_id": store["organization_id"]}
    tmp = os.path.join(DIR, "setup.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.rename(tmp, os.path.join(DIR, "setup.json"))


def load_or_init():
    global store
    os.makedirs(EDGE_DIR, mode=0o700, exist_ok=True)
    if os.path.exists(STORE):
        store = json.load(open(STORE))
    else:
        store = {"account": secrets.token_hex(16), "tunnel_uuid": str(uuid.uuid4()),
                 "tunnel_id": "tnl_" + secrets.token_hex(12),
                 "credential": "tbk-" + secrets.token_urlsafe(32), "tokens": []}
        store["tokens"].append({"token": new_token(), "id": "ttkn_" + secrets.token_hex(12),
                                "valid": True})
        save_store()
        write_secret(os.path.join(DIR, "token"), store["tokens"][-1]["token"])
        write_secret(os.path.join(DIR, "api-credential"), store["credential"])
    if "identity_token" not in store:
        # Workload Identity Federation inputs of the setup component (a store
        # from before the setup stand-in gets them added).
        store.update(federation_rule_id="fdrl_" + secrets.token_hex(12),
                     organization_id=str(uuid.uuid4()), identity_token=new_identity_token())
        save_store()
    write_setup_files()
    if os.path.exists(TIMELINE):
        for line in open(TIMELINE):
            timeline.append(json.loads(line))


def record(event, c):
    e = {"t_ms": now_ms(), "host": c["host"], "connector": c["connector"],
         "token_fp": c["token_fp"], "event": event}
    timeline.append(e)
    with open(TIMELINE, "a") as f:
        f.write(json.dumps(e) + "\n")


def valid_tokens():
    return [t["token"] for t in store["tokens"] if t["valid"]]


def rotate_locked(why):
    """Caller holds lock. New token valid alone for new registrations;
    connections already up stay (the edge keeps them)."""
    for t in store["tokens"]:
        t["valid"] = False
    tok = {"token": new_token(), "id": "ttkn_" + secrets.token_hex(12), "valid": True}
    store["tokens"].append(tok)
    save_store()
    write_secret(os.path.join(DIR, "token.next"), tok["token"])
    log(f"rotated ({why}): new token {fp(tok['token'])}, old tokens refused for new connections")
    return tok


def rotate():
    with lock:
        return fp(rotate_locked("testbed/rotate")["token"])


class ApiError(Exception):
    def __init__(self, code, typ, message):
        super().__init__(message)
        self.code, self.typ, self.message = code, typ, message


def setup_token(tunnel_id, body):
    """The setup component's call: authenticate the WIF inputs, then reveal
    (first version) or rotate (higher version) the tunnel token."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request_error", "request body must be a JSON object")
    for k in ("federation_rule_id", "organization_id", "identity_token"):
        if not isinstance(body.get(k), str) or not body[k]:
            raise ApiError(400, "invalid_request_error", f"{k}: field required")
    ws = body.get("workspace_id")
    if ws is not None and not isinstance(ws, str):
        raise ApiError(400, "invalid_request_error", "workspace_id: must be a string or null")
    ok = all(secrets.compare_digest(body[k].encode(), store[k].encode())
             for k in ("identity_token", "federation_rule_id", "organization_id"))
    if not ok:
        raise ApiError(401, "authentication_error",
                       "workload identity federation failed: the identity token, federation "
                       "rule or organization is not valid for this rule")
    if tunnel_id != store["tunnel_id"]:
        raise ApiError(404, "not_found_error", "tunnel not found")
    v = body.get("token_version")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ApiError(400, "invalid_request_error",
                       "token_version: must be an integer greater than or equal to 1")
    with lock:
        last = store.get("setup_token_version")
        if last is not None and v <= last:
            raise ApiError(409, "conflict_error",
                           f"token version {v} is unchanged (last used {last}): "
                           "increment --token-version to rotate")
        if last is None:
            tok = [t for t in store["tokens"] if t["valid"]][-1]
            store["setup_token_version"] = v
            save_store()
            log(f"setup_token: version {v} recorded, token {fp(tok['token'])} revealed")
        else:
            store["setup_token_version"] = v
            tok = rotate_locked(f"setup_token version {last} -> {v}")
    return {"id": tok["id"], "tunnel_token": tok["token"], "type": "tunnel_token",
            "token_version": v}


def stats():
    with lock:
        return {
            "valid_token_fps": [fp(t) for t in valid_tokens()],
            "current": [{"host": c["host"], "connector": c["connector"],
                         "token_fp": c["token_fp"], "since_ms": c["since"]}
                        for c in current.values()],
            "timeline": list(timeline),
            "refused": list(refused),
            "setup_token_version": store.get("setup_token_version"),
        }


class ConnectorHandler(socketserver.StreamRequestHandler):
    def send(self, obj):
        self.wfile.write((json.dumps(obj) + "\n").encode())
        self.wfile.flush()

    def handle(self):
        sock = self.request
        sock.settimeout(10)
        key = None
        try:
            line = self.rfile.readline(65536)
            if not line:
                return
            msg = json.loads(line)
            if msg.get("type") != "register":
                self.send({"type": "error", "error": "protocol error: expected register"})
                return
            token = str(msg.get("token", ""))
            c = {"host": str(msg.get("host", "?")), "connector": str(msg.get("connector_id", "?")),
                 "token_fp": fp(token), "addr": self.client_address[0], "since": now_ms(),
                 "sock": sock}
            with lock:
                ok = token in valid_tokens()
                if not ok:
                    refused.append({"t_ms": now_ms(), "host": c["host"],
                                    "connector": c["connector"], "token_fp": c["token_fp"]})
                else:
                    # A connector re-registering replaces its old connection.
                    for k, old in list(current.items()):
                        if old["connector"] == c["connector"]:
                            del current[k]
                            record("down", old)
                            try:
                                old["sock"].shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass
                    key = object()
                    current[key] = c
                    record("up", c)
            if not ok:
                log(f"refused connector {c['connector']} on {c['host']} (token {c['token_fp']})")
                self.send({"type": "error", "error": "Unauthorized: Invalid tunnel secret"})
                return
            log(f"connector {c['connector']} on {c['host']} up (token {c['token_fp']})")
            self.send({"type": "registered", "location": "tb-edge", "connections": 4})
            sock.settimeout(HEARTBEAT_TIMEOUT)
            while True:
                line = self.rfile.readline(65536)
                if not line:
                    break
                m = json.loads(line)
                if m.get("type") == "ping":
                    self.send({"type": "pong"})
                elif m.get("type") == "unregister":
                    break
        except (OSError, ValueError):
            pass
        finally:
            if key is not None:
                with lock:
                    c = current.pop(key, None)
                    if c is not None:
                        record("down", c)
                if c is not None:
                    log(f"connector {c['connector']} on {c['host']} down")


class ConnectorServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class ApiHandler(BaseHTTPRequestHandler):
    server_version = "tb-edge"

    def log_message(self, fmt, *args):  # no request logging (no secrets anyway)
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def api_error(self, code, typ, message):
        self.reply(code, {"type": "error", "error": {"type": typ, "message": message}})

    def local(self):
        return self.server.server_address[0] == "127.0.0.1"

    def do_GET(self):
        if self.path == "/testbed/stats" and self.local():
            self.reply(200, stats())
        else:
            self.api_error(404, "not_found_error", "Not found")

    def api_headers_ok(self):
        if self.headers.get("anthropic-version") != API_VERSION:
            self.api_error(400, "invalid_request_error", "anthropic-version header is required")
            return False
        if API_BETA not in (self.headers.get("anthropic-beta") or "").split(","):
            self.api_error(400, "invalid_request_error",
                           f"this endpoint requires anthropic-beta: {API_BETA}")
            return False
        return True

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if self.path == "/testbed/rotate" and self.local():
            self.reply(200, {"token_fp": rotate()})
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 5 and parts[:3] == ["v1", "organizations", "tunnels"] \
                and parts[4] == "setup_token":
            # Authenticated by the body (Workload Identity Federation), no Bearer.
            if not self.api_headers_ok():
                return
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                return self.api_error(400, "invalid_request_error", "request body is not JSON")
            try:
                return self.reply(200, setup_token(parts[3], body))
            except ApiError as e:
                return self.api_error(e.code, e.typ, e.message)
        if len(parts) == 5 and parts[:3] == ["v1", "organizations", "tunnels"] \
                and parts[4] == "reveal_token":
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] != store["credential"]:
                return self.api_error(401, "authentication_error", "invalid credential")
            if self.headers.get("anthropic-version") != API_VERSION:
                return self.api_error(400, "invalid_request_error",
                                      "anthropic-version header is required")
            if API_BETA not in (self.headers.get("anthropic-beta") or "").split(","):
                return self.api_error(400, "invalid_request_error",
                                      f"this endpoint requires anthropic-beta: {API_BETA}")
            if parts[3] != store["tunnel_id"]:
                return self.api_error(404, "not_found_error", "tunnel not found")
            with lock:
                t = [t for t in store["tokens"] if t["valid"]][-1]
            self.reply(200, {"id": t["id"], "tunnel_token": t["token"], "type": "tunnel_token"})
            return
        self.api_error(404, "not_found_error", "Not found")


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    load_or_init()
    conn = ConnectorServer((ADDR, CONNECTOR_PORT), ConnectorHandler)
    api_local = ApiServer(("127.0.0.1", 0), ApiHandler)
    port = api_local.server_address[1]
    api_bridge = ApiServer((ADDR, port), ApiHandler)
    for s in (conn, api_local, api_bridge):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    info = {"pid": os.getpid(), "connector_addr": ADDR, "connector_port": CONNECTOR_PORT,
            "api_port": port, "tunnel_id": store["tunnel_id"]}
    tmp = os.path.join(EDGE_DIR, "ready.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.rename(tmp, os.path.join(EDGE_DIR, "ready.json"))
    log(f"edge listening on {ADDR}:{CONNECTOR_PORT}, API on 127.0.0.1:{port} and {ADDR}:{port}")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
