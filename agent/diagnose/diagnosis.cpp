#include "agent/diagnose/diagnosis.h"

#include <arpa/inet.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
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

std::string_view to_string(TlsHop hop) {
    switch (hop) {
        case TlsHop::kApp:
            return "app";
        case TlsHop::kProxyUpstream:
            return "upstream";
        case TlsHop::kInboundDelivery:
            return "inbound_delivery";
        case TlsHop::kWire:
            return "wire";
        case TlsHop::kLibssl:
            return "libssl";
    }
    return "wire";
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
        if (c.side == ConnectSide::kApp && c.outcome == ConnectOutcome::kRefused)
            found.push_back(&c);
    return found;
}

std::string describe_connect(const ConnectionRecord& c) {
    std::string text = c.source + " -> " + c.destination;
    if (!c.original_destination.empty()) text += " (app asked for " + c.original_destination + ")";
    if (c.pid != 0) text += " by pid " + std::to_string(c.pid) + " (" + c.comm + ")";
    return text + " at " + utc_ms_text(c.unix_time_ns / 1'000'000);
}

// Refusals of one side, exact: counted and dated by the kernel.
struct RefusalSpan {
    std::uint64_t count = 0;
    std::int64_t first_ms = 0, last_ms = 0;
};

RefusalSpan outbound_refusals(const DiagnosisInput& input) {
    RefusalSpan span;
    if (!input.observed) return span;
    const auto& side = input.observed->app_side;
    const auto events = app_refusals(input);
    span.count = std::max<std::uint64_t>(std::max(side.refused, input.observed->app_refused_total),
                                         events.size());
    span.first_ms = side.refused_first_unix_ns / 1'000'000;
    span.last_ms = side.refused_last_unix_ns / 1'000'000;
    // Totals without times (an observer that does not date them): the events, a lower bound.
    if (span.first_ms == 0 && !events.empty()) {
        span.first_ms = events.front()->unix_time_ns / 1'000'000;
        span.last_ms = events.back()->unix_time_ns / 1'000'000;
    }
    return span;
}

// HAProxy/Envoy bind their listeners within milliseconds of each other (Envoy: one LDS
// update); a refusal on 15001 this soon after the 15006 listen is still the same startup.
constexpr std::int64_t kListenSkewMs = 250;

// Startup: refused before the proxy ever listened. Stopped: refused after it had listened: it
// crashed, was killed or restarted. Any one of these proves "had listened": the refusal came
// well after the inbound listener's first registration; an app connect to the proxy succeeded
// before the first refusal; the listener registered again later (a restart) after refusals
// that followed the first registration.
struct Episode {
    bool startup = false;
    bool stopped = false;
};

Episode episode_of(const RefusalSpan& span, const StartupTimes& t, std::int64_t app_ok_last_ms) {
    Episode e;
    const auto listened = t.listener_registered_first_unix_ms;
    e.startup = listened == 0 || span.first_ms <= listened + kListenSkewMs;
    if (listened == 0) return e;
    const bool worked_before = app_ok_last_ms > 0 && app_ok_last_ms < span.first_ms;
    const bool restarted = t.listener_registered_last_unix_ms > listened + kListenSkewMs &&
                           span.last_ms > listened &&
                           span.last_ms < t.listener_registered_last_unix_ms;
    e.stopped = span.last_ms > listened + kListenSkewMs || worked_before || restarted;
    if (worked_before) e.startup = false;
    return e;
}

// When the refusals of a side ended: a listen registered after the last one (the proxy
// listens again), or for the app's side a connect that succeeded after it. 0: not ended.
std::int64_t refusals_ended(const RefusalSpan& span, const DiagnosisInput& input, bool outbound) {
    if (span.count == 0) return 0;
    const auto port = outbound ? input.spec.outbound_port : input.spec.inbound_port;
    if (input.listeners && listeners_on(input, port).empty()) return 0;
    const auto listened = input.startup.listener_registered_last_unix_ms;
    if (listened > span.last_ms) return listened;
    if (outbound && input.observed) {
        const auto ok = input.observed->app_side.established_last_unix_ns / 1'000'000;
        if (ok > span.last_ms) return ok;
    }
    return 0;
}

std::string refusal_line(const RefusalSpan& span, const std::string& what,
                         const std::string& source) {
    std::string line = std::to_string(span.count) + " " + what + " (" + source + ")";
    if (span.first_ms > 0)
        line +=
            ", first at " + utc_ms_text(span.first_ms) + ", last at " + utc_ms_text(span.last_ms);
    return line;
}

std::string refusal_where(const DiagnosisInput& input, bool inbound, bool outbound) {
    const auto in_port = std::to_string(input.spec.inbound_port);
    const auto out = "127.0.0.1:" + std::to_string(input.spec.outbound_port);
    if (inbound && outbound)
        return "Connections into the pod and the app's outbound connects were refused: the "
               "proxy was not listening on its inbound port " +
               in_port + " nor on its outbound port " + out + " (where meshlane redirects them)";
    if (outbound)
        return "The app's outbound connects were refused: meshlane redirected them to the "
               "proxy's outbound port " +
               out + " and nothing listened there";
    return "Connections into the pod were refused: the proxy was not listening on its "
           "inbound port " +
           in_port;
}

const char* kStartupFix =
    "Start the app after the proxy: set holdApplicationUntilProxyStarts: true "
    "(proxy.istio.io/config annotation or meshConfig.defaultConfig) or run the proxy as "
    "a native sidecar (Kubernetes >= 1.29, init container with restartPolicy: Always). "
    "Or enroll with `--startup-policy passthrough` (connections go direct, unmeshed, until "
    "the proxy listens; each is counted).";

const char* kStoppedFix =
    "Find why the proxy stopped: `kubectl describe pod POD` (istio-proxy Last State: "
    "OOMKilled / Error, Restart Count), `kubectl logs POD -c istio-proxy --previous`, the "
    "node's kernel log for the OOM killer (`journalctl -k | grep -i oom`); raise the proxy's "
    "memory limit (sidecar.istio.io/proxyMemoryLimit) if it was OOM-killed. Requests sent "
    "while it was down were refused (503 / connection refused at the client): retries "
    "(Istio retry policy) cover a restart, not a crash loop.";

}  // namespace

std::optional<Finding> rule_refused_before_listen(const DiagnosisInput& input) {
    const auto& t = input.startup;
    const RefusalSpan inbound{counter(input, "inbound_refused_no_listener"),
                              t.inbound_refused_first_unix_ms, t.inbound_refused_last_unix_ms};
    const auto outbound = outbound_refusals(input);
    if (inbound.count == 0 && outbound.count == 0) return std::nullopt;
    // Only a success BEFORE the refusals tells; a later one (after a restart) is read from the
    // kernel at diagnosis time and says nothing about the order.
    const std::int64_t app_ok_last_ms =
        input.observed ? input.observed->app_side.established_last_unix_ns / 1'000'000 : 0;
    Episode episode;
    for (const auto* span : {&inbound, &outbound}) {
        if (span->count == 0) continue;
        const auto e = episode_of(*span, t, app_ok_last_ms);
        episode.startup |= e.startup;
        episode.stopped |= e.stopped;
    }
    Finding f;
    f.code = episode.stopped ? "proxy_stopped_listening" : "connection_refused_proxy_not_listening";
    f.cause = refusal_where(input, inbound.count > 0, outbound.count > 0);
    if (episode.stopped)
        f.cause += ", after it had been listening since " +
                   utc_ms_text(t.listener_registered_first_unix_ms) +
                   ": the proxy crashed, was killed or restarted" +
                   (episode.startup ? " (some refusals were also before it first listened)"
                                    : " (not a startup-order problem)") +
                   ".";
    else
        f.cause +=
            " yet: the app (or its clients) started before the proxy (\"Connection "
            "refused\" at startup).";
    if (inbound.count > 0) {
        f.evidence.push_back(refusal_line(inbound,
                                          "inbound connection(s) refused with no proxy listener",
                                          "counter inbound_refused_no_listener, since enrolment, "
                                          "dated by sk_lookup in kernel time"));
        f.data["inbound_refused"] = static_cast<std::int64_t>(inbound.count);
        f.data["inbound_refused_first_unix_ms"] = inbound.first_ms;
        f.data["inbound_refused_last_unix_ms"] = inbound.last_ms;
    }
    if (outbound.count > 0) {
        f.evidence.push_back(refusal_line(
            outbound,
            "outbound connect(s) by the app refused: redirected to the proxy's outbound listener "
            "127.0.0.1:" +
                std::to_string(input.spec.outbound_port) + " while nothing listened",
            "observer's kernel counters, since enrolment"));
        f.data["outbound_refused"] = static_cast<std::int64_t>(outbound.count);
        f.data["outbound_refused_first_unix_ms"] = outbound.first_ms;
        f.data["outbound_refused_last_unix_ms"] = outbound.last_ms;
        if (const auto events = app_refusals(input); !events.empty())
            f.evidence.push_back("e.g. " + describe_connect(*events.back()));
    }
    f.evidence.push_back("startup policy: " + std::string(to_string(input.spec.startup_policy)));
    if (t.listener_registered_first_unix_ms > 0) {
        f.evidence.push_back(
            "the proxy's inbound listener was first registered at " +
            utc_ms_text(t.listener_registered_first_unix_ms) +
            (t.listener_registered_last_unix_ms > t.listener_registered_first_unix_ms
                 ? ", last at " + utc_ms_text(t.listener_registered_last_unix_ms) +
                       " (it listened again: a restart)"
                 : "") +
            " (kernel time, sockops listen())");
        f.data["listener_registered_first_unix_ms"] = t.listener_registered_first_unix_ms;
        f.data["listener_registered_last_unix_ms"] = t.listener_registered_last_unix_ms;
        const auto last_refusal = std::max(inbound.last_ms, outbound.last_ms);
        if (t.listener_registered_last_unix_ms > last_refusal)
            f.data["listener_registered_unix_ms"] = t.listener_registered_last_unix_ms;
    } else if (input.inbound_listener_registered) {
        f.evidence.push_back(
            "the proxy's inbound listener was adopted by the agent (it listened before "
            "enrolment or the agent restarted)");
    }
    const auto listening = listeners_on(input, input.spec.inbound_port);
    if (listening.empty()) {
        f.evidence.push_back(
            "no socket listens on port " + std::to_string(input.spec.inbound_port) +
            " in the pod netns now (at " + utc_text(input.collected_at_unix_ms) + ")");
    } else {
        f.evidence.push_back("the proxy listens now: " +
                             describe_socket(input, *listening.front()));
        if (const auto since = proxy_listener_since(input); since > 0) {
            f.evidence.push_back("proxy process started at " + utc_text(since));
            if (episode.stopped && since > t.listener_registered_first_unix_ms)
                f.evidence.back() += " (a new process: the one that listened before is gone)";
        }
    }
    const auto passthrough = counter(input, "inbound_startup_passthrough") +
                             counter(input, "outbound_startup_passthrough");
    if (passthrough > 0)
        f.evidence.push_back(std::to_string(passthrough) +
                             " connection(s) bypassed the mesh under the passthrough policy");
    // The present: ended when every side that refused has ended.
    std::int64_t ended = 0;
    bool ongoing = false;
    for (const auto& [span, out] : {std::pair{&inbound, false}, std::pair{&outbound, true}}) {
        if (span->count == 0) continue;
        const auto at = refusals_ended(*span, input, out);
        if (at == 0) ongoing = true;
        ended = std::max(ended, at);
    }
    if (!ongoing) {
        f.severity = Severity::kInfo;
        f.resolved_unix_ms = ended;
        f.cause = "Resolved at " + utc_ms_text(ended) +
                  (episode.stopped ? " (the proxy listens again, no refusal since): "
                                   : " (the proxy listens now, no refusal since): ") +
                  f.cause;
        f.data["resolved_unix_ms"] = ended;
    } else {
        f.severity = listening.empty() ? Severity::kCritical : Severity::kWarning;
    }
    f.fix = episode.stopped ? kStoppedFix : kStartupFix;
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
    // Where the foreign programs run relative to meshlane's: the advice differs.
    bool before = false, after = false, alone = false;
    for (const auto& p : *input.connect_programs) {
        if (p.ours) continue;
        std::size_t our_position = SIZE_MAX;
        for (const auto& q : *input.connect_programs)
            if (q.ours && q.attach_type == p.attach_type) our_position = q.position;
        std::string order;
        if (our_position == SIZE_MAX) {
            alone = true;
            order = "meshlane's is not attached";
        } else if (p.position < our_position) {
            before = true;
            order = "runs BEFORE meshlane's";
        } else {
            after = true;
            order = "runs after meshlane's";
        }
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
        "meshlane's (e.g. a CNI socket load balancer).";
    const auto proxy = "127.0.0.1:" + std::to_string(input.spec.outbound_port);
    if (before)
        f.cause +=
            " One runs BEFORE meshlane's: it can rewrite the destination first (a Service "
            "VIP already translated to one backend), so the proxy's SO_ORIGINAL_DST names "
            "that backend instead of the Service.";
    if (after)
        f.cause += " One runs after meshlane's: it sees the connect already redirected to " +
                   proxy +
                   "; it undoes the redirect only if it rewrites that address too (a socket "
                   "load balancer leaves addresses it does not serve alone).";
    if (alone) f.cause += " meshlane's own program is not in effect for this attach type.";
    f.fix =
        "Check which agent owns the program (`bpftool prog show id ID`, `bpftool cgroup "
        "tree`).";
    if (before)
        f.fix +=
            " For the one running before meshlane's: configure it to skip pods meshlane "
            "captures (e.g. Cilium: socketLB.hostNamespaceOnly=true), so meshlane sees the "
            "Service address.";
    if (after)
        f.fix +=
            " For the one running after meshlane's: the order is right; make sure it "
            "leaves " +
            proxy + " alone (`meshlane verify NAME` fails its outbound hop if it does not).";
    if (alone) f.fix += " Re-enroll the workload so meshlane's program is attached.";
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
    const auto direct = counter(input, "orig_dst_not_redirected");
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
    if (direct > 0)
        f.evidence.push_back(std::to_string(direct) + " connection(s) reached the outbound port " +
                             std::to_string(input.spec.outbound_port) +
                             " without a redirect: direct connects to the proxy port (counter "
                             "orig_dst_not_redirected; no record is expected for them)");
    if (lost > 0)
        f.evidence.push_back(std::to_string(lost) +
                             " redirected connection(s) established while the proxy's accept "
                             "did not find their record (counter orig_dst_tuple_lost)");
    f.evidence.push_back(std::to_string(counter(input, "orig_dst_answered")) +
                         " lookups answered (counter orig_dst_answered)");
    f.data["orig_dst_miss"] = static_cast<std::int64_t>(miss);
    f.data["orig_dst_tuple_lost"] = static_cast<std::int64_t>(lost);
    f.data["orig_dst_not_redirected"] = static_cast<std::int64_t>(direct);
    if (lost == 0) {
        f.cause +=
            " Every miss is a connection that was never redirected (a client or health "
            "check that connects to " +
            std::to_string(input.spec.outbound_port) + " directly): the datapath lost nothing.";
        f.fix = "Find the client that connects to 127.0.0.1:" +
                std::to_string(input.spec.outbound_port) +
                " directly (`nsenter --net=" + input.spec.netns_path +
                " ss -tnp dport = :" + std::to_string(input.spec.outbound_port) +
                "`) and point it at the real destination; or captured by something else (run "
                "`meshlane diagnose` for iptables / foreign programs).";
        return f;
    }
    f.fix =
        "Records were lost between the app's connect and the proxy's accept: check the agent "
        "log and `meshlane status` for map pressure (orig_dst_by_tuple), and run `meshlane "
        "verify NAME` to test the redirect path. Misses without loss come from connections "
        "that reached the proxy listener without a redirect (direct connects to 15001/15006, "
        "or traffic captured by something else).";
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

// `peer`: the workload whose netns the drop happened in, when not this one's.
std::string describe_drop(const DiagnosisInput& input, const DropRecord& d,
                          const std::string& peer = {}) {
    std::string text = d.ip_proto == 6 ? "tcp " : d.ip_proto == 17 ? "udp " : "";
    if (!d.source.empty())
        text += d.source + " -> " + d.destination;
    else
        text += "(headers not readable)";
    if (is_pod_address(input, d.destination))
        text += " (inbound to the pod)";
    else if (is_pod_address(input, d.source))
        text += " (outbound from the pod)";
    const std::string owner = peer.empty() ? "the pod" : "workload " + peer;
    return text + ", " + std::to_string(d.length) + " bytes, " +
           (d.attributed_by == "socket" ? "on a socket of " : "on a device in the netns of ") +
           owner + ", at " + utc_ms_text(d.unix_time_ns / 1'000'000);
}

// A NO_SOCKET drop in a peer that is that peer's own sk_lookup refusal (its proxy was not
// listening): dated inside the span its counter recorded.
bool is_peer_proxy_refusal(const PeerDrop& p) {
    const auto& r = p.refusals;
    const auto ms = p.drop.unix_time_ns / 1'000'000;
    return p.drop.reason_name == "NO_SOCKET" && r.inbound_refused > 0 && r.first_unix_ms > 0 &&
           ms + kListenSkewMs >= r.first_unix_ms && ms <= r.last_unix_ms + kListenSkewMs;
}

bool is_failed_connect(const ConnectionRecord& c) {
    if (is_verify_probe_endpoint(c.destination)) return false;
    return c.outcome == ConnectOutcome::kTimedOut ||
           (c.outcome == ConnectOutcome::kFailed && c.syn_retransmits > 0) ||
           (c.outcome == ConnectOutcome::kRefused && c.side != ConnectSide::kApp);
}

// A connect to the destination that succeeded after the last failure: the failure ended.
// The exact per-hop time of the last success (kernel counters) bounds it.
std::int64_t failures_ended(const DiagnosisInput& input, std::int64_t last_failure_ms) {
    if (!input.observed || last_failure_ms == 0) return 0;
    const auto ok = input.observed->upstream_side.established_last_unix_ns / 1'000'000;
    return ok > last_failure_ms ? ok : 0;
}

}  // namespace

std::optional<Finding> rule_peer_proxy_not_listening(const DiagnosisInput& input) {
    if (!input.observed) return std::nullopt;
    std::map<std::string, std::vector<const PeerDrop*>> by_peer;
    for (const auto& p : input.observed->peer_drops)
        if (is_peer_proxy_refusal(p)) by_peer[p.workload].push_back(&p);
    if (by_peer.empty()) return std::nullopt;
    Finding f;
    f.code = "peer_proxy_not_listening";
    std::string peers;
    std::int64_t last_refused = 0, peer_listened = 0;
    bool all_listen = true;
    for (const auto& [peer, drops] : by_peer) {
        const auto& r = drops.front()->refusals;
        peers += (peers.empty() ? "" : ", ") + peer;
        f.evidence.push_back(
            "workload " + peer + " refused " + std::to_string(r.inbound_refused) +
            " inbound connection(s) because its proxy was not listening on its inbound port " +
            std::to_string(r.inbound_port) +
            " (its counter inbound_refused_no_listener), first at " + utc_ms_text(r.first_unix_ms) +
            ", last at " + utc_ms_text(r.last_unix_ms) +
            (r.listener_registered_last_unix_ms > r.last_unix_ms
                 ? "; its proxy listens since " + utc_ms_text(r.listener_registered_last_unix_ms)
                 : "; its proxy has not listened since"));
        f.evidence.push_back("  e.g. " + describe_drop(input, drops.back()->drop, peer) +
                             " (NO_SOCKET: the RST its sk_lookup answered with)");
        f.data["peer_refused." + peer] = static_cast<std::int64_t>(r.inbound_refused);
        last_refused = std::max(last_refused, r.last_unix_ms);
        // Resolved only when every refusing peer listens again.
        if (r.listener_registered_last_unix_ms > r.last_unix_ms)
            peer_listened = std::max(peer_listened, r.listener_registered_last_unix_ms);
        else
            all_listen = false;
    }
    f.cause = "Connects of this workload were refused by " + peers +
              ": that workload's proxy was not listening on its inbound port (it started after "
              "its app, or stopped), so its kernel answered with a reset. Not a fault of this "
              "workload, and not of the server app itself.";
    f.fix = "Diagnose the server side: `meshlane diagnose " + by_peer.begin()->first +
            "` (finding connection_refused_proxy_not_listening or proxy_stopped_listening names "
            "the cause and its fix). Clients retry; nothing to change here.";
    if (all_listen && peer_listened > 0) {
        f.severity = Severity::kInfo;
        f.resolved_unix_ms = peer_listened;
        f.data["resolved_unix_ms"] = peer_listened;
        f.cause = "Resolved at " + utc_ms_text(peer_listened) + ": " + f.cause;
    } else {
        f.severity = Severity::kWarning;  // the peer's own diagnosis carries the critical
    }
    f.data["peer_refused_last_unix_ms"] = last_refused;
    return f;
}

std::optional<Finding> rule_kernel_drops(const DiagnosisInput& input) {
    if (!input.observed) return std::nullopt;
    const auto& observed = *input.observed;
    // Connects of this workload that failed in the window: what the drops break. verify's
    // probes (is_verify_probe_endpoint) never count.
    std::vector<const ConnectionRecord*> failed;
    std::set<std::string> failed_endpoints;
    for (const auto& c : observed.connects) {
        if (!is_failed_connect(c)) continue;
        failed.push_back(&c);
        failed_endpoints.insert(c.destination);
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
    // Likewise a peer's refusals belong to peer_proxy_not_listening.
    std::vector<const PeerDrop*> peer_drops;
    for (const auto& p : observed.peer_drops)
        if (!is_peer_proxy_refusal(p)) peer_drops.push_back(&p);
    if (groups.empty() && peer_drops.empty()) return std::nullopt;
    // The failed connects left once the peer refusals are set aside.
    std::set<std::string> peer_refused;
    for (const auto& p : observed.peer_drops)
        if (is_peer_proxy_refusal(p)) peer_refused.insert(p.drop.destination);
    if (!peer_refused.empty())
        failed.erase(std::remove_if(failed.begin(), failed.end(),
                                    [&](const ConnectionRecord* c) {
                                        return peer_refused.count(c->destination) != 0 &&
                                               c->outcome == ConnectOutcome::kRefused;
                                    }),
                     failed.end());

    Finding f;
    f.code = "kernel_dropped_packets";
    f.severity = failed.empty() ? Severity::kWarning : Severity::kCritical;
    std::string reasons;
    std::string top_reason;
    std::uint64_t top = 0;
    std::int64_t last_drop_ms = 0;
    for (const auto& [reason, g] : groups) {
        reasons += (reasons.empty() ? "" : ", ") + reason;
        if (g.count > top) top = g.count, top_reason = reason;
        last_drop_ms = std::max(last_drop_ms, g.last_ms);
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
    for (const auto* p : peer_drops) {
        ++peer_reasons[p->drop.reason_name];
        last_drop_ms = std::max(last_drop_ms, p->drop.unix_time_ns / 1'000'000);
        if (peer_reasons[p->drop.reason_name] <= 3)
            f.evidence.push_back("dropped in workload " + p->workload + " (netns " + p->netns +
                                 ") with reason " + p->drop.reason_name + ": " +
                                 describe_drop(input, p->drop, p->workload));
    }
    for (const auto& [reason, n] : peer_reasons) {
        if (reasons.find(reason) == std::string::npos)
            reasons += (reasons.empty() ? "" : ", ") + reason;
        f.data["peer_drops." + reason] = static_cast<std::int64_t>(n);
        if (n > top) top = n, top_reason = reason;
    }
    std::size_t timed_out = 0;
    std::int64_t last_failure_ms = 0;
    for (const auto* c : failed) {
        timed_out += c->outcome == ConnectOutcome::kTimedOut;
        last_failure_ms = std::max(last_failure_ms, c->unix_time_ns / 1'000'000);
    }
    if (!failed.empty()) {
        f.evidence.push_back(std::to_string(failed.size()) + " connect(s) from the pod failed in " +
                             "the window (" + std::to_string(timed_out) + " timed out); e.g. " +
                             describe_connect(*failed.back()) + ", " +
                             std::string(to_string(failed.back()->outcome)) + " after " +
                             std::to_string(failed.back()->syn_retransmits) + " SYN retransmit(s)");
        f.data["failed_connects"] = static_cast<std::int64_t>(failed.size());
    }
    f.cause = "The kernel dropped packets of this workload's connections (" + reasons +
              "): connects time out or are reset instead of reaching the peer.";
    std::string netns = input.spec.netns_path;
    if (!groups.count(top_reason))
        for (const auto* p : peer_drops)
            if (p->drop.reason_name == top_reason) netns = p->netns;
    f.fix = drop_reason_fix(top_reason, netns);
    if (groups.size() + peer_reasons.size() > 1)
        f.fix += " (Most frequent reason first; `meshlane drops --workload " + input.workload +
                 "` lists all.)";
    // The present: connects succeed again since the last failure and the last drop.
    if (!failed.empty()) {
        if (const auto ended = failures_ended(input, std::max(last_failure_ms, last_drop_ms));
            ended > 0) {
            f.severity = Severity::kInfo;
            f.resolved_unix_ms = std::max(last_failure_ms, last_drop_ms);
            f.data["resolved_unix_ms"] = f.resolved_unix_ms;
            f.data["succeeded_since_unix_ms"] = ended;
            f.cause = "Resolved: the last failure was at " + utc_ms_text(last_failure_ms) +
                      ", connects succeed again since (last at " + utc_ms_text(ended) + "). " +
                      f.cause;
        }
    }
    return f;
}

namespace {

std::string ms_text(std::uint64_t us) { return std::to_string((us + 500) / 1000) + " ms"; }

// Which hop measured the handshakes, for the evidence.
std::string tls_hop_text(const TlsDestination& d) {
    switch (d.hop) {
        case TlsHop::kApp:
            return "the app's own TLS through its proxy, on the wire";
        case TlsHop::kProxyUpstream:
            return "the proxy's upstream connection to another pod (sidecar mTLS), on the wire";
        case TlsHop::kInboundDelivery:
            return "this pod's inbound proxy passing a client's TLS to this pod's app (the app "
                   "is the server), on the wire";
        case TlsHop::kWire:
            return "the wire";
        case TlsHop::kLibssl:
            break;
    }
    return "libssl uprobes in the process (no address: a server-side handshake, or a client "
           "one the wire did not see)";
}

// What an alert means for a handshake where this pod is the SERVER (inbound delivery): the
// wire does not say which end sent it; the certificate alerts are normally the client's.
std::string tls_server_side_meaning(const TlsDestination& d) {
    if (d.last_failure_kind == "alert") {
        switch (d.last_alert_description) {
            case 48:
            case 45:
            case 44:
            case 42:
            case 43:
            case 46:
            case -1:
                return "a client of this workload aborted the handshake with its app, normally "
                       "because the client does not accept the app's certificate (" +
                       d.last_failure +
                       "); this pod rejected nothing itself. The client's own diagnosis names "
                       "the side that rejected";
            case 40:
            case 70:
            case 71:
                return "a client and this workload's app share no TLS version or cipher suite";
            default:
                return "a TLS alert ended the handshake between a client and this workload's app";
        }
    }
    return "a client's handshake with this workload's app did not complete (" +
           d.last_failure_kind + ")";
}

// What the last failure means, read from this side (the client of the handshake).
std::string tls_failure_meaning(const TlsDestination& d) {
    if (d.hop == TlsHop::kInboundDelivery) return tls_server_side_meaning(d);
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
    std::uint64_t failures = 0, slow = 0, client_failures = 0;
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
            // A failure where this pod is the client outranks one where it is the server.
            const bool client = d.hop != TlsHop::kInboundDelivery;
            client_failures += client ? d.failures : 0;
            if (worst_failing == nullptr ||
                (client && worst_failing->hop == TlsHop::kInboundDelivery) ||
                ((client == (worst_failing->hop != TlsHop::kInboundDelivery)) &&
                 d.failures > worst_failing->failures))
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
    // Critical only where this pod's own requests fail (it is the client); as the server it
    // rejected nothing, its clients carry the critical finding.
    f.severity = client_failures > 0 ? Severity::kCritical : Severity::kWarning;
    if (worst_failing != nullptr && worst_failing->hop == TlsHop::kInboundDelivery) {
        f.cause =
            "Clients' TLS handshakes with this workload's app failed: " + std::to_string(failures) +
            " handshake(s) in the window, seen where this pod's "
            "inbound proxy passes them to its app (" +
            join(failing_names) + "). Last failure: " + tls_failure_meaning(*worst_failing) + ".";
        f.fix =
            "Diagnose the client workloads (`meshlane diagnose CLIENT`: their side names who "
            "rejected whom) and check the certificate this app serves: `" +
            s_client_command(input, *worst_failing) +
            "` prints its chain; it must be signed by a CA the clients trust and name the "
            "host they ask for.";
    } else if (worst_failing != nullptr) {
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
    } else if (worst_slow->hop == TlsHop::kInboundDelivery) {
        f.cause =
            "Slow TLS handshakes with this workload's app (it is the server): clients' "
            "handshakes with " +
            join(slow_names) + " take longer than the " + threshold + " threshold (p50 " +
            ms_text(worst_slow->p50_us) + ", p99 " + ms_text(worst_slow->p99_us) +
            "), measured where this pod's inbound proxy "
            "passes them to its app.";
        f.fix =
            "The app's handshake is slow: check its CPU, certificate chain size, OCSP "
            "stapling, a slow SNI callback or key server; `time " +
            s_client_command(input, *worst_slow) +
            "` from the pod reproduces it. Clients reusing connections pay it less often.";
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

std::optional<ListenCounters> parse_listen_counters(std::string_view netstat) {
    // Two lines per group: "TcpExt: Name1 Name2 ..." then "TcpExt: value1 value2 ...".
    std::istringstream in{std::string(netstat)};
    std::string names, values;
    while (std::getline(in, names)) {
        if (names.rfind("TcpExt:", 0) != 0 || !std::getline(in, values)) continue;
        std::istringstream n(names), v(values);
        std::string name, value;
        ListenCounters counters;
        bool found = false;
        while (n >> name && v >> value) {
            if (name == "ListenOverflows")
                counters.listen_overflows = std::stoull(value), found = true;
            if (name == "ListenDrops") counters.listen_drops = std::stoull(value), found = true;
        }
        if (found) return counters;
    }
    return std::nullopt;
}

std::optional<Finding> rule_accept_queue_overflow(const DiagnosisInput& input) {
    if (!input.listen_counters || !input.listeners) return std::nullopt;
    const auto& c = *input.listen_counters;
    // ListenDrops alone also counts other refusals at a listener (bad cookies, no memory).
    if (c.listen_overflows == 0) return std::nullopt;
    Finding f;
    f.code = "accept_queue_overflow";
    std::vector<const ListenSocket*> full;
    bool proxy_full = false;
    for (const auto& s : *input.listeners) {
        if (s.backlog == 0 || s.accept_queue < s.backlog) continue;
        full.push_back(&s);
        proxy_full |= listener_is_proxys(input, s) && is_proxy_port(input, s.port);
    }
    f.evidence.push_back(std::to_string(c.listen_overflows) +
                         " SYN/ACK(s) dropped because an accept queue was full (TcpExt "
                         "ListenOverflows), " +
                         std::to_string(c.listen_drops) +
                         " drops at listeners in all (ListenDrops); counters of the pod netns "
                         "since it was created, read at " +
                         utc_text(input.collected_at_unix_ms));
    for (const auto* s : full)
        f.evidence.push_back("accept queue FULL now: " + std::to_string(s->accept_queue) + " of " +
                             std::to_string(s->backlog) + " waiting for accept() on " +
                             describe_socket(input, *s));
    f.data["listen_overflows"] = static_cast<std::int64_t>(c.listen_overflows);
    f.data["listen_drops"] = static_cast<std::int64_t>(c.listen_drops);
    f.data["full_listeners"] = static_cast<std::int64_t>(full.size());
    const std::string who = full.empty() ? "a listener in the pod"
                            : proxy_full ? "the proxy's listener"
                                         : "the app's listener";
    f.cause = "Connections were dropped at " + who +
              " because its accept queue was full: the process does not accept() as fast as "
              "connections arrive (overloaded, blocked, or a small listen backlog). Clients see "
              "SYN retransmits and connect timeouts (Envoy: 503 UF \"connection timeout\", or "
              "UC when the handshake's last ACK was dropped).";
    if (full.empty()) {
        // The counters have no time: no queue is full now, so it is not happening now.
        f.severity = Severity::kWarning;
        f.cause += " No accept queue is full now.";
    } else {
        f.severity = Severity::kCritical;
    }
    f.fix = proxy_full ? "The sidecar is overloaded: raise its CPU (Envoy --concurrency, "
                         "sidecar.istio.io/proxyCPU), and its listener backlog / "
                         "net.core.somaxconn in the pod; scale the workload out."
                       : "Make the server accept faster: more worker threads/processes, a "
                         "larger listen() backlog (and net.core.somaxconn, per netns), or scale "
                         "out. Watch it with `nsenter --net=" +
                             input.spec.netns_path + " ss -ltn` (Recv-Q = queue, Send-Q = limit).";
    return f;
}

std::optional<std::uint64_t> parse_time_wait(std::string_view sockstat) {
    // "TCP: inuse 5 orphan 0 tw 12 alloc 9 mem 1"
    std::istringstream in{std::string(sockstat)};
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("TCP:", 0) != 0) continue;
        std::istringstream fields(line.substr(4));
        std::string name, value;
        while (fields >> name >> value)
            if (name == "tw") return std::stoull(value);
    }
    return std::nullopt;
}

std::optional<Finding> rule_port_exhaustion(const DiagnosisInput& input) {
    if (!input.observed) return std::nullopt;
    const auto& app = input.observed->app_side;
    const auto& upstream = input.observed->upstream_side;
    if (app.no_local_port == 0 && upstream.no_local_port == 0) return std::nullopt;
    Finding f;
    f.code = "ephemeral_port_exhaustion";
    const std::pair<const ConnectSideTotals*, const char*> sides[] = {
        {&upstream, "by the proxy to its upstreams (and other connects leaving the pod)"},
        {&app, "by the app to the proxy's outbound port"}};
    std::int64_t last = 0, ok_after = 0;
    bool ongoing = false;
    for (const auto& [side, what] : sides) {
        if (side->no_local_port == 0) continue;
        const auto side_last = side->no_local_port_last_unix_ns / 1'000'000;
        const auto side_ok = side->established_last_unix_ns / 1'000'000;
        f.evidence.push_back(std::to_string(side->no_local_port) + " connect(s) " + what +
                             " failed with EADDRNOTAVAIL (no free local port; kernel counters, "
                             "since enrolment), last at " +
                             utc_ms_text(side_last));
        last = std::max(last, side_last);
        if (side_ok > side_last)
            ok_after = std::max(ok_after, side_ok);
        else
            ongoing = true;
    }
    std::size_t examples = 0;
    for (const auto& c : input.observed->connects)
        if (c.error == EADDRNOTAVAIL && examples++ < 3)
            f.evidence.push_back("e.g. connect to " + c.destination +
                                 (c.pid != 0
                                      ? " by pid " + std::to_string(c.pid) + " (" + c.comm + ")"
                                      : std::string()) +
                                 " at " + utc_ms_text(c.unix_time_ns / 1'000'000));
    if (!input.local_port_range.empty())
        f.evidence.push_back("net.ipv4.ip_local_port_range in the pod netns: " +
                             input.local_port_range);
    if (input.time_wait)
        f.evidence.push_back(
            std::to_string(*input.time_wait) +
            " TCP socket(s) in TIME_WAIT in the pod netns now (/proc/net/sockstat)");
    f.data["no_local_port.upstream"] = static_cast<std::int64_t>(upstream.no_local_port);
    f.data["no_local_port.app"] = static_cast<std::int64_t>(app.no_local_port);
    if (input.time_wait) f.data["time_wait"] = static_cast<std::int64_t>(*input.time_wait);
    f.cause =
        "Ephemeral port exhaustion: connects failed because no local port was free "
        "(EADDRNOTAVAIL, \"Cannot assign requested address\"): too many connections to "
        "the same destination are open or in TIME_WAIT for the pod's local port range. "
        "Envoy answers 503 UF (\"upstream connect error ... Cannot assign requested "
        "address\").";
    f.fix =
        "Reuse connections instead of opening one per request (HTTP keep-alive; Istio "
        "DestinationRule connectionPool: do not set maxRequestsPerConnection: 1); widen "
        "net.ipv4.ip_local_port_range in the pod (a namespaced sysctl: pod "
        "securityContext.sysctls) and allow net.ipv4.tcp_tw_reuse=1 for outgoing "
        "connections.";
    f.data["no_local_port_last_unix_ms"] = last;
    if (!ongoing) {
        f.severity = Severity::kInfo;
        f.resolved_unix_ms = last;
        f.data["resolved_unix_ms"] = last;
        f.cause = "Resolved: the last failure was at " + utc_ms_text(last) +
                  ", connects succeed again since (last at " + utc_ms_text(ok_after) + "). " +
                  f.cause;
    } else {
        f.severity = Severity::kCritical;
    }
    return f;
}

std::optional<ConntrackStats> parse_conntrack_stat(std::string_view text) {
    std::istringstream in{std::string(text)};
    std::string header;
    if (!std::getline(in, header) || header.rfind("entries", 0) != 0) return std::nullopt;
    std::vector<std::string> names;
    std::istringstream h(header);
    for (std::string name; h >> name;) names.push_back(name);
    ConntrackStats stats;
    for (std::string line; std::getline(in, line);) {
        std::istringstream fields(line);
        std::string value;
        for (std::size_t i = 0; i < names.size() && fields >> value; ++i) {
            const auto n = std::strtoull(value.c_str(), nullptr, 16);
            if (names[i] == "drop") stats.drop += n;
            if (names[i] == "early_drop") stats.early_drop += n;
            if (names[i] == "insert_failed") stats.insert_failed += n;
        }
    }
    return stats;
}

std::optional<Finding> rule_conntrack_full(const DiagnosisInput& input) {
    if (!input.conntrack) return std::nullopt;
    const auto& ct = *input.conntrack;
    if (ct.drop == 0 && ct.early_drop == 0) return std::nullopt;
    Finding f;
    f.code = "conntrack_table_full";
    const bool full_now = ct.max > 0 && ct.count * 100 >= ct.max * 95;
    f.severity = full_now ? Severity::kCritical : Severity::kWarning;
    f.evidence.push_back(std::to_string(ct.drop) +
                         " packet(s) dropped because no conntrack entry could be made, " +
                         std::to_string(ct.early_drop) +
                         " entries evicted early to make room (/proc/net/stat/nf_conntrack of "
                         "the pod netns, since it was created)");
    f.evidence.push_back("conntrack entries in the pod netns now: " + std::to_string(ct.count) +
                         " (nf_conntrack_count); table limit nf_conntrack_max " +
                         std::to_string(ct.max) + " (node-wide on this kernel)");
    std::size_t nat_rules = 0;
    for (const auto* text : {&input.nat_v4, &input.nat_v6}) {
        if (!*text) continue;
        std::istringstream in(**text);
        for (std::string line; std::getline(in, line);) nat_rules += line.rfind("-A ", 0) == 0;
    }
    if (nat_rules > 0)
        f.evidence.push_back(std::to_string(nat_rules) +
                             " iptables nat rule(s) in the pod netns: its connections are "
                             "tracked (an iptables-based component is still present)");
    f.data["conntrack_drop"] = static_cast<std::int64_t>(ct.drop);
    f.data["conntrack_early_drop"] = static_cast<std::int64_t>(ct.early_drop);
    f.data["conntrack_count"] = static_cast<std::int64_t>(ct.count);
    f.data["conntrack_max"] = static_cast<std::int64_t>(ct.max);
    f.cause =
        "The connection-tracking table was full: the kernel dropped new connections' "
        "packets (\"nf_conntrack: table full, dropping packet\" in the node's kernel "
        "log); clients see connect timeouts and 503 UF. meshlane's datapath needs no "
        "conntrack — iptables rules (istio-init leftovers, kube-proxy, a CNI) do." +
        std::string(full_now ? "" : " The table is not full now.");
    f.fix =
        "Raise net.netfilter.nf_conntrack_max on the node (and nf_conntrack_buckets), "
        "shorten nf_conntrack_tcp_timeout_time_wait / _established, or remove the "
        "iptables rules that track this pod's traffic (`nsenter --net=" +
        input.spec.netns_path +
        " iptables-save`); check `conntrack -S` / `journalctl -k | grep conntrack`.";
    return f;
}

std::vector<Finding> diagnose(const DiagnosisInput& input) {
    std::vector<Finding> findings;
    using Rule = std::optional<Finding> (*)(const DiagnosisInput&);
    const Rule rules[] = {
        rule_refused_before_listen, rule_no_inbound_listener, rule_proxy_wrong_uid,
        rule_app_runs_as_proxy_uid, rule_iptables_chains,     rule_foreign_connect_program,
        rule_orig_dst_unanswered,   rule_app_port_excluded,   rule_proxy_port_included,
        rule_kernel_drops,          rule_tls_handshakes,      rule_peer_proxy_not_listening,
        rule_accept_queue_overflow, rule_port_exhaustion,     rule_conntrack_full};
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
                        {"status", finding.resolved() ? "resolved" : "active"},
                        {"resolved_at_unix_ms", finding.resolved_unix_ms},
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
