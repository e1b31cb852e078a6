"""Runs a batch of TCP probes and prints their outcomes as one JSON object {id: outcome}.

Reads a JSON list from stdin; each probe: {"id", "uid", "gid", "family": "4" | "6" | "4in6",
"dst", "port", "bind" (optional source address)}. "4in6" connects an AF_INET6 socket to the
v4-mapped form of an IPv4 dst. Started as root inside the pod (netns + cgroup already joined);
one forked child per (uid, gid) drops to those ids (no supplementary groups) and runs its probes,
so the owner of each socket is exactly what the probe asks for.

An outcome is the probe server's JSON line (who answered, the original destination it saw) or
{"error": "ECONNREFUSED" | "timeout" | ...}."""
import errno
import json
import os
import socket
import sys

TIMEOUT = 2.0


def one(probe):
    family = probe["family"]
    dst = probe["dst"]
    if family == "4":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        if family == "4in6":
            dst = "::ffff:" + dst
    sock.settimeout(TIMEOUT)
    try:
        if probe.get("bind"):
            sock.bind((probe["bind"], 0))
        sock.connect((dst, probe["port"]))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data:
            return {"error": "closed without answer"}
        answer = json.loads(data)
        return {"by": answer["by"], "dst": answer["dst"]}
    except socket.timeout:
        return {"error": "timeout"}
    except OSError as e:
        return {"error": errno.errorcode.get(e.errno, str(e.errno))}
    finally:
        sock.close()


def run_as(uid, gid, probes):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            results = {p["id"]: one(p) for p in probes}
            with os.fdopen(write_end, "w") as out:
                json.dump(results, out)
        except BaseException as e:  # report, never fall back into the parent's loop
            sys.stderr.write(f"probe child {uid}/{gid}: {e!r}\n")
            status = 1
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as source:
        text = source.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"probe child {uid}/{gid} failed")
    return json.loads(text)


def main():
    probes = json.load(sys.stdin)
    groups = {}
    for probe in probes:
        groups.setdefault((probe["uid"], probe["gid"]), []).append(probe)
    results = {}
    for (uid, gid), batch in groups.items():
        results.update(run_as(uid, gid, batch))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
