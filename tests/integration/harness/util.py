"""Small helpers shared by the harness: commands, polling, unique names, cgroup2 discovery."""
import os
import secrets
import subprocess
import time

HARNESS_DIR = os.path.dirname(os.path.abspath(__file__))
SCRIPTS_DIR = os.path.join(HARNESS_DIR, "scripts")
# Debian's interpreter: the test scripts run as uid 1337/1000 too, and must not depend on pyenv.
PYTHON = "/usr/bin/python3"


class CommandError(RuntimeError):
    pass


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now (the kernel's pick)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, check=True, timeout=30, **kwargs):
    """Runs a command, captures text output; on failure raises with both streams in the message."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(map(str, args))} -> exit {proc.returncode}\n"
                           f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}")
    return proc


def wait_until(predicate, timeout=5.0, interval=0.02, message="condition"):
    """Polls predicate() until it returns a truthy value; returns it, or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)


def unique_id():
    """6 hex digits: short enough for interface names (15 chars), unique enough per run."""
    return secrets.token_hex(3)


def cgroup2_mount():
    """The cgroup v2 mount point, read from /proc/mounts (hybrid hosts mount it off-root)."""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return fields[1]
    raise RuntimeError("no cgroup2 mount in /proc/mounts")


def bpffs_mount():
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "bpf":
                return fields[1]
    return "/sys/fs/bpf"


def cgroup_v1_mounts():
    """Mount points of cgroup v1 hierarchies (type "cgroup"), for the bad-input tests."""
    result = []
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup":
                result.append(fields[1])
    return result
