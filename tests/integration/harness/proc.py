"""Starting processes inside a pod: join the pod's network namespace and a cgroup v2 directory,
drop to the requested uid/gid, then exec. All done in the forked child (preexec_fn) so the PID we
get back is the process itself, which is then ended by that PID only."""
import ctypes
import os
import signal
import subprocess

from . import cleanup

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


def _child_setup(netns_path, cgroup_dir, uid, gid, groups):
    def setup():
        # Order matters: the cgroup write and setns need root, so both precede the uid drop.
        if cgroup_dir:
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        if netns_path:
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns_path}")
            finally:
                os.close(fd)
        if gid is not None or uid is not None:
            os.setgroups(list(groups or []))
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        # Set last: credential changes clear it. If pytest is SIGKILLed, our children die too.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return setup


def pod_env():
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8", "HOME": "/"}


def spawn(args, netns_path=None, cgroup_dir=None, uid=None, gid=None, groups=None,
          stdout=None, stderr=None, env=None, description=None):
    """Starts a long-running process and registers its termination (by PID) for cleanup."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            env=env or pod_env(), cwd="/",
                            preexec_fn=_child_setup(netns_path, cgroup_dir, uid, gid, groups))
    start = cleanup._proc_start(proc.pid)
    proc.cleanup_token = cleanup.REGISTRY.add(
        description or f"kill {args[0]} pid {proc.pid}",
        lambda: _terminate(proc),
        record={"kind": "pid", "pid": proc.pid, "start": start})
    return proc


def _terminate(proc, grace=2.0):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def stop(proc, sig=signal.SIGTERM, timeout=5.0):
    """Ends one spawned process by its PID and unregisters it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    cleanup.REGISTRY.undo(proc.cleanup_token)  # already dead: only drops the record


def run_in(args, netns_path=None, cgroup_dir=None, uid=None, gid=None, groups=None,
           timeout=20, env=None, input=None):
    """Runs a short command inside the pod; returns CompletedProcess (text)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input,
                          env=env or pod_env(), cwd="/",
                          preexec_fn=_child_setup(netns_path, cgroup_dir, uid, gid, groups))
