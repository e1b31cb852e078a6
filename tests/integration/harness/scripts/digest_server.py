"""Test app: for every TCP connection, reads until the peer shuts down its write side, then
answers "<bytes> <sha256 hex>\n" and closes. Lets a client prove that a long stream arrived
complete and unaltered (restart tests)."""
import argparse
import hashlib
import socket
import threading


def split_hostport(text):
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def serve_connection(conn):
    with conn:
        digest = hashlib.sha256()
        total = 0
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                digest.update(data)
                total += len(data)
            conn.sendall(f"{total} {digest.hexdigest()}\n".encode())
        except OSError:
            pass


def serve(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", action="append", required=True, help="HOST:PORT")
    args = parser.parse_args()
    threads = []
    for spec in args.listen:
        host, port = split_hostport(spec)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind((host, port))
        listener.listen(512)
        threads.append(threading.Thread(target=serve, args=(listener,), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
