#include "agent/observe/tls_aggregate.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <tuple>

#include "agent/observe/endpoint_text.h"
#include "agent/observe/workload_table.h"

namespace meshlane {

namespace {

constexpr std::size_t kRecordBytes = sizeof(TlsHandshakeRecord) + 6 * 32;  // + short strings
constexpr std::size_t kDestinationBytes = sizeof(TlsDestinationStats) + 64 + 2 * 32 + 48;
constexpr std::size_t kWorkloadBytes = 512;
// A workload's destination table keeps up to this many buckets whatever its size.
constexpr std::size_t kSmallBuckets = 16;

const char* outcome_name(unsigned outcome) {
    switch (outcome) {
        case MESHLANE_TLS_OK:
            return "ok";
        case MESHLANE_TLS_ALERT:
            return "alert";
        case MESHLANE_TLS_RESET:
            return "reset";
        case MESHLANE_TLS_CLOSED:
            return "closed";
        default:
            return "error";
    }
}

const char* alert_name(int description) {
    switch (description) {
        case 0:
            return "close_notify";
        case 10:
            return "unexpected_message";
        case 20:
            return "bad_record_mac";
        case 40:
            return "handshake_failure";
        case 42:
            return "bad_certificate";
        case 43:
            return "unsupported_certificate";
        case 44:
            return "certificate_revoked";
        case 45:
            return "certificate_expired";
        case 46:
            return "certificate_unknown";
        case 47:
            return "illegal_parameter";
        case 48:
            return "unknown_ca";
        case 49:
            return "access_denied";
        case 50:
            return "decode_error";
        case 51:
            return "decrypt_error";
        case 70:
            return "protocol_version";
        case 71:
            return "insufficient_security";
        case 80:
            return "internal_error";
        case 86:
            return "inappropriate_fallback";
        case 90:
            return "user_canceled";
        case 109:
            return "missing_extension";
        case 110:
            return "unsupported_extension";
        case 112:
            return "unrecognized_name";
        case 116:
            return "certificate_required";
        case 120:
            return "no_application_protocol";
        default:
            return nullptr;
    }
}

std::string failure_reason(const TlsHandshakeRecord& r) {
    if (r.outcome == "alert") return tls_alert_text(r.alert_level, r.alert_description);
    if (r.outcome == "error") return "libssl error (return " + std::to_string(r.error) + ")";
    if (r.outcome == "reset") return "connection reset mid-handshake";
    if (r.outcome == "closed") return "connection closed mid-handshake";
    return r.outcome;
}

TlsHandshakeRecord decode(const tls_handshake_event& e, std::int64_t unix_time_ns) {
    TlsHandshakeRecord r;
    r.unix_time_ns = unix_time_ns;
    r.latency_ns = e.latency_ns;
    r.source = e.source == MESHLANE_TLS_SOURCE_LIBSSL ? "libssl" : "wire";
    r.side = e.side == MESHLANE_SIDE_APP ? "app" : "upstream";
    r.outcome = outcome_name(e.outcome);
    r.version = tls_version_name(e.version);
    const std::size_t sni_len = std::min<std::size_t>(e.sni_len, MESHLANE_TLS_SNI_LEN);
    r.sni.assign(reinterpret_cast<const char*>(e.sni), sni_len);
    // Bytes from the wire: keep the name printable.
    for (auto& c : r.sni)
        if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
    r.comm.assign(reinterpret_cast<const char*>(e.comm),
                  strnlen(reinterpret_cast<const char*>(e.comm), sizeof(e.comm)));
    r.local = endpoint_text(e.saddr, e.sport);
    r.peer = endpoint_text(e.daddr, e.dport);
    if (e.orig_dport) r.original_destination = endpoint_text(e.orig_daddr, e.orig_dport);
    r.destination = !r.sni.empty()                    ? r.sni
                    : !r.original_destination.empty() ? r.original_destination
                    : !r.peer.empty()                 ? r.peer
                    : !r.comm.empty()                 ? "process " + r.comm
                                                      : "unknown";
    if (e.outcome == MESHLANE_TLS_ALERT) {
        r.alert_level = e.alert_level;
        r.alert_description = e.alert_level ? e.alert_description : -1;
    }
    r.error = e.error;
    r.libssl_calls = e.libssl_calls;
    r.pid = e.pid;
    return r;
}

}  // namespace

std::string tls_version_name(std::uint16_t version) {
    switch (version) {
        case 0x0304:
            return "TLS1.3";
        case 0x0303:
            return "TLS1.2";
        case 0x0302:
            return "TLS1.1";
        case 0x0301:
            return "TLS1.0";
        case 0x0300:
            return "SSL3.0";
        case 0:
            return "";
        default: {
            char text[16];
            std::snprintf(text, sizeof(text), "0x%04x", version);
            return text;
        }
    }
}

std::string tls_alert_text(int level, int description) {
    if (level == 0 || description < 0) return "alert (encrypted)";
    std::string text = std::string("alert ") + (level == 2 ? "fatal" : "warning") + " " +
                       std::to_string(description);
    if (const char* name = alert_name(description)) text += std::string(" (") + name + ")";
    return text;
}

std::vector<TlsDestinationStats> failing_or_slow(const WorkloadTls& tls,
                                                 std::chrono::microseconds slow) {
    std::vector<TlsDestinationStats> out;
    for (const auto& d : tls.destinations)
        if (d.failures > 0 || (d.handshakes > 0 && d.p99_us() >= static_cast<double>(slow.count())))
            out.push_back(d);
    return out;
}

void TlsAggregate::apply_snapshot(const std::vector<TlsWorkloadTotals>& snapshot) {
    apply_totals_snapshot(workloads_, limits_.max_workloads, snapshot,
                          [this](const Workload& gone) {
                              stored_events_ -= gone.recent.size();
                              destinations_total_ -= gone.destinations.size();
                          });
}

TlsAggregate::Workload* TlsAggregate::entry(std::uint64_t cookie, std::uint32_t id) {
    return workload_entry(workloads_, limits_.max_workloads, cookie, id);
}

void TlsAggregate::add_event(const tls_handshake_event& event, std::int64_t unix_time_ns) {
    Workload* workload = entry(event.netns_cookie, event.workload_id);
    if (!workload) {
        ++evicted_;
        return;
    }
    TlsHandshakeRecord record = decode(event, unix_time_ns);

    const std::string key = record.source + '\0' + record.destination;
    auto it = workload->destinations.find(key);
    if (it == workload->destinations.end()) {
        if (workload->destinations.size() >= limits_.max_destinations) {
            evict_oldest_destination(*workload);
        } else if (destinations_total_ >= limits_.max_destinations_total) {
            // Global cap: take from the workload holding the most (possibly this one).
            Workload* largest = workload;
            for (auto& [cookie, other] : workloads_)
                if (other.destinations.size() > largest->destinations.size()) largest = &other;
            evict_oldest_destination(*largest);
        }
        if (limits_.max_destinations == 0 || limits_.max_destinations_total == 0) {
            ++destinations_evicted_;
            return;
        }
        it = workload->destinations.emplace(key, Destination{}).first;
        ++destinations_total_;
        it->second.stats.destination = record.destination;
        it->second.stats.source = record.source;
    }
    Destination& destination = it->second;
    destination.last_touch = ++touch_;
    auto& stats = destination.stats;
    stats.last_seen_unix_ns = unix_time_ns;
    if (!record.version.empty()) stats.last_version = record.version;
    if (record.outcome == "ok") {
        ++stats.handshakes;
        const std::uint64_t us = record.latency_ns / 1000;
        stats.latency.add(us);
        stats.latency_sum_us += us;
    } else {
        ++stats.failures;
        stats.last_failure_unix_ns = unix_time_ns;
        stats.last_failure_reason = failure_reason(record);
    }

    workload->recent.push_back(std::move(record));
    ++stored_events_;
    if (workload->recent.size() > limits_.events_per_workload) {
        workload->recent.pop_front();
        --stored_events_;
        ++evicted_;
    }
    enforce_total();
}

void TlsAggregate::evict_oldest_destination(Workload& workload) {
    if (workload.destinations.empty()) return;
    auto oldest = std::min_element(
        workload.destinations.begin(), workload.destinations.end(),
        [](const auto& a, const auto& b) { return a.second.last_touch < b.second.last_touch; });
    workload.destinations.erase(oldest);
    // Buckets do not shrink by themselves: keep them within 4x the entries (the memory bound).
    const std::size_t buckets = workload.destinations.bucket_count();
    if (buckets > kSmallBuckets && buckets > 4 * (workload.destinations.size() + 1))
        workload.destinations.rehash(0);
    --destinations_total_;
    ++destinations_evicted_;
}

void TlsAggregate::enforce_total() {
    while (stored_events_ > limits_.events_total) {
        Workload* largest = nullptr;
        for (auto& [cookie, workload] : workloads_)
            if (!largest || workload.recent.size() > largest->recent.size()) largest = &workload;
        if (!largest || largest->recent.empty()) return;
        largest->recent.pop_front();
        --stored_events_;
        ++evicted_;
    }
}

WorkloadTls TlsAggregate::view(std::uint32_t workload_id, std::uint64_t netns_cookie) const {
    WorkloadTls view;
    view.workload_id = workload_id;
    view.netns_cookie = netns_cookie;
    auto it = workloads_.find(netns_cookie);
    if (it == workloads_.end()) return view;
    view.sources = it->second.totals.sources;
    for (const auto& [key, destination] : it->second.destinations)
        view.destinations.push_back(destination.stats);
    std::sort(view.destinations.begin(), view.destinations.end(), [](const auto& a, const auto& b) {
        return std::tie(a.destination, a.source) < std::tie(b.destination, b.source);
    });
    view.recent.assign(it->second.recent.begin(), it->second.recent.end());
    return view;
}

std::size_t TlsAggregate::memory_bytes() const {
    std::size_t bytes = sizeof(*this) + workloads_.bucket_count() * sizeof(void*);
    for (const auto& [cookie, workload] : workloads_)
        bytes += kWorkloadBytes + workload.destinations.size() * kDestinationBytes +
                 workload.destinations.bucket_count() * sizeof(void*);
    return bytes + stored_events_ * kRecordBytes;
}

std::size_t TlsAggregate::destinations_limit() const {
    return std::min(limits_.max_destinations_total,
                    limits_.max_workloads * limits_.max_destinations);
}

std::size_t TlsAggregate::memory_limit_bytes() const {
    // Per destination: the node and its stats, plus a bucket pointer of its workload's table.
    return sizeof(*this) +
           limits_.max_workloads * (kWorkloadBytes + (2 + kSmallBuckets) * sizeof(void*)) +
           destinations_limit() * (kDestinationBytes + 4 * sizeof(void*)) +
           limits_.events_total * kRecordBytes;
}

}  // namespace meshlane
