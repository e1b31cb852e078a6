"""Cheap probe listener for the differential tests: accepts on every --listen ADDR:PORT and tells
each client, in one JSON line, who answered and which original destination it saw, then closes.

The original destination is what Envoy's original_dst listener filter reads: SO_ORIGINAL_DST
(IPv4) or IP6T_SO_ORIGINAL_DST (IPv6) when the kernel (conntrack) or meshlane answers, otherwise
the accepted socket's local address (getsockname).

usage: probe_server.py --label NAME --listen 0.0.0.0:8080 --listen [::]:8080 ..."""
import argparse
import json
import selectors
import socket
import struct

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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    parser.add_argument("--listen", action="append", required=True)
    args = parser.parse_args()
    selector = selectors.DefaultSelector()
    for text in args.listen:
        host, port = parse_listen(text)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(128)
        selector.register(sock, selectors.EVENT_READ, (family, port))
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
                    line = {"by": f"{args.label}:{port}", "dst": dst, "how": how,
                            "src": peer[0]}
                    conn.sendall((json.dumps(line) + "\n").encode())
                except OSError:
                    pass  # the client gave up (timeout) or reset: its outcome says so


if __name__ == "__main__":
    main()
