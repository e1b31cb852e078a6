"""The cleanup registry: every resource the harness creates registers an undo action here.

Undo actions run LIFO from fixture finalizers; whatever is left runs at interpreter exit. Each
resource is also written to a manifest under MANIFEST_DIR naming the owning pytest PID, so a run
that was SIGKILLed (ctest timeout) is swept by the next run: only resources our own code recorded
are ever touched.
"""
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

MANIFEST_DIR = "/run/meshlane-it"


def _log(message):
    print(f"[harness cleanup] {message}", file=sys.stderr)


class Registry:
    def __init__(self):
        self._actions = []  # (token, description, fn)
        self._next = 0
        self._manifest = None
        # Tests may register from several threads (harness/differential.py builds two pods at
        # once): the action list and the manifest file are updated under this lock.
        self._lock = threading.RLock()
        atexit.register(self.run_all)

    # -- manifest (crash safety net) ------------------------------------------------------------
    def _manifest_path(self):
        if self._manifest is None:
            os.makedirs(MANIFEST_DIR, exist_ok=True)
            self._manifest = os.path.join(MANIFEST_DIR, f"run-{os.getpid()}.json")
        return self._manifest

    def _write_manifest(self):
        records = [rec for _, _, _, rec in self._actions if rec]
        path = self._manifest_path()
        if not records:
            if os.path.exists(path):
                os.unlink(path)
            return
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"owner_pid": os.getpid(), "owner_start": _proc_start(os.getpid()),
                       "resources": records}, f)
        os.replace(tmp, path)

    # -- registration ---------------------------------------------------------------------------
    def add(self, description, fn, record=None):
        """Registers fn as the undo of a resource; record (a dict, see sweep_record) makes it
        recoverable after a crash. Returns a token for cancel()/undo()."""
        with self._lock:
            token = self._next
            self._next += 1
            self._actions.append((token, description, fn, record))
            if record:
                self._write_manifest()
            return token

    def undo(self, token):
        """Runs and removes one action now (errors are logged, never raised)."""
        with self._lock:
            found = [(i, a) for i, a in enumerate(self._actions) if a[0] == token]
            if not found:
                return
            i, (_, description, fn, rec) = found[0]
            del self._actions[i]
        _safe(description, fn)
        if rec:
            with self._lock:
                self._write_manifest()

    def run_all(self):
        while self._actions:
            _, description, fn, _ = self._actions.pop()
            _safe(description, fn)
        if self._manifest:
            self._write_manifest()


def _safe(description, fn):
    try:
        fn()
    except Exception as e:  # cleanup must go on
        _log(f"{description}: {e}")


def _proc_start(pid):
    """Start time of a process (field 22 of /proc/PID/stat), to tell a recycled PID apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


REGISTRY = Registry()


# -- primitive undo actions, usable both live and from a crash sweep ---------------------------
def kill_pid(pid, start_time=None, grace=2.0):
    """SIGTERM, then SIGKILL, one PID; skipped when the PID now names another process."""
    if start_time is not None and _proc_start(pid) != start_time:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if _proc_start(pid) is None or _is_zombie(pid):
            _reap(pid)
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def remove_cgroup_tree(path):
    """Kills whatever still lives in our cgroup subtree (cgroup.kill), then rmdirs bottom-up."""
    if not os.path.isdir(path):
        return
    kill_file = os.path.join(path, "cgroup.kill")
    if os.path.exists(kill_file):
        with open(kill_file, "w") as f:
            f.write("1")
    deadline = time.monotonic() + 3.0
    for root, dirs, _ in sorted(os.walk(path, topdown=False), key=lambda t: -t[0].count("/")):
        while True:
            try:
                os.rmdir(root)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def delete_netns(name):
    if os.path.exists(f"/var/run/netns/{name}"):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def delete_link(name):
    """A host network interface our test created (e.g. a CNI bridge)."""
    if os.path.exists(f"/sys/class/net/{name}"):
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


def sweep_record(record):
    kind = record.get("kind")
    if kind == "pid":
        kill_pid(record["pid"], record.get("start"))
    elif kind == "cgroup":
        remove_cgroup_tree(record["path"])
    elif kind == "netns":
        delete_netns(record["name"])
    elif kind == "link":
        delete_link(record["name"])
    elif kind in ("dir", "pin_dir"):
        remove_tree(record["path"])


def sweep_stale_runs():
    """Cleans resources recorded by earlier runs whose pytest process is gone (SIGKILLed)."""
    if not os.path.isdir(MANIFEST_DIR):
        return
    for name in os.listdir(MANIFEST_DIR):
        path = os.path.join(MANIFEST_DIR, name)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        owner = data.get("owner_pid")
        if owner == os.getpid() or (owner and _proc_start(owner) == data.get("owner_start")):
            continue  # owner still running
        _log(f"sweeping leftovers of dead run {owner}")
        for record in reversed(data.get("resources", [])):
            _safe(f"sweep {record}", lambda r=record: sweep_record(r))
        os.unlink(path)
