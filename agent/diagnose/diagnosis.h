// Diagnose: name the cause of an interception failure. The rules are pure functions of a
// DiagnosisInput snapshot (unit-tested without root); collector.h builds the snapshot from the
// kernel and /proc. Each Finding says the cause first, then the evidence (counts, tuples, pids,
// times), then the fix an operator applies.
#pragma once

#include <sys/types.h>

#include <boost/json/object.hpp>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/model/workload_spec.h"
#include "agent/observe/observation_source.h"

namespace meshlane::diagnose {

enum class Severity { kCritical, kWarning, kInfo };
std::string_view to_string(Severity severity);

struct Finding {
    Severity severity = Severity::kWarning;
    std::string code;  // stable, e.g. "proxy_not_listening_refused"
    std::string cause;
    std::vector<std::string> evidence;
    std::string fix;
    // The evidence's numbers for tools (counts, unix ms times), e.g. "inbound_refused": 3.
    std::map<std::string, std::int64_t> data;
    // Findings describe the present: a problem that stopped inside the window (the proxy
    // listens again, connects succeed since) is reported as resolved, severity info, with the
    // time it ended, instead of staying critical for the rest of the window. 0: ongoing.
    std::int64_t resolved_unix_ms = 0;
    bool resolved() const { return resolved_unix_ms != 0; }
};

// A process in the pod's netns or cgroup.
struct ProcessInfo {
    pid_t pid = 0;
    std::uint32_t uid = 0;  // effective
    std::uint32_t gid = 0;
    std::string comm;
    std::string cgroup;          // relative to the cgroup2 mount, "/a/b"
    bool in_pod_cgroup = false;  // the pod cgroup or below
    bool in_netns = false;
    std::int64_t started_unix_ms = 0;
};

// A TCP LISTEN socket in the pod's netns (sock_diag from inside, agent/common/tcp_listeners.h).
struct ListenSocket {
    std::string local;  // "127.0.0.1:15001", "[::]:15006"
    std::uint16_t port = 0;
    bool ipv6 = false;
    std::uint32_t uid = 0;  // socket owner uid
    std::uint64_t inode = 0;
    std::vector<pid_t> pids;         // processes holding it (fd links)
    std::uint32_t accept_queue = 0;  // connections waiting for accept() now
    std::uint32_t backlog = 0;       // the accept queue's limit (listen() backlog)
};

// Connection tracking in the pod's netns: entries now (nf_conntrack_count, per netns), the
// table limit (nf_conntrack_max, node-wide on this kernel) and the per-netns statistics of
// /proc/net/stat/nf_conntrack summed over CPUs: packets dropped because a new entry could not
// be made (table full: "nf_conntrack: table full, dropping packet").
struct ConntrackStats {
    std::uint64_t count = 0;
    std::uint64_t max = 0;
    std::uint64_t drop = 0;
    std::uint64_t early_drop = 0;
    std::uint64_t insert_failed = 0;
};

// TcpExt counters of the pod's netns (/proc/net/netstat read inside it): per netns, since it
// was created. ListenOverflows: a SYN or the handshake's last ACK dropped because a listener's
// accept queue was full; ListenDrops: every drop at a listener, overflows included.
struct ListenCounters {
    std::uint64_t listen_overflows = 0;
    std::uint64_t listen_drops = 0;
};

// A cgroup connect4/connect6 program in effect for the pod cgroup.
struct ConnectProgram {
    std::string attach_type;  // "connect4" / "connect6"
    std::uint32_t prog_id = 0;
    std::string name;
    std::size_t position = 0;  // index in the kernel's effective (execution) order
    bool ours = false;
    std::string attached_at;  // cgroup path it is attached to directly, when found
};

// Startup events dated by the redirect datapath itself (unix ms; 0: never).
struct StartupTimes {
    std::int64_t inbound_refused_first_unix_ms = 0;
    std::int64_t inbound_refused_last_unix_ms = 0;
    std::int64_t listener_registered_first_unix_ms = 0;
    std::int64_t listener_registered_last_unix_ms = 0;
};

// The peer workload's own record of refusing inbound connections because its proxy was not
// listening (sk_lookup found no listener: it sends the RST, the kernel counts NO_SOCKET).
struct PeerRefusals {
    std::uint64_t inbound_refused = 0;  // exact, counter inbound_refused_no_listener
    std::int64_t first_unix_ms = 0;
    std::int64_t last_unix_ms = 0;
    std::int64_t listener_registered_last_unix_ms = 0;
    std::uint16_t inbound_port = 0;
};

// A drop seen in ANOTHER enrolled workload that matches a connect of this one that failed.
struct PeerDrop {
    std::string workload;
    std::string netns;
    DropRecord drop;
    PeerRefusals refusals;
};

// What the observer (agent/observe) saw for the workload: exact totals since enrolment and the
// sampled recent events inside the diagnosis window.
struct ObservedTraffic {
    std::uint64_t app_refused_total = 0;  // app connects redirected to the proxy and refused
    // Exact totals and outcome times per hop (kernel counters, not the bounded event ring).
    ConnectSideTotals app_side;
    ConnectSideTotals upstream_side;
    std::vector<ConnectionRecord> connects;        // failed or slow connects, in the window
    std::vector<DropReasonCount> drops_by_reason;  // exact, since enrolment
    std::vector<DropRecord> drops;                 // sampled, in the window
    std::vector<PeerDrop> peer_drops;
};

// Where a TLS handshake was measured. The wire observer sees every TCP connection of the pod
// cgroup; which party the pod is depends on the hop.
enum class TlsHop {
    kApp,              // the app's own TLS, app -> its outbound proxy: the app is the client
    kProxyUpstream,    // the proxy's connection to another pod (sidecar mTLS, or pass-through)
    kInboundDelivery,  // the inbound proxy passing a client's TLS to this pod's own app: the
                       // app is the SERVER, the client is another workload
    kWire,             // wire stats without the side (older than the recent-event ring)
    kLibssl,           // libssl uprobes in a process of the pod
};
std::string_view to_string(TlsHop hop);

// TLS handshakes of the workload to one destination, in the diagnosis window, as measured on
// one hop (the one that saw the most: the app's own TLS and a pass-through proxy's upstream
// connection carry the same handshake).
struct TlsDestination {
    std::string destination;  // "10.1.2.3:443" or the SNI
    std::string sni;
    std::uint64_t handshakes = 0;  // attempts: completed + failed
    std::uint64_t failures = 0;
    std::uint64_t slow = 0;  // completed, at least the threshold
    std::uint64_t p99_us = 0;
    std::uint64_t max_us = 0;
    std::string last_failure;  // reason text: "alert fatal 48 (unknown_ca)", "reset", ...
    std::int64_t last_failure_unix_ms = 0;
    std::uint64_t p50_us = 0;
    std::int64_t first_failure_unix_ms = 0;
    std::string last_failure_kind;    // "alert" | "reset" | "closed" | "error"
    int last_alert_description = -1;  // RFC 8446 AlertDescription; -1: none or encrypted
    std::map<std::string, std::uint64_t> failures_by_kind;  // kind -> count
    std::string address;  // "10.1.2.3:8080": where the handshakes went (for s_client)
    TlsHop hop = TlsHop::kWire;
};

struct TlsObservation {
    std::uint64_t threshold_ms = 0;
    std::vector<TlsDestination> destinations;
};

struct DiagnosisInput {
    std::string workload;
    WorkloadSpec spec;
    std::map<std::string, std::uint64_t> counters;
    bool inbound_listener_registered = false;
    std::int64_t collected_at_unix_ms = 0;
    std::int64_t window_start_unix_ms = 0;  // observations older than this are not considered
    std::vector<std::string> pod_addresses;
    StartupTimes startup;
    std::optional<ObservedTraffic> observed;  // nullopt: the observer is not running
    std::optional<TlsObservation> tls;        // nullopt: TLS observation not available

    std::vector<ProcessInfo> processes;
    std::optional<std::vector<ListenSocket>> listeners;  // nullopt: could not be read
    std::optional<ListenCounters> listen_counters;       // nullopt: could not be read
    // net.ipv4.ip_local_port_range of the pod netns ("32768 60999") and its TIME_WAIT sockets
    // (/proc/net/sockstat "tw"), read inside it; empty / nullopt: not read.
    std::string local_port_range;
    std::optional<std::uint64_t> time_wait;
    std::optional<ConntrackStats> conntrack;  // nullopt: conntrack not loaded in the netns
    // `iptables-save -t nat` / `ip6tables-save -t nat` inside the netns; nullopt: not checked.
    std::optional<std::string> nat_v4;
    std::optional<std::string> nat_v6;
    std::optional<std::vector<ConnectProgram>> connect_programs;  // nullopt: query failed
    // What could not be collected: each becomes an info finding, so a missing check is visible.
    std::vector<std::string> collection_errors;
};

std::vector<Finding> diagnose(const DiagnosisInput& input);

// Individual rules (each returns 0 or 1 finding); diagnose() runs them all.
std::optional<Finding> rule_refused_before_listen(const DiagnosisInput& input);
std::optional<Finding> rule_proxy_wrong_uid(const DiagnosisInput& input);
std::optional<Finding> rule_app_runs_as_proxy_uid(const DiagnosisInput& input);
std::optional<Finding> rule_iptables_chains(const DiagnosisInput& input);
std::optional<Finding> rule_foreign_connect_program(const DiagnosisInput& input);
std::optional<Finding> rule_no_inbound_listener(const DiagnosisInput& input);
std::optional<Finding> rule_orig_dst_unanswered(const DiagnosisInput& input);
std::optional<Finding> rule_app_port_excluded(const DiagnosisInput& input);
std::optional<Finding> rule_proxy_port_included(const DiagnosisInput& input);
std::optional<Finding> rule_kernel_drops(const DiagnosisInput& input);
std::optional<Finding> rule_tls_handshakes(const DiagnosisInput& input);
// Connects of this workload refused by a peer workload whose proxy was not listening.
std::optional<Finding> rule_peer_proxy_not_listening(const DiagnosisInput& input);
// A listener's accept queue overflowed (ListenOverflows): an overloaded proxy or app.
std::optional<Finding> rule_accept_queue_overflow(const DiagnosisInput& input);
// Connects that failed for want of a free local port (EADDRNOTAVAIL).
std::optional<Finding> rule_port_exhaustion(const DiagnosisInput& input);
// The conntrack table dropped packets of the pod (table full) while iptables is in use.
std::optional<Finding> rule_conntrack_full(const DiagnosisInput& input);
// /proc/net/stat/nf_conntrack (a header line, then one line of hex counters per CPU) summed
// into drop / early_drop / insert_failed; nullopt: not that format.
std::optional<ConntrackStats> parse_conntrack_stat(std::string_view text);
// "tw N" from a /proc/net/sockstat text; nullopt: not found.
std::optional<std::uint64_t> parse_time_wait(std::string_view sockstat);
// TcpExt ListenOverflows / ListenDrops from a /proc/net/netstat text; nullopt: not found.
std::optional<ListenCounters> parse_listen_counters(std::string_view netstat);

// The operator's next step for a kfree_skb reason ("NETFILTER_DROP"), naming the netns.
std::string drop_reason_fix(std::string_view reason, const std::string& netns);
// verify's probe endpoints ("192.0.2.1:15002": TEST-NET-1; "255.255.255.255:15002"): never a
// real peer, never a finding.
bool is_verify_probe_endpoint(std::string_view endpoint);
// Reasons that are deliberate policy (a rule or program chose to drop), reported on their own.
bool is_policy_drop_reason(std::string_view reason);

// ISTIO_* chain names found in an iptables-save text.
std::vector<std::string> istio_chains(std::string_view iptables_save);

bool has_critical(const std::vector<Finding>& findings);
boost::json::object to_json(const Finding& finding);
boost::json::object to_json(const DiagnosisInput& input, const std::vector<Finding>& findings);

}  // namespace meshlane::diagnose
