#!/usr/bin/python3
"""Stand-in `docker` / `docker compose` / `docker-compose` for testbed hosts.

Invoked through DIR/bin/docker (`standin_docker.py docker ARGS...`) and
DIR/bin/docker-compose (`standin_docker.py compose-v1 ARGS...`). A "container"
is a real process on the host running a stand-in program chosen by image name:
  image contains "cloudflared" -> `standin cloudflared COMMAND...` (compiled,
                                  tests/testbed/standins)
  image contains "mcp-proxy"   -> `standin mcp-proxy COMMAND...`, or, when the
                                  entrypoint (else the command) is `setup`,
                                  standin_setup.py with the remaining words
  anything else                -> a sleep loop (the command is NOT run)
Images: a per-host store (see "images" below); `up`/`run` pull missing ones
first. The image reference also selects the stand-ins' failure modes
(TESTBED_IMAGE: never-ready, crash-after-Ns, bad-config; unpullable here).
No filesystem or network isolation: every container of a host shares the
host's (namespaced) filesystem and loopback, so `network_mode: service:X` is
satisfied trivially. Two emulations let two stacks share a host: a project's
address (standin.json addr_by_project, default 127.0.0.1; TESTBED_ADDR, and
docker inspect's IPAddress), and published ports (TESTBED_PUBLISHED: the
container ports the namespace owner's `ports:` publish, and their host ports). Volumes are recorded and handed to stand-ins as a
container->host path map (TESTBED_VOLUMES).

State: /var/lib/standin-docker/containers/<id>/{state.json (0600: holds the
container's environment, as Docker's own config does), log}. A per-container
supervisor ("shim", `__shim ID`) runs the program, appends its output to the
log, records exits and applies the restart policy (back-off 100 ms doubling,
capped by standin.json restart_backoff_max_ms, default 2000; Docker caps at 1
min). At host boot, `__boot` (from DIR/boot.d) restarts containers the way
dockerd does on daemon start: `always` always, `unless-stopped` unless the
user stopped it, `on-failure` if it was running.

Compose semantics implemented (v2 `docker compose`, and v1 `docker-compose`
1.29 with `_` in container names): project directory = --project-directory,
else the directory of the first -f file, else $PWD, taken as given (symlinks
such as `current` are not resolved); project name = -p, COMPOSE_PROJECT_NAME
(shell or .env), top-level `name:`, else the directory's basename; `.env` of
the project directory (or --env-file) read at every command; shell env
overrides .env; ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}, $VAR, $$;
`environment:` list or map, bare names pass through from shell/.env;
`env_file:`. Values are taken at container creation. `up -d` recreates a
container only when its resolved service config changed (hash over the
resolved service minus scale/replicas/depends_on/build), else leaves it
running; `restart` keeps the container's stored environment. `profiles:`: a
service with profiles is left out of `up` (with or without service names)
unless one of its profiles is enabled (--profile P, else COMPOSE_PROFILES;
`*` enables all) or it is named on the command line; `run` works for it
regardless; its containers are never orphans.
"""
import json
import os
import re
import shlex
import signal
import sys
import time

import fcntl


class _Lazy:
    """A module imported on first use: most commands (ps, inspect, logs) never
    need these, and importing them costs more CPU than the command itself."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        mod = __import__(self._name)
        globals()[self._name] = mod
        return getattr(mod, attr)


hashlib = _Lazy("hashlib")
secrets = _Lazy("secrets")
socket = _Lazy("socket")
subprocess = _Lazy("subprocess")

ROOT = "/var/lib/standin-docker"
CDIR = os.path.join(ROOT, "containers")
LIB = os.path.dirname(os.path.realpath(__file__))
TBDIR = os.path.dirname(LIB)
PY = "/usr/bin/python3"
V2_VERSION = "2.27.0"
V1_VERSION = "1.29.2"
ENGINE_VERSION = "20.10.24+dfsg1"
DEFAULT_STOP_TIMEOUT = 10.0
COMPOSE_FILES = ["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"]
HASH_EXCLUDE = {"scale", "deploy", "depends_on", "build", "pull_policy"}


class UserError(Exception):
    pass


def err(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def testbed_config():
    """DIR/standin.json: edge address per host, timings (edit to tune)."""
    try:
        with open(os.path.join(TBDIR, "standin.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------ state I/O ----

class Lock:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *a):
        os.close(self.fd)


def global_lock():
    """Serialises mutating commands on this host, as dockerd would."""
    return Lock(os.path.join(ROOT, "lock"))


def cpath(cid, *rest):
    return os.path.join(CDIR, cid, *rest)


def load(cid):
    try:
        with open(cpath(cid, "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save(c):
    d = cpath(c["id"])
    os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = os.path.join(d, "state.json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(c, f, indent=1)
    os.rename(tmp, os.path.join(d, "state.json"))


def update(cid, fn):
    """Read-modify-write of one container's state under its own lock."""
    with Lock(cpath(cid, "lock")):
        c = load(cid)
        if c is None:
            return None
        fn(c)
        save(c)
        return c


def all_containers():
    out = []
    try:
        ids = os.listdir(CDIR)
    except FileNotFoundError:
        return out
    for cid in ids:
        c = load(cid)
        if c is not None:
            out.append(c)
    out.sort(key=lambda c: c["created"])
    return out


def proc_start(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return None
        return fields[19]
    except (OSError, IndexError):
        return None


def alive(pid, start):
    return bool(pid) and start is not None and proc_start(pid) == start


def refresh(c):
    """A container marked running whose shim is gone (host killed, shim
    SIGKILLed) is reported as exited (255), as Docker shows after a crash."""
    if c["status"] in ("running", "restarting") and not alive(c.get("shim_pid"), c.get("shim_start")):
        def fix(x):
            if x["status"] in ("running", "restarting"):
                x["status"] = "exited"
                x["exit_code"] = 255
                x["finished_at"] = time.time()
                x["pid"] = None
        return update(c["id"], fix) or c
    return c


def find_container(ref):
    cs = [refresh(c) for c in all_containers()]
    for c in cs:
        if c["name"] == ref or c["id"] == ref:
            return c
    matches = [c for c in cs if c["id"].startswith(ref)]
    if len(matches) == 1 and len(ref) >= 3:
        return matches[0]
    raise UserError(f"Error response from daemon: No such container: {ref}")


# ------------------------------------------------------------- programs ----

def program_for(c):
    image = c["image"]
    cmd = list(c.get("entrypoint") or []) + list(c.get("command") or [])
    if "cloudflared" in image:
        args = list(c.get("command") or [])
        if c.get("entrypoint") and c["entrypoint"][-1:] != ["cloudflared"]:
            args = cmd
        return [os.path.join(LIB, "standin"), "cloudflared", *args]
    if "mcp-proxy" in image:
        # The setup component ships in the same image (binary `setup`).
        if cmd[:1] and os.path.basename(cmd[0]) == "setup":
            return [PY, os.path.join(LIB, "standin_setup.py"), *cmd[1:]]
        return [os.path.join(LIB, "standin"), "mcp-proxy", *(c.get("command") or [])]
    # Unknown image: keep a process alive; the command is not run on the host.
    return ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]


def program_env(c):
    cfg = testbed_config()
    host = socket.gethostname()
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOSTNAME": c["id"][:12]}
    env.update(c["env"])
    # Testbed plumbing for the stand-ins (not part of the container's config).
    edge = (cfg.get("edge_by_host") or {}).get(host) or cfg.get("edge")
    if edge:
        env["TESTBED_EDGE"] = edge
    api = (cfg.get("api_url_by_host") or {}).get(host) or cfg.get("api_url")
    if api:
        env["TESTBED_API"] = api
    for k, ck in (("TESTBED_REGISTER_MS", "register_ms"), ("TESTBED_GRACE_MS", "grace_ms"),
                  ("TESTBED_CERT_POLL_MS", "cert_poll_ms")):
        if ck in cfg:
            env[k] = str(cfg[ck])
    env["TESTBED_HOST"] = host
    env["TESTBED_CONTAINER"] = c["name"]
    # The image reference selects a stand-in's failure mode (never-ready, crash-after-5s, bad-config).
    env["TESTBED_IMAGE"] = c["image"]
    env["TESTBED_USER"] = c.get("user") or ""
    env["TESTBED_VOLUMES"] = json.dumps(c.get("volumes") or [])
    # Network namespace emulation (containers share the host's): the address of the
    # container's "network" (standin.json addr_by_project, default 127.0.0.1), and the host
    # ports its namespace owner publishes ({"container port": host port}), which a stand-in
    # binds instead of the container port.
    env["TESTBED_ADDR"] = project_addr(c)
    env["TESTBED_PUBLISHED"] = json.dumps(published_ports(netns_owner(c)))
    return env


def project_addr(c):
    return (testbed_config().get("addr_by_project") or {}).get(c["project"], "127.0.0.1")


def netns_owner(c):
    """The container whose network namespace c uses (`network_mode: service:X`), else c."""
    nm = c.get("network_mode") or ""
    if nm.startswith("service:"):
        owners = [x for x in all_containers()
                  if x["project"] == c["project"] and x["service"] == nm[8:]]
        owners.sort(key=lambda x: x.get("status") != "running")
        if owners:
            return owners[0]
    return c


def published_ports(c):
    """{"container port": host port} from compose `ports:` ("[ip:]host[-end]:ctr[-end]")."""
    out = {}
    for spec in c.get("ports") or []:
        parts = str(spec).split("/")[0].rsplit(":", 2)
        if len(parts) < 2:
            continue
        try:
            (h0, _, h1), (c0, _, c1) = parts[-2].partition("-"), parts[-1].partition("-")
            hosts = range(int(h0), int(h1 or h0) + 1)
            ctrs = range(int(c0), int(c1 or c0) + 1)
        except ValueError:
            continue
        out.update({str(k): v for k, v in zip(ctrs, hosts)})
    return out


# ----------------------------------------------------------------- shim ----

def spawn_shim(cid):
    """Start the supervisor of container cid, detached from the caller's
    session (so an ssh command returns), and wait until it runs the program."""
    import select
    # The shim writes a byte to `notify` once it has recorded the program as
    # running (EOF if it exits first): no polling of the state file, which cost
    # more CPU than the start itself on a busy machine.
    notify, notify_w = os.pipe()
    if IN_ENGINE:
        # Forked from this already-initialised interpreter: no interpreter start.
        p = ForkedShim(cid, notify_w, keep=notify)
    else:
        # Through the launcher (cached bytecode, site on demand), like DIR/bin/docker.
        p = subprocess.Popen([PY, "-S", os.path.join(LIB, "standin_run.py"), "standin_docker", "__shim",
                              cid, str(notify_w)], pass_fds=(notify_w,),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    os.close(notify_w)
    deadline = time.monotonic() + 10
    eof = False
    try:
        while time.monotonic() < deadline:
            c = load(cid)
            if c and c.get("shim_pid") == p.pid and c["status"] in ("running", "restarting", "exited") \
                    and c.get("started_at", 0) >= c.get("spawn_requested", 0):
                return c
            if p.poll() is not None:
                break
            if eof:
                time.sleep(0.01)
            elif select.select([notify], [], [], max(0.0, min(0.5, deadline - time.monotonic())))[0]:
                eof = not os.read(notify, 64)
    finally:
        os.close(notify)
    c = load(cid)
    if p.poll() is not None and c and c["status"] != "exited":
        raise UserError(f"Error response from daemon: failed to start container {c['name']}")
    return c


class ForkedShim:
    """`__shim ID FD` run in a forked copy of this process, with what Popen gave the
    launched one: its own session, stdio on /dev/null, no other descriptor, default
    signal dispositions. pid and poll() as Popen has them."""

    def __init__(self, cid, notify_w, keep):
        self.returncode = None
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.close(keep)
                os.closerange(3, notify_w)
                os.closerange(notify_w + 1, 65536)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                shim_main(cid, notify_w)
                code = 0
            except BaseException:
                pass
            os._exit(code)
        self.pid = pid

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def shim_main(cid, notify_fd=None):
    """Supervise container cid; write to notify_fd (then close it) once the
    program first runs (spawn_shim waits on it)."""
    c = load(cid)
    if c is None:
        return
    me = os.getpid()
    stopping = {"flag": False, "child": None}

    def on_term(signum, frame):
        # `stop`: forward SIGTERM to the program's process group, SIGKILL it
        # after the stop timeout; then do not restart.
        stopping["flag"] = True
        ch = stopping["child"]
        if ch is None:
            return
        try:
            os.killpg(ch.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        cur = load(cid) or {}
        timeout = float(cur.get("stop_timeout_now", cur.get("stop_timeout", DEFAULT_STOP_TIMEOUT)))
        signal.signal(signal.SIGALRM, lambda *a: _kill(ch.pid))
        signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))

    def _kill(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    cfg = testbed_config()
    backoff_max = float(cfg.get("restart_backoff_max_ms", 2000)) / 1000.0
    delay = 0.1
    first = True
    while True:
        c = load(cid)
        if c is None or c.get("desired") == "stopped" or stopping["flag"]:
            break
        logf = open(cpath(cid, "log"), "ab")
        started = time.time()
        try:
            child = subprocess.Popen(program_for(c), env=program_env(c), stdin=subprocess.DEVNULL,
                                     stdout=logf, stderr=logf, start_new_session=True,
                                     cwd="/", close_fds=True)
        except OSError as e:
            logf.write(f"testbed: cannot start: {e}\n".encode())
            logf.close()
            break
        logf.close()
        stopping["child"] = child
        mystart = proc_start(me)
        # A container that joins another's namespace (`network_mode: service:X`) joins the
        # one X has at this start, and stays in it when X is restarted later: Docker gives
        # every start of X a new namespace (docker inspect: NetworkMode `container:<X's id>`,
        # State.StartedAt earlier than X's).
        owner = netns_owner(c)
        joined = owner["id"] if owner is not c and owner.get("status") == "running" else None

        def running(x):
            x.update(status="running", pid=child.pid, pid_start=proc_start(child.pid),
                     shim_pid=me, shim_start=mystart, started_at=started, joined_id=joined)
            if not first:
                x["restart_count"] = x.get("restart_count", 0) + 1
        update(cid, running)
        if notify_fd is not None:
            try:
                os.write(notify_fd, b"1")
                os.close(notify_fd)
            except OSError:
                pass
            notify_fd = None
        if stopping["flag"]:          # stop arrived before the child existed
            on_term(signal.SIGTERM, None)
        first = False
        rc = child.wait()
        signal.setitimer(signal.ITIMER_REAL, 0)
        stopping["child"] = None
        code = rc if rc >= 0 else 128 - rc
        c = load(cid) or c
        policy = (c.get("restart") or "no").split(":")[0]
        restart = False
        if not stopping["flag"] and c.get("desired") != "stopped":
            if policy in ("always", "unless-stopped"):
                restart = True
            elif policy == "on-failure" and code != 0:
                maxr = (c.get("restart") or "").split(":")[1:]
                restart = not maxr or c.get("restart_count", 0) < int(maxr[0])

        def exited(x):
            x.update(status="restarting" if restart else "exited", exit_code=code,
                     finished_at=time.time(), pid=None)
        update(cid, exited)
        if not restart:
            break
        # Docker's back-off: doubles from 100 ms; reset after 10 s of running.
        if time.time() - started >= 10:
            delay = 0.1
        end = time.monotonic() + delay
        while time.monotonic() < end and not stopping["flag"]:
            time.sleep(0.02)
        delay = min(delay * 2, backoff_max)

    def final(x):
        if x["status"] in ("running", "restarting"):
            x["status"] = "exited"
        x["shim_pid"] = None
    update(cid, final)
    c = load(cid)
    if c and c.get("auto_remove"):
        remove_container(c)


def stop_container(c, timeout=None, user=True):
    """Stop c (SIGTERM, SIGKILL after timeout) and wait until it is down."""
    c = refresh(c)
    t = c.get("stop_timeout", DEFAULT_STOP_TIMEOUT) if timeout is None else timeout

    def want_stop(x):
        x["desired"] = "stopped"
        x["stop_timeout_now"] = t
        if user:
            x["user_stopped"] = True
    update(c["id"], want_stop)
    shim = c.get("shim_pid")
    if alive(shim, c.get("shim_start")):
        # A pidfd of the shim, taken while it is known to be ours: the wait below sleeps in
        # poll until the shim exits, where a 20 ms polling loop cost CPU for the whole drain.
        try:
            pidfd = os.pidfd_open(shim) if alive(shim, c.get("shim_start")) else None
        except (OSError, AttributeError):
            pidfd = None
        try:
            os.kill(shim, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + t + 5
        try:
            while alive(shim, c.get("shim_start")) and time.monotonic() < deadline:
                if pidfd is not None:
                    import select
                    if select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                        os.close(pidfd)
                        pidfd = None   # exited: a zombie until reaped, polled below
                    continue
                time.sleep(0.02)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if alive(shim, c.get("shim_start")):
            for pid, st in ((c.get("pid"), c.get("pid_start")), (shim, c.get("shim_start"))):
                if alive(pid, st):
                    try:
                        os.killpg(pid, signal.SIGKILL) if pid != shim else os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
    return refresh(load(c["id"]) or c)


def start_container(c):
    c = refresh(c)
    if c["status"] in ("running", "restarting") and alive(c.get("shim_pid"), c.get("shim_start")):
        return c

    def prep(x):
        x["desired"] = "running"
        x["user_stopped"] = False
        x["spawn_requested"] = time.time()
    update(c["id"], prep)
    return spawn_shim(c["id"])


def remove_container(c):
    d = cpath(c["id"])
    for f in ("state.json", "log", "lock"):
        try:
            os.unlink(os.path.join(d, f))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(d)
    except OSError:
        pass


# -------------------------------------------------------------- compose ----

def parse_dotenv(path):
    env = {}
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[7:].lstrip()
            if "=" not in line:
                continue   # a bare name has no value here
            k, v = line.split("=", 1)
            k = k.strip()
            v = v.lstrip()
            if v[:1] == "'" and "'" in v[1:]:
                v = v[1:v.index("'", 1)]
            elif v[:1] == '"' and '"' in v[1:]:
                end = 1
                while end < len(v) and not (v[end] == '"' and v[end - 1] != "\\"):
                    end += 1
                v = v[1:end].replace('\\n', '\n').replace('\\"', '"').replace('\\\\', '\\')
            else:
                v = re.sub(r"\s+#.*$", "", v).rstrip()
            env[k] = v
    return env


VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}"
                 r"|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(s, env, where):
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        val = env.get(name)
        if op is None:
            if val is None:
                err(f'WARN[0000] The "{name}" variable is not set. Defaulting to a blank string.')
                return ""
            return val
        if op in (":-", "-"):
            unset = val is None or (op == ":-" and val == "")
            return interpolate(arg, env, where) if unset else val
        if op in (":+", "+"):
            present = val is not None and (op == "+" or val != "")
            return interpolate(arg, env, where) if present else ""
        if op in (":?", "?"):
            if val is None or (op == ":?" and val == ""):
                raise UserError(f"error while interpolating {where}: required variable {name} "
                                f"is missing a value: {arg}")
            return val
        return m.group(0)
    return VAR.sub(sub, s)


def interpolate_tree(node, env, where="services"):
    if isinstance(node, str):
        return interpolate(node, env, where)
    if isinstance(node, list):
        return [interpolate_tree(x, env, where) for x in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env, f"{where}.{k}") for k, v in node.items()}
    return node


def merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if k in a else v
        return out
    return b


def parse_duration(v, default):
    if v is None:
        return default
    if isinstance(v, (int, float)):
        return float(v)
    total, num = 0.0, ""
    s = str(v)
    i = 0
    while i < len(s):
        ch = s[i]
        if ch.isdigit() or ch == ".":
            num += ch
            i += 1
            continue
        for u, mult in (("ms", 0.001), ("us", 1e-6), ("h", 3600), ("m", 60), ("s", 1)):
            if s.startswith(u, i):
                total += float(num or 0) * mult
                num = ""
                i += len(u)
                break
        else:
            raise UserError(f"invalid duration {s!r}")
    if num:
        total += float(num)
    return total


def normalize_name(n):
    return re.sub(r"[^a-z0-9_-]", "", n.lower())


class Project:
    def __init__(self, g, v1):
        self.v1 = v1
        cwd = os.environ.get("PWD")
        real_cwd = os.getcwd()
        if not cwd or not os.path.isabs(cwd) or os.path.realpath(cwd) != os.path.realpath(real_cwd):
            cwd = real_cwd
        files = [f if os.path.isabs(f) else os.path.normpath(os.path.join(cwd, f)) for f in g["files"]]
        if g["project_directory"]:
            pd = g["project_directory"]
            self.dir = os.path.normpath(pd if os.path.isabs(pd) else os.path.join(cwd, pd))
        elif files:
            self.dir = os.path.dirname(files[0])
        else:
            self.dir = cwd
        if not files:
            d = self.dir
            while True:
                found = [os.path.join(d, n) for n in COMPOSE_FILES if os.path.exists(os.path.join(d, n))]
                if found:
                    files = [found[0]]
                    if not g["project_directory"]:
                        self.dir = d
                    break
                if d == "/":
                    raise UserError("no configuration file provided: not found")
                d = os.path.dirname(d)
        self.files = files
        env_file = g["env_file"] or os.path.join(self.dir, ".env")
        dotenv = {}
        if os.path.exists(env_file):
            try:
                dotenv = parse_dotenv(env_file)
            except OSError as e:
                raise UserError(f"failed to read {env_file}: {e.strerror}")
        elif g["env_file"]:
            raise UserError(f"Couldn't find env file: {env_file}")
        # Shell environment overrides .env (both feed interpolation and
        # `environment: - VAR` pass-through).
        self.env = dict(dotenv)
        self.env.update(os.environ)
        model = {}
        for f in files:
            try:
                with open(f) as fh:
                    import yaml
                    # libyaml's loader where PyYAML has it: same documents, a fraction of the CPU.
                    doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
            except FileNotFoundError:
                raise UserError(f"open {f}: no such file or directory")
            except Exception as e:  # yaml errors
                raise UserError(f"{f}: {e}")
            model = merge(model, doc)
        raw_name = model.get("name")
        model = interpolate_tree(model, self.env)
        name = g["project_name"] or self.env.get("COMPOSE_PROJECT_NAME") or \
            (model.get("name") if raw_name else None) or os.path.basename(self.dir)
        self.name = normalize_name(name)
        if not self.name:
            raise UserError("project name must not be empty")
        self.services = {}
        for sname, s in (model.get("services") or {}).items():
            self.services[sname] = self.resolve_service(sname, s or {})
        # Enabled profiles: --profile (repeatable), else COMPOSE_PROFILES
        # (shell or .env, comma-separated).
        profs = g.get("profiles") or (self.env.get("COMPOSE_PROFILES") or "").split(",")
        self.profiles = {x.strip() for x in profs if x.strip()}

    def enabled(self, sname):
        """A service without profiles, or with one of the enabled profiles."""
        ps = self.services[sname]["profiles"]
        return not ps or "*" in self.profiles or bool(self.profiles & set(ps))

    def resolve_service(self, name, s):
        if not s.get("image"):
            raise UserError(f"service {name!r} has neither an image nor a build context "
                            "usable here (the testbed cannot build images)")

        def words(v):
            if v is None:
                return None
            return shlex.split(v) if isinstance(v, str) else [str(x) for x in v]
        env = {}
        for ef in (s.get("env_file") or []) if isinstance(s.get("env_file"), list) else \
                ([s["env_file"]] if s.get("env_file") else []):
            path = ef if isinstance(ef, str) else ef.get("path")
            p = path if os.path.isabs(path) else os.path.join(self.dir, path)
            if not os.path.exists(p):
                raise UserError(f"env file {p} not found")
            env.update(parse_dotenv(p))
        envspec = s.get("environment") or {}
        if isinstance(envspec, list):
            for item in envspec:
                item = str(item)
                if "=" in item:
                    k, v = item.split("=", 1)
                    env[k] = v
                elif item in self.env:
                    env[item] = self.env[item]
        else:
            for k, v in envspec.items():
                if v is None:
                    if k in self.env:
                        env[k] = self.env[k]
                else:
                    env[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        vols = []
        for v in s.get("volumes") or []:
            if isinstance(v, dict):
                src, dst, mode = v.get("source", ""), v["target"], "ro" if v.get("read_only") else "rw"
                typ = v.get("type", "volume")
            else:
                parts = str(v).split(":")
                if len(parts) == 1:
                    src, dst, mode, typ = "", parts[0], "rw", "volume"
                else:
                    src, dst = parts[0], parts[1]
                    mode = parts[2] if len(parts) > 2 else "rw"
                    typ = "bind" if src.startswith((".", "/", "~")) else "volume"
            if typ == "bind":
                if src.startswith("~"):
                    src = os.path.expanduser(src)
                src = os.path.normpath(src if os.path.isabs(src) else os.path.join(self.dir, src))
            else:
                vname = f"{self.name}_{src}" if src else f"anon-{secrets.token_hex(8)}"
                src = os.path.join(ROOT, "volumes", vname)
                os.makedirs(src, exist_ok=True)
            vols.append([src, dst, mode])
        deps = s.get("depends_on") or []
        deps = list(deps) if isinstance(deps, (list, dict)) else []
        nm = s.get("network_mode")
        if isinstance(nm, str) and nm.startswith("service:") and nm[8:] not in deps:
            deps.append(nm[8:])
        scale = s.get("scale")
        if scale is None:
            scale = ((s.get("deploy") or {}).get("replicas"))
        svc = {
            "image": str(s["image"]), "command": words(s.get("command")),
            "entrypoint": words(s.get("entrypoint")), "environment": env, "volumes": vols,
            "network_mode": nm, "restart": str(s.get("restart") or "no"),
            "user": str(s["user"]) if s.get("user") is not None else None,
            "stop_grace_period": parse_duration(s.get("stop_grace_period"), DEFAULT_STOP_TIMEOUT),
            "ports": [str(p) for p in s.get("ports") or []],
            "working_dir": s.get("working_dir"),
            "labels": s.get("labels") or {},
        }
        rest = {k: v for k, v in s.items() if k not in svc and k not in HASH_EXCLUDE
                and k not in ("env_file", "environment", "stop_grace_period")}
        hashed = dict(svc, other=rest)
        svc["config_hash"] = hashlib.sha256(
            json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()
        # After the hash: a service's hash does not depend on other services.
        profiles = s.get("profiles") or []
        svc["profiles"] = [str(x) for x in ([profiles] if isinstance(profiles, str) else profiles)]
        svc["depends_on"] = deps
        svc["scale"] = int(scale) if scale is not None else 1
        return svc

    def order(self, names):
        """names plus dependencies, dependencies first."""
        out, seen = [], set()

        def visit(n, path=()):
            if n in seen:
                return
            if n in path:
                raise UserError(f"dependency cycle through {n}")
            if n not in self.services:
                raise UserError(f"no such service: {n}")
            for d in self.services[n]["depends_on"]:
                visit(d, path + (n,))
            seen.add(n)
            out.append(n)
        for n in names:
            visit(n)
        return out

    def cname(self, service, number):
        sep = "_" if self.v1 else "-"
        return f"{self.name}{sep}{service}{sep}{number}"

    def containers(self, service=None, oneoff=False):
        cs = [refresh(c) for c in all_containers()
              if c["project"] == self.name and (service is None or c["service"] == service)
              and bool(c.get("oneoff")) == oneoff]
        cs.sort(key=lambda c: c.get("number") or 0)
        return cs


def new_container(p, sname, number, name=None, oneoff=False, overrides=None):
    s = dict(p.services[sname])
    if overrides:
        s.update(overrides)
    cid = secrets.token_hex(32)
    c = {
        "id": cid, "name": name or p.cname(sname, number), "project": p.name, "service": sname,
        "number": number, "oneoff": oneoff, "image": s["image"], "command": s["command"],
        "entrypoint": s["entrypoint"], "env": s["environment"], "volumes": s["volumes"],
        "network_mode": s["network_mode"], "restart": "no" if oneoff else s["restart"],
        "user": s["user"], "stop_timeout": s["stop_grace_period"], "ports": s["ports"],
        "config_hash": s["config_hash"], "project_dir": p.dir, "config_files": p.files,
        "created": time.time(), "status": "created", "desired": "stopped",
        "user_stopped": False, "restart_count": 0, "exit_code": 0,
        "labels": {"com.docker.compose.project": p.name, "com.docker.compose.service": sname,
                   "com.docker.compose.container-number": str(number),
                   "com.docker.compose.oneoff": "True" if oneoff else "False",
                   "com.docker.compose.config-hash": s["config_hash"],
                   "com.docker.compose.project.working_dir": p.dir,
                   "com.docker.compose.project.config_files": ",".join(p.files),
                   **{str(k): str(v) for k, v in (s.get("labels") or {}).items()}},
    }
    os.makedirs(cpath(cid), mode=0o700, exist_ok=True)
    save(c)
    return c


def progress(p, name, what):
    if p.v1:
        err(f"{what} {name} ... done")
    else:
        err(f" Container {name}  {what}")


def compose_up(p, services, opts):
    # Named services run whatever their profiles; otherwise the enabled ones.
    targets = services or [n for n in p.services if p.enabled(n)]
    order = targets if opts["no_deps"] else p.order(targets)
    for n in targets:
        if n not in p.services:
            raise UserError(f"no such service: {n}")
    if not services:
        known = set(p.services)
        orphans = [c for c in p.containers() if c["service"] not in known]
        if orphans and opts["remove_orphans"]:
            for c in orphans:
                stop_container(c, opts["timeout"], user=False)
                remove_container(c)
                progress(p, c["name"], "Removed")
        elif orphans:
            err(f"WARN[0000] Found orphan containers ({', '.join(c['name'] for c in orphans)}) "
                f"for this project. If you removed or renamed this service in your compose file, "
                "you can run this command with the --remove-orphans flag to clean it up.")
    for sname in order:
        s = p.services[sname]
        want = opts["scale"].get(sname, s["scale"])
        existing = p.containers(sname)
        is_dep = sname not in targets
        if is_dep:
            # Dependencies are started, never recreated or scaled by `up X`.
            for c in existing:
                if c["status"] != "running":
                    start_container(c)
                    progress(p, c["name"], "Started")
            if existing:
                continue
        # Scale down first: drop diverged (outdated) containers, then stopped
        # ones, then the highest numbers.
        if len(existing) > want:
            ranked = sorted(existing, key=lambda c: (c["config_hash"] == s["config_hash"],
                                                     c["status"] == "running", -c["number"]),)
            for c in ranked[:len(existing) - want]:
                progress(p, c["name"], "Stopping")
                stop_container(c, opts["timeout"], user=False)
                remove_container(c)
                progress(p, c["name"], "Removed")
            existing = [c for c in existing if load(c["id"]) is not None]
        for c in existing:
            changed = c["config_hash"] != s["config_hash"]
            if (opts["force_recreate"] or changed) and not opts["no_recreate"]:
                progress(p, c["name"], "Recreate")
                num = c["number"]
                stop_container(c, opts["timeout"], user=False)
                remove_container(c)
                nc = new_container(p, sname, num)
                progress(p, nc["name"], "Recreated")
                if not opts["no_start"]:
                    start_container(nc)
                    progress(p, nc["name"], "Started")
            elif c["status"] != "running":
                if not opts["no_start"]:
                    start_container(c)
                    progress(p, c["name"], "Started")
            else:
                progress(p, c["name"], "Running" if not p.v1 else "is up-to-date")
        used = {c["number"] for c in existing}
        n = 1
        while len(used) < want:
            while n in used:
                n += 1
            used.add(n)
            nc = new_container(p, sname, n)
            progress(p, nc["name"], "Created")
            if not opts["no_start"]:
                start_container(nc)
                progress(p, nc["name"], "Started")


def up_services(p, services, no_deps):
    """The services `up services` (or `run`) starts: named (else enabled) ones, plus
    their dependencies unless --no-deps."""
    targets = services or [n for n in p.services if p.enabled(n)]
    for n in targets:
        if n not in p.services:
            raise UserError(f"no such service: {n}")
    return targets if no_deps else p.order(targets)


def pick(p, services, oneoff=False):
    for s in services:
        if s not in p.services:
            raise UserError(f"no such service: {s}")
    cs = p.containers()
    if services:
        cs = [c for c in cs if c["service"] in services]
    return cs


def human_duration(sec):
    sec = max(0, sec)
    if sec < 1:
        return "Less than a second"
    if sec < 2:
        return "1 second"
    if sec < 60:
        return f"{int(sec)} seconds"
    m = sec / 60
    if int(m) == 1:
        return "About a minute"
    if m < 60:
        return f"{int(m)} minutes"
    h = m / 60
    if round(h) == 1:
        return "About an hour"
    if h < 48:
        return f"{round(h)} hours"
    return f"{int(h / 24)} days"


def status_text(c):
    now = time.time()
    st = c["status"]
    if st == "running":
        return f"Up {human_duration(now - c.get('started_at', now))}"
    if st == "restarting":
        return f"Restarting ({c.get('exit_code', 0)}) {human_duration(now - c.get('finished_at', now))} ago"
    if st == "exited":
        return f"Exited ({c.get('exit_code', 0)}) {human_duration(now - c.get('finished_at', now))} ago"
    return "Created"


def command_text(c):
    words = (c.get("entrypoint") or []) + (c.get("command") or [])
    return " ".join(shlex.quote(w) for w in words)


def ps_record(c):
    t = time.gmtime(c["created"])
    return {
        "Command": f'"{command_text(c)[:20]}…"' if len(command_text(c)) > 20 else f'"{command_text(c)}"',
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", t),
        "ExitCode": c.get("exit_code", 0) if c["status"] == "exited" else 0,
        "Health": "", "ID": c["id"][:12], "Image": c["image"],
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(c["labels"].items())),
        "LocalVolumes": "0", "Mounts": ",".join(v[0] for v in c.get("volumes") or []),
        "Name": c["name"], "Names": c["name"], "Networks": "", "Ports": "",
        "Project": c["project"], "Publishers": [], "RunningFor": human_duration(time.time() - c["created"]) + " ago",
        "Service": c["service"], "Size": "0B", "State": c["status"], "Status": status_text(c),
    }


def go_text(v):
    """A value as Go's text/template prints it (booleans `true`/`false`)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def go_template(fmt, rec):
    if fmt.strip() in ("json", "{{json .}}"):
        return json.dumps(rec, ensure_ascii=False, separators=(",", ":"))

    def sub(m):
        expr = m.group(1).strip()
        if expr == "json .":
            return json.dumps(rec)
        if expr.startswith("."):
            v = rec
            for part in expr[1:].split("."):
                v = v.get(part, "") if isinstance(v, dict) else ""
            return go_text(v)
        if expr.startswith("index ."):
            # {{index .Config.Labels "com.docker.compose.project"}}
            m2 = re.fullmatch(r'index \.([\w.]*)\s+"([^"]*)"', expr)
            if not m2:
                raise UserError(f"template: unsupported expression {{{{{expr}}}}} in the testbed stand-in")
            v = rec
            for part in m2.group(1).split("."):
                v = v.get(part, {}) if isinstance(v, dict) else {}
            v = v.get(m2.group(2), "") if isinstance(v, dict) else ""
            return go_text(v)
        if expr.startswith("json ."):
            v = rec
            for part in expr[6:].split("."):
                v = v.get(part, "") if isinstance(v, dict) else ""
            return json.dumps(v)
        raise UserError(f"template: unsupported expression {{{{{expr}}}}} in the testbed stand-in")
    out = re.sub(r"\{\{(.*?)\}\}", sub, fmt)
    return out.replace("\\t", "\t").replace("\\n", "\n")


def print_logs(cs, prefix, tail=None, timestamps=False, follow=False):
    width = max([len(c["name"]) for c in cs] + [0])
    offsets = {}
    for c in cs:
        try:
            with open(cpath(c["id"], "log"), "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        offsets[c["id"]] = len(data)
        lines = data.decode(errors="replace").splitlines()
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        for line in lines:
            sys.stdout.write((f"{c['name']:<{width}}  | " if prefix else "") + line + "\n")
    sys.stdout.flush()
    while follow:
        time.sleep(0.2)
        any_running = False
        for c in cs:
            c2 = refresh(load(c["id"]) or c)
            any_running |= c2["status"] in ("running", "restarting")
            try:
                with open(cpath(c["id"], "log"), "rb") as f:
                    f.seek(offsets[c["id"]])
                    data = f.read()
            except OSError:
                continue
            offsets[c["id"]] += len(data)
            for line in data.decode(errors="replace").splitlines():
                sys.stdout.write((f"{c['name']:<{width}}  | " if prefix else "") + line + "\n")
        sys.stdout.flush()
        if not any_running:
            return


def run_foreground(c):
    """`compose run` without -d: program attached to our stdio, exit code passed on."""
    def mark(x):
        x.update(status="running", started_at=time.time(), desired="running")
    argv = program_for(c)
    if argv[0] == "/bin/sh" and "sleep 3600" in argv[-1]:
        # An image without a stand-in would sleep forever: a one-off run of it
        # does nothing instead (the testbed never runs a service's command).
        err(f"testbed: image {c['image']} has no stand-in; `run` did nothing")
        argv = ["/bin/true"]
    update(c["id"], mark)
    # Own process group, so a signal reaches the whole program and nothing is
    # left holding our stdout (an ssh session would hang on it).
    child = subprocess.Popen(argv, env=program_env(c), cwd="/", start_new_session=True)

    def fwd(signum, frame):
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass
    signal.signal(signal.SIGTERM, fwd)
    signal.signal(signal.SIGINT, fwd)
    signal.signal(signal.SIGHUP, fwd)
    rc = child.wait()
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    code = rc if rc >= 0 else 128 - rc

    def done(x):
        x.update(status="exited", exit_code=code, finished_at=time.time())
    update(c["id"], done)
    return code


def parse_opts(args, spec):
    """Tiny option parser. spec: {'-d': 'detach' (flag) | ('name', 'value')}.
    Returns (opts, positional). Stops at the first positional when
    spec['__stop__'] is set (for `run SERVICE CMD...`)."""
    opts, pos = {}, []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            pos += args[i + 1:]
            break
        if a.startswith("-") and a != "-":
            key, val = (a.split("=", 1) + [None])[:2] if a.startswith("--") else (a, None)
            if key not in spec and not a.startswith("--") and len(a) > 2:
                # combined short flags: -dT
                expanded = [f"-{ch}" for ch in a[1:]]
                if all(e in spec for e in expanded):
                    args = args[:i] + expanded + args[i + 1:]
                    continue
            if key not in spec:
                raise UserError(f"unknown flag: {key}")
            kind = spec[key]
            if isinstance(kind, tuple):
                if val is None:
                    i += 1
                    if i >= len(args):
                        raise UserError(f"flag needs an argument: {key}")
                    val = args[i]
                if kind[1] == "list":
                    opts.setdefault(kind[0], []).append(val)
                else:
                    opts[kind[0]] = val
            else:
                opts[kind] = True
            i += 1
            continue
        pos.append(a)
        if spec.get("__stop__"):
            pos += args[i + 1:]
            break
        i += 1
    return opts, pos


def compose_main(args, v1):
    g = {"files": [], "project_directory": None, "project_name": None, "env_file": None,
         "profiles": []}
    i = 0
    while i < len(args):
        a = args[i]
        key, val = (a.split("=", 1) + [None])[:2] if a.startswith("--") and "=" in a else (a, None)

        def value():
            nonlocal i
            if val is not None:
                return val
            i += 1
            if i >= len(args):
                raise UserError(f"flag needs an argument: {key}")
            return args[i]
        if key in ("-f", "--file"):
            g["files"].append(value())
        elif key == "--project-directory":
            g["project_directory"] = value()
        elif key in ("-p", "--project-name"):
            g["project_name"] = value()
        elif key == "--env-file":
            g["env_file"] = value()
        elif key == "--profile":
            g["profiles"].append(value())
        elif key in ("--ansi", "--progress", "--parallel", "-H", "--host",
                     "--log-level"):
            value()
        elif key in ("--no-ansi", "--compatibility", "--dry-run", "--verbose"):
            pass
        elif key in ("-v", "--version"):
            return compose_version(v1, [])
        elif key in ("-h", "--help"):
            print("Usage: docker compose [OPTIONS] COMMAND  (testbed stand-in: up, down, stop, "
                  "start, restart, rm, ps, logs, run, version, config)")
            return 0
        elif a.startswith("-"):
            raise UserError(f"unknown flag: {a}")
        else:
            break
        i += 1
    if i >= len(args):
        raise UserError("docker compose: a command is required")
    cmd, rest = args[i], args[i + 1:]
    if cmd == "version":
        return compose_version(v1, rest)
    p = Project(g, v1)
    timeout_spec = {"-t": ("timeout", "one"), "--timeout": ("timeout", "one")}

    if cmd == "config":
        o, pos = parse_opts(rest, {"--services": "services", "-q": "quiet", "--quiet": "quiet",
                                   "--hash": ("hash", "one"), "--images": "images"})
        if o.get("services"):
            print("\n".join(n for n in p.services if p.enabled(n)))
        elif o.get("images"):
            print("\n".join(p.services[n]["image"] for n in p.services if p.enabled(n)))
        elif o.get("hash"):
            for s in (p.services if o["hash"] == "*" else o["hash"].split(",")):
                print(f"{s} {p.services[s]['config_hash']}")
        elif not o.get("quiet"):
            view = {n: {k: v for k, v in s.items() if k != "environment"}
                    for n, s in p.services.items()}
            print(json.dumps({"name": p.name, "project_dir": p.dir, "services": view}, indent=2))
        return 0
    if cmd == "pull":
        return compose_pull(p, v1, rest)
    if cmd == "up":
        o, pos = parse_opts(rest, {
            "-d": "detach", "--detach": "detach", "--no-deps": "no_deps",
            "--force-recreate": "force_recreate", "--no-recreate": "no_recreate",
            "--remove-orphans": "remove_orphans", "--no-start": "no_start",
            "--scale": ("scale", "list"), "--wait": "wait", "--quiet-pull": "x",
            "--pull": ("pull", "one"), "--always-recreate-deps": "x", "-V": "x",
            "--renew-anon-volumes": "x", "--no-build": "x", "--build": "x",
            "--wait-timeout": ("wt", "one"), "--no-color": "x", "-y": "x", **timeout_spec})
        if not o.get("detach"):
            raise UserError("testbed stand-in: only `up -d` (detached) is supported")
        if o.get("force_recreate") and o.get("no_recreate"):
            raise UserError("--force-recreate and --no-recreate are incompatible")
        scale = {}
        for sc in o.get("scale", []):
            k, _, v = sc.partition("=")
            scale[k] = int(v)
        with global_lock():
            # Compose pulls missing images first: nothing changes when one cannot be had.
            ensure_images(p, up_services(p, pos, o.get("no_deps")), o.get("pull"))
            compose_up(p, pos, {"no_deps": o.get("no_deps"), "force_recreate": o.get("force_recreate"),
                                "no_recreate": o.get("no_recreate"), "scale": scale,
                                "remove_orphans": o.get("remove_orphans"),
                                "no_start": o.get("no_start"),
                                "timeout": float(o["timeout"]) if "timeout" in o else None})
        return 0
    if cmd in ("stop", "restart", "start", "kill"):
        o, pos = parse_opts(rest, {**timeout_spec, "-s": ("signal", "one"),
                                   "--signal": ("signal", "one"), "--no-deps": "x"})
        t = float(o["timeout"]) if "timeout" in o else None
        with global_lock():
            for c in pick(p, pos):
                if cmd == "stop":
                    if c["status"] in ("running", "restarting"):
                        progress(p, c["name"], "Stopping")
                        stop_container(c, t)
                        progress(p, c["name"], "Stopped")
                elif cmd == "kill":
                    stop_container(c, 0)
                    progress(p, c["name"], "Killed")
                elif cmd == "start":
                    start_container(c)
                    progress(p, c["name"], "Started")
                else:
                    # Same container, same stored environment: .env is not re-read.
                    progress(p, c["name"], "Restarting")
                    stop_container(c, t, user=False)
                    start_container(load(c["id"]))
                    progress(p, c["name"], "Started")
        return 0
    if cmd == "rm":
        o, pos = parse_opts(rest, {"-f": "force", "--force": "force", "-s": "stop",
                                   "--stop": "stop", "-v": "x", "--volumes": "x"})
        with global_lock():
            cs = pick(p, pos) + [c for c in p.containers(oneoff=True) if not pos or c["service"] in pos]
            gone = 0
            for c in cs:
                if c["status"] in ("running", "restarting"):
                    if not o.get("stop"):
                        continue   # real `compose rm` leaves running containers alone
                    progress(p, c["name"], "Stopping")
                    stop_container(c, None, user=False)
                remove_container(c)
                progress(p, c["name"], "Removed")
                gone += 1
            if not gone:
                err("No stopped containers")
        return 0
    if cmd == "down":
        o, pos = parse_opts(rest, {**timeout_spec, "--remove-orphans": "x", "-v": "x",
                                   "--volumes": "x", "--rmi": ("rmi", "one")})
        t = float(o["timeout"]) if "timeout" in o else None
        with global_lock():
            for c in reversed(p.containers() + p.containers(oneoff=True)):
                progress(p, c["name"], "Stopping")
                stop_container(c, t, user=False)
                remove_container(c)
                progress(p, c["name"], "Removed")
        return 0
    if cmd == "ps":
        o, pos = parse_opts(rest, {"-a": "all", "--all": "all", "-q": "quiet", "--quiet": "quiet",
                                   "--format": ("format", "one"), "--services": "services",
                                   "--status": ("status", "list"), "--filter": ("filter", "list"),
                                   "--no-trunc": "x", "--orphans": "x"})
        cs = pick(p, pos)
        # v2 lists one-off (`run`) containers of the project too.
        cs += [c for c in p.containers(oneoff=True) if not pos or c["service"] in pos]
        if not (o.get("all") or v1):
            cs = [c for c in cs if c["status"] in ("running", "restarting")]
        if o.get("status"):
            cs = [c for c in cs if c["status"] in o["status"]]
        if o.get("services"):
            print("\n".join(sorted({c["service"] for c in cs})))
            return 0
        if o.get("quiet"):
            for c in cs:
                print(c["id"])
            return 0
        fmt = o.get("format")
        if fmt and v1:
            raise UserError("no such option: --format")
        if fmt:
            for c in cs:
                print(go_template(fmt, ps_record(c)))
            return 0
        rows = [("NAME", "IMAGE", "COMMAND", "SERVICE", "CREATED", "STATUS", "PORTS")]
        for c in cs:
            r = ps_record(c)
            rows.append((r["Name"], r["Image"], r["Command"], r["Service"], r["RunningFor"],
                         r["Status"], ""))
        widths = [max(len(str(r[k])) for r in rows) for k in range(len(rows[0]))]
        for r in rows:
            print("   ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
        return 0
    if cmd == "logs":
        o, pos = parse_opts(rest, {"-f": "follow", "--follow": "follow", "-t": "ts",
                                   "--timestamps": "ts", "--tail": ("tail", "one"),
                                   "--no-color": "x", "--no-log-prefix": "noprefix",
                                   "--since": ("since", "one"), "--until": ("until", "one")})
        tail = o.get("tail")
        tail = None if tail in (None, "all") else int(tail)
        print_logs(pick(p, pos), not o.get("noprefix"), tail, follow=o.get("follow"))
        return 0
    if cmd == "run":
        o, pos = parse_opts(rest, {
            "-d": "detach", "--detach": "detach", "--rm": "rm", "--name": ("name", "one"),
            "-e": ("env", "list"), "--env": ("env", "list"), "--entrypoint": ("entrypoint", "one"),
            "--no-deps": "no_deps", "-T": "x", "--no-TTY": "x", "-i": "x", "--interactive": "x",
            "-u": ("user", "one"), "--user": ("user", "one"), "-w": ("workdir", "one"),
            "-v": ("volume", "list"), "--volume": ("volume", "list"), "-l": ("label", "list"),
            "--label": ("label", "list"), "--service-ports": "x", "--quiet-pull": "x",
            "-P": "x", "--use-aliases": "x", "--remove-orphans": "x", "--pull": ("pull", "one"),
            "__stop__": True})
        if not pos:
            raise UserError("run: a service is required")
        sname, cmdargs = pos[0], pos[1:]
        if sname not in p.services:
            raise UserError(f"no such service: {sname}")
        over = {}
        if cmdargs:
            over["command"] = cmdargs
        if o.get("entrypoint") is not None:
            over["entrypoint"] = shlex.split(o["entrypoint"])
        if o.get("env"):
            env = dict(p.services[sname]["environment"])
            for e in o["env"]:
                k, eq, v = e.partition("=")
                if eq:
                    env[k] = v
                elif k in p.env:
                    env[k] = p.env[k]
            over["environment"] = env
        if o.get("user"):
            over["user"] = o["user"]
        sep = "_" if v1 else "-"
        name = o.get("name") or f"{p.name}{sep}{sname}{sep}run{sep}{secrets.token_hex(6)}"
        with global_lock():
            ensure_images(p, up_services(p, [sname], o.get("no_deps")), o.get("pull"))
            if any(c["name"] == name for c in all_containers()):
                raise UserError(f'Error response from daemon: Conflict. The container name '
                                f'"/{name}" is already in use')
            if not o.get("no_deps"):
                deps = [d for d in p.order([sname]) if d != sname]
                if deps:
                    compose_up(p, deps, {"no_deps": True, "force_recreate": False,
                                         "no_recreate": True, "scale": {}, "remove_orphans": False,
                                         "no_start": False, "timeout": None})
            c = new_container(p, sname, None, name=name, oneoff=True, overrides=over)
            if o.get("rm"):
                c["auto_remove"] = True
                save(c)
        if o.get("detach"):
            start_container(c)
            print(c["name"])
            return 0
        code = run_foreground(c)
        if o.get("rm"):
            remove_container(load(c["id"]) or c)
        return code
    raise UserError(f"docker compose: unknown command {cmd!r} (testbed stand-in)")


def compose_version(v1, rest):
    if v1:
        if "--short" in rest:
            print(V1_VERSION)
        else:
            print(f"docker-compose version {V1_VERSION}, build unknown")
            if rest != ["--version"]:
                print("docker-py version: 5.0.3\nCPython version: 3.11.2\n"
                      "OpenSSL version: OpenSSL 3.0.11 19 Sep 2023")
        return 0
    if "--short" in rest:
        print(V2_VERSION)
    elif "json" in rest or "--format=json" in rest:
        print(json.dumps({"version": f"v{V2_VERSION}"}))
    else:
        print(f"Docker Compose version v{V2_VERSION}")
    return 0


# -------------------------------------------------------- inspect shape ----

def rfc3339(t):
    """A time as Docker prints it (RFC 3339, nanoseconds, UTC); Docker's zero
    time for "never"."""
    if not t:
        return "0001-01-01T00:00:00Z"
    ns = int(round((t - int(t)) * 1e9))
    if ns >= 1_000_000_000:
        t, ns = int(t) + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t))) + f".{ns:09d}Z"


def network_mode_shown(c):
    """HostConfig.NetworkMode as Docker shows it: Compose resolves `service:X` to
    `container:<full id of X's container>`, the container joined when this one last
    started (a container that never ran: X's container now)."""
    nm = c.get("network_mode") or "default"
    if nm.startswith("service:"):
        joined = c.get("joined_id")
        if not joined:
            owner = netns_owner(c)
            joined = owner["id"] if owner is not c else ""
        return f"container:{joined}" if joined else nm
    return nm


def network_settings(c):
    """NetworkSettings as Docker shows them. Stand-in containers run on the
    host's own network namespace, so an address is 127.0.0.1; a container
    that joins another's namespace (`network_mode: service:X` /
    `container:X`) has none, as on Docker; `host` has none either."""
    nm = c.get("network_mode") or ""
    if nm.startswith(("service:", "container:")):
        return {"IPAddress": "", "Gateway": "", "Networks": {}}
    if nm in ("host", "none"):
        return {"IPAddress": "", "Gateway": "", "Networks": {nm: {"IPAddress": "", "Gateway": ""}}}
    net = nm if nm and nm not in ("default", "bridge") else f"{c['project']}_default"
    addr = project_addr(c)
    return {"IPAddress": addr, "Gateway": "", "Networks": {
        net: {"IPAddress": addr, "Gateway": "", "Aliases": [c["service"], c["id"][:12]]}}}


# --------------------------------------------------------------- images ----
# A per-host image store: ROOT/images/<reference, escaped>.json, one
# record per reference (ROOT survives reboots, as dockerd's image store does).
# Nothing is downloaded: "pulling" records the reference. A reference that
# contains "unpullable" cannot be pulled ("manifest unknown"), which is how the
# testbed models a release whose image does not exist in the registry. While
# ROOT/registry-offline exists, no pull succeeds on that host (a registry out of
# reach): what is in the store is all there is.

IMAGES = os.path.join(ROOT, "images")


def split_ref(ref):
    """(repository, tag or None, digest or None) of an image reference."""
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest or None


def norm_ref(ref):
    """The reference as the store keys it: `:latest` added when neither a tag
    nor a digest is given (as Docker does)."""
    repo, tag, digest = split_ref(ref.strip())
    if not tag and not digest:
        tag = "latest"
    return repo + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def fake_digest(ref, what):
    return "sha256:" + hashlib.sha256(f"{what}:{norm_ref(ref)}".encode()).hexdigest()


def image_file(ref):
    """The record's path: the normalised reference with `%` and `/` escaped (reversible, so
    no two references share a file; no hashing, which inspect would pay on every call)."""
    name = norm_ref(ref).replace("%", "%25").replace("/", "%2F")
    return os.path.join(IMAGES, name + ".json")


def all_images():
    out = []
    try:
        names = os.listdir(IMAGES)
    except FileNotFoundError:
        return out
    for n in names:
        if not n.endswith(".json"):
            continue
        try:
            with open(os.path.join(IMAGES, n)) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            continue
    out.sort(key=lambda i: (i["created"], i["ref"]))
    return out


def find_image(ref):
    """The stored image for a reference or an image id (full, `sha256:`-less,
    or a prefix of at least 3 hex digits), else None."""
    try:
        with open(image_file(ref)) as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    want = ref[7:] if ref.startswith("sha256:") else ref
    if len(want) >= 3 and re.fullmatch(r"[0-9a-f]+", want):
        hits = [i for i in all_images() if i["id"][7:].startswith(want)]
        if len({i["id"] for i in hits}) == 1:
            return hits[0]
    return None


def engine_down():
    """ROOT/engine-down exists (`testbed fault HOST engine-down`): every docker and
    compose command fails as against a stopped dockerd (the containers keep running,
    as with live-restore)."""
    return os.path.exists(os.path.join(ROOT, "engine-down"))


def registry_offline():
    return os.path.exists(os.path.join(ROOT, "registry-offline"))


def pull_error(ref):
    if registry_offline():
        return f"pull {ref}: registry unreachable: dial tcp: i/o timeout (testbed: registry-offline)"
    return f"manifest for {ref} not found: manifest unknown: manifest unknown"


def pull_image(ref):
    """Records ref in the store ("pulls" it); returns (record, was_new).
    UserError for an unpullable reference (nothing recorded)."""
    if "unpullable" in ref or registry_offline():
        raise UserError(f"Error response from daemon: {pull_error(ref)}")
    old = find_image(ref)
    if old is not None and old["ref"] == norm_ref(ref):
        return old, False
    repo, tag, digest = split_ref(norm_ref(ref))
    rec = {"ref": norm_ref(ref), "repository": repo, "tag": tag,
           "digest": digest or fake_digest(ref, "manifest"), "id": fake_digest(ref, "config"),
           "created": time.time(), "size": 20_000_000 + int(fake_digest(ref, "size")[7:13], 16) % 50_000_000}
    os.makedirs(IMAGES, mode=0o700, exist_ok=True)
    path = image_file(ref)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1)
    os.rename(tmp, path)
    return rec, True


def containers_using(img):
    return [c for c in all_containers() if norm_ref(c["image"]) == img["ref"]]


def ensure_images(p, snames, policy=None, quiet=False):
    """Compose's implicit pull before `up`/`run`: every image of snames that is
    not in the store is pulled (`--pull always`: every one; `never`: none, a
    missing one is an error). Fails before anything is created or stopped."""
    errors = []
    for sname in snames:
        ref = p.services[sname]["image"]
        present = find_image(ref) is not None and find_image(ref)["ref"] == norm_ref(ref)
        if policy == "never":
            if not present:
                errors.append((sname, f"No such image: {ref}"))
            continue
        if present and policy != "always":
            continue
        if not quiet:
            progress(p, sname, "Pulling")
        try:
            pull_image(ref)
        except UserError:
            err(f" {sname} Error {pull_error(ref)}" if not p.v1 else f"ERROR: for {sname}  {pull_error(ref)}")
            errors.append((sname, pull_error(ref)))
            continue
        if not quiet:
            progress(p, sname, "Pulled")
    if errors:
        raise UserError(f"Error response from daemon: {errors[0][1]}")


def compose_pull(p, v1, rest):
    """`compose pull [-q] [--ignore-pull-failures] [svc...]`: every named (else
    every enabled) service's image; all are tried, the first failure is the
    error (exit 1)."""
    o, pos = parse_opts(rest, {"-q": "quiet", "--quiet": "quiet", "--ignore-pull-failures": "ignore",
                               "--include-deps": "deps", "--parallel": "x", "--no-parallel": "x",
                               "--policy": ("policy", "one"), "--ignore-buildable": "x"})
    names = pos or [n for n in p.services if p.enabled(n)]
    for n in names:
        if n not in p.services:
            raise UserError(f"no such service: {n}")
    if o.get("deps"):
        names = p.order(names)
    failed = []
    with global_lock():
        for n in names:
            ref = p.services[n]["image"]
            if o.get("policy") == "missing" and find_image(ref) is not None:
                continue
            if not o.get("quiet"):
                err(f"Pulling {n} ... " if v1 else f" {n} Pulling")
            try:
                pull_image(ref)
            except UserError:
                err(f"ERROR: for {n}  {pull_error(ref)}" if v1 else f" {n} Error {pull_error(ref)}")
                failed.append(ref)
                continue
            if not o.get("quiet"):
                err(f"Pulling {n} ... done" if v1 else f" {n} Pulled")
    if failed and not o.get("ignore"):
        err(f"ERROR: {pull_error(failed[0])}" if v1 else f"Error response from daemon: {pull_error(failed[0])}")
        return 1
    return 0


def image_record(img):
    """One image as `docker images --format` sees it."""
    return {"Repository": img["repository"], "Tag": img["tag"] or "<none>",
            "Digest": img["digest"], "ID": img["id"][7:19],
            "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(img["created"])),
            "CreatedSince": human_duration(time.time() - img["created"]) + " ago",
            "Size": f"{img['size'] / 1e6:.1f}MB", "Containers": "N/A", "SharedSize": "N/A",
            "UniqueSize": "N/A", "VirtualSize": f"{img['size'] / 1e6:.1f}MB"}


def image_inspect_record(img):
    """`docker image inspect` of one image, Docker's shape (the fields a client reads)."""
    return {"Id": img["id"],
            "RepoTags": [f"{img['repository']}:{img['tag']}"] if img["tag"] else [],
            "RepoDigests": [f"{img['repository']}@{img['digest']}"],
            "Created": rfc3339(img["created"]), "Size": img["size"],
            "Architecture": "amd64", "Os": "linux",
            "Config": {"Labels": {}, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "Metadata": {"LastTagTime": rfc3339(img["created"])}}


def docker_pull(rest):
    o, pos = parse_opts(rest, {"-q": "quiet", "--quiet": "quiet", "-a": "x", "--all-tags": "x",
                               "--platform": ("platform", "one"),
                               "--disable-content-trust": "x"})
    if len(pos) != 1:
        raise UserError('"docker pull" requires exactly 1 argument.')
    ref = pos[0]
    with global_lock():
        rec, new = pull_image(ref)
    if o.get("quiet"):
        print(rec["ref"])
        return 0
    repo, tag, digest = split_ref(rec["ref"])
    print(f"{digest or tag}: Pulling from {repo}")
    print(f"Digest: {rec['digest']}")
    print(f"Status: {'Downloaded newer image' if new else 'Image is up to date'} for {rec['ref']}")
    print(rec["ref"])
    return 0


def docker_images(rest):
    o, pos = parse_opts(rest, {"-q": "quiet", "--quiet": "quiet", "--format": ("format", "one"),
                               "--no-trunc": "notrunc", "--digests": "digests", "-a": "x",
                               "--all": "x", "-f": ("filter", "list"), "--filter": ("filter", "list")})
    imgs = all_images()
    pats = list(pos)
    for flt in o.get("filter", []):
        k, _, v = flt.partition("=")
        if k != "reference":
            raise UserError(f"testbed stand-in: unsupported filter {k}")
        pats.append(v)
    if pats:
        import fnmatch
        imgs = [i for i in imgs if any(
            fnmatch.fnmatchcase(i["repository"], pt) or fnmatch.fnmatchcase(i["ref"], pt)
            or fnmatch.fnmatchcase(f"{i['repository']}:{i['tag']}", pt) for pt in pats)]
    if o.get("quiet"):
        seen = []
        for i in imgs:
            x = i["id"] if o.get("notrunc") else i["id"][7:19]
            if x not in seen:
                seen.append(x)
                print(x)
        return 0
    if o.get("format"):
        for i in imgs:
            r = image_record(i)
            if o.get("notrunc"):
                r["ID"] = i["id"]
            print(go_template(o["format"], r))
        return 0
    rows = [("REPOSITORY", "TAG") + (("DIGEST",) if o.get("digests") else ()) +
            ("IMAGE ID", "CREATED", "SIZE")]
    for i in imgs:
        r = image_record(i)
        rows.append((r["Repository"], r["Tag"]) + ((r["Digest"],) if o.get("digests") else ()) +
                    (i["id"] if o.get("notrunc") else r["ID"], r["CreatedSince"], r["Size"]))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        print("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def docker_rmi(rest):
    """`docker rmi [-f] REF...`: refused for an image a container (running or
    not) uses, unless -f (which untags it; the container keeps running)."""
    o, pos = parse_opts(rest, {"-f": "force", "--force": "force", "--no-prune": "x"})
    if not pos:
        raise UserError('"docker rmi" requires at least 1 argument.')
    rc = 0
    with global_lock():
        for ref in pos:
            img = find_image(ref)
            if img is None:
                err(f"Error response from daemon: No such image: {ref}")
                rc = 1
                continue
            users = containers_using(img)
            if users and not o.get("force"):
                err(f'Error response from daemon: conflict: unable to remove repository reference '
                    f'"{ref}" (must force) - container {users[0]["id"][:12]} is using its '
                    f'referenced image {img["id"][7:19]}')
                rc = 1
                continue
            try:
                os.unlink(image_file(img["ref"]))
            except FileNotFoundError:
                pass
            print(f"Untagged: {img['ref']}")
            if not users:
                print(f"Deleted: {img['id']}")
    return rc


def docker_image_inspect(names, fmt):
    out, rc = [], 0
    for n in names:
        img = find_image(n)
        if img is None:
            err(f"Error: No such image: {n}")
            rc = 1
            continue
        out.append(image_inspect_record(img))
    print_inspect(out, fmt)
    return rc


def print_inspect(records, fmt):
    if fmt:
        for rec in records:
            print(go_template(fmt, rec))
    else:
        print(json.dumps(records, indent=4))


def docker_image(rest):
    """`docker image ls|inspect|pull|rm|prune`."""
    if not rest:
        raise UserError('"docker image" requires a subcommand (ls, inspect, pull, rm)')
    sub, rest = rest[0], rest[1:]
    if sub in ("ls", "list"):
        return docker_images(rest)
    if sub == "pull":
        return docker_pull(rest)
    if sub in ("rm", "remove"):
        return docker_rmi(rest)
    if sub == "inspect":
        o, names = parse_opts(rest, {"-f": ("format", "one"), "--format": ("format", "one")})
        if not names:
            raise UserError('"docker image inspect" requires at least 1 argument.')
        return docker_image_inspect(names, o.get("format"))
    raise UserError(f"docker image: unknown command {sub!r} (testbed stand-in)")


# --------------------------------------------------------------- docker ----

def docker_main(args):
    if not args or args[0] in ("-h", "--help"):
        print("Usage: docker [OPTIONS] COMMAND  (testbed stand-in: compose, ps, stop, start, "
              "restart, rm, kill, logs, inspect, pull, images, image, rmi, version, info)")
        return 0
    if args[0] in ("-v", "--version"):
        print(f"Docker version {ENGINE_VERSION}, build 297e128")
        return 0
    cmd, rest = args[0], args[1:]
    if cmd == "compose":
        return compose_main(rest, v1=False)
    if cmd == "pull":
        return docker_pull(rest)
    if cmd == "images":
        return docker_images(rest)
    if cmd == "image":
        return docker_image(rest)
    if cmd == "rmi":
        return docker_rmi(rest)
    if cmd == "version":
        o, _ = parse_opts(rest, {"-f": ("format", "one"), "--format": ("format", "one")})
        rec = {"Client": {"Version": ENGINE_VERSION.split("+")[0], "ApiVersion": "1.41"},
               "Server": {"Version": ENGINE_VERSION.split("+")[0], "ApiVersion": "1.41"}}
        if o.get("format"):
            print(go_template(o["format"], rec))
        else:
            print(f"Client:\n Version:           {rec['Client']['Version']}\n API version:       1.41\n\n"
                  f"Server:\n Engine:\n  Version:          {rec['Server']['Version']}\n"
                  "  API version:      1.41 (minimum version 1.12)\n"
                  " (testbed stand-in)")
        return 0
    if cmd == "info":
        cs = [refresh(c) for c in all_containers()]
        print(f"Containers: {len(cs)}\n Running: {sum(c['status'] == 'running' for c in cs)}\n"
              f"Server Version: {ENGINE_VERSION.split('+')[0]}\n(testbed stand-in)")
        return 0
    if cmd == "ps":
        o, _ = parse_opts(rest, {"-a": "all", "--all": "all", "-q": "quiet", "--quiet": "quiet",
                                 "--format": ("format", "one"), "--filter": ("filter", "list"),
                                 "-f": ("filter", "list"), "--no-trunc": "x"})
        cs = [refresh(c) for c in all_containers()]
        if not o.get("all"):
            cs = [c for c in cs if c["status"] in ("running", "restarting")]
        for flt in o.get("filter", []):
            k, _, v = flt.partition("=")
            if k == "name":
                cs = [c for c in cs if v in c["name"]]
            elif k == "label":
                lk, eq, lv = v.partition("=")
                cs = [c for c in cs if lk in c["labels"] and (not eq or c["labels"][lk] == lv)]
            elif k == "status":
                cs = [c for c in cs if c["status"] == v]
            else:
                raise UserError(f"testbed stand-in: unsupported filter {k}")
        if o.get("quiet"):
            for c in cs:
                print(c["id"][:12])
            return 0
        if o.get("format"):
            for c in cs:
                r = ps_record(c)
                r["Names"] = c["name"]
                print(go_template(o["format"], r))
            return 0
        print("CONTAINER ID   IMAGE   COMMAND   CREATED   STATUS   PORTS   NAMES")
        for c in cs:
            r = ps_record(c)
            print(f"{r['ID']}   {r['Image']}   {r['Command']}   {r['RunningFor']}   {r['Status']}"
                  f"   {r['Ports']}   {c['name']}")
        return 0
    if cmd in ("stop", "start", "restart", "kill", "rm"):
        o, names = parse_opts(rest, {"-t": ("timeout", "one"), "--time": ("timeout", "one"),
                                     "--timeout": ("timeout", "one"), "-f": "force",
                                     "--force": "force", "-v": "x", "-s": ("signal", "one"),
                                     "--signal": ("signal", "one")})
        if not names:
            raise UserError(f'"docker {cmd}" requires at least 1 argument.')
        t = float(o["timeout"]) if "timeout" in o else None
        rc = 0
        with global_lock():
            for n in names:
                try:
                    c = find_container(n)
                except UserError as e:
                    err(str(e))
                    rc = 1
                    continue
                if cmd == "stop":
                    stop_container(c, t)
                elif cmd == "kill":
                    stop_container(c, 0)
                elif cmd == "start":
                    start_container(c)
                elif cmd == "restart":
                    stop_container(c, t, user=False)
                    start_container(load(c["id"]))
                elif cmd == "rm":
                    if c["status"] in ("running", "restarting"):
                        if not o.get("force"):
                            err(f"Error response from daemon: You cannot remove a running container "
                                f"{c['id']}. Stop the container before attempting removal or force remove")
                            rc = 1
                            continue
                        stop_container(c, 0, user=False)
                    remove_container(c)
                print(n)
        return rc
    if cmd == "logs":
        o, names = parse_opts(rest, {"-f": "follow", "--follow": "follow", "-t": "x",
                                     "--timestamps": "x", "--tail": ("tail", "one"),
                                     "-n": ("tail", "one"), "--since": ("since", "one")})
        if len(names) != 1:
            raise UserError('"docker logs" requires exactly 1 argument.')
        tail = o.get("tail")
        tail = None if tail in (None, "all") else int(tail)
        print_logs([find_container(names[0])], False, tail, follow=o.get("follow"))
        return 0
    if cmd == "inspect":
        o, names = parse_opts(rest, {"-f": ("format", "one"), "--format": ("format", "one"),
                                     "--type": ("type", "one"), "-s": "x"})
        if not names:
            raise UserError('"docker inspect" requires at least 1 argument.')
        if o.get("type") == "image":
            return docker_image_inspect(names, o.get("format"))
        out, rc = [], 0
        for n in names:
            try:
                c = find_container(n)
            except UserError as e:
                # As Docker: a name that is no container may be an image.
                img = find_image(n) if o.get("type") != "container" else None
                if img is not None:
                    out.append(image_inspect_record(img))
                else:
                    err(str(e) if o.get("type") == "container" else f"Error: No such object: {n}")
                    rc = 1
                continue
            rec = {"Id": c["id"], "Name": "/" + c["name"], "Created": c["created"],
                   # Docker keeps Running true while a container waits to be restarted.
                   "State": {"Status": c["status"],
                             "Running": c["status"] in ("running", "restarting"),
                             "Restarting": c["status"] == "restarting",
                             "Paused": False, "OOMKilled": False, "Dead": False,
                             "Pid": c.get("pid") or 0, "ExitCode": c.get("exit_code", 0),
                             "Error": "",
                             "StartedAt": rfc3339(c.get("started_at")),
                             "FinishedAt": rfc3339(c.get("finished_at"))},
                   "Image": (find_image(c["image"]) or {}).get("id") or fake_digest(c["image"], "config"),
                   "RestartCount": c.get("restart_count", 0),
                   "NetworkSettings": network_settings(c),
                   "Config": {"Image": c["image"], "Labels": c["labels"],
                              "Cmd": c.get("command"), "Entrypoint": c.get("entrypoint"),
                              # As real Docker: the values, readable by whoever may run
                              # docker on the host (tunnelfleet hashes them on the host).
                              "Env": [f"{k}={v}" for k, v in sorted(c["env"].items())]},
                   "HostConfig": {"RestartPolicy": {"Name": c["restart"].split(":")[0]},
                                  "NetworkMode": network_mode_shown(c)},
                   "Mounts": [{"Source": s, "Destination": d, "RW": m != "ro"}
                              for s, d, m in c.get("volumes") or []]}
            out.append(rec)
        print_inspect(out, o.get("format"))
        return rc
    raise UserError(f"docker: '{cmd}' is not a docker command (testbed stand-in)")


# ----------------------------------------------------------------- boot ----

def boot_main():
    """At host boot: containers whose processes died with the host are
    exited (255); restart them as dockerd does on start."""
    with global_lock():
        # As dockerd: a container that joins another's network namespace starts after it.
        cs = sorted(all_containers(),
                    key=lambda c: (c.get("network_mode") or "").startswith(("service:", "container:")))
        for c in cs:
            was_running = c["status"] in ("running", "restarting") or c.get("desired") == "running"
            c = refresh(c)
            if c.get("auto_remove") and c["status"] != "running":
                remove_container(c)
                continue
            policy = (c.get("restart") or "no").split(":")[0]
            start = (policy == "always" or (policy == "unless-stopped" and not c.get("user_stopped"))
                     or (policy == "on-failure" and was_running))
            if start and c["status"] != "running":
                try:
                    start_container(c)
                    print(f"standin-docker: started {c['name']} ({policy})")
                except UserError as e:
                    print(f"standin-docker: {c['name']}: {e}")
    return 0


# --------------------------------------------------------------- engine ----
#
# The per-host engine (as dockerd is): `__engine SOCKET`, started at host boot (boot.d),
# listens on a unix socket. The compiled `docker` / `docker-compose` client (DIR/bin, the
# `standin` binary) sends its mode, argv, environment, cwd and umask there, with its fds 0, 1
# and 2 (SCM_RIGHTS). The engine forks a child per request; the child takes those fds and
# that environment and runs main() exactly as `standin_docker.py MODE ARGS...` would, so
# the semantics are the same code's. The child tells the client its pid (the client forwards
# SIGINT, SIGTERM and SIGHUP to it) and finally its exit code.
# Wire: client -> 4-byte little-endian length + JSON {"mode","argv","env","cwd","umask"}
# (fds ride on the first bytes); engine -> 4-byte pid, then 4-byte exit code.

IN_ENGINE = False


def engine_serve(conn):
    """In the forked child: take the request's fds, environment and cwd, run main()."""
    import array
    import io
    import struct
    global IN_ENGINE
    IN_ENGINE = True
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fds = []
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("<I", data[:4])[0]:
        msg, anc, _flags, _addr = conn.recvmsg(1 << 16, socket.CMSG_SPACE(16 * 4))
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[:len(cdata) - len(cdata) % a.itemsize])
                fds.extend(a)
        if not msg:
            os._exit(1)
        data += msg
    req = json.loads(data[4:4 + struct.unpack("<I", data[:4])[0]])
    if len(fds) != 3:
        os._exit(1)
    for i, fd in enumerate(fds):
        os.dup2(fd, i)
        os.close(fd)
    os.umask(int(req.get("umask", 0o022)))
    os.environ.clear()
    os.environ.update(req["env"])
    try:
        os.chdir(req["cwd"])
    except OSError:
        pass
    # Fresh stdio objects on the new fds, as an interpreter starting there would make.
    sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False), errors="surrogateescape")
    sys.stdout = io.TextIOWrapper(io.open(1, "wb", closefd=False), errors="surrogateescape",
                                  line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(io.open(2, "wb", closefd=False), errors="backslashreplace",
                                  line_buffering=True)
    sys.argv = [os.path.realpath(__file__), req["mode"], *req["argv"]]
    conn.sendall(struct.pack("<i", os.getpid()))
    try:
        rc = main()
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            sys.stderr.write(f"{e.code}\n")
    except KeyboardInterrupt:
        rc = 130
    except BaseException:
        import traceback
        traceback.print_exc()
        rc = 1
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            rc = rc or 1
    try:
        conn.sendall(struct.pack("<i", rc if rc is not None else 0))
    except OSError:
        pass
    os._exit(rc if isinstance(rc, int) else 1)


def engine_main(path):
    """Serve docker requests on the unix socket `path` until SIGTERM."""
    # Everything a command may import, imported once here instead of in every command.
    import array, io, struct, select, fnmatch, traceback  # noqa: F401,E401
    for lazy in ("hashlib", "secrets", "socket", "subprocess"):
        getattr(globals()[lazy], "__name__", None)
    try:
        import yaml  # noqa: F401
    except ImportError:
        pass

    # Objects that exist now are never collected: the GC does not touch (and so copy) their
    # pages in the children, which are forked copies of this process.
    import gc
    gc.collect()
    gc.freeze()

    def reap(signum, frame):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    srv.bind(path)
    os.umask(old)
    srv.listen(256)
    while True:
        conn, _ = srv.accept()
        try:
            pid = os.fork()
        except OSError:
            conn.close()
            continue
        if pid == 0:
            code = 1
            try:
                srv.close()
                engine_serve(conn)
            except BaseException:
                pass
            os._exit(code)
        conn.close()


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: standin_docker.py docker|compose-v1|__shim ID|__boot ...")
    mode, args = sys.argv[1], sys.argv[2:]
    try:
        if mode == "__shim":
            shim_main(args[0], int(args[1]) if len(args) > 1 else None)
            return 0
        if mode == "__boot":
            return boot_main()
        if mode == "__engine":
            return engine_main(args[0])
        if engine_down() and args[:1] not in (["--version"], ["-v"]):
            # `testbed fault HOST engine-down`: the daemon does not answer; only the
            # client's own version flag works, as with a stopped dockerd.
            err("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                "Is the docker daemon running?")
            return 1
        os.makedirs(CDIR, mode=0o700, exist_ok=True)
        if mode == "compose-v1":
            if args[:1] in (["--version"], ["-v"]):
                return compose_version(True, ["--version"])
            return compose_main(args, v1=True)
        return docker_main(args)
    except UserError as e:
        err(str(e))
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
