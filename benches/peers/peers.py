#!/usr/bin/env python3
"""Whole-process comparison of broctld with s6, runit and supervisord, in one run.

Every tool supervises the same program: an executable file `run`, a `/bin/sh`
script that reports readiness on fd 3 if that fd is open (s6 is given
`notification-fd` 3) and then execs `sleep 3600` (s6 and runit need such a
file; broctld and supervisord are given the same file as their command, so
every tool does the same fork + exec of a shell script that then execs `sleep`). An extra row,
`broctld-direct`, runs `sleep 3600` with no script.

What it measures (see docs/benchmarks.md for the full description):

* status query of one service as a whole process, next to `/bin/true`;
* stop then start of one service, until the new process runs;
* restart after `kill -9` of a service up for more than 1.5 s;
* bring-up of N services, RSS/PSS of the supervising processes, their CPU time
  and wakeups over idle seconds, syscalls per idle second of broctld's
  Supervisor (strace), and shutdown of N services.

Exec, fork and exit times are read from the kernel through the proc connector
(NETLINK_CONNECTOR / CN_IDX_PROC, needs root): its timestamps are
CLOCK_MONOTONIC nanoseconds taken in the kernel, so no polling resolution
enters the kill, stop/start, bring-up and shutdown figures.

Everything runs in a private temp dir: s6-svscan, runsvdir and supervisord run
on their own scan dir, service dir and config with their own socket, as
ordinary processes (never as init), and never touch /etc/service or the
system's services. Every loop is bounded in count and time, and every process
started here is killed at the end, also on error or Ctrl-C.

Usage (from the repository root, as root):

    python3 benches/peers/peers.py --install-only      # apt-get the peers if missing
    python3 benches/peers/peers.py --broctld target/release/broctld \\
        [--quick] [--out DIR] [--criterion FILE --docs docs/benchmarks.md]

`benches/run-all.sh` runs the criterion benches and this script in one go.
"""

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

PEER_PACKAGES = ["s6", "runit", "supervisor", "gnuplot-nox", "strace"]
PEER_BINARIES = {
    "s6": "s6-svscan",
    "runit": "runsvdir",
    "supervisor": "supervisord",
    "gnuplot-nox": "gnuplot",
    "strace": "strace",
}
# The supervised program, the same file for every tool. It reports readiness on fd 3 when that
# fd is open (s6's notification-fd: without readiness, s6-supervise always waits 1 s before
# respawning a dead service, whatever its uptime), then becomes `sleep`.
RUN_SCRIPT = "#!/bin/sh\n{ echo >&3; } 2>/dev/null\nexec sleep 3600 3>&-\n"


def log(msg):
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Installing the peers


def install_peers():
    """apt-get installs whatever of PEER_PACKAGES is missing, without starting services."""
    missing = [p for p, b in PEER_BINARIES.items() if shutil.which(b) is None]
    if not missing:
        log("s6, runit, supervisor, gnuplot and strace are installed")
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {missing}: run as root, or `apt-get install {' '.join(missing)}`")
    log(f"installing {missing} from Debian's packages")
    # policy-rc.d exit 101 forbids maintainer scripts to start services (supervisor's
    # package would otherwise start the system's supervisord). --no-install-recommends keeps
    # runit-init (which would replace init) out.
    policy = "/usr/sbin/policy-rc.d"
    made_policy = False
    if not os.path.exists(policy):
        with open(policy, "w") as f:
            f.write("#!/bin/sh\n# temporary, from broctld's benches/peers/peers.py\nexit 101\n")
        os.chmod(policy, 0o755)
        made_policy = True
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=True, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends"] + missing,
            check=True,
            env=env,
            timeout=900,
        )
    finally:
        if made_policy:
            os.unlink(policy)


# --------------------------------------------------------------------------
# Kernel process events


class ProcEvents(threading.Thread):
    """Listens to the proc connector and keeps, for this script's descendants only, when
    each process was forked, exec'd (and whether it now runs `sleep`) and exited."""

    PROC_EVENT_FORK = 0x1
    PROC_EVENT_EXEC = 0x2
    PROC_EVENT_EXIT = 0x80000000

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 11)  # CONNECTOR
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self.sock.bind((os.getpid(), 1))  # CN_IDX_PROC
        self.sock.settimeout(0.2)
        self._op(1)  # PROC_CN_MCAST_LISTEN
        self.cv = threading.Condition()
        self.tree = {os.getpid()}
        self.forks = {}  # parent tgid -> [(ts, child)]
        self.first_exec = {}  # pid -> ts of its first exec
        self.nexec = {}  # pid -> execs so far
        self.sleeping = {}  # pid -> ts of the exec after which it ran `sleep`
        self.exited = {}  # pid -> ts
        self.overruns = 0
        self.events = 0
        self.stopping = False
        self.start()
        time.sleep(0.05)

    def _op(self, op):
        payload = struct.pack("=I", op)
        cn = struct.pack("=IIIIHH", 1, 1, 0, 0, len(payload), 0) + payload
        self.sock.send(struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, os.getpid()) + cn)

    def run(self):
        while not self.stopping:
            try:
                d = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError as e:
                if e.errno == 105:  # ENOBUFS: the kernel dropped events
                    self.overruns += 1
                    continue
                if self.stopping:
                    return
                raise
            if len(d) < 52:
                continue
            what, _cpu, ts = struct.unpack_from("=IIQ", d, 36)
            with self.cv:
                self.events += 1
                if what == self.PROC_EVENT_FORK:
                    _pp, ptgid, cpid, ctgid = struct.unpack_from("=IIII", d, 52)
                    if cpid == ctgid and ptgid in self.tree:
                        self.tree.add(cpid)
                        self.forks.setdefault(ptgid, []).append((ts, cpid))
                        for m in (self.first_exec, self.nexec, self.sleeping, self.exited):
                            m.pop(cpid, None)
                        self.cv.notify_all()
                elif what == self.PROC_EVENT_EXEC:
                    pid, tgid = struct.unpack_from("=II", d, 52)
                    if pid == tgid and pid in self.tree:
                        self.first_exec.setdefault(pid, ts)
                        self.nexec[pid] = self.nexec.get(pid, 0) + 1
                        try:
                            with open(f"/proc/{pid}/comm") as f:
                                comm = f.read().strip()
                        except OSError:
                            comm = ""
                        if comm == "sleep":
                            self.sleeping[pid] = max(ts, self.sleeping.get(pid, 0))
                        self.cv.notify_all()
                elif what == self.PROC_EVENT_EXIT:
                    pid, tgid = struct.unpack_from("=II", d, 52)
                    if pid == tgid and pid in self.tree:
                        self.exited[pid] = ts
                        self.tree.discard(pid)
                        self.cv.notify_all()

    def wait_for(self, pred, timeout):
        """Waits until pred() (called under the lock) is true; returns it (falsy on timeout)."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                r = pred()
                if r:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return r
                self.cv.wait(min(left, 0.05))

    def close(self):
        self.stopping = True
        try:
            self._op(2)  # PROC_CN_MCAST_IGNORE
        except OSError:
            pass
        self.join(1)
        self.sock.close()


# --------------------------------------------------------------------------
# /proc helpers


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return int(s[s.rindex(")") + 2 :].split()[1])


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        return s[s.rindex(")") + 2] != "Z"
    except OSError:
        return False


def smaps_rollup(pid):
    """(rss_kib, pss_kib) of one process."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def cpu_and_wakeups(pid):
    """(ns on CPU, context switches) of one process, all threads."""
    ns = sw = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        sw += int(line.split()[1])
    except OSError:
        pass
    return ns, sw


def run_quiet(argv, timeout=30, check=False):
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=check,
        text=True,
    )


DEVNULL_ACTIONS = [
    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
    (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
]


def timed_spawn(argv):
    """Runs argv to completion (output discarded); returns (wall ns, exit status)."""
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=DEVNULL_ACTIONS)
    _, st = os.waitpid(pid, 0)
    return time.perf_counter_ns() - t0, os.waitstatus_to_exitcode(st)


# --------------------------------------------------------------------------
# The tools


class Tool:
    """One supervisor under test, in its own dir, supervising `n` services s0000..."""

    name = "?"
    chain = 2  # execs from fork to `sleep`: the run script, then sleep

    def __init__(self, base, n, run_file):
        self.dir = os.path.join(base, self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.n = n
        self.run_file = run_file
        self.root = None  # subprocess.Popen of the process we started
        self.log = open(os.path.join(self.dir, "out.log"), "ab")

    @staticmethod
    def svc(i):
        return f"s{i:04d}"

    def spawn_root(self, argv):
        self.root = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def top_pid(self):
        return self.root.pid

    def supervising(self):
        """Pids of every supervising process (not the services)."""
        return [self.top_pid()]

    def all_pids(self):
        """Supervising processes and everything below them."""
        out, todo = [], list(self.supervising())
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children(p))
        return sorted(set(out))

    def reap_root(self, timeout=5):
        if self.root is not None:
            try:
                self.root.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    def cleanup(self):
        """Kills whatever is left (after a failed run)."""
        for p in reversed(self.all_pids() if self.root is not None else []):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if self.root is not None:
            try:
                self.root.kill()
            except OSError:
                pass
            self.reap_root(2)


class Broctld(Tool):
    name = "broctld"
    direct = False

    def __init__(self, base, n, run_file, binary):
        super().__init__(base, n, run_file)
        self.bin = os.path.abspath(binary)
        self.rt = os.path.join(self.dir, "run")
        self.conf = os.path.join(self.dir, "broctld.toml")
        self.instance = "peers"
        command = '["sleep", "3600"]' if self.direct else json.dumps([run_file])
        with open(self.conf, "w") as f:
            # Output to /dev/null and cwd = this dir, as the peers' services have (their
            # supervisor's own fds and dir): broctld would otherwise make a spool dir per node.
            f.write('[defaults]\nrestart = "always"\n')
            for i in range(n):
                f.write(
                    f'\n[[node]]\nname = "{self.svc(i)}"\ncommand = {command}\n'
                    f'cwd = "."\nstdout = "/dev/null"\nstderr = "/dev/null"\n'
                )

    def cli(self, *words, config=False):
        argv = [self.bin, "--runtime-dir", self.rt, "--instance", self.instance]
        if config:
            argv += ["--config", self.conf]
        return argv + list(words)

    def start(self):
        # The first Main starts the Supervisor (detached) with every node, then exits.
        self.spawn_root(self.cli("start", config=True))

    def top_pid(self):
        with open(os.path.join(self.rt, self.instance, "supervisor.lock")) as f:
            return int(f.read().split()[0])

    def service_pid(self, svc):
        out = run_quiet(self.cli("status", "--json", svc)).stdout
        return json.loads(out)[0]["pid"]

    def status_argv(self, svc):
        return self.cli("status", svc)

    def stop(self, svc):
        run_quiet(self.cli("stop", svc), check=True)

    def start_svc(self, svc):
        run_quiet(self.cli("start", svc, config=True), check=True)

    def shutdown(self):
        run_quiet(self.cli("shutdown"), timeout=120)

    def cleanup(self):
        try:
            pids = self.all_pids()
        except OSError:
            pids = []
        for p in reversed(pids):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        self.reap_root(2)


class BroctldDirect(Broctld):
    name = "broctld-direct"
    direct = True
    chain = 1


class S6(Tool):
    name = "s6"

    def __init__(self, base, n, run_file):
        super().__init__(base, n, run_file)
        self.scan = os.path.join(self.dir, "scan")
        for i in range(n):
            d = os.path.join(self.scan, self.svc(i))
            os.makedirs(d, exist_ok=True)
            shutil.copy(run_file, os.path.join(d, "run"))
            with open(os.path.join(d, "notification-fd"), "w") as f:
                f.write("3\n")

    def start(self):
        # -c: s6-svscan supervises at most 500 services unless told otherwise.
        self.spawn_root([shutil.which("s6-svscan"), "-c", str(max(500, self.n + 16)), self.scan])

    def supervising(self):
        top = self.top_pid()
        return [top] + [c for c in children(top) if comm(c) == "s6-supervise"]

    def path(self, svc):
        return os.path.join(self.scan, svc)

    def service_pid(self, svc):
        return int(run_quiet(["s6-svstat", "-o", "pid", self.path(svc)]).stdout.split()[0])

    def status_argv(self, svc):
        return [shutil.which("s6-svstat"), self.path(svc)]

    def stop(self, svc):
        run_quiet(["s6-svc", "-d", self.path(svc)], check=True)

    def start_svc(self, svc):
        run_quiet(["s6-svc", "-u", self.path(svc)], check=True)

    def shutdown(self):
        run_quiet(["s6-svscanctl", "-t", self.scan], check=True)


class Runit(Tool):
    name = "runit"

    def __init__(self, base, n, run_file):
        super().__init__(base, n, run_file)
        self.sv = os.path.join(self.dir, "sv")
        for i in range(n):
            d = os.path.join(self.sv, self.svc(i))
            os.makedirs(d, exist_ok=True)
            shutil.copy(run_file, os.path.join(d, "run"))

    def start(self):
        self.spawn_root([shutil.which("runsvdir"), self.sv])

    def supervising(self):
        top = self.top_pid()
        return [top] + [c for c in children(top) if comm(c) == "runsv"]

    def path(self, svc):
        # An absolute path: sv never looks in /etc/service for it.
        return os.path.join(self.sv, svc)

    def service_pid(self, svc):
        out = run_quiet(["sv", "status", self.path(svc)]).stdout
        return int(out.split("(pid ")[1].split(")")[0])

    def status_argv(self, svc):
        return [shutil.which("sv"), "status", self.path(svc)]

    def stop(self, svc):
        run_quiet(["sv", "down", self.path(svc)], check=True)

    def start_svc(self, svc):
        run_quiet(["sv", "up", self.path(svc)], check=True)

    def shutdown(self):
        # runsvdir sends TERM to every runsv, each of which stops its service and exits.
        os.kill(self.top_pid(), signal.SIGHUP)


class Supervisord(Tool):
    name = "supervisord"

    def __init__(self, base, n, run_file):
        super().__init__(base, n, run_file)
        self.conf = os.path.join(self.dir, "supervisord.conf")
        sock = os.path.join(self.dir, "supervisor.sock")
        with open(self.conf, "w") as f:
            f.write(
                f"[supervisord]\nnodaemon=true\nuser=root\n"
                f"logfile={self.dir}/supervisord.log\npidfile={self.dir}/supervisord.pid\n"
                f"childlogdir={self.dir}\nminfds={max(1024, 4 * n + 256)}\n"
                f"minprocs={max(200, 2 * n + 100)}\n\n"
                f"[unix_http_server]\nfile={sock}\nchmod=0700\n\n"
                f"[supervisorctl]\nserverurl=unix://{sock}\n\n"
                f"[rpcinterface:supervisor]\n"
                f"supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            )
            for i in range(n):
                # startsecs=0: `start` returns once the process is spawned, as with the others.
                f.write(
                    f"\n[program:{self.svc(i)}]\ncommand={run_file}\nautorestart=true\n"
                    f"startsecs=0\nstdout_logfile=NONE\nstderr_logfile=NONE\n"
                )

    def ctl(self, *words):
        return [shutil.which("supervisorctl"), "-c", self.conf] + list(words)

    def start(self):
        self.spawn_root([shutil.which("supervisord"), "-n", "-c", self.conf])

    def service_pid(self, svc):
        return int(run_quiet(self.ctl("pid", svc)).stdout.split()[0])

    def status_argv(self, svc):
        return self.ctl("status", svc)

    def stop(self, svc):
        run_quiet(self.ctl("stop", svc), check=True)

    def start_svc(self, svc):
        run_quiet(self.ctl("start", svc), check=True)

    def shutdown(self):
        os.kill(self.top_pid(), signal.SIGTERM)


# --------------------------------------------------------------------------
# Measurements


def fs_type(path):
    """The type of the filesystem holding `path` (longest mount point that contains it), with
    `,noexec` appended if it is mounted so."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    with open("/proc/self/mounts") as f:
        for line in f:
            w = line.split()
            mnt = w[1].replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                noexec = ",noexec" if "noexec" in w[3].split(",") else ""
                best, kind = mnt, w[2] + noexec
    return kind


def pick_base(given):
    """Where the tools' dirs go: a tmpfs if one is at hand. Every tool writes state files on
    each start and stop (s6 and runit their supervise/status, broctld its per-node lock
    files), and their usual homes (/run, /run/service) are tmpfs; on a disk filesystem those
    writes go through its journal and cost every tool extra."""
    if given:
        return given, fs_type(given)
    for d in [os.environ.get("XDG_RUNTIME_DIR"), "/run", "/dev/shm", tempfile.gettempdir()]:
        if d and os.path.isdir(d) and os.access(d, os.W_OK) and fs_type(d) == "tmpfs":
            return d, "tmpfs"
    d = tempfile.gettempdir()
    return d, fs_type(d)


def pct(xs, p):
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


class Run:
    def __init__(self, args):
        self.args = args
        self.raw = []  # raw lines
        self.res = {}  # (metric, tool) -> value
        self.ev = None

    def line(self, *words):
        s = " ".join(str(w) for w in words)
        self.raw.append(s)
        print(s, flush=True)

    # -- bring-up ----------------------------------------------------------

    def bring_up(self, tool, n, timeout):
        ev = self.ev
        t0 = time.monotonic_ns()
        tool.start()

        def up():
            return [p for p, ts in ev.sleeping.items() if ts >= t0 and p in ev.tree]

        def ready_or_failed():
            if tool.root is not None and tool.root.poll() not in (None, 0):
                return "failed"
            return len(up()) >= n and up()

        got = ev.wait_for(ready_or_failed, timeout)
        if got == "failed":
            with open(os.path.join(tool.dir, "out.log"), errors="replace") as f:
                self.line("bringup", tool.name, n, "FAILED", f"exit {tool.root.returncode}:", f.read()[-500:])
            return None
        if not got or len(got) < n:
            with ev.cv:
                k = len(up())
            self.line("bringup", tool.name, n, "TIMEOUT", f"{k}/{n}", f"after {timeout}s")
            return None
        with ev.cv:
            pids = up()
            last_sleep = max(ev.sleeping[p] for p in pids)
            last_exec = max(ev.first_exec.get(p, ev.sleeping[p]) for p in pids)
        exec_ms = (last_exec - t0) / 1e6
        sleep_ms = (last_sleep - t0) / 1e6
        self.line("bringup", tool.name, n, f"all_exec_ms={exec_ms:.2f}", f"all_sleep_ms={sleep_ms:.2f}")
        self.res[(f"bringup_exec_{n}", tool.name)] = exec_ms
        self.res[(f"bringup_sleep_{n}", tool.name)] = sleep_ms
        if tool.root is not None and tool.name.startswith("broctld"):
            tool.reap_root(30)  # the first Main exits once its nodes run
        return pids

    def memory(self, tool, n):
        sup = tool.supervising()
        rss = pss = 0
        for p in sup:
            r, q = smaps_rollup(p)
            rss += r
            pss += q
        self.line("memory", tool.name, n, f"processes={len(sup)}", f"rss_kib={rss}", f"pss_kib={pss}")
        self.res[(f"rss_{n}", tool.name)] = rss
        self.res[(f"pss_{n}", tool.name)] = pss
        self.res[(f"procs_{n}", tool.name)] = len(sup)

    def idle(self, tool, n, seconds):
        sup = tool.supervising()
        before = [cpu_and_wakeups(p) for p in sup]
        time.sleep(seconds)
        after = [cpu_and_wakeups(p) for p in sup]
        cpu_ms = sum(a[0] - b[0] for a, b in zip(after, before)) / 1e6
        wake = sum(a[1] - b[1] for a, b in zip(after, before))
        self.line("idle", tool.name, n, f"seconds={seconds}", f"cpu_ms={cpu_ms:.3f}", f"context_switches={wake}")
        self.res[(f"idle_cpu_ms_{n}", tool.name)] = cpu_ms
        self.res[(f"idle_wakeups_{n}", tool.name)] = wake

    def strace_idle(self, tool, n, seconds):
        if shutil.which("strace") is None:
            self.line("strace", tool.name, n, "SKIPPED no strace")
            return
        pid = tool.top_pid()
        out = os.path.join(tool.dir, "strace.txt")
        subprocess.run(
            ["timeout", "-s", "INT", str(seconds), "strace", "-c", "-f", "-p", str(pid), "-o", out],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=seconds + 30,
        )
        calls = 0
        detail = []
        try:
            with open(out) as f:
                for line in f:
                    w = line.split()
                    if len(w) >= 5 and w[-1] == "total":
                        calls = int(w[3])
                    elif len(w) >= 5 and w[0][0].isdigit() and w[-1] != "syscall":
                        detail.append(f"{w[-1]}:{w[3]}")
        except OSError:
            pass
        self.line("strace", tool.name, n, f"seconds={seconds}", f"syscalls={calls}",
                  f"per_second={calls / seconds:.2f}", "calls=" + ",".join(detail or ["none"]))
        self.res[(f"strace_per_s_{n}", tool.name)] = calls / seconds

    def shutdown(self, tool, n, timeout):
        ev = self.ev
        pids = tool.all_pids()
        t0 = time.monotonic_ns()
        if tool.name.startswith("broctld"):
            th = threading.Thread(target=tool.shutdown, daemon=True)
            th.start()
        else:
            tool.shutdown()
        done = ev.wait_for(lambda: all(p in ev.exited for p in pids), timeout)
        tool.reap_root(10)
        if not done:
            left = [p for p in pids if p not in ev.exited and alive(p)]
            self.line("shutdown", tool.name, n, "TIMEOUT", f"{len(left)} processes left after {timeout}s")
            tool.cleanup()
            return
        with ev.cv:
            end = max(ev.exited[p] for p in pids)
        ms = (end - t0) / 1e6
        self.line("shutdown", tool.name, n, f"processes={len(pids)}", f"ms={ms:.2f}")
        self.res[(f"shutdown_{n}", tool.name)] = ms

    # -- latency on one service -------------------------------------------

    def status_queries(self, tools, rounds, budget):
        floor = ["/bin/true"]
        cmds = [("/bin/true", floor)] + [(t.name, t.status_argv(t.svc(1))) for t in tools]
        for name, argv in cmds:  # warm the page cache, check they work
            _, code = timed_spawn(argv)
            if code != 0:
                log(f"warning: {name} status exited {code}")
        times = {name: [] for name, _ in cmds}
        deadline = time.monotonic() + budget
        for r in range(rounds):
            order = cmds[r % len(cmds):] + cmds[: r % len(cmds)]
            for name, argv in order:
                ns, _ = timed_spawn(argv)
                times[name].append(ns)
            if time.monotonic() > deadline:
                log(f"status: time budget spent after {r + 1} rounds")
                break
        for name, xs in times.items():
            med, p99 = median(xs) / 1e3, pct(xs, 99) / 1e3
            self.line("status", name, f"runs={len(xs)}", f"median_us={med:.1f}", f"p99_us={p99:.1f}",
                      f"min_us={min(xs) / 1e3:.1f}")
            self.res[("status_median_us", name)] = med
            self.res[("status_p99_us", name)] = p99
            self.res[("status_runs", name)] = len(xs)

    def wait_new_child(self, parent, after, chain, timeout):
        """The first child `parent` forked after `after`, once it has run `chain` execs (the
        last one `sleep`): (child, fork ts, first exec ts, sleep exec ts), or None."""
        ev = self.ev

        def found():
            for ts, c in ev.forks.get(parent, []):
                if ts > after and c in ev.sleeping and ev.nexec.get(c, 0) >= chain:
                    return (c, ts, ev.first_exec[c], ev.sleeping[c])
            return None

        return ev.wait_for(found, timeout)

    def one_service_tests(self, tools, kills, stopstarts):
        svc = {t.name: t.svc(1) for t in tools}
        cur = {}
        born = {}
        for t in tools:
            cur[t.name] = t.service_pid(svc[t.name])
            born[t.name] = time.monotonic_ns()
        min_up_ns = 1_600_000_000  # the service has been up for more than 1.5 s

        def settle(t):
            wait = (born[t.name] + min_up_ns - time.monotonic_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)

        # stop then start
        ss = {t.name: [] for t in tools}
        for r in range(stopstarts):
            for t in tools:
                settle(t)
                old = cur[t.name]
                parent = ppid(old)
                t0 = time.monotonic_ns()
                t.stop(svc[t.name])
                gone = self.ev.wait_for(lambda: old in self.ev.exited, 10)
                if not gone:
                    self.line("stopstart", t.name, r, "TIMEOUT waiting for the old process to exit")
                    continue
                t.start_svc(svc[t.name])
                got = self.wait_new_child(parent, t0, t.chain, 10)
                if not got:
                    self.line("stopstart", t.name, r, "TIMEOUT waiting for the new process")
                    cur[t.name] = t.service_pid(svc[t.name])
                    born[t.name] = time.monotonic_ns()
                    continue
                child, _forked, first, slept = got
                ms_exec, ms_sleep = (first - t0) / 1e6, (slept - t0) / 1e6
                ss[t.name].append((ms_exec, ms_sleep))
                self.line("stopstart", t.name, r, f"exec_ms={ms_exec:.3f}", f"sleep_ms={ms_sleep:.3f}")
                cur[t.name], born[t.name] = child, slept
        for name, xs in ss.items():
            if xs:
                self.res[("stopstart_median_ms", name)] = median([x[0] for x in xs])
                self.res[("stopstart_max_ms", name)] = max(x[0] for x in xs)
                self.res[("stopstart_sleep_median_ms", name)] = median([x[1] for x in xs])

        # kill -9
        kk = {t.name: [] for t in tools}
        for r in range(kills):
            for t in tools:
                settle(t)
                old = cur[t.name]
                parent = ppid(old)
                t0 = time.monotonic_ns()
                os.kill(old, signal.SIGKILL)
                got = self.wait_new_child(parent, t0, t.chain, 10)
                if not got:
                    self.line("kill9", t.name, r, "TIMEOUT waiting for the replacement")
                    cur[t.name] = t.service_pid(svc[t.name])
                    born[t.name] = time.monotonic_ns()
                    continue
                child, forked, first, slept = got
                with self.ev.cv:
                    died = self.ev.exited.get(old, t0)
                ms_exec, ms_sleep = (first - t0) / 1e6, (slept - t0) / 1e6
                parts = ((died - t0) / 1e6, (forked - died) / 1e6, (first - forked) / 1e6)
                kk[t.name].append((ms_exec, ms_sleep) + parts)
                self.line("kill9", t.name, r, f"exec_ms={ms_exec:.3f}", f"sleep_ms={ms_sleep:.3f}",
                          f"kill_to_death_ms={parts[0]:.3f}", f"death_to_fork_ms={parts[1]:.3f}",
                          f"fork_to_exec_ms={parts[2]:.3f}")
                cur[t.name], born[t.name] = child, slept
        for name, xs in kk.items():
            if xs:
                self.res[("kill9_median_ms", name)] = median([x[0] for x in xs])
                self.res[("kill9_max_ms", name)] = max(x[0] for x in xs)
                self.res[("kill9_sleep_median_ms", name)] = median([x[1] for x in xs])
                self.res[("kill9_death_median_ms", name)] = median([x[2] for x in xs])
                self.res[("kill9_react_median_ms", name)] = median([x[3] for x in xs])
                self.res[("kill9_child_median_ms", name)] = median([x[4] for x in xs])
                self.res[("kill9_runs", name)] = len(xs)


# --------------------------------------------------------------------------
# Report


TOOL_ORDER = ["broctld", "broctld-direct", "s6", "runit", "supervisord"]


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def markdown(res, small, big, idle_s):
    g = lambda k, t: res.get((k, t))  # noqa: E731
    tools = [t for t in TOOL_ORDER if any(k[1] == t for k in res)]
    out = []
    out.append("#### Latency on one service (N = %d services per tool, all tools up at once)\n" % small)
    out.append("| tool | `status` median (µs) | `status` p99 (µs) | ÷ `/bin/true` | stop+start median (ms) | kill -9 → exec median (ms) | kill -9 → exec max (ms) | kill -9 → `sleep` median (ms) |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    t_true = g("status_median_us", "/bin/true")
    out.append(f"| `/bin/true` (spawn floor) | {fmt(t_true, 1)} | {fmt(g('status_p99_us', '/bin/true'), 1)} | 1.00 | | | | |")
    for t in tools:
        st = g("status_median_us", t)
        out.append(
            f"| {t} | {fmt(st, 1)} | {fmt(g('status_p99_us', t), 1)} | {fmt(st / t_true if st and t_true else None)} "
            f"| {fmt(g('stopstart_median_ms', t), 3)} | {fmt(g('kill9_median_ms', t), 3)} | {fmt(g('kill9_max_ms', t), 3)} "
            f"| {fmt(g('kill9_sleep_median_ms', t), 3)} |"
        )
    out.append("")
    out.append("Restart after kill -9, where the time goes (medians, ms, from the kernel's exit, fork and exec events): "
               "the kill until the process is dead; the supervisor's reaction, from the death until it forks the "
               "replacement; the new child, from its fork until its exec.\n")
    out.append("| tool | kill → death | death → fork (supervisor) | fork → exec (child) |")
    out.append("|---|---:|---:|---:|")
    for t in tools:
        if g("kill9_react_median_ms", t) is not None:
            out.append(f"| {t} | {fmt(g('kill9_death_median_ms', t), 3)} | {fmt(g('kill9_react_median_ms', t), 3)} "
                       f"| {fmt(g('kill9_child_median_ms', t), 3)} |")
    out.append("")
    out.append("#### Scale (each tool alone, one after the other)\n")
    out.append(f"| tool | bring-up N={small} (ms) | bring-up N={big} (ms) | RSS N={small} (KiB) | PSS N={small} (KiB) | RSS N={big} (KiB) | PSS N={big} (KiB) | processes N={big} | CPU idle {idle_s} s N={big} (ms) | context switches idle {idle_s} s N={big} | shutdown N={big} (ms) |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in tools:
        out.append(
            f"| {t} | {fmt(g(f'bringup_exec_{small}', t))} | {fmt(g(f'bringup_exec_{big}', t))} "
            f"| {fmt(g(f'rss_{small}', t))} | {fmt(g(f'pss_{small}', t))} | {fmt(g(f'rss_{big}', t))} | {fmt(g(f'pss_{big}', t))} "
            f"| {fmt(g(f'procs_{big}', t))} | {fmt(g(f'idle_cpu_ms_{big}', t), 3)} | {fmt(g(f'idle_wakeups_{big}', t))} "
            f"| {fmt(g(f'shutdown_{big}', t))} |"
        )
    sc = g(f"strace_per_s_{big}", "broctld")
    out.append("")
    out.append(f"Syscalls per idle second of broctld's Supervisor at N={big} (`strace -c -f -p`): **{fmt(sc)}**.")
    out.append("")
    out.append(f"Bring-up to every service running `sleep` (after the run script's own exec): "
               + ", ".join(f"{t} {fmt(g(f'bringup_sleep_{big}', t))} ms" for t in tools if g(f'bringup_sleep_{big}', t) is not None)
               + f" (N={big}).")
    return "\n".join(out) + "\n"


def targets(res, crit_all, small, big):
    """The issue's targets, judged on this run: (target, figure, verdict)."""
    crit = {k: v[0] for k, v in crit_all.items()}
    crit_q = crit_all
    g = lambda k, t: res.get((k, t))  # noqa: E731
    peers = ["s6", "runit", "supervisord"]
    rows = []

    def verdict(ok, how):
        return ("met" if ok else "MISSED") + (f" ({how})" if how else "")

    # criterion targets
    if crit:
        for pin in ["same-cpu", "cross-cpu", "unpinned"]:
            p, f = crit.get(f"mailbox/ping/{pin}"), crit.get(f"floor/pipe/{pin}")
            pr = crit_q.get(f"paired/{pin}/ping-over-pipe")
            if pr:
                # Judged on the interleaved (paired) ratio: robust to load that comes and goes.
                r = pr[0]
                also = f"; criterion medians {p / 1e3:.2f} µs / {f / 1e3:.2f} µs = {p / f:.2f}×" if p and f else ""
                rows.append((f"command round trip ≤ 1.2 × pipe floor ({pin})",
                             f"paired {r:.2f}× (quartiles {pr[1]:.2f} .. {pr[2]:.2f}){also}",
                             verdict(r <= 1.2, f"by {100 * (r / 1.2 - 1):.0f}%" if r > 1.2 else "")))
                continue
            if p and f:
                r = p / f
                if pin == "unpinned":
                    # Where the scheduler puts the two processes differs from bench to bench
                    # (and with the machine's load), so this ratio is not judged.
                    rows.append(("command round trip ÷ pipe floor (unpinned: not judged, placement differs between benches)",
                                 f"{p / 1e3:.2f} µs / {f / 1e3:.2f} µs = {r:.2f}×", "-"))
                    continue
                rows.append((f"command round trip ≤ 1.2 × pipe floor ({pin})",
                             f"{p / 1e3:.2f} µs / {f / 1e3:.2f} µs = {r:.2f}×",
                             verdict(r <= 1.2, f"by {100 * (r / 1.2 - 1):.0f}%" if r > 1.2 else "")))
        s = crit.get("status/client/64")
        if s:
            rows.append(("status read of 64 nodes < 1 µs median (`Client::status()`)", f"{s / 1e3:.2f} µs",
                         verdict(s < 1000, f"{s / 1000:.1f}× the target" if s >= 1000 else "")))
        s = crit.get("status/into/64")
        if s:
            rows.append(("status read of 64 nodes < 1 µs median (`Client::status_into`, decoded, no allocation)", f"{s / 1e3:.2f} µs",
                         verdict(s < 1000, f"{s / 1000:.1f}× the target" if s >= 1000 else "")))
        s = crit.get("status/raw/64")
        if s:
            rows.append(("status read of 64 nodes < 1 µs median (seqlock snapshot, undecoded)", f"{s:.0f} ns",
                         verdict(s < 1000, "")))
    st, tr, s6 = g("status_median_us", "broctld"), g("status_median_us", "/bin/true"), g("status_median_us", "s6")
    if st and tr:
        r = st / tr
        rows.append(("`broctld status` ≤ 1.15 × `/bin/true`", f"{st:.0f} µs / {tr:.0f} µs = {r:.2f}×",
                     verdict(r <= 1.15, f"by {100 * (r / 1.15 - 1):.0f}%" if r > 1.15 else "")))
    if st and s6:
        rows.append(("`broctld status` never slower than `s6-svstat`", f"{st:.0f} µs vs {s6:.0f} µs",
                     verdict(st <= s6, f"{st / s6:.2f}× s6-svstat" if st > s6 else "")))
    k = g("kill9_median_ms", "broctld")
    if k is not None:
        rows.append(("restart after kill -9 < 1 ms median", f"{k:.3f} ms",
                     verdict(k < 1, f"{k:.2f}× the target" if k >= 1 else "")))
        pk = [(g("kill9_median_ms", p), p) for p in peers if g("kill9_median_ms", p) is not None]
        if pk:
            best, who = min(pk)
            rows.append(("restart after kill -9 ≤ ½ fastest peer", f"{k:.3f} ms vs {who} {best:.3f} ms = {k / best:.2f}×",
                         verdict(k <= best / 2, f"{k / best:.2f}× instead of ≤ 0.5×" if k > best / 2 else "")))
    b = g(f"bringup_exec_{big}", "broctld")
    pb = [(g(f"bringup_exec_{big}", p), p) for p in peers if g(f"bringup_exec_{big}", p) is not None]
    if b is not None and pb:
        best, who = min(pb)
        rows.append((f"bring-up N={big} ≤ ⅓ fastest peer", f"{b:.0f} ms vs {who} {best:.0f} ms = {b / best:.2f}×",
                     verdict(b <= best / 3, f"{b / best:.2f}× instead of ≤ 0.33×" if b > best / 3 else "")))
    r = g(f"rss_{big}", "broctld")
    if r is not None:
        rows.append((f"Supervisor RSS at N={big} < 4 MiB", f"{r} KiB", verdict(r < 4096, f"by {r - 4096} KiB" if r >= 4096 else "")))
    r0 = g(f"rss_{small}", "broctld")
    p0, p1 = g(f"pss_{small}", "broctld"), g(f"pss_{big}", "broctld")
    if r is not None and r0 is not None and big > small:
        per = (r - r0) * 1024 / (big - small)
        pss = f", PSS {(p1 - p0) * 1024 / (big - small):.0f} B" if p0 is not None and p1 is not None else ""
        rows.append((f"memory per added node < 1 KiB (RSS N={small} to N={big})", f"{per:.0f} B{pss}",
                     verdict(per < 1024, f"by {per - 1024:.0f} B" if per >= 1024 else "")))
    w = g(f"idle_wakeups_{big}", "broctld")
    if w is not None:
        rows.append((f"zero wakeups while idle (N={big})", f"{w} context switches, {fmt(g(f'strace_per_s_{big}', 'broctld'))} syscalls/s",
                     verdict(w == 0, f"{w} wakeups" if w else "")))
    out = ["| target | this run | verdict |", "|---|---|---|"]
    out += [f"| {a} | {b_} | {c} |" for a, b_, c in rows]
    return "\n".join(out) + "\n"


def read_criterion(path):
    """{id: (median, low, high)} from the raw block of the criterion summary (criterion medians
    in ns with their confidence interval; paired series with their quartiles)."""
    out = {}
    if not path or not os.path.exists(path):
        return out
    in_raw = False
    with open(path) as f:
        for line in f:
            if line.startswith("```"):
                in_raw = not in_raw
                continue
            w = line.split()
            if in_raw and len(w) == 4:
                try:
                    out[w[0]] = tuple(float(x) for x in w[1:4])
                except ValueError:
                    pass
    return out


def machine(args):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:  # noqa: BLE001
            return "?"

    def changes():
        listed = sh("git diff --name-only HEAD 2>/dev/null; git ls-files --others --exclude-standard 2>/dev/null")
        paths = [ln.strip() for ln in listed.splitlines() if ln.strip()]
        if not paths:
            return ""
        other = [p for p in paths if not p.startswith(("benches/", "docs/"))]
        if not other:
            return " (uncommitted changes under benches/ and docs/ only)"
        return " (with uncommitted changes in " + ", ".join(other[:8]) + ")"

    model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-").strip()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    osr = sh(". /etc/os-release && echo $PRETTY_NAME")
    vers = sh("dpkg-query -W -f='${Package} ${Version}, ' s6 runit supervisor strace gnuplot-nox 2>/dev/null").rstrip(", ")
    lines = [
        f"- machine: {os.cpu_count()} CPUs ({model}), {mem_gib:.0f} GiB RAM, {osr}, kernel {platform.release()}",
        f"- clocksource: {sh('cat /sys/devices/system/clocksource/clocksource0/current_clocksource')}",
        f"- toolchain: {sh('rustc --version')}",
        f"- peers: {vers}; Python {platform.python_version()} (peers script), supervisord runs on {sh('head -1 $(command -v supervisord) | cut -c3-')}",
        f"- commit: {sh('git rev-parse --short HEAD 2>/dev/null') or '?'}{changes()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; load average (1/5/15 min) at the end of the peers run: {'/'.join(f'{x:.2f}' for x in os.getloadavg())} (the `load` raw lines give it at each phase)",
    ]
    return "\n".join(lines) + "\n"


def chart_peers(res, out_png, small):
    gp = shutil.which("gnuplot")
    if gp is None:
        log("no gnuplot: chart skipped")
        return False
    tools = [t for t in TOOL_ORDER if ("status_median_us", t) in res]
    rows = [
        ("status query", "status_median_us", 1e-3),
        ("stop + start", "stopstart_median_ms", 1.0),
        ("restart after kill -9", "kill9_median_ms", 1.0),
    ]
    data = out_png + ".dat"
    with open(data, "w") as f:
        f.write("metric /bin/true " + " ".join(tools) + "\n")
        for label, key, scale in rows:
            vals = [res.get((key, "/bin/true")) if key == "status_median_us" else None] + [res.get((key, t)) for t in tools]
            f.write('"%s" ' % label + " ".join("%.4f" % (v * scale) if v else "NaN" for v in vals) + "\n")
    script = f"""
set terminal pngcairo size 1000,520 font ",11"
set output "{out_png}"
set title "broctld and peers: median latency on one service (N={small}), one run, log scale"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set ylabel "milliseconds"
set key outside right top vertical
set grid ytics
set yrange [0.01:*]
plot for [i=2:{len(tools) + 2}] "{data}" using i:xtic(1) title columnheader(i)
"""
    subprocess.run([gp], input=script, text=True, check=False, timeout=60)
    os.unlink(data)
    return os.path.exists(out_png)


def chart_floors(crit, out_png):
    gp = shutil.which("gnuplot")
    if gp is None or not crit:
        return False
    kinds = ["spin", "futex", "pipe", "fifo", "unix", "doorbell"]
    data = out_png + ".dat"
    with open(data, "w") as f:
        f.write("pinning broctld-ping " + " ".join(kinds) + "\n")
        for pin in ["unpinned", "same-cpu", "cross-cpu"]:
            vals = [crit.get(f"mailbox/ping/{pin}")] + [crit.get(f"floor/{k}/{pin}") for k in kinds]
            f.write(f'"{pin}" ' + " ".join("%.4f" % (v / 1e3) if v else "NaN" for v in vals) + "\n")
    script = f"""
set terminal pngcairo size 1000,520 font ",11"
set output "{out_png}"
set title "broctld command round trip vs IPC floors between two processes (criterion medians, one run, log scale)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set ylabel "microseconds per round trip"
set key outside right top vertical
set grid ytics
plot for [i=2:{len(kinds) + 2}] "{data}" using i:xtic(1) title columnheader(i)
"""
    subprocess.run([gp], input=script, text=True, check=False, timeout=60)
    os.unlink(data)
    return os.path.exists(out_png)


def replace_block(text, name, body):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        return text + f"\n{begin}\n{body}{end}\n"
    a = text.index(begin) + len(begin)
    b = text.index(end)
    return text[:a] + "\n" + body + text[b:]


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--install-only", action="store_true", help="install the peers if missing, then exit")
    ap.add_argument("--broctld", help="the broctld binary (default: $CARGO_TARGET_DIR or target, /release/broctld)")
    ap.add_argument("--quick", action="store_true", help="small N and few rounds: a fast check, not for docs")
    ap.add_argument("--out", help="where raw results go (default: <target>/bench-results)")
    ap.add_argument("--criterion", help="the summary file `cargo bench --bench ipc` wrote (BROCTLD_BENCH_SUMMARY)")
    ap.add_argument("--docs", help="update this Markdown file (docs/benchmarks.md) and write charts next to it in img/")
    ap.add_argument("--base-dir", help="where the tools' temp dirs go (default: the first tmpfs of $XDG_RUNTIME_DIR, /run, /dev/shm, else the temp dir)")
    ap.add_argument("--tools", default=",".join(TOOL_ORDER), help="comma-separated subset of " + ",".join(TOOL_ORDER))
    args = ap.parse_args()

    install_peers()
    if args.install_only:
        return
    if os.geteuid() != 0:
        sys.exit("peers.py needs root: the proc connector (kernel exec/exit times) is root-only")
    target = os.environ.get("CARGO_TARGET_DIR") or "target"
    binary = args.broctld or os.path.join(target, "release", "broctld")
    if not os.access(binary, os.X_OK):
        sys.exit(f"no broctld binary at {binary}: run `cargo build --release --bins` first")
    out_dir = args.out or os.path.join(target, "bench-results")
    os.makedirs(out_dir, exist_ok=True)

    if args.quick:
        small, big, status_rounds, kills, stopstarts, idle_s = 10, 100, 50, 5, 5, 3
    else:
        small, big, status_rounds, kills, stopstarts, idle_s = 10, 1000, 200, 20, 20, 10
    wanted = [t for t in args.tools.split(",") if t]
    sys.setswitchinterval(0.0005)

    base_parent, base_fs = pick_base(args.base_dir)
    base = tempfile.mkdtemp(prefix="broctld-peers-", dir=base_parent)
    run_file = os.path.join(base, "run")
    with open(run_file, "w") as f:
        f.write(RUN_SCRIPT)
    os.chmod(run_file, 0o755)

    def make(name, n):
        d = os.path.join(base, f"n{n}")
        return {
            "broctld": lambda: Broctld(d, n, run_file, binary),
            "broctld-direct": lambda: BroctldDirect(d, n, run_file, binary),
            "s6": lambda: S6(d, n, run_file),
            "runit": lambda: Runit(d, n, run_file),
            "supervisord": lambda: Supervisord(d, n, run_file),
        }[name]()

    run = Run(args)
    run.line("dirs", f"base={base}", f"fs={base_fs}")
    live = []

    def cleanup(*_):
        for t in live:
            try:
                t.cleanup()
            except Exception as e:  # noqa: BLE001
                log(f"cleanup of {t.name}: {e}")
        shutil.rmtree(base, ignore_errors=True)

    def on_signal(signum, _frame):
        cleanup()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()

    def load(what):
        run.line("load", what, "loadavg=" + "/".join(f"{x:.2f}" for x in os.getloadavg()))

    try:
        run.ev = ProcEvents()
        load("start")
        # Phase 1: every tool with `small` services, up at once; latency on one service.
        log(f"phase 1: {wanted} with N={small} each")
        tools = []
        for name in wanted:
            t = make(name, small)
            live.append(t)
            if run.bring_up(t, small, 60) is None:
                raise SystemExit(f"{name} did not bring up {small} services; see {t.dir}/out.log")
            tools.append(t)
        time.sleep(1)
        for t in tools:
            run.memory(t, small)
        log(f"status queries: {status_rounds} rounds")
        run.status_queries(tools, status_rounds, 300)
        log(f"stop/start x{stopstarts}, kill -9 x{kills}")
        run.one_service_tests(tools, kills, stopstarts)
        for t in tools:
            run.shutdown(t, small, 60)
            live.remove(t)
        load("after-phase-1")
        # Phase 2: each tool alone with `big` services.
        for name in wanted:
            log(f"phase 2: {name} with N={big}")
            t = make(name, big)
            live.append(t)
            if run.bring_up(t, big, 300) is None:
                t.cleanup()
                live.remove(t)
                continue
            time.sleep(2)
            run.memory(t, big)
            run.idle(t, big, idle_s)
            if name == "broctld":
                run.strace_idle(t, big, idle_s)
            run.shutdown(t, big, 300)
            if t in live:
                live.remove(t)
        load("end")
        if run.ev.overruns:
            run.line("warning", f"proc connector overruns={run.ev.overruns}: some kernel events were lost")
    finally:
        if run.ev is not None:
            run.ev.close()
        cleanup()
    took = time.monotonic() - started
    run.line("total", f"seconds={took:.0f}")

    md = markdown(run.res, small, big, idle_s)
    crit = read_criterion(args.criterion)
    tg = targets(run.res, crit, small, big)
    with open(os.path.join(out_dir, "peers.raw"), "w") as f:
        f.write("\n".join(run.raw) + "\n")
    with open(os.path.join(out_dir, "peers.md"), "w") as f:
        f.write(md + "\n" + tg)
    with open(os.path.join(out_dir, "peers.json"), "w") as f:
        json.dump({f"{k[0]}|{k[1]}": v for k, v in run.res.items()}, f, indent=1)
    print("\n" + md + "\n" + tg)
    if args.docs:
        if args.quick:
            log("--quick results are not written into the docs")
            return
        img = os.path.join(os.path.dirname(os.path.abspath(args.docs)), "img")
        os.makedirs(img, exist_ok=True)
        chart_peers(run.res, os.path.join(img, "peers-latency.png"), small)
        chart_floors({k: v[0] for k, v in crit.items()}, os.path.join(img, "ipc-floors.png"))
        text = open(args.docs).read() if os.path.exists(args.docs) else "# Benchmarks\n"
        text = replace_block(text, "machine", machine(args))
        if args.criterion and os.path.exists(args.criterion):
            text = replace_block(text, "criterion", open(args.criterion).read())
        text = replace_block(text, "targets", tg)
        text = replace_block(text, "peers", md)
        text = replace_block(text, "peers-raw", "```\n" + "\n".join(run.raw) + "\n```\n")
        with open(args.docs, "w") as f:
            f.write(text)
        log(f"wrote {args.docs} and {img}/")


if __name__ == "__main__":
    main()
