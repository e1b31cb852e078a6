"""Test app: HTTP server on several listen addresses. Every response body is JSON naming the
server, the local address the connection arrived on and the peer, so tests can tell a direct
connection from one forwarded by a proxy. Writes --ready-file once every socket listens."""
import argparse
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def split_hostport(text):
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        local = self.connection.getsockname()
        peer = self.connection.getpeername()
        body = json.dumps({"server": self.server.app_name, "local": [local[0], local[1]],
                           "peer": [peer[0], peer[1]], "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.client_address[0], fmt % args))


def make_server(host, port, name):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True

        def server_bind(self):
            if family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            super().server_bind()

    server = Server((host, port), Handler)
    server.app_name = name
    return server


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", action="append", required=True, help="HOST:PORT, [V6]:PORT")
    parser.add_argument("--name", required=True)
    parser.add_argument("--ready-file")
    args = parser.parse_args()
    servers = [make_server(*split_hostport(spec), args.name) for spec in args.listen]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")
    threading.Event().wait()


if __name__ == "__main__":
    main()
