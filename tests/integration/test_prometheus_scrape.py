"""A stock Prometheus (Debian's `prometheus` package) scrapes a running agent through the scrape
listener (metrics_address, plain HTTP on 127.0.0.1), with both pods enrolled and traffic flowing;
its HTTP API then shows up == 1, meshlane_workloads_enrolled == 2 and samples in the connect-
latency histogram. `promtool check metrics` lints what the listener serves, with and without the
process_* families (?exclude=process is the node_exporter textfile route).

Debian's node_exporter takes the ?exclude=process exposition through its textfile collector
without the process_* collisions the full one causes.

The Prometheus server is this test's own: a temp config and data dir, --web.listen-address on
127.0.0.1 and a free port, a 1 s scrape interval; it is ended by its PID (harness proc.spawn)."""
import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request

import pytest

from harness import cleanup, proc, util
from harness.api import curl
from harness.checks import assert_ok, request
from harness.topology import APP_PORT
from conftest import start_mesh

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
METRICS_PORT = util.free_port()

pytestmark = pytest.mark.skipif(
    not os.access(PROMETHEUS, os.X_OK),
    reason="Debian's prometheus package is not installed (scripts/install-deps.sh installs it)")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.status, reply.read().decode()


class Prometheus:
    """One Prometheus server scraping `target` every second, on its own data dir and port."""

    def __init__(self, target):
        self.dir = tempfile.mkdtemp(prefix="meshlane-it-prometheus-")
        self.token = cleanup.REGISTRY.add(f"rm {self.dir}", lambda: cleanup.remove_tree(self.dir),
                                          {"kind": "dir", "path": self.dir})
        self.port = util.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n"
                    "  scrape_interval: 1s\n"
                    "  scrape_timeout: 1s\n"
                    "  evaluation_interval: 1s\n"
                    "scrape_configs:\n"
                    "  - job_name: meshlane\n"
                    "    static_configs:\n"
                    f"      - targets: ['{target}']\n")
        util.run([PROMTOOL, "check", "config", config])
        self.log_path = os.path.join(self.dir, "prometheus.log")
        with open(self.log_path, "ab") as log:
            self.process = proc.spawn(
                [PROMETHEUS, f"--config.file={config}",
                 f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=log, description="prometheus for test_prometheus_scrape")
        util.wait_until(self._ready, timeout=30, interval=0.2,
                        message=f"prometheus ready on {self.url}")

    def _ready(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.process.returncode}:\n{self.log()}")
        try:
            return http_get(self.url + "/-/ready")[0] == 200
        except OSError:
            return False

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def query(self, promql):
        """Instant query; returns [(labels, float value)]."""
        status, body = http_get(self.url + "/api/v1/query?" +
                                urllib.parse.urlencode({"query": promql}))
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", reply
        return [(r["metric"], float(r["value"][1])) for r in reply["data"]["result"]]

    def wait_for(self, promql, predicate, timeout=30, what=None):
        """Polls until predicate(result) holds; returns that result."""
        seen = {}

        def check():
            seen["result"] = self.query(promql)
            return predicate(seen["result"])
        try:
            util.wait_until(check, timeout=timeout, interval=0.5, message=what or promql)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last result of {promql}: {seen.get('result')}\n"
                               f"targets: {http_get(self.url + '/api/v1/targets')[1][:2000]}")
        return seen["result"]

    def stop(self):
        proc.stop(self.process, timeout=10)


@pytest.fixture
def prometheus(agent):
    server = Prometheus(f"127.0.0.1:{METRICS_PORT}")
    try:
        yield server
    finally:
        server.stop()
        print(f"=== prometheus log ===\n{server.log()}")


def only_value(result):
    assert len(result) == 1, result
    return result[0][1]


@pytest.mark.agent_config(metrics_address=f"127.0.0.1:{METRICS_PORT}")
def test_prometheus_scrapes_a_running_agent(topo, agent, prometheus):
    start_mesh(topo, agent, a={}, b={})
    up = prometheus.wait_for('up{job="meshlane"}', lambda r: r and r[0][1] == 1.0,
                             what="up == 1 for the agent's scrape listener")
    assert up[0][0]["instance"] == f"127.0.0.1:{METRICS_PORT}", up
    prometheus.wait_for("meshlane_workloads_enrolled", lambda r: r and r[0][1] == 2.0,
                        what="meshlane_workloads_enrolled == 2")

    # Traffic: A's app connects to B (captured: app -> A's proxy -> B's proxy -> B's app).
    app_side = f'meshlane_tcp_connect_seconds_count{{workload="{topo.a.name}",side="app"}}'
    before = only_value(prometheus.wait_for(app_side, lambda r: len(r) == 1))
    for _ in range(3):
        result, _ = request(topo, topo.a, topo.b.ip4, APP_PORT)
        assert_ok(topo, result, server="b-app", local_port=APP_PORT)
    prometheus.wait_for(app_side, lambda r: r and r[0][1] >= before + 3,
                        what=f"{app_side} grows by the 3 connects")
    # The histogram is usable as one: a p99 that is a real number of seconds.
    quantile = f'histogram_quantile(0.99, sum by (le) (rate(meshlane_tcp_connect_seconds_bucket{{workload="{topo.a.name}",side="app"}}[1m])))'
    p99 = only_value(prometheus.wait_for(quantile, lambda r: r and r[0][1] == r[0][1]))
    assert 0 < p99 < 5, p99


@pytest.mark.agent_config(metrics_address=f"127.0.0.1:{METRICS_PORT}")
def test_promtool_check_metrics_is_clean(topo, agent):
    start_mesh(topo, agent, a={}, b={})
    result, _ = request(topo, topo.a, topo.b.ip4, APP_PORT)
    assert_ok(topo, result, server="b-app", local_port=APP_PORT)
    for path in ("/metrics", "/metrics?exclude=process"):
        status, text = http_get(f"http://127.0.0.1:{METRICS_PORT}{path}")
        assert status == 200
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=30)
        assert lint.returncode == 0, f"{path}: {lint.stdout}{lint.stderr}"
        assert ("\nprocess_open_fds " in text) == (path == "/metrics"), path

    # The dashboard and alert rules query only families this live agent exports.
    monitoring = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "monitoring")
    with tempfile.NamedTemporaryFile("w", suffix=".prom") as exposition:
        exposition.write(http_get(f"http://127.0.0.1:{METRICS_PORT}/metrics")[1])
        exposition.flush()
        check = subprocess.run(
            [util.PYTHON, os.path.join(monitoring, "check-metric-names.py"),
             os.path.join(monitoring, "meshlane-alerts.rules.yml"),
             os.path.join(monitoring, "meshlane-dashboard.json"),
             "--metrics-file", exposition.name], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.agent_config(metrics_address=f"127.0.0.1:{METRICS_PORT}")
def test_scrape_listener_serves_nothing_else(agent):
    base = f"http://127.0.0.1:{METRICS_PORT}"
    for path, method, expected in (("/healthz", "GET", 200), ("/readyz", "GET", 200),
                                   ("/metrics", "HEAD", 200), ("/v1/workloads", "GET", 404),
                                   ("/v1/status", "GET", 404), ("/metrics", "POST", 405),
                                   ("/v1/workloads", "POST", 404)):
        how = ["--head"] if method == "HEAD" else ["-X", method]
        reply = util.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *how,
                          "--max-time", "10", base + path], check=False)
        assert reply.stdout.strip() == str(expected), (method, path, reply)


def scrape_lines(port):
    """Sample lines of one scrape, without the process_* families."""
    text = http_get(f"http://127.0.0.1:{port}/metrics?exclude=process")[1]
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def series_per_idle_workload(topo, agent):
    """Series one enrolled, idle pod has: those labelled with its name (docs/observability.md
    "Series per workload"). Node-wide series are printed: the BPF map families appear once the
    observer has counted the maps (every 5 s)."""
    util.wait_until(lambda: any(line.startswith("meshlane_bpf_map_entries{")
                                for line in scrape_lines(METRICS_PORT)),
                    timeout=15, interval=0.2, message="the BPF maps counted")
    node = len(scrape_lines(METRICS_PORT))
    agent.enroll_ok(topo.a)
    own = sum(1 for line in scrape_lines(METRICS_PORT) if f'workload="{topo.a.name}"' in line)
    print(f"series: {node} node-wide (no workloads), {own} for one idle workload")
    return own


@pytest.mark.agent_config(metrics_address=f"127.0.0.1:{METRICS_PORT}")
def test_series_per_idle_workload_by_default(topo, agent):
    # 30 datapath + 79 connect/drop + 76 TLS: the 4 latency histograms are 136 of them.
    assert series_per_idle_workload(topo, agent) == 185


@pytest.mark.agent_config(metrics_address=f"127.0.0.1:{METRICS_PORT}",
                          metrics_workload_histograms="false", metrics_drop_reasons="false")
def test_series_per_idle_workload_with_the_switches_off(topo, agent):
    # Histograms node-wide (paid once per node), drops one series per workload.
    assert series_per_idle_workload(topo, agent) == 50


NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"


@pytest.mark.skipif(not os.access(NODE_EXPORTER, os.X_OK),
                    reason="Debian's prometheus-node-exporter is not installed")
def test_node_exporter_textfile_route(agent):
    """The README's textfile route with Debian's node_exporter: the full exposition collides
    with node_exporter's own process_* families (an error per family on every scrape);
    ?exclude=process is taken cleanly and the agent's families come through."""
    directory = tempfile.mkdtemp(prefix="meshlane-it-textfile-")
    cleanup.REGISTRY.add(f"rm {directory}", lambda: cleanup.remove_tree(directory),
                         {"kind": "dir", "path": directory})
    port = util.free_port()
    log_path = os.path.join(directory, "node_exporter.log")
    with open(log_path, "ab") as log:
        exporter = proc.spawn(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
             "--collector.disable-defaults", "--collector.textfile",
             f"--collector.textfile.directory={directory}"],
            stdout=log, stderr=log, description="node_exporter for the textfile route")
    try:
        util.wait_until(lambda: exporter.poll() is not None or _answers(port), timeout=20,
                        interval=0.2, message="node_exporter answering")
        assert exporter.poll() is None, open(log_path).read()
        for query, collisions in (("", True), ("?exclude=process", False)):
            # What the README does: curl the unix API, write atomically.
            target = os.path.join(directory, "meshlane.prom")
            util.run(["curl", "-sSf", "--unix-socket", agent.api_socket, "-o", target + ".tmp",
                      f"http://meshlane/metrics{query}"])
            os.rename(target + ".tmp", target)
            mark = os.path.getsize(log_path)
            status, text = http_get(f"http://127.0.0.1:{port}/metrics")
            with open(log_path, errors="replace") as f:
                f.seek(mark)
                logged = f.read()
            assert status == 200
            assert "\nmeshlane_workloads_enrolled 0\n" in text, text[:3000]
            collided = "was collected before" in logged
            assert collided == collisions, (query, logged[-3000:])
    finally:
        proc.stop(exporter)


def _answers(port):
    try:
        return http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    except OSError:
        return False


@pytest.mark.agent_config(metrics_address=f"127.0.0.1:{METRICS_PORT}")
def test_scrape_listener_cap_leaves_the_unix_api_alone(agent):
    """16 idle connections fill the scrape listener: the 17th is answered 503 and closed, the
    unix API answers as usual, and a slot frees once an idle one times out (5 s)."""
    import socket
    import time
    idle = []
    try:
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=5)
            idle.append(s)
        time.sleep(0.5)  # the agent accepts them
        with socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=5) as extra:
            extra.settimeout(5)
            answer = extra.recv(4096).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 503"), answer
        assert "too many scrape connections (limit 16)" in answer, answer
        assert curl(agent, "GET", "/v1/health").status == 200
        # The idle ones time out after 5 s; then scrapes work again.
        util.wait_until(lambda: _answers(METRICS_PORT), timeout=15, interval=0.5,
                        message="a scrape slot free again")
    finally:
        for s in idle:
            s.close()
