"""Independent API clients for the integration tests: curl for REST (as an operator would),
raw unix-socket HTTP for what curl will not do (slowloris, never reading), and a gRPC client built
only from python3-grpcio + python3-protobuf that discovers the service through server reflection
(no generated stubs, nothing shared with the agent's C++)."""
import json
import os
import socket
import subprocess
import threading

CURL = "/usr/bin/curl"


# -- REST over the unix socket ---------------------------------------------------------------------
class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def ndjson(self):
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


def curl(agent, method, path, body=None, headers=(), timeout=20, data_file=None):
    """One request with curl --unix-socket; returns Reply (status 0 when curl itself failed)."""
    cmd = [CURL, "-sS", "--unix-socket", agent.api_socket, "-X", method, "-D", "-",
           "--max-time", str(timeout), f"http://meshlane{path}"]
    for header in headers:
        cmd += ["-H", header]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary",
                body if isinstance(body, str) else json.dumps(body)]
    if data_file is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", f"@{data_file}"]
    result = subprocess.run(cmd, capture_output=True, timeout=timeout + 10)
    text = result.stdout.decode(errors="replace")
    head, _, payload = text.partition("\r\n\r\n")
    while head.startswith("HTTP/1.1 100"):
        head, _, payload = payload.partition("\r\n\r\n")
    if not head.startswith("HTTP/"):
        return Reply(0, {}, result.stderr.decode(errors="replace"))
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return Reply(int(lines[0].split()[1]), headers, payload)


def raw_connect(agent, timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(agent.api_socket)
    return s


def read_until_closed(s, limit=1 << 20):
    data = b""
    try:
        while len(data) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


class EventStream:
    """curl -N on /v1/events?follow=true, lines collected by a thread."""

    def __init__(self, agent, query="follow=true"):
        self.process = subprocess.Popen(
            [CURL, "-sS", "-N", "--unix-socket", agent.api_socket,
             f"http://meshlane/v1/events?{query}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lines = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.process.stdout:
            if line.strip():
                self.lines.append(json.loads(line))

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=5)


# -- agent process -------------------------------------------------------------------------------
def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- gRPC through reflection ---------------------------------------------------------------------
def _varint(value):
    out = b""
    while True:
        byte = value & 0x7F
        value >>= 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _fields(data):
    """Decodes protobuf wire format into [(field_number, value)] (varint or bytes)."""
    out, i = [], 0
    while i < len(data):
        key, shift = 0, 0
        while True:
            b = data[i]; i += 1
            key |= (b & 0x7F) << shift; shift += 7
            if not b & 0x80:
                break
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, shift = 0, 0
            while True:
                b = data[i]; i += 1
                value |= (b & 0x7F) << shift; shift += 7
                if not b & 0x80:
                    break
        elif wire == 2:
            length, shift = 0, 0
            while True:
                b = data[i]; i += 1
                length |= (b & 0x7F) << shift; shift += 7
                if not b & 0x80:
                    break
            value = data[i:i + length]; i += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        out.append((number, value))
    return out


def _string_field(number, text):
    raw = text.encode()
    return _varint((number << 3) | 2) + _varint(len(raw)) + raw


class ReflectionClient:
    """grpc.reflection.v1alpha.ServerReflection by hand: list services, fetch descriptors, build
    message classes with python3-protobuf, call methods with generic stubs."""
    METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

    def __init__(self, socket_path):
        import grpc
        self.grpc = grpc
        self.channel = grpc.insecure_channel(f"unix:{socket_path}")
        self._info = self.channel.stream_stream(self.METHOD, request_serializer=lambda b: b,
                                                response_deserializer=lambda b: b)
        self.messages = {}

    def close(self):
        self.channel.close()

    def _ask(self, request):
        [reply] = list(self._info(iter([request]), timeout=10))
        return dict((n, v) for n, v in _fields(reply) if n not in (1, 2))

    def list_services(self):
        reply = self._ask(_string_field(7, ""))  # list_services
        listing = reply[6]  # list_services_response
        return sorted(dict(_fields(service))[1].decode()
                      for number, service in _fields(listing) if number == 1)

    def load_service(self, symbol):
        """Fetches the file defining `symbol` (and its dependencies) and builds message classes."""
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        reply = self._ask(_string_field(4, symbol))  # file_containing_symbol
        files = [value for number, value in _fields(reply[4]) if number == 1]
        pool = descriptor_pool.DescriptorPool()
        pending = [descriptor_pb2.FileDescriptorProto.FromString(f) for f in files]
        added = set()
        while pending:  # dependency order
            progress = False
            for fd in list(pending):
                if all(d in added for d in fd.dependency):
                    pool.Add(fd)
                    added.add(fd.name)
                    pending.remove(fd)
                    progress = True
            if not progress:
                raise RuntimeError(f"unresolved dependencies: {[f.name for f in pending]}")
        service = pool.FindServiceByName(symbol)
        factory = message_factory.MessageFactory(pool)
        for method in service.methods:
            for desc in (method.input_type, method.output_type):
                self.messages[desc.full_name] = factory.GetPrototype(desc)
        return service

    def unary(self, service, method_name, token=None, **fields):
        """One unary call; `token` is sent as `authorization: Bearer ...` metadata."""
        method = service.methods_by_name[method_name]
        request = self.messages[method.input_type.full_name](**fields)
        response_class = self.messages[method.output_type.full_name]
        call = self.channel.unary_unary(f"/{service.full_name}/{method_name}",
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=response_class.FromString)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        return call(request, timeout=10, metadata=metadata)

    def stream(self, service, method_name, timeout=None, **fields):
        method = service.methods_by_name[method_name]
        request = self.messages[method.input_type.full_name](**fields)
        response_class = self.messages[method.output_type.full_name]
        call = self.channel.unary_stream(f"/{service.full_name}/{method_name}",
                                         request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=response_class.FromString)
        return call(request, timeout=timeout)

    def health(self, service_name=""):
        """grpc.health.v1.Health/Check; returns the status number (1 = SERVING)."""
        call = self.channel.unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        reply = call(_string_field(1, service_name) if service_name else b"", timeout=10)
        return dict(_fields(reply)).get(1, 0)
