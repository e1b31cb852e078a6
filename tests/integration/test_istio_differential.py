"""Differential parity with istio-iptables, against Istio's own generated rule sets.

For every golden in istio_goldens/ (copied verbatim from istio/istio
tools/istio-iptables/pkg/capture/testdata, path and commit in each file's header) two identical
pods are built (harness/differential.py): one gets the golden restored with iptables-restore /
ip6tables-restore, the other is enrolled in meshlane with the mapped flags (GOLDENS below). The
same TCP probes run against both: from the app uid, each proxy uid and gid, the proxy uid+gid and
uid 1337; to 127.0.0.1 / ::1, 0.0.0.0 / ::, 127.0.0.6 / ::6, 127.1.2.3, the pod's own IP, remote
addresses inside and outside the goldens' CIDRs, v4-mapped IPv6; with and without a bind to the
inbound passthrough source; on included, excluded and other ports; plus inbound connections from
another netns. An outcome is which listener answered and the original destination it saw
(SO_ORIGINAL_DST if answered, else getsockname, as Envoy's original_dst filter reads it). The
test fails on any difference; the one deliberate difference (15020/15021/15090 are never
captured inbound) is probed separately and asserted as such.

Left out (no meshlane equivalent; docs/istio-mapping.md says why):
  tproxy, inbound-ports-tproxy, inbound-ports-wildcard-tproxy   -m TPROXY (inbound interception mode)
  kube-virt-interfaces, ipnets-with-kube-virt-interfaces,
  ipv6-virt-interfaces                                          -k (virtual interfaces)
  basic-exclude-nic                                             -c (exclude interfaces)
  outbound-owner-groups, outbound-owner-groups-exclude,
  ipv6-dns-outbound-owner-groups, ...-groups-exclude            --capture/--exclude-owner-groups
  outbound-owner-users*, ipv6-dns-outbound-owner-users*         owner users (PR, not in a release)
  logging (older releases only)                                 --iptables-trace-logging (TRACE)
ipv6-ipnets and ipv6-uid-gid also set -k eth0,eth1: those rules name interfaces the probe pods do
not have (theirs is `vpod`), so they match nothing here; everything else in them is covered.

DNS: dns-uid-gid, ip-range and loopback-outbound-iprange also redirect DNS (ISTIO_OUTPUT_DNS to
15053 for the nameserver 127.0.0.53, ::127.0.0.53 in dns-uid-gid, and the raw-table CT zones);
ipv6-dns-uid-gid asked for DNS without nameservers, so Istio left DNS alone. For these four
goldens (GOLDENS[...]["dns"]) dns_probes() adds port-53 probes over unconnected UDP (sendto /
recvfrom), connected UDP and TCP, from every identity above, to the nameserver and to addresses
that are not nameservers (pod-local: 127.0.0.1, 127.1.2.3, the pod IP, ::1; remote: 10.99.0.1,
9.9.0.1, fd00:99::1), v4-mapped, and bound to 127.0.0.6 / ::6. Servers (harness/differential.py
spawn_dns): dnsmasq as the proxy's DNS listener on 127.0.0.1/::1:15053 (proxy uid/gid), a real
server on port 53 of the pod's local addresses (127.0.0.53 included) and one in the peer
(::127.0.0.53 included); each answers with its own address. A DNS outcome is the answering
server and the reply's source as the client saw it (recvfrom's address for UDP, getpeername for
connected UDP and TCP), or the probe listener's line when TCP port 53 went to 15001/15006.
meshlane gets --dns-capture nameservers --dns-servers <the golden's nameservers>.

MESHLANE_DIFF_LEGACY=1 maps uid/gid lists to their first element and drops --ip-families, to
measure a binary that predates those flags. MESHLANE_DIFF_REPORT=FILE writes per-golden counts."""
import json
import os
import time

import pytest

from harness import cleanup, differential as diff
from harness.differential import APP_GID, APP_UID, POD4, POD6, REMOTE4, REMOTE6
from harness.meshlane import Agent, cli_flags, meshlane_bin

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "istio_goldens")

# Every covered golden: the istio-iptables settings that produced it (run_test.go) and the
# meshlane enroll flags that mean the same. Istio's defaults there: no inbound capture (-b ""),
# no outbound CIDR capture (-i ""), IPv4 only unless EnableIPv6, uid/gid 1337. Every Istio rule
# set sends the proxy's calls to its own pod IP to the inbound listener: --proxy-self-to-inbound.
BASE = {"include_ports": "", "include_cidrs": "", "proxy_self_to_inbound": True,
        "ip_families": "ipv4"}
V6 = {"ip_families": "ipv4,ipv6"}
LISTS = {"proxy_uid": "3,4", "proxy_gid": "1,2"}
DNS_V4 = {"servers": ["127.0.0.53"]}
DNS_OFF = {"servers": []}  # DNS probes, but the golden captures no DNS
GOLDENS = {
    "empty": dict(istio="defaults", flags={}),
    "drop-invalid": dict(istio="DropInvalid", flags={}),
    "inbound-ports-include": dict(istio='-b 32000,31000', flags={"include_ports": "32000,31000"}),
    "inbound-ports-wildcard": dict(istio='-b "*"', flags={"include_ports": "*"}),
    "inbound-wildcard-exclude": dict(istio='-b "*" -d 22,80,443',
                                     flags={"include_ports": "*",
                                            "exclude_inbound_ports": "22,80,443"}),
    "outbound-ports-include": dict(istio="-q 32000,31000",
                                   flags={"include_outbound_ports": "32000,31000"}),
    "outbound-ports-exclude": dict(istio="-o 22,80,443", flags={"exclude_outbound_ports": "22,80,443"}),
    "outbound-ports-exclude-single": dict(istio="-o 22", flags={"exclude_outbound_ports": "22"}),
    "ipnets": dict(istio="-i 10.0.0.0/8", flags={"include_cidrs": "10.0.0.0/8"}),
    "ip-range": dict(istio="-x 1.1.0.0/16 -i 9.9.0.0/16 -u 3,4 -g 1,2 DNS 127.0.0.53",
                     flags={"exclude_cidrs": "1.1.0.0/16", "include_cidrs": "9.9.0.0/16", **LISTS},
                     dns=DNS_V4),
    "loopback-outbound-iprange": dict(istio="-i 127.1.2.3/32 -u 3,4 -g 1,2 DNS 127.0.0.53",
                                      flags={"include_cidrs": "127.1.2.3/32", **LISTS},
                                      dns=DNS_V4),
    "ipv6-empty-inbound-ports": dict(istio="EnableIPv6", flags={**V6}),
    "ipv6-inbound-ports": dict(istio="-b 4000,5000 EnableIPv6",
                               flags={"include_ports": "4000,5000", **V6}),
    "ipv6-outbound-ports": dict(istio="-q 32000,31000 EnableIPv6",
                                flags={"include_outbound_ports": "32000,31000", **V6}),
    "ipv6-ipnets": dict(istio="-b 4000,5000 -d 6000,7000 -k eth0,eth1 -x 2001:db8::/32 "
                              "-i 2001:db8::/32 EnableIPv6",
                        flags={"include_ports": "4000,5000", "exclude_inbound_ports": "6000,7000",
                               "exclude_cidrs": "2001:db8::/32", "include_cidrs": "2001:db8::/32",
                               **V6}),
    "ipv6-uid-gid": dict(istio="-b 4000,5000 -d 6000,7000 -k eth0,eth1 -u 3,4 -g 1,2 "
                               "-x 2001:db8::/32 -i 2001:db8::/32 EnableIPv6",
                         flags={"include_ports": "4000,5000",
                                "exclude_inbound_ports": "6000,7000",
                                "exclude_cidrs": "2001:db8::/32",
                                "include_cidrs": "2001:db8::/32", **LISTS, **V6}),
    "dns-uid-gid": dict(istio="-u 3,4 -g 1,2 EnableIPv6 DNS 127.0.0.53 ::127.0.0.53",
                        flags={**LISTS, **V6},
                        dns={"servers": ["127.0.0.53", "::127.0.0.53"]}),
    # RedirectDNS without servers and without CaptureAllDNS: istio-iptables turns DNS off.
    "ipv6-dns-uid-gid": dict(istio="-u 3,4 -g 1,2 EnableIPv6 RedirectDNS (no servers: off)",
                             flags={**LISTS, **V6}, dns=DNS_OFF),
    "host-ipv4-loopback-cidr": dict(istio="HostIPv4LoopbackCidr 127.0.0.1/8",
                                    flags={"host_loopback_cidr": "127.0.0.1/8"}),
}
# Inbound ports the injector always excludes (every injected pod's -d): meshlane never captures
# them. Istio's golden rules alone do; the difference is deliberate (docs/istio-mapping.md).
DELIBERATE_INBOUND = (15020, 15021, 15090)
INBOUND_PORTS = (8080, 80, 22, 4000, 5000, 6000, 31000, 32000, 15008, 15006)
LOCAL_PORTS = (8080, 22, 32000, 15008)
REMOTE_PROBE_PORTS = (8080, 80, 22, 32000)

SUMMARY = {}


def golden_text(name):
    with open(os.path.join(GOLDEN_DIR, f"{name}.golden")) as f:
        return f.read()


def meshlane_flags(name):
    flags = {**BASE, **GOLDENS[name]["flags"]}
    servers = GOLDENS[name].get("dns", {}).get("servers")
    if servers:  # istio-init's ISTIO_META_DNS_CAPTURE with the pod's resolv.conf nameservers
        flags.update(dns_capture="nameservers", dns_servers=",".join(servers))
    if os.environ.get("MESHLANE_DIFF_LEGACY") == "1":
        flags.pop("dns_capture", None)
        flags.pop("dns_servers", None)
        flags.pop("ip_families", None)
        flags.pop("host_loopback_cidr", None)
        for key in ("proxy_uid", "proxy_gid"):
            if key in flags:
                flags[key] = flags[key].split(",")[0]
    return flags


def ids(name, key):
    return [int(x) for x in str(GOLDENS[name]["flags"].get(key, "1337")).split(",")]


def identities(uids, gids):
    """(label, uid, gid): the app, every proxy uid and gid alone, the first pair, uid 1337."""
    out = [("app", APP_UID, APP_GID)]
    out += [(f"uid{u}", u, APP_GID) for u in uids]
    out += [(f"gid{g}", APP_UID, g) for g in gids]
    out.append((f"uid{uids[0]}+gid{gids[0]}", uids[0], gids[0]))
    if 1337 not in uids:
        out.append(("uid1337+gid1337", 1337, 1337))
    return out


def outbound_targets():
    """(family, dst, port, bind) for one identity."""
    targets = []
    for dst in ("127.0.0.1", "0.0.0.0", "127.0.0.6", "127.1.2.3", POD4):
        targets += [("4", dst, port, None) for port in LOCAL_PORTS]
    for dst in REMOTE4:
        targets += [("4", dst, port, None) for port in REMOTE_PROBE_PORTS]
    targets += [("4", dst, 8080, "127.0.0.6") for dst in ("127.0.0.1", POD4)]
    targets += [("4in6", dst, 8080, None) for dst in ("127.0.0.1", POD4, "10.99.0.1")]
    for dst in ("::1", "::", "::6", POD6):
        targets += [("6", dst, port, None) for port in LOCAL_PORTS]
    for dst in REMOTE6:
        targets += [("6", dst, port, None) for port in REMOTE_PROBE_PORTS]
    targets += [("6", dst, 8080, "::6") for dst in ("::1", POD6)]
    return targets


def outbound_probes(name):
    probes = []
    for label, uid, gid in identities(ids(name, "proxy_uid"), ids(name, "proxy_gid")):
        for family, dst, port, bind in outbound_targets():
            pid = f"out {label} {family} {dst}:{port}" + (f" bind {bind}" if bind else "")
            probes.append({"id": pid, "uid": uid, "gid": gid, "family": family, "dst": dst,
                           "port": port, "bind": bind})
    return probes


def inbound_probes(ports):
    probes = []
    for port in ports:
        for family, dst in (("4", POD4), ("6", POD6)):
            probes.append({"id": f"in {family} {dst}:{port}", "uid": 0, "gid": 0,
                           "family": family, "dst": dst, "port": port})
    return probes


DNS_PROTOS = ("dns-udp", "dns-udpc", "dns-tcp")


def dns_targets():
    """(family, dst, bind) of the port-53 probes (module docstring)."""
    targets = [("4", dst, None) for dst in ("127.0.0.53", "127.0.0.1", "127.1.2.3", POD4,
                                            "10.99.0.1", "9.9.0.1")]
    targets += [("4in6", "127.0.0.53", None), ("4", "127.0.0.53", "127.0.0.6")]
    targets += [("6", dst, None) for dst in ("::127.0.0.53", "::1", POD6, "fd00:99::1")]
    targets.append(("6", "::1", "::6"))
    return targets


def dns_probes(name):
    """Port-53 probes over UDP and TCP for the goldens with GOLDENS[name]["dns"]."""
    if "dns" not in GOLDENS[name]:
        return []
    probes = []
    for label, uid, gid in identities(ids(name, "proxy_uid"), ids(name, "proxy_gid")):
        for family, dst, bind in dns_targets():
            for proto in DNS_PROTOS:
                pid = f"{proto} {label} {family} {dst}:53" + (f" bind {bind}" if bind else "")
                probes.append({"id": pid, "uid": uid, "gid": gid, "family": family, "dst": dst,
                               "port": 53, "bind": bind, "proto": proto})
    return probes


def dns_outcomes(outcomes):
    """Names the answering DNS server (dnsmasq answers with its own address)."""
    return {pid: ({**o, "answer": diff.DNS_ANSWERS.get(o["answer"], o["answer"])}
                  if "answer" in o else o) for pid, o in outcomes.items()}


@pytest.fixture(scope="module")
def agent():
    binary = meshlane_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"meshlane binary not found at {binary} (set MESHLANE_BIN)")
    instance = Agent(binary)
    try:
        instance.start()
        yield instance
    finally:
        instance.destroy()
        report = os.environ.get("MESHLANE_DIFF_REPORT")
        if report:
            with open(report, "w") as f:
                json.dump(SUMMARY, f, indent=1, sort_keys=True)


class Case:
    """One golden: the Istio pod and the meshlane pod, and the outcomes of the probe runs."""

    def __init__(self, name):
        self.name = name
        self.istio, self.mesh = diff.World("i"), diff.World("m")
        self.tokens = []
        self.probes = {"out": outbound_probes(name) + dns_probes(name),
                       "in": inbound_probes(INBOUND_PORTS),
                       "deliberate": inbound_probes(DELIBERATE_INBOUND)}
        self.outcomes = None
        self.server_errors = ""

    def create(self, agent):
        """Rules / enrolment first (the init container's order); listeners come later."""
        v4_rules, v6_rules = diff.parse_golden(golden_text(self.name))

        def enroll():
            self.mesh.create()
            flags = cli_flags(meshlane_flags(self.name))
            result = agent.cli("enroll", self.mesh.pod, "--cgroup", self.mesh.cgroup,
                               "--netns", self.mesh.pod_path, *flags)
            assert result.returncode == 0, f"enroll {flags}: {result.stderr}"
            self.tokens.append(cleanup.REGISTRY.add(f"unenroll {self.mesh.pod}",
                                                    lambda: agent.unenroll(self.mesh.pod)))
        diff.parallel(lambda: self.istio.create().restore(v4_rules, v6_rules), enroll)

    def spawn(self):
        uid, gid = ids(self.name, "proxy_uid")[0], ids(self.name, "proxy_gid")[0]
        for world in (self.istio, self.mesh):
            world.spawn_servers(uid, gid)
            if "dns" in GOLDENS[self.name]:
                world.spawn_dns(uid, gid)

    def wait(self):
        for world in (self.istio, self.mesh):
            world.wait_servers()
            if "dns" in GOLDENS[self.name]:
                world.wait_dns()

    def start(self):
        inbound = self.probes["in"] + self.probes["deliberate"]
        return [self.istio.start_probes(self.probes["out"]),
                self.mesh.start_probes(self.probes["out"]),
                self.istio.start_probes(inbound, from_peer=True),
                self.mesh.start_probes(inbound, from_peer=True)]

    def finish(self, runs):
        i_out, m_out, i_in, m_in = [diff.World.finish_probes(run) for run in runs]
        self.outcomes = {"istio": dns_outcomes({**i_out, **i_in}),
                         "meshlane": dns_outcomes({**m_out, **m_in})}
        self.server_errors = self.istio.server_errors() + self.mesh.server_errors()

    def destroy(self):
        for token in reversed(self.tokens):  # unenroll before the netns and cgroup go
            cleanup.REGISTRY.undo(token)
        self.tokens = []
        diff.parallel(self.istio.destroy, self.mesh.destroy)


# Goldens run in batches: all pods of a batch are built, probed and removed together, so the
# waits (process start-up, program attachment) overlap; a batch is 2 pods + 2 peers per golden.
BATCH = 5
BATCHES = {}


def run_batch(names, agent):
    cases = [Case(name) for name in names]
    phases = SUMMARY.setdefault("_phase_seconds", [])
    mark = time.monotonic()

    def phase(label):
        nonlocal mark
        now = time.monotonic()
        phases.append((label, round(now - mark, 2)))
        mark = now
    try:
        diff.parallel(*[lambda c=c: c.create(agent) for c in cases])
        phase("create+enroll")
        for case in cases:  # children join their netns in preexec_fn: main thread only
            case.spawn()
        for case in cases:
            case.wait()
        phase("listeners")
        runs = [case.start() for case in cases]
        for case, run in zip(cases, runs):
            case.finish(run)
        phase("probes")
    finally:
        diff.parallel(*[case.destroy for case in cases])
        phase("destroy")
    return {case.name: case for case in cases}


def case_for(name, agent):
    names = sorted(GOLDENS)
    index = names.index(name) // BATCH
    if index not in BATCHES:
        started = time.monotonic()
        try:
            BATCHES[index] = run_batch(names[index * BATCH:(index + 1) * BATCH], agent)
        except Exception as e:  # every golden of the batch reports it
            BATCHES[index] = e
        SUMMARY.setdefault("_batch_seconds", []).append(round(time.monotonic() - started, 1))
    if isinstance(BATCHES[index], Exception):
        raise BATCHES[index]
    return BATCHES[index][name]


def mismatches(probes, istio, mesh):
    return [(p["id"], istio[p["id"]], mesh[p["id"]]) for p in probes
            if istio[p["id"]] != mesh[p["id"]]]


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_same_outcomes_as_istio(agent, name):
    case = case_for(name, agent)
    assert not case.server_errors, case.server_errors
    istio, mesh = case.outcomes["istio"], case.outcomes["meshlane"]
    compared = case.probes["out"] + case.probes["in"]
    diffs = mismatches(compared, istio, mesh)
    dns = [p for p in compared if p.get("proto", "tcp") != "tcp"]
    # Not vacuous: the goldens with nameservers send some probes to the DNS listener.
    listener = sum(istio[p["id"]].get("answer") == "dns-listener" for p in dns)
    SUMMARY[name] = {"probes": len(compared), "mismatches": len(diffs), "diffs": diffs,
                     "dns_probes": len(dns), "dns_mismatches": len(mismatches(dns, istio, mesh)),
                     "dns_to_listener": listener,
                     "deliberate": {p["id"]: [istio[p["id"]].get("by"), mesh[p["id"]].get("by")]
                                    for p in case.probes["deliberate"]}}
    if GOLDENS[name].get("dns", {}).get("servers"):
        assert listener > 0, f"{name}: no DNS probe reached the DNS listener under Istio's rules"
    # Deliberate: meshlane always lets these reach their own listener directly.
    for probe in case.probes["deliberate"]:
        assert mesh[probe["id"]].get("by") == f"proxy:{probe['port']}", \
            (probe["id"], mesh[probe["id"]])
    assert not diffs, (f"{len(diffs)} of {len(compared)} probes differ "
                       f"({name}: istio-iptables {GOLDENS[name]['istio']}; meshlane "
                       f"{cli_flags(meshlane_flags(name))}):\n" +
                       "\n".join(f"  {pid}: istio {i} / meshlane {m}" for pid, i, m in diffs))
