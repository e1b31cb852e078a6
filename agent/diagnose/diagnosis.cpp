#include "agent/diagnose/diagnosis.h"

#include <arpa/inet.h>

#include <algorithm>
#include <boost/json.hpp>
#include <charconv>
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

std::optional<Finding> rule_refused_before_listen(const DiagnosisInput& input) {
    const auto refused = counter(input, "inbound_refused_no_listener");
    if (refused == 0) return std::nullopt;
    Finding f;
    f.code = "connection_refused_proxy_not_listening";
    const auto listening = listeners_on(input, input.spec.inbound_port);
    f.severity = listening.empty() ? Severity::kCritical : Severity::kWarning;
    f.cause = "Connections were refused because the proxy was not listening on its inbound port " +
              std::to_string(input.spec.inbound_port) +
              " yet: the app (or its clients) started before the proxy (\"Connection refused\" "
              "at startup).";
    f.evidence.push_back(std::to_string(refused) +
                         " inbound connection(s) refused with no proxy listener (counter "
                         "inbound_refused_no_listener, since enrolment)");
    f.evidence.push_back("startup policy: " + std::string(to_string(input.spec.startup_policy)));
    if (listening.empty()) {
        f.evidence.push_back(
            "no socket listens on port " + std::to_string(input.spec.inbound_port) +
            " in the pod netns now (at " + utc_text(input.collected_at_unix_ms) + ")");
    } else {
        f.evidence.push_back("the proxy listens now: " +
                             describe_socket(input, *listening.front()));
        if (const auto since = proxy_listener_since(input); since > 0)
            f.evidence.push_back("proxy process started at " + utc_text(since) +
                                 "; the refusals happened before it listened");
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

std::vector<Finding> diagnose(const DiagnosisInput& input) {
    std::vector<Finding> findings;
    using Rule = std::optional<Finding> (*)(const DiagnosisInput&);
    const Rule rules[] = {
        rule_refused_before_listen, rule_no_inbound_listener, rule_proxy_wrong_uid,
        rule_app_runs_as_proxy_uid, rule_iptables_chains,     rule_foreign_connect_program,
        rule_orig_dst_unanswered,   rule_app_port_excluded,   rule_proxy_port_included};
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

std::vector<ListenSocket> parse_listen_sockets(std::string_view text, bool ipv6) {
    std::vector<ListenSocket> sockets;
    std::istringstream in{std::string(text)};
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
        if (!(fields >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >>
              timeout >> inode))
            continue;
        if (state != "0A") continue;
        const auto colon = local.find(':');
        if (colon == std::string::npos) continue;
        const auto addr_hex = local.substr(0, colon);
        ListenSocket s;
        s.ipv6 = ipv6;
        s.port = static_cast<std::uint16_t>(std::stoul(local.substr(colon + 1), nullptr, 16));
        s.uid = static_cast<std::uint32_t>(std::stoul(uid));
        s.inode = std::stoull(inode);
        unsigned char bytes[16]{};
        const std::size_t words = ipv6 ? 4 : 1;
        if (addr_hex.size() != words * 8) continue;
        for (std::size_t w = 0; w < words; ++w) {
            std::uint32_t word =
                static_cast<std::uint32_t>(std::stoul(addr_hex.substr(w * 8, 8), nullptr, 16));
            std::memcpy(bytes + w * 4, &word, 4);  // /proc prints each word in host order
        }
        char buffer[INET6_ADDRSTRLEN]{};
        ::inet_ntop(ipv6 ? AF_INET6 : AF_INET, bytes, buffer, sizeof buffer);
        s.local = ipv6 ? "[" + std::string(buffer) + "]:" + std::to_string(s.port)
                       : std::string(buffer) + ":" + std::to_string(s.port);
        sockets.push_back(std::move(s));
    }
    return sockets;
}

bool has_critical(const std::vector<Finding>& findings) {
    return std::any_of(findings.begin(), findings.end(),
                       [](const Finding& f) { return f.severity == Severity::kCritical; });
}

json::object to_json(const Finding& finding) {
    json::array evidence;
    for (const auto& e : finding.evidence) evidence.emplace_back(e);
    return json::object{{"severity", to_string(finding.severity)},
                        {"code", finding.code},
                        {"cause", finding.cause},
                        {"evidence", std::move(evidence)},
                        {"fix", finding.fix}};
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
                                                    : json::value(nullptr)}};
    return json::object{{"workload", input.workload},
                        {"collected_at_unix_ms", input.collected_at_unix_ms},
                        {"critical", critical},
                        {"findings", std::move(list)},
                        {"checked", std::move(checked)}};
}

}  // namespace meshlane::diagnose
