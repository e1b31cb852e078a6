"""Test client: one HTTP GET over a plain socket; prints a JSON result with the response body and
what getpeername()/getsockname() returned in the app (meshlane must show the original peer)."""
import argparse
import json
import socket
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--family", choices=["4", "6"], help="default: from the address")
    parser.add_argument("--bind", help="source address to bind before connect")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    family = socket.AF_INET6 if (args.family == "6" or ":" in args.host) else socket.AF_INET
    result = {"ok": False}
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(args.timeout)
    try:
        if args.bind:
            sock.bind((args.bind, 0))
        sock.connect((args.host, args.port))
        result["peername"] = list(sock.getpeername()[:2])
        result["sockname"] = list(sock.getsockname()[:2])
        sock.sendall(f"GET /probe HTTP/1.1\r\nHost: {args.host}\r\nConnection: close\r\n\r\n"
                     .encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
        raw = b"".join(chunks).decode(errors="replace")
        head, _, body = raw.partition("\r\n\r\n")
        status_line = head.split("\r\n", 1)[0]
        result["status"] = int(status_line.split()[1]) if status_line.startswith("HTTP/") else None
        result["body"] = body
        try:
            result["json"] = json.loads(body)
        except ValueError:
            result["json"] = None
        result["ok"] = result["status"] == 200
    except OSError as e:
        result["error"] = f"{type(e).__name__}: {e}"
        result["errno"] = e.errno
    finally:
        sock.close()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
