"""Runs a batch of TCP probes and prints their outcomes as one JSON object {id: outcome}.

Reads a JSON list from stdin; each probe: {"id", "uid", "gid", "family": "4" | "6" | "4in6",
"dst", "port", "bind" (optional source address), "proto" (optional: "tcp" default, or for a
DNS probe "dns-udp" (sendto/recvfrom on an unconnected socket), "dns-udpc" (connected UDP) or
"dns-tcp")}. "4in6" connects an AF_INET6 socket to the v4-mapped form of an IPv4 dst. Started as root inside the pod (netns + cgroup already joined);
one forked child per (uid, gid) drops to those ids (no supplementary groups) and runs its probes,
so the owner of each socket is exactly what the probe asks for.

An outcome is the probe server's JSON line (who answered, the original destination it saw) or
{"error": "ECONNREFUSED" | "timeout" | ...}. A DNS probe asks for DNS_NAME (type A) and reports
{"answer": the A record, "src": the reply's source as the client saw it: recvfrom's address for
UDP, getpeername() for TCP}; a DNS-over-TCP probe that a probe listener answered instead (15001,
15006, ...) reports that listener's line like a TCP probe. Children run in parallel."""
import errno
import json
import os
import socket
import struct
import sys

TIMEOUT = 2.0
DNS_TIMEOUT = 1.0
DNS_NAME = "svc.meshlane-diff.test"


def dns_query(ident):
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # RD, one question
    labels = b"".join(bytes([len(p)]) + p.encode() for p in DNS_NAME.split("."))
    return header + labels + b"\0" + struct.pack("!HH", 1, 1)


def dns_answer(reply, ident):
    """The last A record's address (dnsmasq's --address reply has exactly one)."""
    rid, flags, _, ancount = struct.unpack("!HHHH", reply[:8])
    if rid != ident or not ancount or len(reply) < 16:
        return f"bad reply id={rid} flags={flags:#x} answers={ancount}"
    return socket.inet_ntop(socket.AF_INET, reply[-4:])


def address(sockaddr):
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def recv_all(sock):
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        if data.startswith(b"{") and data.endswith(b"\n"):
            return data
        if len(data) >= 2 and len(data) >= 2 + struct.unpack("!H", data[:2])[0]:
            return data


def dns_one(probe, sock, dst):
    ident = 0x4d00 | (probe["port"] & 0xff)
    query = dns_query(ident)
    proto = probe["proto"]
    if proto == "dns-tcp":
        sock.connect((dst, probe["port"]))
        sock.sendall(struct.pack("!H", len(query)) + query)
        data = recv_all(sock)
        if data.startswith(b"{"):  # a probe listener, not a DNS server
            answer = json.loads(data)
            return {"by": answer["by"], "dst": answer["dst"]}
        if len(data) < 2:
            return {"error": "closed without answer"}
        return {"answer": dns_answer(data[2:], ident), "src": address(sock.getpeername())}
    if proto == "dns-udpc":
        sock.connect((dst, probe["port"]))
        sock.send(query)
        reply = sock.recv(4096)
        return {"answer": dns_answer(reply, ident), "src": address(sock.getpeername())}
    sock.sendto(query, (dst, probe["port"]))
    reply, source = sock.recvfrom(4096)
    return {"answer": dns_answer(reply, ident), "src": address(source)}


def one(probe):
    family = probe["family"]
    dst = probe["dst"]
    proto = probe.get("proto", "tcp")
    kind = socket.SOCK_STREAM if proto in ("tcp", "dns-tcp") else socket.SOCK_DGRAM
    if family == "4":
        sock = socket.socket(socket.AF_INET, kind)
    else:
        sock = socket.socket(socket.AF_INET6, kind)
        if family == "4in6":
            dst = "::ffff:" + dst
    sock.settimeout(DNS_TIMEOUT if proto != "tcp" else TIMEOUT)
    try:
        if probe.get("bind"):
            sock.bind((probe["bind"], 0))
        if proto != "tcp":
            return dns_one(probe, sock, dst)
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


def start_as(uid, gid, probes):
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
    return pid, read_end


def collect(uid, gid, pid, read_end):
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
    # All identities at once: a probe that times out then costs its own child's time only.
    started = [(uid, gid, *start_as(uid, gid, batch)) for (uid, gid), batch in groups.items()]
    results = {}
    for run in started:
        results.update(collect(*run))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
