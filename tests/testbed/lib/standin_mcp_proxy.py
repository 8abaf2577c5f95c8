#!/usr/bin/python3
"""Stand-in mcp-proxy (testbed only).

Started by the stand-in docker for images containing "mcp-proxy", with the
service's command as arguments (`-config /config/mcp-proxy.yaml`; default
/config/mcp-proxy.yaml). Container paths are mapped to host paths through the
container's volumes (TESTBED_VOLUMES, set by the stand-in docker).

Modelled behaviour (see STACK-FACTS.md):
- Reads its config ONCE at start (no hot reload). Validates: routes must be a
  map (a list fails with "cannot unmarshal !!seq into map[string]string"),
  upstreams exactly scheme://host:port, tunnel_domain required when a route key
  is a bare subdomain, tls.cert_file / tls.key_file readable by the container
  user (TESTBED_USER, from compose `user:`; a non-root user needs "other"
  read permission, else "open /data/tls.key: permission denied"). Exits 1 on
  an invalid config.
- Terminates TLS (1.2/1.3) on TESTBED_ADDR (the project's address, default
  127.0.0.1):<port of listen_addr> (default 8080)
  with tls.cert_file / tls.key_file, as the real proxy terminates the inner
  TLS; a certificate or key that does not load exits 1 at start ("tls: ...").
  Any SNI is accepted; the certificate is the same for every name.
- Polls tls.cert_file every TESTBED_CERT_POLL_MS (default 1000); on a change it
  loads the new certificate and key for NEW connections, logging "reloaded
  TLS certificate" (a pair that does not load is logged once and retried at
  the next poll, the previous certificate stays in use).
- GET /testbed/info (over TLS) answers JSON {config_sha256, cert_sha256,
  routes, started_ms, cert_reloads} so tests can see what the running proxy
  uses.
- An image whose reference (TESTBED_IMAGE) contains `bad-config` rejects every
  config: it logs a fatal config error and exits 1 at start, as the real proxy
  does on a config it cannot load.
"""
import hashlib
import json
import os
import re
import signal
import ssl
import stat
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

info = {"started_ms": int(time.time() * 1000), "cert_reloads": 0}


def log(level, msg):
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stderr.write(json.dumps({"time": ts, "level": level, "msg": msg}) + "\n")
    sys.stderr.flush()


def fatal(msg):
    log("error", msg)
    sys.exit(1)


VOLUMES = json.loads(os.environ.get("TESTBED_VOLUMES", "[]"))  # [[host, container, mode]]


def host_path(cpath):
    best = None
    for src, dst, _mode in VOLUMES:
        if cpath == dst or cpath.startswith(dst.rstrip("/") + "/"):
            if best is None or len(dst) > len(best[1]):
                best = (src, dst)
    if best is None:
        return None
    return best[0] + cpath[len(best[1].rstrip("/")):]


def user_can_read(path, uid, gid):
    """Would uid:gid be able to open path for reading (mode bits only)?"""
    if uid == 0:
        return os.path.exists(path)
    parts = os.path.abspath(path).split("/")
    for i in range(1, len(parts) + 1):
        p = "/".join(parts[:i]) or "/"
        try:
            st = os.stat(p)
        except OSError:
            return False
        need = stat.S_IROTH if i == len(parts) else stat.S_IXOTH
        if st.st_uid == uid:
            need = need << 6
        elif st.st_gid == gid:
            need = need << 3
        if not st.st_mode & need:
            return False
    return True


def read_as_user(cpath, what):
    hp = host_path(cpath)
    if hp is None or not os.path.exists(hp):
        fatal(f"open {cpath}: no such file or directory")
    u = os.environ.get("TESTBED_USER", "") or "0"
    uid, _, gid = u.partition(":")
    uid = int(uid) if uid.isdigit() else 0
    gid = int(gid) if gid.isdigit() else uid
    if not user_can_read(hp, uid, gid):
        fatal(f"open {cpath}: permission denied")
    with open(hp, "rb") as f:
        return f.read()


UPSTREAM = re.compile(r"^(http|https)://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")


def load_config(cpath):
    raw = read_as_user(cpath, "config")
    try:
        cfg = yaml.safe_load(raw) or {}
    except yaml.YAMLError as e:
        fatal(f"failed to parse config: {e}")
    if not isinstance(cfg, dict):
        fatal("failed to parse config: yaml: unmarshal errors: config is not a map")
    routes = cfg.get("routes") or {}
    if isinstance(routes, list):
        fatal("failed to parse config: yaml: unmarshal errors:\n  "
              "cannot unmarshal !!seq into map[string]string")
    if not isinstance(routes, dict):
        fatal("failed to parse config: routes: cannot unmarshal into map[string]string")
    for k, v in routes.items():
        if not isinstance(v, str) or not UPSTREAM.match(v):
            fatal(f"invalid upstream for route {k!r}: {v!r}: must be scheme://host:port "
                  "with an explicit port and no path")
        if "." not in str(k) and not cfg.get("tunnel_domain"):
            fatal(f"route {k!r} is a bare subdomain: tunnel_domain is required")
    tls = cfg.get("tls") or {}
    for key in ("cert_file", "key_file"):
        if not tls.get(key):
            fatal(f"tls.{key} is required")
    return raw, cfg


def bad_config(cpath, raw):
    """`bad-config` image: the config is rejected (a field this proxy does not know)."""
    field, line = "routes", 1
    for i, text in enumerate(raw.decode(errors="replace").splitlines(), 1):
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):", text)
        if m:
            field, line = m.group(1), i
            break
    log("fatal", f"config: {cpath}: yaml: unmarshal errors: line {line}: field {field} not found "
                 "in type config.Config")
    sys.exit(1)


def tls_context(cert_hp, key_hp):
    """A server context from the certificate (chain) and key files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_hp, key_hp)
    return ctx


def main():
    argv = sys.argv[1:]
    cpath = "/config/mcp-proxy.yaml"
    for i, a in enumerate(argv):
        if a in ("-config", "--config") and i + 1 < len(argv):
            cpath = argv[i + 1]
        elif a.startswith(("-config=", "--config=")):
            cpath = a.split("=", 1)[1]
    raw, cfg = load_config(cpath)
    if "bad-config" in os.environ.get("TESTBED_IMAGE", ""):
        bad_config(cpath, raw)
    tls = cfg["tls"]
    cert = read_as_user(tls["cert_file"], "cert")
    read_as_user(tls["key_file"], "key")
    cert_hp, key_hp = host_path(tls["cert_file"]), host_path(tls["key_file"])
    try:
        current = {"ctx": tls_context(cert_hp, key_hp)}
    except (ssl.SSLError, OSError) as e:
        fatal(f"tls: loading {tls['cert_file']} and {tls['key_file']}: {e}")
    info["config_sha256"] = hashlib.sha256(raw).hexdigest()
    info["cert_sha256"] = hashlib.sha256(cert).hexdigest()
    info["routes"] = sorted(str(k) for k in (cfg.get("routes") or {}))
    info["tunnel_domain"] = cfg.get("tunnel_domain")
    listen = str(cfg.get("listen_addr") or ":8080")
    port = int(listen.rsplit(":", 1)[1])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path.startswith("/testbed/info"):
                body = json.dumps(info).encode()
                code = 200
            else:
                body = b'{"error":"no route for host"}'
                code = 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class TLSServer(ThreadingHTTPServer):
        """HTTPS: the handshake runs in the connection's own thread, with the
        context current when the connection arrived."""
        daemon_threads = True

        def finish_request(self, request, client_address):
            request.settimeout(10)
            try:
                conn = current["ctx"].wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                log("info", f"http: TLS handshake error from {client_address[0]}:{client_address[1]}: {e}")
                return
            try:
                self.RequestHandlerClass(conn, client_address, self)
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()

    try:
        srv = TLSServer((os.environ.get("TESTBED_ADDR") or "127.0.0.1", port), Handler)
    except OSError as e:
        fatal(f"listen tcp {listen}: {e.strerror}")
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    log("info", f"mcp-proxy (testbed stand-in) listening on {listen} (TLS) with "
                f"{len(info['routes'])} routes, tunnel_domain={info['tunnel_domain']}")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    poll = int(os.environ.get("TESTBED_CERT_POLL_MS", "1000")) / 1000.0
    failed = None
    while not stop.wait(poll):
        try:
            with open(cert_hp, "rb") as f:
                h = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            continue
        if h == info["cert_sha256"]:
            continue
        try:
            ctx = tls_context(cert_hp, key_hp)
        except (ssl.SSLError, OSError) as e:
            if failed != h:   # once per certificate; retried at every poll
                log("error", f"failed to reload TLS certificate {tls['cert_file']}: {e} "
                             "(the previous certificate stays in use)")
                failed = h
            continue
        current["ctx"] = ctx
        info["cert_sha256"] = h
        info["cert_reloads"] += 1
        log("info", f"reloaded TLS certificate {tls['cert_file']} (sha256 {h[:12]})")
    log("info", "shutting down")
    srv.shutdown()


if __name__ == "__main__":
    main()
