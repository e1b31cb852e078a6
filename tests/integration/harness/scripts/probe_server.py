"""Cheap probe listener for the differential tests: accepts on every --listen ADDR:PORT and tells
each client, in one JSON line, who answered and which original destination it saw, then closes.

The original destination is what Envoy's original_dst listener filter reads: SO_ORIGINAL_DST
(IPv4) or IP6T_SO_ORIGINAL_DST (IPv6) when the kernel (conntrack) or meshlane answers, otherwise
the accepted socket's local address (getsockname).

usage: probe_server.py --label NAME --listen 0.0.0.0:8080 --listen [::]:8080 ...
   or: probe_server.py --group LABEL,UID,GID,CGROUP_DIR|-,NETNS_PATH|-,PORT:PORT:... ...
The --group form (started as root) forks one child per group, which joins the cgroup and the
network namespace given ("-": stay), drops to uid/gid and serves its ports on 0.0.0.0 and [::];
it prints "ready" once every child listens. One interpreter start instead of one per group.
Children die with the parent (PR_SET_PDEATHSIG)."""
import argparse
import ctypes
import json
import os
import selectors
import signal
import socket
import struct
import sys

SO_ORIGINAL_DST = 80  # also IP6T_SO_ORIGINAL_DST


def parse_listen(text):
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def original_dst(conn, family):
    try:
        if family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, = struct.unpack("!H", raw[2:4])
            return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{port}", "so_original_dst"
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, = struct.unpack("!H", raw[2:4])
        return f"[{socket.inet_ntop(socket.AF_INET6, raw[8:24])}]:{port}", "so_original_dst"
    except OSError:
        local = conn.getsockname()
        host = local[0] if family == socket.AF_INET else f"[{local[0]}]"
        return f"{host}:{local[1]}", "getsockname"


def serve(label, listen):
    selector = selectors.DefaultSelector()
    for text in listen:
        host, port = parse_listen(text)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(128)
        selector.register(sock, selectors.EVENT_READ, (family, port))
    yield  # listening
    while True:
        for key, _ in selector.select():
            family, port = key.data
            try:
                conn, peer = key.fileobj.accept()
            except OSError:
                continue
            with conn:
                try:
                    dst, how = original_dst(conn, family)
                    line = {"by": f"{label}:{port}", "dst": dst, "how": how, "src": peer[0]}
                    conn.sendall((json.dumps(line) + "\n").encode())
                except OSError:
                    pass  # the client gave up (timeout) or reset: its outcome says so


def run_group(spec, ready_fd):
    """Child: cgroup, netns, ids, then serve (never returns)."""
    label, uid, gid, cgroup, netns, ports = spec.split(",")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if cgroup != "-":
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if netns != "-":
        fd = os.open(netns, os.O_RDONLY)
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        os.close(fd)
    if uid != "-":
        os.setgroups([])
        os.setgid(int(gid))
        os.setuid(int(uid))
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # credential changes clear it
    listen = []
    for port in ports.split(":"):
        listen += [f"0.0.0.0:{port}", f"[::]:{port}"]
    server = serve(label, listen)
    next(server)
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    next(server)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--label")
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--group", action="append", default=[])
    args = parser.parse_args()
    if not args.group:
        server = serve(args.label, args.listen)
        next(server)
        next(server)
        return
    read_end, write_end = os.pipe()
    children = []
    for spec in args.group:
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                run_group(spec, write_end)
            except BaseException as e:
                sys.stderr.write(f"probe server group {spec}: {e!r}\n")
            os._exit(1)
        children.append(pid)
    os.close(write_end)
    got = b""
    while len(got) < len(children):
        chunk = os.read(read_end, 64)
        if not chunk:
            sys.exit(f"a probe server group failed before listening ({len(got)} ready)")
        got += chunk
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pid, status = os.wait()  # a child dying is an error the harness sees as an exit
    sys.exit(f"probe server child {pid} ended with status {status}")


if __name__ == "__main__":
    main()
