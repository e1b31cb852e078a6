#include "agent/diagnose/diagnosis.h"

#include <arpa/inet.h>

#include <algorithm>
#include <boost/json.hpp>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <set>
#include <sstream>

#include "meshlane/redirect_abi.h"

namespace meshlane::diagnose {

namespace json = boost::json;

std::string_view to_string(Severity severity) {
    switch (severity) {
        case Severity::kCritical:
            return "critical";
        case Severity::kWarning:
            return "warning";
        case Severity::kInfo:
            return "info";
    }
    return "unknown";
}

namespace {

std::uint64_t counter(const DiagnosisInput& input, const std::string& name) {
    auto it = input.counters.find(name);
    return it == input.counters.end() ? 0 : it->second;
}

std::string utc_text(std::int64_t unix_ms) {
    if (unix_ms <= 0) return "unknown time";
    const std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
    std::tm tm{};
    ::gmtime_r(&seconds, &tm);
    char buffer[32];
    std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buffer;
}

// With milliseconds: the order of refusals and the listen is often sub-second.
std::string utc_ms_text(std::int64_t unix_ms) {
    if (unix_ms <= 0) return "unknown time";
    const std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
    std::tm tm{};
    ::gmtime_r(&seconds, &tm);
    char buffer[40];
    const auto n = std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(buffer + n, sizeof buffer - n, ".%03dZ", static_cast<int>(unix_ms % 1000));
    return buffer;
}

const ProcessInfo* process(const DiagnosisInput& input, pid_t pid) {
    for (const auto& p : input.processes)
        if (p.pid == pid) return &p;
    return nullptr;
}

std::string describe_process(const DiagnosisInput& input, pid_t pid) {
    const auto* p = process(input, pid);
    if (p == nullptr) return "pid " + std::to_string(pid);
    return "pid " + std::to_string(pid) + " (" + p->comm + ") uid " + std::to_string(p->uid) +
           " gid " + std::to_string(p->gid) + " cgroup " + p->cgroup + ", started " +
           utc_text(p->started_unix_ms);
}

bool is_proxy_port(const DiagnosisInput& input, std::uint16_t port) {
    return port == input.spec.inbound_port || port == input.spec.outbound_port;
}

bool is_proxy_identity(const DiagnosisInput& input, std::uint32_t uid, std::uint32_t gid) {
    return uid == input.spec.proxy_uid || gid == input.spec.proxy_gid;
}

// A listener belongs to the proxy when the socket's uid or one holder's uid/gid is the proxy's.
bool listener_is_proxys(const DiagnosisInput& input, const ListenSocket& socket) {
    if (socket.uid == input.spec.proxy_uid) return true;
    for (auto pid : socket.pids) {
        const auto* p = process(input, pid);
        if (p != nullptr && is_proxy_identity(input, p->uid, p->gid)) return true;
    }
    return false;
}

std::vector<const ListenSocket*> listeners_on(const DiagnosisInput& input, std::uint16_t port) {
    std::vector<const ListenSocket*> found;
    if (!input.listeners) return found;
    for (const auto& s : *input.listeners)
        if (s.port == port) found.push_back(&s);
    return found;
}

std::string describe_socket(const DiagnosisInput& input, const ListenSocket& s) {
    std::string text = "LISTEN " + s.local + " (socket uid " + std::to_string(s.uid) + ", inode " +
                       std::to_string(s.inode) + ")";
    if (s.pids.empty()) return text + ", holder not found in /proc";
    for (auto pid : s.pids) text += ", held by " + describe_process(input, pid);
    return text;
}

std::string join_ports(const std::vector<std::uint16_t>& ports) {
    std::string text;
    for (auto p : ports) text += (text.empty() ? "" : ",") + std::to_string(p);
    return text;
}

// The earliest start time among the holders of the proxy's inbound listener.
std::int64_t proxy_listener_since(const DiagnosisInput& input) {
    std::int64_t since = 0;
    for (const auto* s : listeners_on(input, input.spec.inbound_port)) {
        for (auto pid : s->pids) {
            const auto* p = process(input, pid);
            if (p != nullptr && p->started_unix_ms > 0 &&
                (since == 0 || p->started_unix_ms < since))
                since = p->started_unix_ms;
        }
    }
    return since;
}

}  // namespace

namespace {

// App connects redirected to the proxy's outbound listener and refused (nothing listened).
std::vector<const ConnectionRecord*> app_refusals(const DiagnosisInput& input) {
    std::vector<const ConnectionRecord*> found;
    if (!input.observed) return found;
    for (const auto& c : input.observed->connects)
        if (c.side == "app" && c.outcome == "refused") found.push_back(&c);
    return found;
}

std::string describe_connect(const ConnectionRecord& c) {
    std::string text = c.source + " -> " + c.destination;
    if (!c.original_destination.empty()) text += " (app asked for " + c.original_destination + ")";
    if (c.pid != 0) text += " by pid " + std::to_string(c.pid) + " (" + c.comm + ")";
    return text + " at " + utc_ms_text(c.unix_time_ns / 1'000'000);
}

}  // namespace

std::optional<Finding> rule_refused_before_listen(const DiagnosisInput& input) {
    const auto refused = counter(input, "inbound_refused_no_listener");
    const auto outbound = app_refusals(input);
    const std::uint64_t outbound_total =
        input.observed ? std::max<std::uint64_t>(input.observed->app_refused_total, outbound.size())
                       : 0;
    if (refused == 0 && outbound_total == 0) return std::nullopt;
    Finding f;
    f.code = "connection_refused_proxy_not_listening";
    const auto listening = listeners_on(input, input.spec.inbound_port);
    f.severity = listening.empty() ? Severity::kCritical : Severity::kWarning;
    f.cause = "Connections were refused because the proxy was not listening on its inbound port " +
              std::to_string(input.spec.inbound_port) +
              " yet: the app (or its clients) started before the proxy (\"Connection refused\" "
              "at startup).";
    const auto& t = input.startup;
    // T3: the listener registration that ended the refusals (a restarted proxy registers again).
    std::int64_t listened = 0;
    if (t.listener_registered_first_unix_ms > t.inbound_refused_last_unix_ms)
        listened = t.listener_registered_first_unix_ms;
    else if (t.listener_registered_last_unix_ms > t.inbound_refused_last_unix_ms)
        listened = t.listener_registered_last_unix_ms;
    if (refused > 0) {
        std::string line = std::to_string(refused) +
                           " inbound connection(s) refused with no proxy listener (counter "
                           "inbound_refused_no_listener, since enrolment)";
        if (t.inbound_refused_first_unix_ms > 0)
            line += ", first at " + utc_ms_text(t.inbound_refused_first_unix_ms) + ", last at " +
                    utc_ms_text(t.inbound_refused_last_unix_ms) + " (kernel time, sk_lookup)";
        f.evidence.push_back(line);
        f.data["inbound_refused"] = static_cast<std::int64_t>(refused);
        f.data["inbound_refused_first_unix_ms"] = t.inbound_refused_first_unix_ms;
        f.data["inbound_refused_last_unix_ms"] = t.inbound_refused_last_unix_ms;
    }
    if (outbound_total > 0) {
        std::string line = std::to_string(outbound_total) +
                           " outbound connect(s) by the app refused: redirected to the proxy's "
                           "outbound listener 127.0.0.1:" +
                           std::to_string(input.spec.outbound_port) +
                           " while nothing listened (observer, since enrolment)";
        f.data["outbound_refused"] = static_cast<std::int64_t>(outbound_total);
        if (!outbound.empty()) {
            const auto first = outbound.front()->unix_time_ns / 1'000'000;
            const auto last = outbound.back()->unix_time_ns / 1'000'000;
            line += ", " + std::to_string(outbound.size()) + " of them in the window: first at " +
                    utc_ms_text(first) + ", last at " + utc_ms_text(last);
            f.data["outbound_refused_first_unix_ms"] = first;
            f.data["outbound_refused_last_unix_ms"] = last;
        }
        f.evidence.push_back(line);
        if (!outbound.empty()) f.evidence.push_back("e.g. " + describe_connect(*outbound.back()));
    }
    f.evidence.push_back("startup policy: " + std::string(to_string(input.spec.startup_policy)));
    if (listened > 0) {
        f.evidence.push_back("the proxy's inbound listener was registered at " +
                             utc_ms_text(listened) + " (kernel time, sockops listen())");
        f.data["listener_registered_unix_ms"] = listened;
    } else if (t.listener_registered_last_unix_ms > 0) {
        f.evidence.push_back("the proxy's inbound listener was last registered at " +
                             utc_ms_text(t.listener_registered_last_unix_ms) +
                             ", BEFORE the last refusal: the proxy stopped listening since");
    } else if (input.inbound_listener_registered) {
        f.evidence.push_back(
            "the proxy's inbound listener was adopted by the agent (it listened before "
            "enrolment or the agent restarted)");
    }
    if (listening.empty()) {
        f.evidence.push_back(
            "no socket listens on port " + std::to_string(input.spec.inbound_port) +
            " in the pod netns now (at " + utc_text(input.collected_at_unix_ms) + ")");
    } else {
        f.evidence.push_back("the proxy listens now: " +
                             describe_socket(input, *listening.front()));
        if (const auto since = proxy_listener_since(input); since > 0)
            f.evidence.push_back("proxy process started at " + utc_text(since));
    }
    const auto passthrough = counter(input, "inbound_startup_passthrough") +
                             counter(input, "outbound_startup_passthrough");
    if (passthrough > 0)
        f.evidence.push_back(std::to_string(passthrough) +
                             " connection(s) bypassed the mesh under the passthrough policy");
    f.fix =
        "Start the app after the proxy: set holdApplicationUntilProxyStarts: true "
        "(proxy.istio.io/config annotation or meshConfig.defaultConfig) or run the proxy as "
        "a native sidecar (Kubernetes >= 1.29, init container with restartPolicy: Always). "
        "Or enroll with `--startup-policy passthrough` (connections go direct, unmeshed, until "
        "the proxy listens; each is counted).";
    return f;
}

std::optional<Finding> rule_proxy_wrong_uid(const DiagnosisInput& input) {
    if (!input.listeners) return std::nullopt;
    Finding f;
    for (const auto& s : *input.listeners) {
        if (!is_proxy_port(input, s.port) || listener_is_proxys(input, s)) continue;
        f.evidence.push_back(describe_socket(input, s));
    }
    if (f.evidence.empty()) return std::nullopt;
    f.severity = Severity::kCritical;
    f.code = "proxy_wrong_uid";
    f.cause = "The process listening on the proxy ports does not run as the configured proxy uid " +
              std::to_string(input.spec.proxy_uid) + " / gid " +
              std::to_string(input.spec.proxy_gid) +
              ": its own outbound connections are captured again (a redirect loop), and its "
              "listener is not recognised as the proxy's.";
    f.evidence.push_back("configured proxy uid " + std::to_string(input.spec.proxy_uid) + ", gid " +
                         std::to_string(input.spec.proxy_gid));
    f.fix =
        "Run the proxy as the configured uid/gid (Istio: runAsUser/runAsGroup 1337 on "
        "istio-proxy), or re-enroll the workload with --proxy-uid/--proxy-gid matching the "
        "proxy.";
    return f;
}

std::optional<Finding> rule_app_runs_as_proxy_uid(const DiagnosisInput& input) {
    if (!input.listeners) return std::nullopt;
    // The proxy is whoever holds a proxy-owned listener on a proxy port; its cgroup (container)
    // is the proxy's, so helpers of the proxy (pilot-agent) are not flagged.
    std::set<pid_t> proxy_pids;
    std::set<std::string> proxy_cgroups;
    for (const auto& s : *input.listeners) {
        if (!is_proxy_port(input, s.port)) continue;
        for (auto pid : s.pids) {
            const auto* p = process(input, pid);
            if (p != nullptr && is_proxy_identity(input, p->uid, p->gid)) {
                proxy_pids.insert(pid);
                proxy_cgroups.insert(p->cgroup);
            }
        }
    }
    if (proxy_pids.empty()) return std::nullopt;  // no proxy to tell the app apart from
    Finding f;
    for (const auto& p : input.processes) {
        if (!p.in_pod_cgroup || proxy_pids.count(p.pid) != 0 || proxy_cgroups.count(p.cgroup) != 0)
            continue;
        if (!is_proxy_identity(input, p.uid, p.gid)) continue;
        f.evidence.push_back(describe_process(input, p.pid) +
                             " runs as the proxy's uid/gid but holds no proxy listener");
    }
    if (f.evidence.empty()) return std::nullopt;
    for (auto pid : proxy_pids) f.evidence.push_back("the proxy: " + describe_process(input, pid));
    f.severity = Severity::kCritical;
    f.code = "app_runs_as_proxy_uid";
    f.cause = "An application process runs as the proxy's uid " +
              std::to_string(input.spec.proxy_uid) + " (or gid " +
              std::to_string(input.spec.proxy_gid) +
              "): its outbound traffic is treated as the proxy's own and silently bypasses the "
              "mesh (Istio IST0144 InvalidApplicationUID).";
    f.fix =
        "Run the application container with another runAsUser/runAsGroup than the proxy's "
        "(1337 by default).";
    return f;
}

std::vector<std::string> istio_chains(std::string_view text) {
    std::set<std::string> chains;
    std::size_t start = 0;
    while (start <= text.size()) {
        auto end = text.find('\n', start);
        if (end == std::string_view::npos) end = text.size();
        auto line = text.substr(start, end - start);
        if (line.rfind(":ISTIO_", 0) == 0) {
            auto name =
                line.substr(1, line.find(' ') == std::string_view::npos ? std::string_view::npos
                                                                        : line.find(' ') - 1);
            chains.insert(std::string(name));
        } else if (line.rfind("-A ", 0) == 0) {
            auto j = line.find(" -j ISTIO_");
            if (j != std::string_view::npos) {
                auto name = line.substr(j + 4);
                name = name.substr(0, name.find(' '));
                chains.insert(std::string(name));
            }
        }
        start = end + 1;
    }
    return {chains.begin(), chains.end()};
}

std::optional<Finding> rule_iptables_chains(const DiagnosisInput& input) {
    Finding f;
    const std::pair<const std::optional<std::string>*, const char*> tables[] = {
        {&input.nat_v4, "iptables -t nat"}, {&input.nat_v6, "ip6tables -t nat"}};
    for (const auto& [text, what] : tables) {
        if (!*text) continue;
        const auto chains = istio_chains(**text);
        if (chains.empty()) continue;
        std::size_t rules = 0;
        std::istringstream in(**text);
        for (std::string line; std::getline(in, line);)
            if (line.rfind("-A ISTIO_", 0) == 0 || line.find(" -j ISTIO_") != std::string::npos)
                ++rules;
        std::string names;
        for (const auto& c : chains) names += (names.empty() ? "" : ", ") + c;
        f.evidence.push_back(std::string(what) + " in the pod netns: chains " + names + " (" +
                             std::to_string(rules) + " rules naming them)");
    }
    if (f.evidence.empty()) return std::nullopt;
    f.severity = Severity::kCritical;
    f.code = "iptables_double_interception";
    f.cause =
        "Istio's iptables capture (ISTIO_* nat chains) is installed in the pod netns as well "
        "as meshlane's: connections are intercepted twice (REDIRECT after meshlane's "
        "rewrite), which loops or breaks SO_ORIGINAL_DST.";
    f.fix =
        "Remove the istio-init container / istio-cni iptables setup for this pod (meshlane "
        "replaces it: disable istio-cni or set the sidecar.istio.io/interceptionMode that "
        "skips iptables), or flush the chains: `nsenter --net=<netns> iptables-save -t nat` "
        "to review, then delete the ISTIO_* chains.";
    return f;
}

std::optional<Finding> rule_foreign_connect_program(const DiagnosisInput& input) {
    if (!input.connect_programs) return std::nullopt;
    Finding f;
    for (const auto& p : *input.connect_programs) {
        if (p.ours) continue;
        std::size_t our_position = SIZE_MAX;
        for (const auto& q : *input.connect_programs)
            if (q.ours && q.attach_type == p.attach_type) our_position = q.position;
        std::string order = our_position == SIZE_MAX    ? "meshlane's is not attached"
                            : p.position < our_position ? "runs BEFORE meshlane's"
                                                        : "runs after meshlane's";
        f.evidence.push_back("cgroup " + p.attach_type + " program id " +
                             std::to_string(p.prog_id) + " \"" + p.name + "\" at position " +
                             std::to_string(p.position) + " (" + order + ")" +
                             (p.attached_at.empty() ? "" : ", attached to " + p.attached_at));
    }
    if (f.evidence.empty()) return std::nullopt;
    f.severity = Severity::kWarning;
    f.code = "foreign_connect_program";
    f.cause =
        "Another cgroup connect4/connect6 program is in effect for the pod cgroup besides "
        "meshlane's (e.g. a CNI socket load balancer): it can rewrite the destination "
        "before meshlane sees it (service VIP already translated) or after (undoing the "
        "redirect).";
    f.fix =
        "Check which agent owns the program (`bpftool prog show id ID`, `bpftool cgroup "
        "tree`); configure it to skip pods meshlane captures, or make it run after meshlane "
        "(e.g. Cilium: socketLB.hostNamespaceOnly=true).";
    return f;
}

std::optional<Finding> rule_no_inbound_listener(const DiagnosisInput& input) {
    if (!input.listeners) return std::nullopt;
    if (!listeners_on(input, input.spec.inbound_port).empty()) return std::nullopt;
    Finding f;
    f.severity = Severity::kCritical;
    f.code = "no_inbound_listener";
    f.cause = "Nothing listens on the proxy's inbound port " +
              std::to_string(input.spec.inbound_port) +
              " in the pod netns: captured inbound connections are refused (startup policy "
              "refuse) or bypass the mesh (passthrough).";
    f.evidence.push_back("no LISTEN socket on port " + std::to_string(input.spec.inbound_port) +
                         " at " + utc_text(input.collected_at_unix_ms));
    std::string ports;
    for (const auto& s : *input.listeners) ports += (ports.empty() ? "" : ", ") + s.local;
    f.evidence.push_back("listening in the netns: " + (ports.empty() ? "nothing" : ports));
    f.evidence.push_back("inbound listener registered in the datapath: " +
                         std::string(input.inbound_listener_registered ? "yes" : "no"));
    f.fix = "Check that the proxy is running and configured for inbound port " +
            std::to_string(input.spec.inbound_port) +
            " (Envoy: virtualInbound listener; `istioctl proxy-config listener`), or re-enroll "
            "with --inbound-port matching the proxy.";
    return f;
}

std::optional<Finding> rule_orig_dst_unanswered(const DiagnosisInput& input) {
    const auto miss = counter(input, "orig_dst_miss");
    const auto lost = counter(input, "orig_dst_tuple_lost");
    if (miss == 0 && lost == 0) return std::nullopt;
    Finding f;
    f.severity = Severity::kWarning;
    f.code = "orig_dst_unanswered";
    f.cause =
        "The proxy asked SO_ORIGINAL_DST for accepted connections and got no answer: Envoy "
        "then sends them to the BlackHole/PassthroughCluster (503 UF/UH, or resets).";
    f.evidence.push_back(std::to_string(miss) +
                         " SO_ORIGINAL_DST lookups with no record "
                         "(counter orig_dst_miss)");
    f.evidence.push_back(std::to_string(lost) +
                         " connections whose original destination was "
                         "lost before the proxy asked (counter orig_dst_tuple_lost)");
    f.evidence.push_back(std::to_string(counter(input, "orig_dst_answered")) +
                         " lookups answered (counter orig_dst_answered)");
    f.fix =
        "Misses come from connections that reached the proxy listener without a redirect "
        "(direct connects to 15001/15006, or traffic captured by something else: run "
        "`meshlane diagnose` for iptables / foreign programs), or from a proxy that asks "
        "after the client closed. Run `meshlane verify NAME` to test the redirect path.";
    return f;
}

std::optional<Finding> rule_app_port_excluded(const DiagnosisInput& input) {
    if (!input.listeners || input.spec.exclude_inbound_ports.empty()) return std::nullopt;
    const std::set<std::uint16_t> always(MESHLANE_ALWAYS_EXCLUDED_INBOUND_PORTS);
    Finding f;
    std::set<std::uint16_t> flagged;
    for (const auto& s : *input.listeners) {
        if (is_proxy_port(input, s.port) || always.count(s.port) != 0 ||
            listener_is_proxys(input, s))
            continue;
        if (std::find(input.spec.exclude_inbound_ports.begin(),
                      input.spec.exclude_inbound_ports.end(),
                      s.port) == input.spec.exclude_inbound_ports.end())
            continue;
        flagged.insert(s.port);
        f.evidence.push_back("the app serves " + describe_socket(input, s));
    }
    if (f.evidence.empty()) return std::nullopt;
    std::vector<std::uint16_t> ports(flagged.begin(), flagged.end());
    f.evidence.push_back("exclude_inbound_ports = " + join_ports(input.spec.exclude_inbound_ports));
    f.severity = Severity::kWarning;
    f.code = "app_port_excluded";
    f.cause = "The app's own serving port " + join_ports(ports) +
              " is excluded from inbound capture: connections to it bypass the proxy, so mTLS "
              "and authorization policy do not apply to them.";
    f.fix = "Remove " + join_ports(ports) +
            " from traffic.sidecar.istio.io/excludeInboundPorts (enroll --exclude-inbound-ports) "
            "unless bypassing the mesh is intended.";
    return f;
}

std::optional<Finding> rule_proxy_port_included(const DiagnosisInput& input) {
    Finding f;
    const std::pair<const std::vector<std::uint16_t>*, const char*> lists[] = {
        {&input.spec.include_inbound_ports, "include_inbound_ports"},
        {&input.spec.include_outbound_ports, "include_outbound_ports"}};
    for (const auto& [list, field] : lists) {
        for (auto port : *list) {
            if (!is_proxy_port(input, port)) continue;
            f.evidence.push_back(std::string(field) + " lists " + std::to_string(port) +
                                 (port == input.spec.inbound_port
                                      ? " (the proxy's inbound port)"
                                      : " (the proxy's outbound port)"));
        }
    }
    if (f.evidence.empty()) return std::nullopt;
    f.severity = Severity::kWarning;
    f.code = "proxy_port_included";
    f.cause =
        "A proxy port is listed in an include list: connections addressed to the proxy's own "
        "listener are captured again, which loops or is refused.";
    f.fix = "Remove " + std::to_string(input.spec.outbound_port) + "/" +
            std::to_string(input.spec.inbound_port) +
            " from traffic.sidecar.istio.io/includeInboundPorts / includeOutboundPorts "
            "(enroll --include-ports / --include-outbound-ports).";
    return f;
}

bool is_policy_drop_reason(std::string_view reason) {
    static const std::set<std::string_view> policy = {"NETFILTER_DROP",
                                                      "SOCKET_FILTER",
                                                      "XFRM_POLICY",
                                                      "TC_INGRESS",
                                                      "TC_EGRESS",
                                                      "TC_DROP",
                                                      "BPF_CGROUP_EGRESS",
                                                      "IP_RPFILTER",
                                                      "SECURITY_HOOK",
                                                      "IPV6DISABLED",
                                                      "TCP_MD5NOTFOUND",
                                                      "TCP_MD5UNEXPECTED",
                                                      "TCP_MD5FAILURE",
                                                      "TCP_AONOTFOUND",
                                                      "TCP_AOUNEXPECTED",
                                                      "TCP_AOFAILURE",
                                                      "XDP"};
    return policy.count(reason) != 0;
}

bool is_verify_probe_endpoint(std::string_view endpoint) {
    return endpoint.rfind("192.0.2.", 0) == 0 || endpoint.rfind("255.255.255.255:", 0) == 0;
}

std::string drop_reason_fix(std::string_view reason, const std::string& netns) {
    const std::string where = "`nsenter --net=" + netns + "`";
    if (reason == "NETFILTER_DROP")
        return "An iptables/nftables rule in netns " + netns +
               " drops these packets: list it with " + where +
               " iptables-save (and ip6tables-save, `nft list ruleset`), look for DROP/REJECT "
               "on the listed ports or addresses, and remove it or fix the NetworkPolicy that "
               "generated it.";
    if (reason == "NO_SOCKET")
        return "Packets arrived for a port nothing listens on in netns " + netns +
               ": start the server or fix the port/Service targetPort. When it is the proxy's "
               "port, see connection_refused_proxy_not_listening / no_inbound_listener.";
    if (reason == "SOCKET_FILTER" || reason == "BPF_CGROUP_EGRESS" || reason == "TC_INGRESS" ||
        reason == "TC_EGRESS" || reason == "TC_DROP" || reason == "XDP")
        return "A BPF program (socket filter, cgroup_skb, tc or XDP) drops them: find it with "
               "`bpftool net show` (in " +
               where +
               ") and `bpftool cgroup tree`, then fix the policy of the agent that owns it.";
    if (reason == "XFRM_POLICY")
        return "An IPsec (xfrm) policy in netns " + netns + " drops them: " + where +
               " ip xfrm policy.";
    if (reason == "IP_RPFILTER")
        return "Reverse-path filtering drops them (asymmetric routing): check "
               "net.ipv4.conf.*.rp_filter in netns " +
               netns + " and the routes back to the source.";
    if (reason == "TCP_LISTEN_OVERFLOW" || reason == "TCP_REQQFULLDROP")
        return "The server's accept queue is full: it does not accept fast enough. Raise its "
               "listen backlog / net.core.somaxconn, or scale the server.";
    if (reason == "SOCKET_RCVBUFF" || reason == "PROTO_MEM" || reason == "NOMEM" ||
        reason == "FULL_RING" || reason == "QDISC_DROP" || reason == "CPU_BACKLOG" ||
        reason == "SOCKET_BACKLOG")
        return "The node is out of buffers or CPU for this traffic: check memory pressure, "
               "tcp_mem/rmem sysctls and the receiver's read rate.";
    if (reason == "NEIGH_FAILED" || reason == "NEIGH_QUEUEFULL" || reason == "IP_OUTNOROUTES" ||
        reason == "IP_INNOROUTES" || reason == "IP_INADDRERRORS")
        return "Routing or neighbour resolution fails in netns " + netns + ": " + where +
               " ip route / ip neigh.";
    return "Look the reason up in the kernel's enum skb_drop_reason "
           "(include/net/dropreason-core.h) "
           "and check the netns " +
           netns + " configuration that leads to it.";
}

namespace {

struct DropGroup {
    std::uint64_t count = 0;  // sampled events in the window
    std::uint64_t total = 0;  // exact, since enrolment
    std::int64_t first_ms = 0, last_ms = 0;
    std::vector<const DropRecord*> examples;
};

bool is_pod_address(const DiagnosisInput& input, const std::string& endpoint) {
    for (const auto& a : input.pod_addresses) {
        const auto host = endpoint.substr(0, endpoint.rfind(':'));
        if (host == a || host == "[" + a + "]") return true;
    }
    return false;
}

std::string describe_drop(const DiagnosisInput& input, const DropRecord& d) {
    std::string text = d.ip_proto == 6 ? "tcp " : d.ip_proto == 17 ? "udp " : "";
    if (!d.source.empty())
        text += d.source + " -> " + d.destination;
    else
        text += "(headers not readable)";
    if (is_pod_address(input, d.destination))
        text += " (inbound to the pod)";
    else if (is_pod_address(input, d.source))
        text += " (outbound from the pod)";
    return text + ", " + std::to_string(d.length) + " bytes, " +
           (d.attributed_by == "socket" ? "on a socket of the pod" : "on a device of the pod") +
           ", at " + utc_ms_text(d.unix_time_ns / 1'000'000);
}

}  // namespace

std::optional<Finding> rule_kernel_drops(const DiagnosisInput& input) {
    if (!input.observed) return std::nullopt;
    const auto& observed = *input.observed;
    // Connects of this workload that failed in the window: what the drops break. verify's
    // probes (is_verify_probe_endpoint) never count.
    std::vector<const ConnectionRecord*> failed;
    std::set<std::string> failed_endpoints;
    for (const auto& c : observed.connects) {
        if (is_verify_probe_endpoint(c.destination)) continue;
        if (c.outcome == "timed_out" || (c.outcome == "failed" && c.syn_retransmits > 0) ||
            (c.outcome == "refused" && c.side != "app")) {
            failed.push_back(&c);
            failed_endpoints.insert(c.destination);
        }
    }
    // Deliberate (policy) drops always count; other reasons happen in healthy traffic too (late
    // segments of closed sockets, ...) and count only when the packet belongs to a failed
    // connect (to or from its destination).
    std::map<std::string, DropGroup> groups;
    for (const auto& d : observed.drops) {
        if (d.unix_time_ns / 1'000'000 < input.window_start_unix_ms) continue;
        if (is_verify_probe_endpoint(d.destination) || is_verify_probe_endpoint(d.source)) continue;
        if (!is_policy_drop_reason(d.reason_name) && failed_endpoints.count(d.destination) == 0 &&
            failed_endpoints.count(d.source) == 0)
            continue;
        auto& g = groups[d.reason_name];
        const auto ms = d.unix_time_ns / 1'000'000;
        if (g.count++ == 0) g.first_ms = ms;
        g.last_ms = ms;
        if (g.examples.size() < 3) g.examples.push_back(&d);
    }
    for (const auto& r : observed.drops_by_reason)
        if (auto it = groups.find(r.reason_name); it != groups.end()) it->second.total = r.count;
    // NO_SOCKET drops that are the sk_lookup refusals belong to finding 1, not here.
    if (auto it = groups.find("NO_SOCKET"); it != groups.end()) {
        if (it->second.total <= counter(input, "inbound_refused_no_listener")) groups.erase(it);
    }
    if (groups.empty() && observed.peer_drops.empty()) return std::nullopt;

    Finding f;
    f.code = "kernel_dropped_packets";
    f.severity = failed.empty() ? Severity::kWarning : Severity::kCritical;
    std::string reasons;
    std::string top_reason;
    std::uint64_t top = 0;
    for (const auto& [reason, g] : groups) {
        reasons += (reasons.empty() ? "" : ", ") + reason;
        if (g.count > top) top = g.count, top_reason = reason;
        std::string line = std::to_string(g.count) + " packet(s) dropped by the kernel in the " +
                           "pod netns with reason " + reason + " between " +
                           utc_ms_text(g.first_ms) + " and " + utc_ms_text(g.last_ms) +
                           " (sampled events in the window; " + std::to_string(g.total) +
                           " since enrolment, exact)";
        f.evidence.push_back(line);
        for (const auto* d : g.examples)
            f.evidence.push_back("  " + reason + ": " + describe_drop(input, *d));
        f.data["drops." + reason] = static_cast<std::int64_t>(g.count);
        f.data["drops_total." + reason] = static_cast<std::int64_t>(g.total);
        f.data["drops_first_unix_ms." + reason] = g.first_ms;
        f.data["drops_last_unix_ms." + reason] = g.last_ms;
    }
    std::map<std::string, std::uint64_t> peer_reasons;
    for (const auto& p : observed.peer_drops) {
        ++peer_reasons[p.drop.reason_name];
        if (peer_reasons[p.drop.reason_name] <= 3)
            f.evidence.push_back("dropped in workload " + p.workload + " (netns " + p.netns +
                                 ") with reason " + p.drop.reason_name + ": " +
                                 describe_drop(input, p.drop));
    }
    for (const auto& [reason, n] : peer_reasons) {
        if (reasons.find(reason) == std::string::npos)
            reasons += (reasons.empty() ? "" : ", ") + reason;
        f.data["peer_drops." + reason] = static_cast<std::int64_t>(n);
        if (n > top) top = n, top_reason = reason;
    }
    std::size_t timed_out = 0;
    for (const auto* c : failed) timed_out += c->outcome == "timed_out";
    if (!failed.empty()) {
        f.evidence.push_back(std::to_string(failed.size()) + " connect(s) from the pod failed in " +
                             "the window (" + std::to_string(timed_out) + " timed out); e.g. " +
                             describe_connect(*failed.back()) + ", " + failed.back()->outcome +
                             " after " + std::to_string(failed.back()->syn_retransmits) +
                             " SYN retransmit(s)");
        f.data["failed_connects"] = static_cast<std::int64_t>(failed.size());
    }
    f.cause = "The kernel dropped packets of this workload's connections (" + reasons +
              "): connects time out or are reset instead of reaching the peer.";
    std::string netns = input.spec.netns_path;
    if (!groups.count(top_reason))
        for (const auto& p : observed.peer_drops)
            if (p.drop.reason_name == top_reason) netns = p.netns;
    f.fix = drop_reason_fix(top_reason, netns);
    if (groups.size() + peer_reasons.size() > 1)
        f.fix += " (Most frequent reason first; `meshlane drops --workload " + input.workload +
                 "` lists all.)";
    return f;
}

namespace {

std::string ms_text(std::uint64_t us) { return std::to_string((us + 500) / 1000) + " ms"; }

// Which hop measured the handshakes, for the evidence.
std::string tls_hop_text(const TlsDestination& d) {
    if (d.hop == "app") return "the app's own TLS through its proxy, on the wire";
    if (d.hop == "upstream") return "the proxy's upstream connection (sidecar mTLS), on the wire";
    if (d.hop == "wire") return "the wire";
    return "libssl uprobes in the process (no address: a server-side handshake, or a client "
           "one the wire did not see)";
}

// What the last failure means, read from this side (the client of the handshake).
std::string tls_failure_meaning(const TlsDestination& d) {
    if (d.last_failure_kind == "alert") {
        switch (d.last_alert_description) {
            case 48:  // unknown_ca
                return "this side rejected the server's certificate: it is not signed by a CA "
                       "this side trusts (root CA or trust domain mismatch, e.g. after a CA "
                       "rotation or across clusters)";
            case 45:  // certificate_expired
                return "this side rejected the server's certificate as expired (or a clock is "
                       "wrong)";
            case 44:  // certificate_revoked
                return "this side rejected the server's certificate as revoked";
            case 42:  // bad_certificate
            case 43:  // unsupported_certificate
            case 46:  // certificate_unknown
                return "this side rejected the server's certificate (wrong identity/SAN or an "
                       "unusable certificate)";
            case 40:  // handshake_failure
            case 70:  // protocol_version
            case 71:  // insufficient_security
                return "the two sides share no TLS version or cipher suite";
            case 112:  // unrecognized_name
                return "the server does not serve the requested SNI name";
            case -1:
                return "this side aborted the handshake with an encrypted (TLS 1.3) alert, "
                       "typically because it rejected the server's certificate";
            default:
                return "this side aborted the handshake with an alert";
        }
    }
    if (d.last_failure_kind == "reset" || d.last_failure_kind == "closed")
        return std::string("the server ") + (d.last_failure_kind == "reset" ? "reset" : "closed") +
               " the connection before the handshake completed: it rejected this side's client "
               "certificate (missing or from another CA while its mTLS mode is STRICT), it does "
               "not speak TLS on that port (a plaintext server, or its proxy is bypassed), or "
               "the peer's proxy crashed";
    return "the handshake failed inside this workload's TLS library (" + d.destination +
           "; libssl gives no peer address). When this workload is the server, the client "
           "aborted it, e.g. it does not trust this side's certificate: diagnose the client "
           "workloads, whose side names the alert";
}

std::string tls_kinds_text(const TlsDestination& d) {
    std::string text;
    for (const auto& [kind, n] : d.failures_by_kind)
        text += (text.empty() ? "" : ", ") + std::to_string(n) + " " + kind;
    return text;
}

// `nsenter --net=NETNS openssl s_client ...` for one destination: the handshake from the pod.
std::string s_client_command(const DiagnosisInput& input, const TlsDestination& d) {
    const auto address = d.address.empty() ? std::string("HOST:PORT") : d.address;
    std::string command =
        "nsenter --net=" + input.spec.netns_path + " openssl s_client -connect " + address;
    if (!d.sni.empty()) command += " -servername " + d.sni;
    return command + " -showcerts </dev/null";
}

std::string tls_destination_name(const TlsDestination& d) {
    if (!d.address.empty() && d.address != d.destination)
        return d.destination + " (" + d.address + ")";
    return d.destination;
}

}  // namespace

std::optional<Finding> rule_tls_handshakes(const DiagnosisInput& input) {
    if (!input.tls) return std::nullopt;
    const auto threshold = std::to_string(input.tls->threshold_ms) + " ms";
    Finding f;
    std::uint64_t failures = 0, slow = 0;
    const TlsDestination* worst_failing = nullptr;
    const TlsDestination* worst_slow = nullptr;
    std::vector<std::string> failing_names, slow_names;
    for (const auto& d : input.tls->destinations) {
        if (d.failures == 0 && d.slow == 0) continue;
        failures += d.failures;
        slow += d.slow;
        const auto name = tls_destination_name(d);
        std::string line = name + ", measured on " + tls_hop_text(d) + ": " +
                           std::to_string(d.handshakes) + " handshake(s) in the window, " +
                           std::to_string(d.handshakes - d.failures) + " completed, " +
                           std::to_string(d.failures) + " failed";
        if (d.failures > 0) {
            failing_names.push_back(name);
            if (worst_failing == nullptr || d.failures > worst_failing->failures)
                worst_failing = &d;
            line += " (" + tls_kinds_text(d) + "), first failure at " +
                    utc_ms_text(d.first_failure_unix_ms) + ", last at " +
                    utc_ms_text(d.last_failure_unix_ms) + ": " + d.last_failure;
        }
        if (d.handshakes > d.failures)
            line += "; completed in p50 " + ms_text(d.p50_us) + ", p99 " + ms_text(d.p99_us) +
                    ", max " + ms_text(d.max_us) + ", " + std::to_string(d.slow) +
                    " at or above the " + threshold + " threshold";
        if (d.slow > 0) {
            slow_names.push_back(name);
            if (worst_slow == nullptr || d.p99_us > worst_slow->p99_us) worst_slow = &d;
        }
        f.evidence.push_back(line);
        const auto& key = d.destination;
        f.data["tls_handshakes." + key] = static_cast<std::int64_t>(d.handshakes);
        f.data["tls_failures." + key] = static_cast<std::int64_t>(d.failures);
        for (const auto& [kind, n] : d.failures_by_kind)
            f.data["tls_failures_" + kind + "." + key] = static_cast<std::int64_t>(n);
        if (d.failures > 0) {
            f.data["tls_first_failure_unix_ms." + key] = d.first_failure_unix_ms;
            f.data["tls_last_failure_unix_ms." + key] = d.last_failure_unix_ms;
        }
        f.data["tls_slow." + key] = static_cast<std::int64_t>(d.slow);
        f.data["tls_p50_us." + key] = static_cast<std::int64_t>(d.p50_us);
        f.data["tls_p99_us." + key] = static_cast<std::int64_t>(d.p99_us);
    }
    if (f.evidence.empty()) return std::nullopt;
    auto join = [](const std::vector<std::string>& names) {
        std::string text;
        for (const auto& n : names) text += (text.empty() ? "" : ", ") + n;
        return text;
    };
    f.code = "tls_handshake_problems";
    f.severity = failures > 0 ? Severity::kCritical : Severity::kWarning;
    if (worst_failing != nullptr) {
        f.cause = "mTLS handshake failure: " + std::to_string(failures) +
                  " TLS handshake(s) of this workload with " + join(failing_names) +
                  " failed in the window, so requests on those connections fail before reaching "
                  "the peer (Envoy answers 503 UF, \"upstream connect error or disconnect/reset "
                  "before headers ... TLS error\" / CERTIFICATE_VERIFY_FAILED). Last failure: " +
                  tls_failure_meaning(*worst_failing) + ".";
        if (worst_slow != nullptr)
            f.cause +=
                " Handshakes to " + join(slow_names) + " are also slower than " + threshold + ".";
        f.fix = "Make both sides agree on TLS for " + worst_failing->destination +
                ": the client side's DestinationRule trafficPolicy.tls.mode (ISTIO_MUTUAL for a "
                "meshed server, SIMPLE/DISABLE otherwise) must match the server workload's "
                "PeerAuthentication mTLS mode (STRICT needs a client certificate from the mesh "
                "CA); compare the certificates both proxies hold (`istioctl proxy-config secret "
                "POD`: root CA, trust domain, expiry). Reproduce from the pod: `" +
                s_client_command(input, *worst_failing) +
                "` prints the server's chain and the verify error. If one side bypasses its "
                "proxy (plaintext meets mTLS), `meshlane verify` fails on that workload.";
    } else {
        f.cause = "Slow first request: TLS handshakes of this workload with " + join(slow_names) +
                  " take longer than the " + threshold + " threshold (p50 " +
                  ms_text(worst_slow->p50_us) + ", p99 " + ms_text(worst_slow->p99_us) +
                  "): every new connection waits that long before its first request is sent.";
        f.fix = "Time the handshake from the pod: `time " + s_client_command(input, *worst_slow) +
                "`; if it is slow there too, the server's handshake is slow (CPU, certificate "
                "chain size, OCSP, a slow SNI callback or key server). Reuse connections "
                "(DestinationRule connectionPool, HTTP keep-alive) so fewer handshakes are paid; "
                "raise tls_slow_handshake_threshold_ms in the agent config if this is normal.";
    }
    f.data["tls_failures"] = static_cast<std::int64_t>(failures);
    f.data["tls_slow"] = static_cast<std::int64_t>(slow);
    f.data["tls_threshold_ms"] = static_cast<std::int64_t>(input.tls->threshold_ms);
    return f;
}

std::vector<Finding> diagnose(const DiagnosisInput& input) {
    std::vector<Finding> findings;
    using Rule = std::optional<Finding> (*)(const DiagnosisInput&);
    const Rule rules[] = {
        rule_refused_before_listen, rule_no_inbound_listener, rule_proxy_wrong_uid,
        rule_app_runs_as_proxy_uid, rule_iptables_chains,     rule_foreign_connect_program,
        rule_orig_dst_unanswered,   rule_app_port_excluded,   rule_proxy_port_included,
        rule_kernel_drops,          rule_tls_handshakes};
    for (auto rule : rules)
        if (auto f = rule(input)) findings.push_back(std::move(*f));
    for (const auto& error : input.collection_errors) {
        findings.push_back(Finding{Severity::kInfo,
                                   "check_not_run",
                                   "A check could not run, so its fault would go unreported.",
                                   {error},
                                   "Run the agent as root with nsenter and "
                                   "iptables-save installed on the node."});
    }
    std::stable_sort(findings.begin(), findings.end(), [](const Finding& a, const Finding& b) {
        return static_cast<int>(a.severity) < static_cast<int>(b.severity);
    });
    return findings;
}

bool has_critical(const std::vector<Finding>& findings) {
    return std::any_of(findings.begin(), findings.end(),
                       [](const Finding& f) { return f.severity == Severity::kCritical; });
}

json::object to_json(const Finding& finding) {
    json::array evidence;
    for (const auto& e : finding.evidence) evidence.emplace_back(e);
    json::object data;
    for (const auto& [key, value] : finding.data) data[key] = value;
    return json::object{{"severity", to_string(finding.severity)},
                        {"code", finding.code},
                        {"cause", finding.cause},
                        {"evidence", std::move(evidence)},
                        {"fix", finding.fix},
                        {"data", std::move(data)}};
}

json::object to_json(const DiagnosisInput& input, const std::vector<Finding>& findings) {
    json::array list;
    std::size_t critical = 0;
    for (const auto& f : findings) {
        list.emplace_back(to_json(f));
        if (f.severity == Severity::kCritical) ++critical;
    }
    json::object checked{
        {"processes", input.processes.size()},
        {"listeners",
         input.listeners ? json::value(input.listeners->size()) : json::value(nullptr)},
        {"iptables_v4", input.nat_v4.has_value()},
        {"iptables_v6", input.nat_v6.has_value()},
        {"connect_programs", input.connect_programs ? json::value(input.connect_programs->size())
                                                    : json::value(nullptr)},
        {"observer", input.observed.has_value()},
        {"tls", input.tls.has_value()}};
    return json::object{{"workload", input.workload},
                        {"collected_at_unix_ms", input.collected_at_unix_ms},
                        {"window_start_unix_ms", input.window_start_unix_ms},
                        {"critical", critical},
                        {"findings", std::move(list)},
                        {"checked", std::move(checked)}};
}

}  // namespace meshlane::diagnose
