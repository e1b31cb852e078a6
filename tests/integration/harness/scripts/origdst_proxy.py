"""Envoy-like original-destination TCP proxy, used where HAProxy 2.6 cannot serve: HAProxy only
asks SO_ORIGINAL_DST on AF_INET sockets (sock_inet_get_dst), so IPv6 redirected connections make
it dial itself. This proxy asks SOL_IP/SOL_IPV6 SO_ORIGINAL_DST (80) like Envoy's original_dst
filter, falls back to getsockname(), and logs one line per connection in the HAProxy format:
MLCONN <frontend> <client ip> <client port> <frontend ip> <frontend port> <server ip> <server port> <term> <bytes>
"""
import argparse
import asyncio
import socket
import struct
import sys

SO_ORIGINAL_DST = 80
SOL_IPV6 = 41


def split_hostport(text):
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def original_dst(sock):
    local = sock.getsockname()
    if sock.family == socket.AF_INET or (
            sock.family == socket.AF_INET6 and local[0].startswith("::ffff:")):
        try:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack("!H", raw[2:4])[0]
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
        except OSError:
            pass
    if sock.family == socket.AF_INET6:
        try:
            raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack("!H", raw[2:4])[0]
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
        except OSError:
            pass
    host = local[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, local[1]


async def pipe(reader, writer, counter):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            counter[0] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


def make_handler(frontend, passthrough_source):
    async def handle(client_reader, client_writer):
        sock = client_writer.get_extra_info("socket")
        peer = sock.getpeername()
        dst = original_dst(sock)
        server = ("-", "-")
        term = "--"
        counter = [0]
        try:
            family = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
            local_addr = None
            if passthrough_source:
                local_addr = ("::6" if family == socket.AF_INET6 else "127.0.0.6", 0)
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(dst[0], dst[1], family=family, local_addr=local_addr), 3)
            server = dst
            await asyncio.gather(pipe(client_reader, upstream_writer, [0]),
                                 pipe(upstream_reader, client_writer, counter))
            upstream_writer.close()
        except (OSError, asyncio.TimeoutError) as e:
            term = "SC"
            print(f"connect {dst}: {e}", file=sys.stderr, flush=True)
        finally:
            client_writer.close()
            print(f"MLCONN {frontend} {peer[0]} {peer[1]} {dst[0]} {dst[1]} {server[0]} "
                  f"{server[1]} {term} {counter[0]}", flush=True)
    return handle


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", action="append", required=True,
                        help="FRONTEND=HOST:PORT[/v6only|/v4v6]")
    parser.add_argument("--inbound-passthrough-source", action="store_true",
                        help="bind 127.0.0.6 / ::6 for inbound forwarding, as Envoy does")
    args = parser.parse_args()
    servers = []
    for spec in args.listen:
        frontend, _, addr = spec.partition("=")
        addr, _, flag = addr.partition("/")
        host, port = split_hostport(addr)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if flag == "v4v6" else 1)
        sock.bind((host, port))
        sock.listen(64)
        passthrough = args.inbound_passthrough_source and frontend.startswith("inbound")
        servers.append(await asyncio.start_server(make_handler(frontend, passthrough), sock=sock))
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
