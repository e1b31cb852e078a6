"""The Istio iptables capture (tools/istio-iptables, nat table) inside one pod netns: the
baseline meshlane replaces, and a reference for the benchmark. Rules mirror istio-iptables'
output for the given options, for IPv4 (iptables) and IPv6 (ip6tables), nft backend."""
import subprocess

ALWAYS_EXCLUDED_INBOUND = (15020, 15021, 15090)


def istio_rules(v6, proxy_uid=1337, proxy_gid=1337, outbound_port=15001, inbound_port=15006,
                exclude_inbound_ports=(), exclude_outbound_ports=(), include_inbound_ports="*",
                include_cidrs="*", exclude_cidrs=()):
    localhost = "::1/128" if v6 else "127.0.0.1/32"
    passthrough = "::6/128" if v6 else "127.0.0.6/32"
    family_cidrs = lambda cidrs: [c for c in cidrs if (":" in c) == v6]  # noqa: E731
    lines = ["*nat", ":ISTIO_INBOUND - [0:0]", ":ISTIO_IN_REDIRECT - [0:0]",
             ":ISTIO_OUTPUT - [0:0]", ":ISTIO_REDIRECT - [0:0]",
             "-A PREROUTING -p tcp -j ISTIO_INBOUND", "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
             "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN"]
    for port in list(ALWAYS_EXCLUDED_INBOUND) + list(exclude_inbound_ports):
        lines.append(f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN")
    if include_inbound_ports == "*":
        lines.append("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
    else:
        for port in include_inbound_ports:
            lines.append(f"-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT")
    lines.append(f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {inbound_port}")
    for port in exclude_outbound_ports:
        lines.append(f"-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN")
    lines.append(f"-A ISTIO_OUTPUT -s {passthrough} -o lo -j RETURN")
    for match in (f"--uid-owner {proxy_uid}", f"--gid-owner {proxy_gid}"):
        neg = match.replace("--", "! --", 1)
        lines += [f"-A ISTIO_OUTPUT ! -d {localhost} -o lo -m owner {match} -j ISTIO_IN_REDIRECT",
                  f"-A ISTIO_OUTPUT -o lo -m owner {neg} -j RETURN",
                  f"-A ISTIO_OUTPUT -m owner {match} -j RETURN"]
    lines.append(f"-A ISTIO_OUTPUT -d {localhost} -j RETURN")
    for cidr in family_cidrs(exclude_cidrs):
        lines.append(f"-A ISTIO_OUTPUT -d {cidr} -j RETURN")
    if include_cidrs == "*":
        lines.append("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
    else:
        for cidr in family_cidrs(include_cidrs):
            lines.append(f"-A ISTIO_OUTPUT -d {cidr} -j ISTIO_REDIRECT")
    lines.append(f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {outbound_port}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def apply_istio_capture(pod, **options):
    """Installs the rules in pod's netns (the netns goes away with the pod: no undo needed).
    Also adds ::6 on lo, as istio-iptables does, for the IPv6 inbound passthrough source."""
    pod.ip("-6", "addr", "add", "::6/128", "dev", "lo", "nodad", check=False)
    for v6, tool in ((False, "iptables-restore"), (True, "ip6tables-restore")):
        rules = istio_rules(v6, **options)
        _restore(pod, tool, rules)


def _restore(pod, tool, rules):
    proc = subprocess.run(["ip", "netns", "exec", pod.name, tool, "--noflush"], input=rules,
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} in {pod.name} failed: {proc.stderr}\n{rules}")
