#!/usr/bin/python3
"""Stand-in setup component (binary `setup` of the mcp-proxy image; testbed only).

Started by the stand-in docker for an mcp-proxy image whose entrypoint (else
command) is `setup`, with the remaining words as arguments, e.g. from
`docker compose run --rm -T setup --token-version=2 --output=dir:/data`.
Container paths are mapped to host paths through the container's volumes
(TESTBED_VOLUMES); a path no volume covers is the container's own
filesystem: writable, and gone when the container is (a scratch directory
removed at exit). A read-only volume refuses writes.

  setup --token-version=N --output=dir:PATH
      Rotate or reveal the tunnel token through Workload Identity Federation.
      Environment: TUNNEL_ID, ANTHROPIC_FEDERATION_RULE_ID,
      ANTHROPIC_ORGANIZATION_ID, ANTHROPIC_IDENTITY_TOKEN (all required),
      ANTHROPIC_WORKSPACE_ID (optional). Calls the Tunnels API stand-in at
      TESTBED_API (set by the stand-in docker from standin.json):
      POST /v1/organizations/tunnels/{TUNNEL_ID}/setup_token (JSON body with the
      WIF inputs and token_version). The edge reveals the current token for the
      first version it sees, rotates for a higher one and refuses an unchanged
      (or lower) one, as the real setup refuses an unchanged --token-version.
      Writes PATH/tunnel-token (the bare token, no newline; 0600, root;
      temp file + fsync + rename). Prints the token's id, never the token.
  setup renew-cert --output=dir:PATH [--renew-before=DURATION]
      With --renew-before (Go duration: 720h, 30m, 1h30m, 90s, ...) and more
      than that left on PATH/tls.crt: nothing to do (exit 0, nothing written,
      and the CA files are not needed). Otherwise signs a new server
      certificate with PATH/ca.crt + PATH/ca.key for PATH/tls.key (the key is
      kept): subject CN and SANs DNS:CN, DNS:*.CN from the old certificate's CN,
      basicConstraints critical CA:FALSE, keyUsage critical digitalSignature,
      keyEncipherment, extendedKeyUsage serverAuth, subject and authority key
      identifiers, 90 days, random 127-bit serial; replaces PATH/tls.crt
      atomically (0644), so the proxy, which polls it, reloads it. Uses the
      openssl CLI with file paths only.

Exit status: 0 done (or nothing to do), 1 failure (missing environment or
file, API error: "setup: <the API's message>"), 2 usage error. Messages go to
stderr. No secret (identity token, tunnel token, keys) is printed, logged or
put on a command line.
"""
import atexit
import calendar
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

API_VERSION = "2023-06-01"
API_BETA = "mcp-tunnels-2026-05-19"
CERT_DAYS = 90
USAGE = """\
Usage:
  setup --token-version=N --output=dir:PATH     rotate/reveal the tunnel token
  setup renew-cert --output=dir:PATH [--renew-before=DURATION]
                                                renew the server certificate

Flags:
  --token-version int     version of the tunnel token; increment it to rotate
  --output string         where to write: dir:PATH
  --renew-before duration renew-cert: do nothing while more than this is left
  -h, --help              help
Environment (token): TUNNEL_ID, ANTHROPIC_FEDERATION_RULE_ID,
  ANTHROPIC_ORGANIZATION_ID, ANTHROPIC_IDENTITY_TOKEN, [ANTHROPIC_WORKSPACE_ID]
"""


class Fail(Exception):
    """A failure: message printed as `setup: MSG`, exit status `code`."""

    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.msg, self.code = msg, code


def say(msg):
    sys.stderr.write(f"setup: {msg}\n")
    sys.stderr.flush()


def usage_error(msg):
    raise Fail(f"{msg}\n{USAGE}", 2)


# ------------------------------------------------------------- paths ----

VOLUMES = json.loads(os.environ.get("TESTBED_VOLUMES", "[]"))  # [[host, container, mode]]
_scratch = {}


def host_path(cpath):
    """(host path, read_only) for a container path. A path no volume covers
    lives in the container's own (ephemeral) filesystem."""
    best = None
    for src, dst, mode in VOLUMES:
        if cpath == dst or cpath.startswith(dst.rstrip("/") + "/"):
            if best is None or len(dst) > len(best[1]):
                best = (src, dst, mode)
    if best is None:
        if "root" not in _scratch:
            _scratch["root"] = tempfile.mkdtemp(prefix="standin-setup-fs-")
            atexit.register(shutil.rmtree, _scratch["root"], True)
        return os.path.join(_scratch["root"], cpath.lstrip("/")), False
    return best[0] + cpath[len(best[1].rstrip("/")):], best[2] == "ro"


def output_dir(spec):
    if spec is None:
        usage_error("required flag \"output\" not set")
    kind, _, path = spec.partition(":")
    if kind != "dir" or not path.startswith("/"):
        usage_error(f"invalid --output {spec!r}: want dir:/ABSOLUTE/PATH")
    cdir = os.path.normpath(path)
    hdir, ro = host_path(cdir)
    return cdir, hdir, ro


def write_atomic(hdir, cdir, name, data, mode, ro):
    """PATH/name <- data: temp file in the same directory, fsync, rename,
    fsync of the directory. Owner root (the container runs as root)."""
    cpath = f"{cdir.rstrip('/')}/{name}"
    if ro:
        raise Fail(f"open {cpath}: read-only file system")
    if not os.path.isdir(hdir):
        # What a container sees in a bind mount Docker created, or in its own fs.
        os.makedirs(hdir, mode=0o755, exist_ok=True)
    tmp = os.path.join(hdir, f".{name}.tmp-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)
            os.fchown(fd, 0, 0)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(hdir, name))
        dfd = os.open(hdir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise Fail(f"write {cpath}: {e.strerror}")
    return cpath


# ------------------------------------------------------------- flags ----

def parse_flags(args, known):
    """Go/pflag style: --name=value, --name value, -name=value; -h/--help.
    known: {name: True if it takes a value}. Returns {name: value}."""
    out = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-h", "--help", "-help"):
            sys.stderr.write(USAGE)
            sys.exit(0)
        if not a.startswith("-") or a in ("-", "--"):
            usage_error(f"unexpected argument {a!r}")
        name, eq, val = a.lstrip("-").partition("=")
        if name not in known:
            usage_error(f"unknown flag: --{name}")
        if not eq:
            i += 1
            if i >= len(args):
                usage_error(f"flag needs an argument: --{name}")
            val = args[i]
        out[name] = val
        i += 1
    return out


GO_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_go_duration(s):
    """Seconds in a Go duration string (time.ParseDuration syntax)."""
    bad = ValueError(f'time: invalid duration "{s}"')
    body, sign = s, 1
    if body[:1] in ("-", "+"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise bad
    total, pos = 0.0, 0
    for m in GO_DURATION.finditer(body):
        if m.start() != pos:
            raise bad
        total += float(m.group(1)) * UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(body):
        raise bad
    return sign * total


# ------------------------------------------------------------- token ----

def cmd_token(args):
    f = parse_flags(args, {"token-version": True, "output": True})
    tv = f.get("token-version")
    if tv is None:
        usage_error("required flag \"token-version\" not set: pass --token-version=N "
                    "(increment it to rotate the tunnel token)")
    if not re.fullmatch(r"[0-9]+", tv) or int(tv) < 1:
        usage_error(f"invalid argument \"{tv}\" for \"--token-version\" flag: "
                    "want a positive integer")
    version = int(tv)
    cdir, hdir, ro = output_dir(f.get("output"))
    missing = [k for k in ("TUNNEL_ID", "ANTHROPIC_FEDERATION_RULE_ID",
                           "ANTHROPIC_ORGANIZATION_ID", "ANTHROPIC_IDENTITY_TOKEN")
               if not os.environ.get(k)]
    if missing:
        for k in missing[:-1]:
            say(f"{k} is not set")
        raise Fail(f"{missing[-1]} is not set")
    api = os.environ.get("TESTBED_API")
    if not api:
        raise Fail("testbed stand-in: TESTBED_API is not set (no Tunnels API address in "
                   "standin.json)")
    tunnel = os.environ["TUNNEL_ID"]
    url = f"{api.rstrip('/')}/v1/organizations/tunnels/{tunnel}/setup_token"
    body = {"federation_rule_id": os.environ["ANTHROPIC_FEDERATION_RULE_ID"],
            "organization_id": os.environ["ANTHROPIC_ORGANIZATION_ID"],
            "workspace_id": os.environ.get("ANTHROPIC_WORKSPACE_ID") or None,
            "identity_token": os.environ["ANTHROPIC_IDENTITY_TOKEN"],
            "token_version": version}
    req = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(), headers={
        "Content-Type": "application/json", "anthropic-version": API_VERSION,
        "anthropic-beta": API_BETA})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            doc = json.load(r)
    except urllib.error.HTTPError as e:
        try:
            msg = json.load(e)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = f"Tunnels API answered HTTP {e.code}"
        raise Fail(str(msg))
    except (urllib.error.URLError, OSError) as e:
        raise Fail(f'Post "{url}": {getattr(e, "reason", e)}')
    except ValueError:
        raise Fail("Tunnels API answered something that is not JSON")
    token = doc.get("tunnel_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise Fail("Tunnels API answer has no tunnel_token")
    cpath = write_atomic(hdir, cdir, "tunnel-token", token.encode(), 0o600, ro)
    say(f"tunnel token {doc.get('id')} (token version {version}) written to {cpath}")
    return 0


# ------------------------------------------------------ certificates ----

def openssl(*args):
    r = subprocess.run(["openssl", *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise Fail(f"openssl {args[0]}: {r.stderr.strip() or 'failed'}")
    return r.stdout


def cert_fields(path):
    out = openssl("x509", "-in", path, "-noout", "-subject", "-nameopt", "RFC2253",
                  "-enddate", "-serial")
    f = {}
    for line in out.splitlines():
        k, _, v = line.partition("=")
        f[k.strip()] = v.strip()
    f["not_after"] = calendar.timegm(time.strptime(f["notAfter"], "%b %d %H:%M:%S %Y %Z"))
    f["until"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(f["not_after"]))
    return f


def common_name(subject):
    for rdn in re.split(r"(?<!\\),", subject):
        k, _, v = rdn.partition("=")
        if k.strip().upper() == "CN":
            return v.strip().replace("\\,", ",")
    return None


def cmd_renew(args):
    f = parse_flags(args, {"output": True, "renew-before": True})
    before = None
    if "renew-before" in f:
        try:
            before = parse_go_duration(f["renew-before"])
        except ValueError as e:
            usage_error(f"invalid argument \"{f['renew-before']}\" for \"--renew-before\" flag: {e}")
    cdir, hdir, ro = output_dir(f.get("output"))

    def need(name):
        p = os.path.join(hdir, name)
        if not os.path.isfile(p):
            raise Fail(f"open {cdir.rstrip('/')}/{name}: no such file or directory")
        if not os.access(p, os.R_OK):
            raise Fail(f"open {cdir.rstrip('/')}/{name}: permission denied")
        return p

    crt = need("tls.crt")
    old = cert_fields(crt)
    left = old["not_after"] - time.time()
    if before is not None and left > before:
        say(f"certificate valid until {old['until']} (more than {f['renew-before']} left); "
            "nothing to do")
        return 0
    key, ca_crt, ca_key = need("tls.key"), need("ca.crt"), need("ca.key")
    cn = common_name(old.get("subject", ""))
    if not cn or not re.fullmatch(r"[A-Za-z0-9.-]+", cn):
        raise Fail(f"{cdir.rstrip('/')}/tls.crt: subject has no usable CN (a domain): "
                   f"{old.get('subject')!r}")
    work = tempfile.mkdtemp(prefix="standin-setup-")
    try:
        ext = os.path.join(work, "tls.ext")
        with open(ext, "w") as fh:
            fh.write("basicConstraints = critical, CA:FALSE\n"
                     "keyUsage = critical, digitalSignature, keyEncipherment\n"
                     "extendedKeyUsage = serverAuth\n"
                     f"subjectAltName = DNS:{cn}, DNS:*.{cn}\n"
                     "subjectKeyIdentifier = hash\n"
                     "authorityKeyIdentifier = keyid:always\n")
        csr = os.path.join(work, "tls.csr")
        new = os.path.join(work, "tls.crt")
        openssl("req", "-new", "-key", key, "-subj", f"/CN={cn}", "-out", csr)
        serial = secrets.randbits(127) | 1
        openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                "-set_serial", f"0x{serial:x}", "-days", str(CERT_DAYS), "-sha256",
                "-extfile", ext, "-out", new)
        # Never install a certificate the CA does not vouch for (a ca.key that
        # does not belong to ca.crt).
        openssl("verify", "-CAfile", ca_crt, new)
        fields = cert_fields(new)
        with open(new, "rb") as fh:
            pem = fh.read()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_atomic(hdir, cdir, "tls.crt", pem, 0o644, ro)
    say(f"renewed certificate serial {fields['serial'].lower()} valid until {fields['until']}")
    return 0


def main():
    args = sys.argv[1:]
    if args[:1] and not args[0].startswith("-"):
        if args[0] == "renew-cert":
            return cmd_renew(args[1:])
        usage_error(f"unknown command \"{args[0]}\" for \"setup\"")
    return cmd_token(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as e:
        say(e.msg)
        sys.exit(e.code)
