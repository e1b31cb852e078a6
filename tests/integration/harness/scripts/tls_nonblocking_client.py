#!/usr/bin/python3
"""A non-blocking TLS client (Python's ssl = the system libssl.so.3): do_handshake() is called
until it stops raising SSLWantRead/WriteError, so one handshake spans several SSL_do_handshake
calls. Prints JSON: ok, calls (do_handshake calls made), version."""
import argparse
import json
import select
import socket
import ssl


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--sni", required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection((args.host, args.port), timeout=10)
    sock.setblocking(False)
    tls = context.wrap_socket(sock, server_hostname=args.sni, do_handshake_on_connect=False)
    calls = 0
    while True:
        calls += 1
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            select.select([tls], [], [], 10)
        except ssl.SSLWantWriteError:
            select.select([], [tls], [], 10)
    tls.setblocking(True)
    tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
    tls.recv(4096)
    print(json.dumps({"ok": True, "calls": calls, "version": tls.version()}))
    tls.close()


if __name__ == "__main__":
    main()
