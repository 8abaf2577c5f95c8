#!/usr/bin/python3
"""Measurements for scripts/bench-peers (no dependencies beyond the standard library).

  measure.py run --out RUN.json --log LOG [--stdout OUT] -- CMD...
      Runs CMD (stdin /dev/null, stdout to OUT if given, else with stderr to LOG) and writes RUN.json: start and end
      (epoch ms, the clock the testbed's edge and command log use), wall, exit code, the
      controller's CPU (user+sys of CMD and every descendant it waited for, from wait4), the
      largest single process's peak RSS (VmHWM, sampled every 100 ms; wait4's ru_maxrss, which
      `/usr/bin/time -v` prints, would include the forking Python's image), the peak RSS
      summed over CMD's whole process tree (sampled every 100 ms from /proc: Ansible
      forks workers and ssh clients, so one process's RSS understates it; this script is a
      child subreaper, so daemonised descendants such as ssh ControlPersist masters stay in
      the tree, and are stopped and reaped when CMD exits, their CPU counted), and the whole
      machine's busy CPU over the run from /proc/stat (the simulated hosts share the machine).

  measure.py wait-up --dir DIR --hosts N [--fp FP] [--deadline S]
      Polls `testbed edge-stats` until every host h1..hN has a connector up (on FP if given);
      exit 1 with the hosts missing after the deadline.

  measure.py row --tool T --hosts N --kind rotate|noop --run RUN.json --before B.json
                 --after A.json --cmdlog DIR/commands.log --cmdlog-from K [--fp FP]
                 [--tf-json OUT.json] [--note TEXT]
                 [--hosts-cpu-before C0.json --hosts-cpu-after C1.json] >> rows.jsonl
      One result row (JSON) from the edge's timeline (B and A are `edge-stats` before and
      after), the command log (lines from K on) and RUN.json; with C0/C1 (`testbed cpu
      --json` before and after), the simulated hosts' own CPU over the run (their cgroups).

  measure.py table --rows rows.jsonl --header HEADER.md
      The markdown table (printed), HEADER.md's text first.
"""
import ctypes
import json
import os
import signal
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_ms():
    """Busy CPU of the whole machine so far, all cores (user nice system irq softirq steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    ticks = [int(x) for x in fields]
    busy = sum(ticks[i] for i in (0, 1, 2, 5, 6, 7) if i < len(ticks))
    return busy * 1000 // CLK_TCK


def load_avg():
    """The machine's 1-minute load average (other engineers' work shares the machine)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def hosts_cpu_ms(path):
    """Total CPU of the simulated hosts (their cgroups) from a `testbed cpu --json` file."""
    with open(path) as f:
        return json.load(f)["total_ns"] / 1e6


def tree_memory(root, skip):
    """(sum of VmRSS over root's descendants, {pid: VmHWM}) from one scan of /proc; `skip` (this
    script) is left out. VmHWM is each process's own peak since its exec: unlike wait4's
    ru_maxrss, it does not include the image of the Python process that forked it."""
    parent = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            # comm may contain spaces and parentheses: fields after the last ')'.
            parent[int(name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    children = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, hwm, stack = 0, {}, list(children.get(root, []))
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        if p == skip:
            continue
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm[p] = int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total, hwm


PR_SET_CHILD_SUBREAPER = 36


def orphans():
    """Pids whose parent is this process (the run's leftovers once its main process is gone)."""
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == me:
                out.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def cmd_run(args):
    i = args.index("--")
    opts = dict(zip(args[:i:2], args[1:i:2]))
    cmd = args[i + 1:]
    out_path, log_path = opts["--out"], opts["--log"]
    out_file = opts.get("--stdout")
    with open(log_path, "wb") as log, open(out_file or os.devnull, "wb") as stdout:
        busy0 = machine_busy_ms()
        load0 = load_avg()
        start = time.time()
        t0 = time.monotonic()
        # Orphans of the run (Ansible's ssh ControlPersist masters daemonise) become our
        # children, so the tree sampling keeps seeing them and their CPU is collected below.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout if out_file else log,
                                stderr=log)
        peak = 0
        largest = {}
        status = ru = None
        while True:
            pid, st, r = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status, ru = st, r
                break
            total, hwm = tree_memory(os.getpid(), os.getpid())
            peak = max(peak, total)
            for p, v in hwm.items():
                largest[p] = max(largest.get(p, 0), v)
            time.sleep(0.1)
        wall = time.monotonic() - t0
        end = time.time()
        busy1 = machine_busy_ms()
        load1 = load_avg()
        # What the run left behind (only its own processes: orphans re-parented to us) is
        # stopped and reaped, and its CPU counted as the controller's.
        cpu = ru.ru_utime + ru.ru_stime
        left = 0
        for pid in orphans():
            left += 1
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        while True:
            try:
                _, _, r = os.wait4(-1, 0)
            except ChildProcessError:
                break
            cpu += r.ru_utime + r.ru_stime
    proc.returncode = os.waitstatus_to_exitcode(status)
    res = {
        "cmd": cmd[0],
        "start_ms": int(start * 1000),
        "end_ms": int(end * 1000),
        "wall_ms": int(wall * 1000),
        "rc": proc.returncode,
        "cpu_ms": int(cpu * 1000),
        "max_rss_kb": max(largest.values(), default=0),
        "peak_tree_rss_kb": peak,
        "leftover_processes": left,
        "machine_busy_ms": busy1 - busy0,
        "cores": os.cpu_count(),
        "load_start": load0,
        "load_end": load1,
    }
    with open(out_path, "w") as f:
        json.dump(res, f)
    return 0 if proc.returncode == 0 else 1


def edge_stats(d):
    out = subprocess.run([os.path.join(os.path.dirname(__file__), "..", "..", "tests",
                                       "testbed", "testbed"), "edge-stats", "--dir", d],
                         capture_output=True, check=True)
    return json.loads(out.stdout)


def cmd_wait_up(args):
    opts = dict(zip(args[::2], args[1::2]))
    hosts = {f"h{i}" for i in range(1, int(opts["--hosts"]) + 1)}
    fp = opts.get("--fp")
    deadline = time.monotonic() + float(opts.get("--deadline", "60"))
    while True:
        cur = edge_stats(opts["--dir"])["current"]
        have = {c["host"] for c in cur if fp is None or c["token_fp"] == fp}
        missing = sorted(hosts - have, key=lambda h: int(h[1:]))
        if not missing:
            return 0
        if time.monotonic() > deadline:
            print(f"wait-up: hosts without a connector{' on ' + fp if fp else ''} after "
                  f"{opts.get('--deadline', '60')} s: {' '.join(missing)}", file=sys.stderr)
            return 1
        time.sleep(0.5)


def replay(before, after, fp):
    """(fewest hosts with any connector up, per host the time it last got a connector on fp)."""
    up = {}
    for c in before["current"]:
        up.setdefault(c["host"], {})[c["connector"]] = c["token_fp"]
    count = lambda: sum(1 for v in up.values() if v)  # noqa: E731
    fewest = count()
    on_new = {}
    for e in after["timeline"][len(before["timeline"]):]:
        conns = up.setdefault(e["host"], {})
        had_new = fp in conns.values()
        if e["event"] == "up":
            conns[e["connector"]] = e["token_fp"]
        else:
            conns.pop(e["connector"], None)
        has_new = fp in conns.values()
        if has_new and not had_new:
            on_new[e["host"]] = e["t_ms"]
        elif had_new and not has_new:
            on_new.pop(e["host"], None)
        fewest = min(fewest, count())
    return fewest, on_new, len(after["timeline"]) - len(before["timeline"])


def cmd_row(args):
    opts = dict(zip(args[::2], args[1::2]))
    n = int(opts["--hosts"])
    with open(opts["--run"]) as f:
        run = json.load(f)
    with open(opts["--before"]) as f:
        before = json.load(f)
    with open(opts["--after"]) as f:
        after = json.load(f)
    fp = opts.get("--fp", "")
    fewest, on_new, events = replay(before, after, fp)
    row = {"tool": opts["--tool"], "kind": opts["--kind"], "hosts": n, "rc": run["rc"],
           "wall_ms": run["wall_ms"], "cpu_ms": run["cpu_ms"], "max_rss_kb": run["max_rss_kb"],
           "peak_tree_rss_kb": run["peak_tree_rss_kb"],
           "machine_busy_ms": run["machine_busy_ms"], "cores": run["cores"],
           "fewest_up": fewest, "edge_events": events, "note": opts.get("--note", ""),
           "load_start": run.get("load_start"), "load_end": run.get("load_end")}
    if "--hosts-cpu-before" in opts:
        row["hosts_cpu_ms"] = (hosts_cpu_ms(opts["--hosts-cpu-after"])
                               - hosts_cpu_ms(opts["--hosts-cpu-before"]))
    sessions = {}
    with open(opts["--cmdlog"]) as f:
        for line in list(f)[int(opts["--cmdlog-from"]):]:
            try:
                h = json.loads(line)["host"]
            except (ValueError, KeyError):
                continue
            sessions[h] = sessions.get(h, 0) + 1
    counts = [sessions.get(f"h{i}", 0) for i in range(1, n + 1)]
    row["sessions_per_host"] = sum(counts) / n
    row["sessions_max"] = max(counts)
    if opts["--kind"] == "rotate":
        missing = [f"h{i}" for i in range(1, n + 1) if f"h{i}" not in on_new]
        row["hosts_on_new"] = n - len(missing)
        last = max(on_new.values()) if on_new and not missing else None
        row["window_start_ms"] = None if last is None else last - run["start_ms"]
        # Peers read the token at process start; tunnelfleet reports its own in-hand time.
        row["window_hand_ms"] = row["window_start_ms"]
        row["window_hand_source"] = "edge"
        if "--tf-json" in opts:
            try:
                with open(opts["--tf-json"]) as f:
                    tf = json.load(f)
                row["window_hand_ms"] = tf.get("exposure_window_ms")
                row["window_hand_source"] = "own report"
            except (OSError, ValueError):
                row["window_hand_ms"] = None
                row["window_hand_source"] = "no --json report"
    print(json.dumps(row))
    return 0


def sec(ms):
    return "—" if ms is None else f"{ms / 1000:.1f} s"


def cmd_table(args):
    opts = dict(zip(args[::2], args[1::2]))
    rows = [json.loads(line) for line in open(opts["--rows"]) if line.strip()]
    with open(opts["--header"]) as f:
        out = [f.read().rstrip(), ""]
    out.append("| tool | hosts | job | window from start (edge) | window from token in hand "
               "| fewest hosts up | wall | SSH sessions per host (max) | controller CPU "
               "| controller RSS: largest process / whole tree | machine CPU (2 cores) "
               "| testbed hosts' CPU (cgroups; per host) | load avg start → end | exit |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["kind"] == "rotate":
            job = "rotation"
            ws = sec(r["window_start_ms"])
            if r["window_start_ms"] is None:
                ws = f"— ({r['hosts_on_new']}/{r['hosts']} hosts on the new token)"
            wh = sec(r["window_hand_ms"])
            if r["window_hand_source"] != "edge":
                wh += f" ({r['window_hand_source']})"
            fewest = f"{r['fewest_up']}/{r['hosts']}"
        else:
            job = {"noop": "no-op deploy", "deploy": "first deploy"}.get(r["kind"], r["kind"])
            if r.get("note"):
                job += f" ({r['note']})"
            ws = wh = "—"
            fewest = f"{r['fewest_up']}/{r['hosts']} ({r['edge_events']} edge events)"
        busy = r["machine_busy_ms"]
        share = busy / max(1, r["wall_ms"] * r["cores"]) * 100
        hc = r.get("hosts_cpu_ms")
        hosts_cpu = "—" if hc is None else f"{sec(hc)} ({hc / r['hosts']:.0f} ms)"
        load = "—" if r.get("load_start") is None else f"{r['load_start']:.1f} → {r['load_end']:.1f}"
        out.append(
            f"| {r['tool']} | {r['hosts']} | {job} | {ws} | {wh} | {fewest} "
            f"| {sec(r['wall_ms'])} | {r['sessions_per_host']:.1f} ({r['sessions_max']}) "
            f"| {sec(r['cpu_ms'])} | {r['max_rss_kb'] / 1024:.0f} / "
            f"{r['peak_tree_rss_kb'] / 1024:.0f} MiB | {sec(busy)} ({share:.0f} %; "
            f"{(busy - r['cpu_ms']) / r['hosts']:.0f} ms per host beside the tool) "
            f"| {hosts_cpu} | {load} | {r['rc']} |")
    print("\n".join(out))
    return 0


def main():
    verb, args = sys.argv[1], sys.argv[2:]
    return {"run": cmd_run, "wait-up": cmd_wait_up, "row": cmd_row,
            "table": cmd_table}[verb](args)


if __name__ == "__main__":
    sys.exit(main())
