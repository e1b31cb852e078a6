#!/usr/bin/python3
"""One DNS A query for NAME to SERVER:53, the way a given kind of resolver sends it; prints JSON:
{"ok", "answers": [...], "source": [addr, port] of the reply as the socket reported it,
"peername": getpeername() of a connected socket, "error"}.

  --mode udp            unconnected UDP: sendto + recvfrom (the reply's source is checked here)
  --mode udp-connected  connect + send + recvfrom, as glibc's resolver does
  --mode tcp            TCP with the 2-byte length prefix
  --mode dnspython      dnspython's dns.query.udp, which refuses replies from another source
"""
import argparse
import json
import socket
import struct

import dns.message
import dns.query
import dns.rdatatype


def answers(wire):
    reply = dns.message.from_wire(wire)
    return sorted(rr.address for rrset in reply.answer for rr in rrset
                  if rr.rdtype == dns.rdatatype.A)


def family_of(server):
    return socket.AF_INET6 if ":" in server else socket.AF_INET


def query_udp(server, query, timeout, connected):
    result = {}
    with socket.socket(family_of(server), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        if connected:
            s.connect((server, 53))
            result["peername"] = list(s.getpeername()[:2])
            s.send(query)
        else:
            s.sendto(query, (server, 53))
        wire, source = s.recvfrom(4096)
    result["source"] = list(source[:2])
    result["answers"] = answers(wire)
    return result


def query_tcp(server, query, timeout):
    with socket.create_connection((server, 53), timeout=timeout) as s:
        peer = list(s.getpeername()[:2])
        s.sendall(struct.pack("!H", len(query)) + query)
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed before the whole reply")
            data += chunk
    return {"peername": peer, "source": peer, "answers": answers(data[2:])}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("server")
    parser.add_argument("name")
    parser.add_argument("--mode", default="udp",
                        choices=["udp", "udp-connected", "tcp", "dnspython"])
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    query = dns.message.make_query(args.name, "A")
    out = {"ok": False, "mode": args.mode, "server": args.server}
    try:
        if args.mode == "dnspython":
            reply = dns.query.udp(query, args.server, timeout=args.timeout)
            out["answers"] = answers(reply.to_wire())
        elif args.mode == "tcp":
            out.update(query_tcp(args.server, query.to_wire(), args.timeout))
        else:
            out.update(query_udp(args.server, query.to_wire(), args.timeout,
                                 args.mode == "udp-connected"))
        out["ok"] = True
    except Exception as e:  # reported to the test, which asserts on it
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
