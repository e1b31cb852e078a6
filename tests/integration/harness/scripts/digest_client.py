"""Test client for digest_server.py, printing one JSON result on stdout.

--mode stream: one connection that streams deterministic pseudo-random bytes for --duration
seconds, then compares the server's byte count and sha256 with its own.
--mode loop: a new connection every --interval seconds for --duration seconds, each sending a
small payload and checking the digest; counts successes and errors (with the first few errors)."""
import argparse
import hashlib
import json
import random
import socket
import time


def exchange(sock, payload_chunks, pace=0.0):
    digest = hashlib.sha256()
    total = 0
    for chunk in payload_chunks:
        sock.sendall(chunk)
        digest.update(chunk)
        total += len(chunk)
        if pace:
            time.sleep(pace)
    sock.shutdown(socket.SHUT_WR)
    reply = b""
    while not reply.endswith(b"\n"):
        data = sock.recv(4096)
        if not data:
            break
        reply += data
    expected = f"{total} {digest.hexdigest()}"
    got = reply.decode(errors="replace").strip()
    if got != expected:
        raise RuntimeError(f"digest mismatch: sent {expected!r}, server saw {got!r}")
    return total


def stream_chunks(duration, chunk_size):
    rng = random.Random(7)
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        yield rng.randbytes(chunk_size)


def run_stream(args):
    started = time.time()
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
            total = exchange(sock, stream_chunks(args.duration, args.chunk), pace=args.pace)
        return {"ok": True, "bytes": total, "started": started, "ended": time.time()}
    except Exception as e:  # report, never raise: the test reads the JSON
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "started": started,
                "ended": time.time()}


def run_loop(args):
    started = time.time()
    deadline = time.monotonic() + args.duration
    ok, errors, first_errors, n = 0, 0, [], 0
    while time.monotonic() < deadline:
        n += 1
        try:
            with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
                exchange(sock, [f"connection {n}\n".encode()])
            ok += 1
        except Exception as e:
            errors += 1
            if len(first_errors) < 5:
                first_errors.append(f"#{n} at {time.time() - started:.3f}s: "
                                    f"{type(e).__name__}: {e}")
        time.sleep(args.interval)
    return {"ok": errors == 0 and ok > 0, "connections": ok, "errors": errors,
            "first_errors": first_errors, "started": started, "ended": time.time()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--mode", choices=("stream", "loop"), required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--chunk", type=int, default=16384)
    parser.add_argument("--pace", type=float, default=0.001)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    result = run_stream(args) if args.mode == "stream" else run_loop(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
