"""DNS capture (Istio's DNS proxy, ISTIO_META_DNS_CAPTURE) with real resolvers: pod A is enrolled
and runs dnsmasq as uid 1337 on 127.0.0.1:15053 and [::1]:15053 (the proxy's DNS listener);
pod B runs a second dnsmasq on its addresses, port 53 ("the real server"). Each answers the test
name with its own address, so the answer says who answered. Neither forwards anywhere
(--no-resolv). Clients: dig (bind9-dnsutils), glibc (getent, via `ip netns exec`'s
/etc/netns/<name>/resolv.conf), dnspython (refuses UDP replies from another source), and raw
sockets that report the reply's source and getpeername()."""
import json
import os

import pytest

from harness import cleanup, proc, util
from harness.meshlane import STATUS_DEGRADED, Agent, bpftool_json, cgroup_programs, meshlane_bin
from harness.topology import APP_GID, APP_UID

NAME = "svc.meshlane-dns.test"
PROXY_ANSWER = "198.51.100.1"  # the pod's DNS listener (what Istio's agent would answer)
REAL_ANSWER = "198.51.100.2"  # the server the app asked, in pod B
DNS_PORT = 15053
PROXY_UID = 1337
DNS_PROGRAMS = {"dns_sendmsg4", "dns_sendmsg6", "dns_recvmsg4", "dns_recvmsg6"}


def start_dnsmasq(pod, listen, port, answer, cgroup, uid, tag):
    """dnsmasq in `pod` answering NAME with `answer` on listen:port (UDP and TCP), nothing
    else; its query log goes to <workdir>/dnsmasq-<tag>.log."""
    log_path = os.path.join(pod.workdir, f"dnsmasq-{tag}.log")
    log = open(log_path, "ab")
    args = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--pid-file=", "--user=", f"--port={port}",
            f"--listen-address={','.join(listen)}", "--bind-interfaces",
            f"--address=/{NAME}/{answer}", "--log-queries", "--log-facility=-"]
    try:
        process = proc.spawn(args, netns_path=pod.netns_path, cgroup_dir=pod.cgroup(cgroup),
                             uid=uid, gid=uid, groups=[], stdout=log, stderr=log,
                             description=f"dnsmasq {tag} in {pod.name}")
    finally:
        log.close()
    util.wait_until(lambda: process.poll() is not None or pod.listening([port], pid=process.pid),
                    timeout=5, message=f"dnsmasq {tag} listening on {port}")
    assert process.poll() is None, f"dnsmasq {tag} exited: {open(log_path).read()}"
    pod.apps.append(process)  # stopped by PID with the topology
    return log_path


@pytest.fixture
def dns_topo(topo):
    """B's real server on its own addresses (port 53: unprivileged ports start at 0 in B's netns
    only) and A's DNS listener as the proxy uid, started before any enrolment."""
    topo.b.exec("sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0")
    topo.real_log = start_dnsmasq(topo.b, [topo.b.ip4, topo.b.ip6], 53, REAL_ANSWER, "app",
                                  APP_UID, "real")
    topo.proxy_log = start_dnsmasq(topo.a, ["127.0.0.1", "::1"], DNS_PORT, PROXY_ANSWER,
                                   "sidecar", PROXY_UID, "proxy")
    return topo


def dig(pod, server, tcp=False, uid=APP_UID, cgroup="app"):
    """dig @server NAME from the pod; returns the A records, or raises with dig's output."""
    args = ["dig", "+time=2", "+tries=1", "+noall", "+answer", f"@{server}", NAME, "A"]
    if tcp:
        args.insert(1, "+tcp")
    result = pod.run(args, cgroup=cgroup, uid=uid, gid=uid, groups=[], timeout=15)
    # A missing answer is the failure, with dig's text.
    answers = sorted(line.split()[-1] for line in result.stdout.splitlines()
                     if line and not line.startswith(";") and line.split()[3:4] == ["A"])
    assert result.returncode == 0 and answers, (
        f"dig {'+tcp ' if tcp else ''}@{server} as uid {uid}: exit {result.returncode}\n"
        f"{result.stdout}{result.stderr}")
    return answers


def py_client(pod, server, mode):
    args = [util.PYTHON, os.path.join(util.SCRIPTS_DIR, "dns_client.py"), server, NAME,
            "--mode", mode]
    result = pod.run(args, uid=APP_UID, gid=APP_GID, groups=[], timeout=15)
    data = json.loads(result.stdout)
    assert data["ok"], f"{mode} query to {server}: {data.get('error')} {result.stderr}"
    return data


def netns_resolv_conf(pod, nameserver):
    """/etc/netns/<netns>/resolv.conf, which `ip netns exec` bind-mounts over /etc/resolv.conf."""
    directory = f"/etc/netns/{pod.name}"
    os.makedirs(directory, exist_ok=True)
    token = cleanup.REGISTRY.add(f"rm {directory}", lambda: cleanup.remove_tree(directory),
                                 {"kind": "dir", "path": directory})
    pod.topo._tokens.append(token)
    with open(os.path.join(directory, "resolv.conf"), "w") as f:
        f.write(f"nameserver {nameserver}\noptions timeout:2 attempts:1\n")


def getent(pod, nameserver):
    """glibc's stub resolver (connected UDP, checks the reply's source) as the app."""
    netns_resolv_conf(pod, nameserver)
    result = proc.run_in(["ip", "netns", "exec", pod.name, "setpriv", f"--reuid={APP_UID}",
                          f"--regid={APP_GID}", "--clear-groups", "getent", "ahostsv4", NAME],
                         cgroup_dir=pod.cgroup("app"), timeout=15)
    assert result.returncode == 0, f"getent via {nameserver}: exit {result.returncode} " \
                                   f"{result.stdout}{result.stderr}"
    return sorted({line.split()[0] for line in result.stdout.splitlines() if line.strip()})


def same_address(a, b):
    return util.run([util.PYTHON, "-c", "import ipaddress,sys; "
                     "sys.exit(ipaddress.ip_address(sys.argv[1]) != "
                     "ipaddress.ip_address(sys.argv[2]))", a, b], check=False).returncode == 0


def workload(agent, pod):
    return agent.cli_json("workload", pod.name)


def counters(agent, pod):
    return workload(agent, pod).get("counters", {})


def queries_in(log_path):
    return open(log_path).read().count(f"query[A] {NAME}")


def test_nameservers_are_answered_by_the_pods_listener(dns_topo, agent):
    topo = dns_topo
    assert agent.cli_json("status")["feature_states"]["dns_capture"]["enabled"] is True
    agent.enroll_ok(topo.a, dns_capture="nameservers", dns_servers=[topo.b.ip4, topo.b.ip6])
    text = agent.cli_ok("workload", topo.a.name).stdout
    assert f"DNS capture:        nameservers, listener port {DNS_PORT}" in text, text
    real_before = queries_in(topo.real_log)
    for server in (topo.b.ip4, topo.b.ip6):
        for tcp in (False, True):
            assert dig(topo.a, server, tcp=tcp) == [PROXY_ANSWER], (server, tcp)
        for mode in ("udp", "udp-connected", "tcp", "dnspython"):
            data = py_client(topo.a, server, mode)
            assert data["answers"] == [PROXY_ANSWER], data
            if "source" in data:  # recvfrom() reports the server the app asked
                assert same_address(data["source"][0], server) and data["source"][1] == 53, data
            if "peername" in data:  # connected UDP and TCP: getpeername() too
                assert same_address(data["peername"][0], server) and \
                    data["peername"][1] == 53, data
        assert getent(topo.a, server) == [PROXY_ANSWER], server
    # A dual-stack socket asking a v4 server by its v4-mapped address: IPv4 on the wire, the
    # reply and getpeername() carry the same ::ffff:a.b.c.d.
    mapped = f"::ffff:{topo.b.ip4}"
    for mode in ("udp", "udp-connected", "tcp"):
        data = py_client(topo.a, mapped, mode)
        assert data["answers"] == [PROXY_ANSWER], data
        assert data["source"] == [mapped, 53], data
    assert queries_in(topo.real_log) == real_before, "a captured query reached the real server"

    seen = counters(agent, topo.a)
    assert seen.get("dns_redirected_udp", 0) > 0 and seen.get("dns_redirected_tcp", 0) > 0, seen
    assert seen.get("dns_reply_source_restored", 0) > 0, seen
    programs = {p["program"] for p in workload(agent, topo.a).get("programs", [])}
    assert DNS_PROGRAMS <= programs, programs
    attached = json.dumps(cgroup_programs(topo.a.cgroup()))  # bpftool's view of the pod cgroup
    assert "sendmsg4" in attached and "recvmsg6" in attached, attached
    # `meshlane verify` reads the links back from the kernel (other hops need a sidecar).
    result = agent.cli("verify", topo.a.name, "--json", timeout=30)
    report = json.loads(result.stdout)
    programs_check = next(c for c in report["checks"] if c["hop"] == "programs")
    evidence = " ".join(programs_check["evidence"])
    assert programs_check["passed"] and "sendmsg4" in evidence and "recvmsg6" in evidence, evidence


def test_proxy_uid_is_never_captured(dns_topo, agent):
    topo = dns_topo
    agent.enroll_ok(topo.a, dns_capture="all")
    for server in (topo.b.ip4, topo.b.ip6):
        # The proxy's own queries (Istio: uid/gid RETURN, CT zone 1) reach the real server.
        assert dig(topo.a, server, uid=PROXY_UID, cgroup="sidecar") == [REAL_ANSWER], server
    assert counters(agent, topo.a).get("dns_pass_proxy_owner", 0) >= 2
    # ... while the app's are captured with every destination ("all" = --capture-all-dns).
    for server in (topo.b.ip4, topo.b.ip6):
        for tcp in (False, True):
            assert dig(topo.a, server, tcp=tcp) == [PROXY_ANSWER], (server, tcp)


def test_only_the_listed_nameservers_are_captured(dns_topo, agent):
    topo = dns_topo
    agent.enroll_ok(topo.a, dns_capture="nameservers", dns_servers=[topo.b.ip4])
    assert dig(topo.a, topo.b.ip4) == [PROXY_ANSWER]
    assert dig(topo.a, topo.b.ip6) == [REAL_ANSWER]  # not a nameserver of the pod: UDP passes
    assert py_client(topo.a, topo.b.ip6, "udp")["answers"] == [REAL_ANSWER]
    assert counters(agent, topo.a).get("dns_pass_not_nameserver", 0) >= 2


def test_capture_off_reaches_the_real_server(dns_topo, agent):
    topo = dns_topo
    agent.enroll_ok(topo.a)
    # Without DNS capture, TCP to port 53 is ordinary outbound TCP (15001): the sidecar
    # forwards it to the server the app asked, as Envoy does.
    topo.a.start_sidecar(kind="haproxy", inbound_bind="dual")
    for server in (topo.b.ip4, topo.b.ip6):
        for tcp in (False, True):
            assert dig(topo.a, server, tcp=tcp) == [REAL_ANSWER], (server, tcp)
        assert getent(topo.a, server) == [REAL_ANSWER]
    assert not DNS_PROGRAMS & {p["program"] for p in workload(agent, topo.a).get("programs", [])}
    attached = json.dumps(cgroup_programs(topo.a.cgroup()))
    assert "sendmsg" not in attached and "recvmsg" not in attached, attached


def test_without_the_reply_source_restore_resolvers_refuse_the_reply(dns_topo, agent):
    """Negative control: the recvmsg4 program is what makes the reply acceptable to resolvers that
    compare its source (dnspython's unconnected UDP). With its link removed (its pin is the only
    reference) the app sees 127.0.0.1:15053 and dnspython refuses the reply. (dig 9.18 and glibc
    2.36 connect their UDP socket and leave the source check to the kernel: they accept it.)"""
    topo = dns_topo
    agent.enroll_ok(topo.a, dns_capture="all")
    assert py_client(topo.a, topo.b.ip4, "udp")["source"] == [topo.b.ip4, 53]
    assert py_client(topo.a, topo.b.ip4, "dnspython")["answers"] == [PROXY_ANSWER]
    pin = os.path.join(agent.pin_path, "workloads", topo.a.name, "dns_recvmsg4")
    link_id = bpftool_json("link", "show", "pinned", pin)["id"]
    os.unlink(pin)
    util.wait_until(lambda: bpftool_json("link", "show", "id", str(link_id)) is None,
                    timeout=5, message="recvmsg4 detached")
    assert py_client(topo.a, topo.b.ip4, "udp")["source"] == ["127.0.0.1", DNS_PORT]
    args = [util.PYTHON, os.path.join(util.SCRIPTS_DIR, "dns_client.py"), topo.b.ip4, NAME,
            "--mode", "dnspython", "--timeout", "1"]
    data = json.loads(topo.a.run(args, uid=APP_UID, gid=APP_GID, groups=[], timeout=15).stdout)
    assert not data["ok"] and "UnexpectedSource" in data["error"], data


def test_capture_survives_the_agent_and_ends_with_unenrol(dns_topo, agent):
    topo = dns_topo
    agent.enroll_ok(topo.a, dns_capture="all")
    agent.kill()  # pinned links keep the programs attached
    for tcp in (False, True):
        assert dig(topo.a, topo.b.ip4, tcp=tcp) == [PROXY_ANSWER]
    assert py_client(topo.a, topo.b.ip6, "udp")["source"] == [topo.b.ip6, 53]
    agent.start()  # re-adopts the workload, re-points the links to its own programs
    assert dig(topo.a, topo.b.ip6) == [PROXY_ANSWER]
    agent.cli_ok("unenroll", topo.a.name)
    assert dig(topo.a, topo.b.ip4) == [REAL_ANSWER]
    assert "sendmsg" not in json.dumps(cgroup_programs(topo.a.cgroup()))


def test_feature_off_refuses_dns_enrolment_with_the_reason(topo, monkeypatch):
    """dns_capture is a feature of its own (status feature_states): when it is off, an enrolment
    asking for it is refused naming why, and one without it works."""
    monkeypatch.setenv("MESHLANE_TEST_DISABLE_FEATURE", "dns_capture")
    instance = Agent(meshlane_bin())
    try:
        instance.start()
        # An optional part off: the agent is degraded (status exit 6), interception still works.
        state = instance.cli_json("status", codes=(STATUS_DEGRADED,))["feature_states"]["dns_capture"]
        assert state["enabled"] is False and "MESHLANE_TEST_DISABLE_FEATURE" in state["reason"]
        refused = instance.enroll(topo.a, dns_capture="all")
        assert refused.returncode != 0 and "DNS capture unavailable" in refused.stderr, \
            refused.stderr
        instance.enroll_ok(topo.a)
    finally:
        monkeypatch.delenv("MESHLANE_TEST_DISABLE_FEATURE", raising=False)
        instance.destroy()


def tcp_connect_outcome(pod, host, port):
    """The app's TCP connect() to host:port: "connected" or the errno name."""
    code = ("import errno,socket,sys; s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else "
            "socket.AF_INET); s.settimeout(2)\n"
            "try: s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
            "except OSError as e: print(errno.errorcode.get(e.errno, e))")
    result = pod.run([util.PYTHON, "-c", code, host, str(port)], uid=APP_UID, gid=APP_GID,
                     groups=[], timeout=15)
    return result.stdout.strip()


def test_app_tcp_to_a_pod_address_on_53_goes_on_to_the_outbound_rules(dns_topo, agent):
    """With DNS capture Istio writes the app's lo RETURN as `-o lo -p tcp ! --dport 53 ...`
    (SetupDNSRedir): TCP to the pod's own address on 53 that is not a nameserver reaches
    ISTIO_REDIRECT (15001 with the default include "*"); 127.0.0.1:53 still returns at
    `-d 127.0.0.1/32 -j RETURN`. Nothing listens on 15001 here: the counters tell."""
    topo = dns_topo
    agent.enroll_ok(topo.a, dns_capture="nameservers", dns_servers=[topo.b.ip4])
    before = counters(agent, topo.a)
    tcp_connect_outcome(topo.a, topo.a.ip4, 53)
    tcp_connect_outcome(topo.a, topo.a.ip6, 53)
    middle = counters(agent, topo.a)
    assert middle.get("outbound_redirected", 0) - before.get("outbound_redirected", 0) == 2, \
        (before, middle)
    tcp_connect_outcome(topo.a, "127.0.0.1", 53)
    after = counters(agent, topo.a)
    assert after.get("outbound_redirected", 0) == middle.get("outbound_redirected", 0), after
    assert after.get("outbound_pass_loopback", 0) - middle.get("outbound_pass_loopback", 0) == 1, \
        (middle, after)
