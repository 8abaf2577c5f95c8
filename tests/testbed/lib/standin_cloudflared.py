#!/usr/bin/python3
"""Stand-in cloudflared connector (testbed only; never talks to the real edge).

Started by the stand-in docker for images containing "cloudflared", with the
service's command as arguments (e.g. `tunnel --no-autoupdate run --url
http://localhost:8080`). Behaviour modelled on the real connector:
- TUNNEL_TOKEN from the environment (base64 JSON {"a","t","s"}); a malformed
  token exits 1 ("Provided Tunnel token is not valid.").
- Connects to the stand-in edge at TESTBED_EDGE (host:port, set by the testbed),
  registration takes TESTBED_REGISTER_MS (default 300 ms), then logs four
  "Registered tunnel connection connIndex=N ..." lines.
- Metrics server on the first free port of 127.0.0.1:20241-20245, each as the
  host port its network namespace publishes it on (TESTBED_PUBLISHED), or
  --metrics ADDR:PORT: /ready answers 200 {"status":200,"readyConnections":4,
  "connectorId":...} once registered, 503 with readyConnections 0 otherwise;
  /metrics, /healthcheck.
- The edge refusing the token: logs the error and exits 1 (a restart policy
  then restarts it). A lost edge connection is retried with backoff, and the
  retry re-registers with the same token (refused after a rotation -> exit 1).
- SIGTERM/SIGINT: "Initiating graceful shutdown", keeps the connection and
  /ready for the grace period (--grace-period, else TESTBED_GRACE_MS, default
  2000 ms; the real default is 30 s), then unregisters and exits 0. A second
  signal exits at once.
The token is never printed or logged.

Failure modes, selected by the image reference (TESTBED_IMAGE, set by the
stand-in docker), so a bad release is real behaviour of the connector:
- `never-ready`: starts, logs its start lines and connector id, serves
  metrics, but never registers: /ready answers 503 forever; it keeps running
  and logs failed connection attempts (as a connector that cannot reach the
  edge does).
- `crash-after-Ns` (e.g. `crash-after-5s`): registers normally, then exits 1
  N seconds after registering (a restart policy restarts it; every run
  re-registers).
"""
import base64
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid

VERSION = "2024.6.1-testbed"
state = {"ready": 0, "shutting_down": False, "sock": None}
registered = threading.Event()
lock = threading.Lock()
connector_id = str(uuid.uuid4())


def log(level, msg):
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stderr.write(f"{ts} {level} {msg}\n")
    sys.stderr.flush()


def parse_duration_ms(s):
    s = s.strip()
    total, num = 0.0, ""
    units = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}
    i = 0
    while i < len(s):
        if s[i].isdigit() or s[i] == ".":
            num += s[i]
            i += 1
            continue
        for u in ("ms", "s", "m", "h"):
            if s.startswith(u, i):
                total += float(num or 0) * units[u]
                num = ""
                i += len(u)
                break
        else:
            raise ValueError(f"bad duration {s!r}")
    if num:
        total += float(num) * 1000
    return int(total)


def parse_args(argv):
    opts = {"metrics": None, "grace_ms": None, "url": None}
    i = 0
    while i < len(argv):
        a = argv[i]
        key, val = (a.split("=", 1) + [None])[:2] if a.startswith("--") and "=" in a else (a, None)

        def value():
            nonlocal i
            if val is not None:
                return val
            i += 1
            return argv[i] if i < len(argv) else ""
        if key == "--metrics":
            opts["metrics"] = value()
        elif key == "--grace-period":
            opts["grace_ms"] = parse_duration_ms(value())
        elif key == "--url":
            opts["url"] = value()
        elif key in ("--token",):
            log("ERR", "testbed stand-in: pass the token in TUNNEL_TOKEN, not on the command line")
            sys.exit(2)
        elif key in ("--loglevel", "--protocol", "--edge-ip-version", "--region",
                     "--logfile", "--origincert"):
            value()
        i += 1
    return opts


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 501: "Not Implemented",
           503: "Service Unavailable"}


class MetricsHandler(socketserver.StreamRequestHandler):
    """One HTTP/1.0 request per connection. Not http.server: importing it (and
    the email, html, mimetypes and ssl modules it pulls in) cost more CPU than
    the rest of this stand-in's start, once per connector start on every host."""

    def reply(self, code, body, ctype="application/json"):
        data = body.encode()
        head = (f"HTTP/1.0 {code} {REASONS[code]}\r\n"
                f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n")
        self.wfile.write(head.encode() + data)

    def handle(self):
        line = self.rfile.readline(65537)
        if not line:
            return   # connected and closed without a request
        words = line.split()
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass   # headers: none matter here
        if len(words) < 2:
            self.reply(400, "Bad Request\n", "text/plain")
        elif words[0] != b"GET":
            self.reply(501, "Unsupported method\n", "text/plain")
        else:
            self.do_GET(words[1].decode("latin-1"))

    def do_GET(self, path):
        ready = state["ready"]
        if path.startswith("/ready"):
            code = 200 if ready > 0 else 503
            self.reply(code, json.dumps({"status": code, "readyConnections": ready,
                                         "connectorId": connector_id}, separators=(",", ":")))
        elif path.startswith("/healthcheck"):
            self.reply(200, "OK\n", "text/plain")
        elif path.startswith("/metrics"):
            self.reply(200, "# HELP cloudflared_tunnel_ha_connections Number of active ha connections\n"
                            "# TYPE cloudflared_tunnel_ha_connections gauge\n"
                            f"cloudflared_tunnel_ha_connections {ready}\n"
                            f'build_info{{version="{VERSION}"}} 1\n', "text/plain; version=0.0.4")
        else:
            self.reply(404, "404 page not found\n", "text/plain")


class MetricsServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True   # as http.server's HTTPServer
    daemon_threads = True


def start_metrics(spec):
    candidates = []
    if spec:
        host, port = spec.rsplit(":", 1)
        candidates = [(host or "0.0.0.0", int(port))]
    else:
        # In a real container: 0.0.0.0. Testbed containers share the host's
        # network namespace, so the loopback keeps them off the bridge.
        # A published port is bound as the host port it is published on.
        pub = json.loads(os.environ.get("TESTBED_PUBLISHED") or "{}")
        candidates = [("127.0.0.1", pub.get(str(p), p)) for p in range(20241, 20246)]
    for addr in candidates:
        try:
            srv = MetricsServer(addr, MetricsHandler)
        except OSError:
            continue
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        log("INF", f"Starting metrics server on {addr[0]}:{addr[1]}/metrics")
        return srv
    log("ERR", "failed to start the metrics server: no free port in "
               + ", ".join(f"{a}:{p}" for a, p in candidates))
    sys.exit(1)


send_lock = threading.Lock()


def send(sock, obj):
    with send_lock:   # heartbeat thread and shutdown may both send
        sock.sendall((json.dumps(obj) + "\n").encode())


def readline(f):
    line = f.readline(65536)
    if not line:
        raise ConnectionError("connection closed by edge")
    return json.loads(line)


def run_connection(token, edge, register_ms):
    """Connect, register, heartbeat; returns on connection loss; exits on refusal."""
    host, port = edge.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    f = sock.makefile("rb")
    with lock:
        state["sock"] = sock
    time.sleep(register_ms / 1000.0)   # handshake + registration time
    send(sock, {"type": "register", "token": token, "connector_id": connector_id,
                "host": os.environ.get("TESTBED_HOST") or socket.gethostname()})
    sock.settimeout(10)
    reply = readline(f)
    if reply.get("type") != "registered":
        err = reply.get("error", "unknown")
        for i in range(1):
            log("ERR", f'Register tunnel error from server side error="{err}" connIndex={i} '
                       f"event=0 ip={host}")
        log("ERR", f'Couldn\'t start tunnel error="{err}"')
        os._exit(1)
    for i in range(4):
        log("INF", f"Registered tunnel connection connIndex={i} connection={uuid.uuid4()} "
                   f"event=0 ip={host} location={reply.get('location', 'tb-edge')}{i:02d} "
                   "protocol=quic")
    with lock:
        state["ready"] = 4
    registered.set()
    sock.settimeout(3.5)
    while True:
        send(sock, {"type": "ping"})
        m = readline(f)
        if m.get("type") != "pong":
            raise ConnectionError("unexpected message from edge")
        time.sleep(1.0)


def connection_loop(token, edge, register_ms):
    backoff = 1
    while True:
        try:
            run_connection(token, edge, register_ms)
        except (OSError, ValueError, ConnectionError) as e:
            with lock:
                state["ready"] = 0
                state["sock"] = None
                stopping = state["shutting_down"]
            if stopping:
                return
            for i in range(4):
                log("ERR", f'Connection terminated error="{e}" connIndex={i}')
            log("INF", f"Retrying connection in up to {backoff}s connIndex=0 event=0 ip={edge}")
            time.sleep(backoff)
            backoff = min(backoff * 2, 8)


def never_ready_loop(edge):
    """`never-ready` image: every connection attempt fails, as for a connector
    that cannot reach the edge; it keeps trying (and running)."""
    backoff = 1
    while not state["shutting_down"]:
        for i in range(4):
            log("ERR", f'Failed to dial a quic connection error="failed to dial to edge with quic: '
                       f'timeout: no recent network activity" connIndex={i} event=0 ip={edge}')
        log("INF", f"Retrying connection in up to {backoff}s connIndex=0 event=0 ip={edge}")
        time.sleep(backoff)
        backoff = min(backoff * 2, 8)


def crash_after(seconds):
    """`crash-after-Ns` image: exit 1 N seconds after the first registration."""
    registered.wait()
    time.sleep(seconds)
    if state["shutting_down"]:
        return
    log("ERR", f'Serve tunnel error error="datagram manager encountered a failure while serving: '
               f'testbed crash-after-{seconds:g}s image" connIndex=0 event=0')
    log("ERR", "Tunnel server stopped with error: exit status 1")
    os._exit(1)


def main():
    args = sys.argv[1:]
    opts = parse_args(args)
    raw = os.environ.get("TUNNEL_TOKEN", "")
    if not raw:
        log("ERR", '"cloudflared tunnel run" requires the ID or name of the tunnel to run as the '
                   "last command line argument or in the configuration file.")
        sys.exit(1)
    try:
        tok = json.loads(base64.b64decode(raw, validate=False))
        assert isinstance(tok, dict) and {"a", "t", "s"} <= set(tok)
        tunnel_id = str(tok["t"])
    except Exception:
        log("ERR", "Provided Tunnel token is not valid.")
        sys.exit(1)
    edge = os.environ.get("TESTBED_EDGE")
    if not edge:
        log("ERR", "testbed stand-in: TESTBED_EDGE is not set (no stand-in edge address)")
        sys.exit(1)
    register_ms = int(os.environ.get("TESTBED_REGISTER_MS", "300"))
    grace_ms = opts["grace_ms"] if opts["grace_ms"] is not None else \
        int(os.environ.get("TESTBED_GRACE_MS", "2000"))
    log("INF", f"Starting tunnel tunnelID={tunnel_id}")
    log("INF", f"Version {VERSION} (testbed stand-in)")
    log("INF", f"Generated Connector ID: {connector_id}")
    start_metrics(opts["metrics"])
    if opts["url"]:
        log("INF", f"Settings: map[no-autoupdate:true url:{opts['url']}]")

    done = threading.Event()

    def on_signal(signum, frame):
        if state["shutting_down"]:
            log("INF", "second signal received, exiting now")
            os._exit(0)
        state["shutting_down"] = True
        name = signal.Signals(signum).name.replace("SIG", "").lower()
        name = {"term": "terminated", "int": "interrupt"}.get(name, name)
        log("INF", f"Initiating graceful shutdown due to signal {name} ...")
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    image = os.environ.get("TESTBED_IMAGE", "")
    crash = re.search(r"crash-after-(\d+(?:\.\d+)?)s", image)
    if "never-ready" in image:
        threading.Thread(target=never_ready_loop, args=(edge,), daemon=True).start()
    else:
        if crash:
            threading.Thread(target=crash_after, args=(float(crash.group(1)),), daemon=True).start()
        threading.Thread(target=connection_loop, args=(raw, edge, register_ms), daemon=True).start()
    done.wait()
    # Drain: keep serving (and answering /ready) for the grace period.
    deadline = time.monotonic() + grace_ms / 1000.0
    while time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    with lock:
        sock = state["sock"]
        state["ready"] = 0
    if sock is not None:
        try:
            send(sock, {"type": "unregister"})
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    log("INF", "Tunnel server stopped")
    os._exit(0)


if __name__ == "__main__":
    main()
