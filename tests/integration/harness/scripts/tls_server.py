#!/usr/bin/python3
"""A TLS server for the handshake-latency tests: delays every handshake by --delay-ms, sleeping
in its SNI callback (so the ServerHello leaves that much after the ClientHello arrived, in TLS
1.2 and 1.3 alike), then answers any request with a small HTTP response and closes.
One thread per connection, so a slow or failing client never delays another."""
import argparse
import socket
import ssl
import threading
import time


def serve(conn, context):
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(10)
            try:
                tls.recv(4096)
            except (ssl.SSLError, OSError):
                return
            tls.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            tls.unwrap()  # close_notify, so clients see a clean end
    except (ssl.SSLError, OSError):
        pass  # the client rejected us, or went away: that is what some tests want
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True, help="ip:port")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--delay-ms", type=int, default=0)
    args = parser.parse_args()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)

    def delay(_sock, _server_name, _context):
        time.sleep(args.delay_ms / 1000.0)
        return None

    context.sni_callback = delay
    host, port = args.listen.rsplit(":", 1)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host.strip("[]"), int(port)))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, context), daemon=True).start()


if __name__ == "__main__":
    main()
