#include "agent/observe/observer.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "agent/events/event_bus.h"
#include "agent/loader/bpf_skeleton.h"
#include "agent/observe/drop_reasons.h"
#include "agent/observe/endpoint_text.h"
#include "agent/observe/map_fill.h"
#include "agent/observe/observe_json.h"
#include "agent/observe/tls_observer.h"
#include "observe_connect.skel.h"
#include "observe_drops.skel.h"

namespace meshlane {

namespace {

// Every enrol/unenrol/removal already asks for a reconcile (sync_attachments); the periodic
// one is a safety net. It lists the workloads, which queries the kernel per workload (programs,
// counters): cost that grows with the workloads, so not every second.
constexpr auto kTlsReconcileInterval = std::chrono::seconds(10);

constexpr const char* kLossNames[MESHLANE_LOSS_MAX] = {
    "ringbuf_full",
    "rate_limited",
    "count_map_full",
    "no_connect_state",
};

struct LinkDeleter {
    void operator()(bpf_link* link) const { bpf_link__destroy(link); }
};
using LinkPtr = std::unique_ptr<bpf_link, LinkDeleter>;

struct RingBufferDeleter {
    void operator()(ring_buffer* rb) const { ring_buffer__free(rb); }
};

std::int64_t clock_ns(clockid_t clock) {
    timespec ts{};
    ::clock_gettime(clock, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

ConnectSide side_of(unsigned side) {
    return side == MESHLANE_SIDE_APP ? ConnectSide::kApp : ConnectSide::kUpstream;
}

ConnectOutcome outcome_of(unsigned outcome) {
    switch (outcome) {
        case MESHLANE_CONNECT_ESTABLISHED:
            return ConnectOutcome::kEstablished;
        case MESHLANE_CONNECT_REFUSED:
            return ConnectOutcome::kRefused;
        case MESHLANE_CONNECT_TIMED_OUT:
            return ConnectOutcome::kTimedOut;
        default:
            return ConnectOutcome::kFailed;
    }
}

ConnectSideTotals side_totals(const connect_stats& stats, std::int64_t realtime_offset_ns) {
    const auto unix_ns = [realtime_offset_ns](std::uint64_t ktime_ns) -> std::int64_t {
        return ktime_ns == 0 ? 0 : static_cast<std::int64_t>(ktime_ns) + realtime_offset_ns;
    };
    ConnectSideTotals totals;
    totals.refused_first_unix_ns = unix_ns(stats.refused_first_ns);
    totals.refused_last_unix_ns = unix_ns(stats.refused_last_ns);
    totals.established_last_unix_ns = unix_ns(stats.established_last_ns);
    totals.failed_last_unix_ns = unix_ns(stats.failed_last_ns);
    totals.no_local_port = stats.no_local_port;
    totals.no_local_port_last_unix_ns = unix_ns(stats.no_local_port_last_ns);
    totals.established = stats.established;
    totals.refused = stats.refused;
    totals.timed_out = stats.timed_out;
    totals.other_failures = stats.other_failures;
    totals.syn_retransmits = stats.syn_retransmits;
    totals.latency_sum_us = stats.latency_sum_us;
    totals.latency = Log2Histogram::from_raw(stats.latency_hist);
    return totals;
}

ConnectionRecord decode_connect(const connect_event& e, std::int64_t unix_time_ns) {
    ConnectionRecord record;
    record.unix_time_ns = unix_time_ns;
    record.latency_ns = e.latency_ns;
    record.pid = e.pid;
    record.comm.assign(reinterpret_cast<const char*>(e.comm),
                       strnlen(reinterpret_cast<const char*>(e.comm), sizeof(e.comm)));
    record.side = side_of(e.side);
    record.outcome = outcome_of(e.outcome);
    record.error = e.error;
    record.source = endpoint_text(e.saddr, e.sport);
    record.destination = endpoint_text(e.daddr, e.dport);
    if (e.orig_dport) record.original_destination = endpoint_text(e.orig_daddr, e.orig_dport);
    record.syn_retransmits = e.syn_retransmits;
    return record;
}

DropRecord decode_drop(const drop_event& e, std::int64_t unix_time_ns, std::string reason_name) {
    DropRecord record;
    record.unix_time_ns = unix_time_ns;
    record.reason = e.reason;
    record.reason_name = std::move(reason_name);
    record.attributed_by = e.attributed_by == MESHLANE_DROP_BY_SOCKET ? "socket" : "device";
    record.ifindex = e.ifindex;
    record.protocol = e.protocol;
    record.ip_proto = e.ip_proto;
    record.source = endpoint_text(e.saddr, e.sport);
    record.destination = endpoint_text(e.daddr, e.dport);
    record.length = e.length;
    record.location = e.location;
    return record;
}

// The event bus carries flat string details: a view's JSON record, each value as text.
std::map<std::string, std::string> event_details(const boost::json::object& record) {
    std::map<std::string, std::string> details;
    for (const auto& [key, value] : record) {
        if (key == "time_unix_ms") continue;  // the event's own time
        details[std::string(key)] =
            value.is_string() ? std::string(value.get_string()) : boost::json::serialize(value);
    }
    return details;
}

// memlock of a map as the kernel accounts it (/proc/self/fdinfo).
std::size_t map_memlock(int fd) {
    if (fd < 0) return 0;
    std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd));
    std::string key;
    while (in >> key) {
        if (key == "memlock:") {
            std::size_t bytes = 0;
            in >> bytes;
            return bytes;
        }
        std::string rest;
        std::getline(in, rest);
    }
    return 0;
}

template <typename Skel>
Status attach_all(Skel* skel, const char* object, std::vector<LinkPtr>& links,
                  std::vector<std::string>& problems, std::vector<ObservedProgram>& programs) {
    bpf_program* program = nullptr;
    std::size_t attached = 0;
    bpf_object__for_each_program(program, skel->obj) {
        errno = 0;
        bpf_link* link = bpf_program__attach(program);
        const long err = link ? 0 : (errno ? errno : EINVAL);
        if (!link) {
            problems.push_back(std::string(object) + ": attach " + bpf_program__name(program) +
                               " (" + bpf_program__section_name(program) +
                               "): " + std::strerror(static_cast<int>(err)));
            continue;
        }
        links.emplace_back(link);
        ++attached;
        // Where it is attached, with the ids the kernel gave the link and the program.
        bpf_link_info info{};
        std::uint32_t length = sizeof(info);
        (void)bpf_obj_get_info_by_fd(bpf_link__fd(link), &info, &length);
        programs.push_back({object, bpf_program__name(program), bpf_program__section_name(program),
                            info.id, info.prog_id});
    }
    if (attached == 0) return Error{ENOTSUP, std::string(object) + ": no program attached"};
    return Ok{};
}

}  // namespace

struct Observer::Impl {
    ObserverOptions options;
    std::optional<DropReasonNames> reasons;

    // Declaration order is teardown order reversed: reader, ring buffer, links, objects.
    BpfSkeleton<observe_connect_bpf> connect;
    BpfSkeleton<observe_drops_bpf> drops;
    std::vector<LinkPtr> links;
    std::unique_ptr<TlsObserver> tls;  // TLS objects and links (agent/observe/tls_observer.h)
    std::unique_ptr<ring_buffer, RingBufferDeleter> ring;
    std::thread reader;
    std::atomic<bool> stopping{false};

    int workload_map = -1;
    int connect_stats_map = -1;
    int tcp_counters_map = -1;
    int drop_counts_map = -1;
    int connect_loss_map = -1;
    int drop_loss_map = -1;
    std::vector<int> own_maps;
    std::vector<ObservedProgram> attached_programs;  // set before the reader starts; then fixed
    int possible_cpus = 1;

    // Filled by ring-buffer callbacks during one poll, merged under the lock after it.
    std::vector<connect_event> pending_connects;
    std::vector<drop_event> pending_drops;

    // Reader thread only: names for published events, and the kernel losses already published.
    std::map<std::uint64_t, std::string> workload_names;
    std::chrono::steady_clock::time_point names_refreshed{};
    std::map<std::string, std::uint64_t> published_losses;

    mutable std::mutex mutex;  // guards everything below
    ObserveAggregate aggregate;
    std::vector<std::string> problems;
    std::map<std::string, std::uint64_t> lost_events;
    std::uint64_t connect_events = 0;
    std::uint64_t drop_events = 0;
    bool connect_tracking = false;
    bool drop_tracking = false;
    TlsAggregate tls_aggregate{TlsAggregateLimits{
        options.max_workloads, options.tls_destinations_per_workload, options.events_per_workload,
        options.events_total, options.tls_destinations_total}};
    std::vector<std::string> drop_count_only;  // resolved names, for health()
    std::uint64_t tls_events = 0;
    std::size_t tls_attached_cgroups = 0;
    BpfMapFillReport map_fill;  // counted by the reader thread every map_fill_interval
    std::chrono::steady_clock::time_point next_tls_reconcile{};

    // sync_attachments(): requests counted by callers, served by the reader thread.
    std::mutex attach_mutex;
    std::condition_variable attach_served;
    std::uint64_t attach_requested = 0;  // guarded by attach_mutex
    std::uint64_t attach_done = 0;       // guarded by attach_mutex
    void reconcile_if_requested();

    explicit Impl(const ObserverOptions& o)
        : options(o),
          aggregate(AggregateLimits{o.max_workloads, o.events_per_workload, o.events_total}) {}

    Status load_connect(const std::string& map_dir);
    Status load_drops(const std::string& map_dir);
    void run();
    void drain(std::int64_t realtime_offset_ns);
    void publish(const std::vector<connect_event>& connects, const std::vector<drop_event>& drops,
                 std::int64_t realtime_offset_ns);
    void publish_losses(const std::map<std::string, std::uint64_t>& losses);
    const std::string* workload_name(std::uint64_t netns_cookie);
    std::string reason_name(std::uint32_t reason) const {
        return reasons ? reasons->name(reason) : "UNKNOWN:" + std::to_string(reason);
    }
    void snapshot();
    void drain_tls(std::int64_t realtime_offset_ns);
    void snapshot_tls();
    void count_map_fill();
    std::uint64_t sum_per_cpu(int map_fd, std::uint32_t key) const;
};

Status Observer::Impl::load_connect(const std::string& map_dir) {
    LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = map_dir.c_str());
    auto skel = BpfSkeleton<observe_connect_bpf>::open(&open_opts, "observe_connect");
    if (!skel) return skel.error();
    // Must match RedirectDatapath's size_maps, or libbpf refuses to reuse the pinned map.
    bpf_map__set_max_entries((*skel)->maps.workload_by_netns, options.max_workloads);
    bpf_map__set_max_entries((*skel)->maps.connect_stats,
                             options.max_workloads * MESHLANE_SIDE_MAX);
    bpf_map__set_max_entries((*skel)->maps.tcp_counters, options.max_workloads);
    (*skel)->rodata->slow_connect_threshold_ns =
        static_cast<__u64>(options.slow_connect_threshold.count());
    if (auto loaded = skel->load("observe_connect"); !loaded) return loaded.error();
    std::vector<std::string> attach_problems;
    auto attached =
        attach_all(skel->get(), "observe_connect", links, attach_problems, attached_programs);
    problems.insert(problems.end(), attach_problems.begin(), attach_problems.end());
    if (!attached) return attached.error();
    connect = std::move(*skel);
    auto* s = connect.get();
    workload_map = bpf_map__fd(s->maps.workload_by_netns);
    connect_stats_map = bpf_map__fd(s->maps.connect_stats);
    tcp_counters_map = bpf_map__fd(s->maps.tcp_counters);
    connect_loss_map = bpf_map__fd(s->maps.observe_loss);
    for (auto* map : {s->maps.connect_stats, s->maps.tcp_counters, s->maps.connect_events,
                      s->maps.connect_state_by_socket, s->maps.observe_loss})
        own_maps.push_back(bpf_map__fd(map));
    return Ok{};
}

Status Observer::Impl::load_drops(const std::string& map_dir) {
    LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = map_dir.c_str());
    auto skel = BpfSkeleton<observe_drops_bpf>::open(&open_opts, "observe_drops");
    if (!skel) return skel.error();
    bpf_map__set_max_entries((*skel)->maps.workload_by_netns, options.max_workloads);
    (*skel)->rodata->drop_events_per_second = options.drop_events_per_second;
    (*skel)->rodata->drop_events_burst = options.drop_events_burst;
    if (options.drop_count_only_reasons.size() > MESHLANE_DROP_COUNT_ONLY_MAX)
        return Error::invalid("drop_count_only_reasons: at most " +
                              std::to_string(MESHLANE_DROP_COUNT_ONLY_MAX) + " reasons");
    std::size_t slot = 0;
    for (const auto& name : options.drop_count_only_reasons) {
        const auto value = reasons ? reasons->value_of(name) : std::nullopt;
        if (!value || *value == 0) {
            problems.push_back("drop_count_only_reasons: '" + name +
                               "' is not a drop reason of the running kernel; streamed as usual");
            continue;
        }
        (*skel)->rodata->count_only_reasons[slot++] = *value;
        drop_count_only.push_back(reasons->name(*value));
    }
    if (auto loaded = skel->load("observe_drops"); !loaded) return loaded.error();
    std::vector<std::string> attach_problems;
    auto attached =
        attach_all(skel->get(), "observe_drops", links, attach_problems, attached_programs);
    problems.insert(problems.end(), attach_problems.begin(), attach_problems.end());
    if (!attached) return attached.error();
    drops = std::move(*skel);
    auto* s = drops.get();
    if (workload_map < 0) workload_map = bpf_map__fd(s->maps.workload_by_netns);
    drop_counts_map = bpf_map__fd(s->maps.drop_counts);
    drop_loss_map = bpf_map__fd(s->maps.observe_loss);
    for (auto* map : {s->maps.drop_counts, s->maps.drop_events, s->maps.drop_event_budget,
                      s->maps.observe_loss})
        own_maps.push_back(bpf_map__fd(map));
    return Ok{};
}

std::uint64_t Observer::Impl::sum_per_cpu(int map_fd, std::uint32_t key) const {
    std::vector<std::uint64_t> values(static_cast<std::size_t>(possible_cpus), 0);
    if (bpf_map_lookup_elem(map_fd, &key, values.data()) != 0) return 0;
    std::uint64_t total = 0;
    for (auto v : values) total += v;
    return total;
}

void Observer::Impl::drain(std::int64_t realtime_offset_ns) {
    if (pending_connects.empty() && pending_drops.empty()) return;
    {
        std::lock_guard lock(mutex);
        for (const auto& event : pending_connects)
            aggregate.add_connect_event(
                event, static_cast<std::int64_t>(event.timestamp_ns) + realtime_offset_ns);
        for (const auto& event : pending_drops)
            aggregate.add_drop_event(
                event, static_cast<std::int64_t>(event.timestamp_ns) + realtime_offset_ns);
        connect_events += pending_connects.size();
        drop_events += pending_drops.size();
    }
    publish(pending_connects, pending_drops, realtime_offset_ns);
    pending_connects.clear();
    pending_drops.clear();
}

const std::string* Observer::Impl::workload_name(std::uint64_t netns_cookie) {
    auto it = workload_names.find(netns_cookie);
    if (it != workload_names.end()) return &it->second;
    const auto now = std::chrono::steady_clock::now();
    if (!options.workload_names || now - names_refreshed < options.snapshot_interval)
        return nullptr;
    names_refreshed = now;
    workload_names = options.workload_names();
    it = workload_names.find(netns_cookie);
    return it != workload_names.end() ? &it->second : nullptr;
}

// Outside the aggregate's lock; the bus never blocks (slow subscribers lose events, counted).
// The kernel's rate bound on drop events bounds this too.
void Observer::Impl::publish(const std::vector<connect_event>& connects,
                             const std::vector<drop_event>& drops,
                             std::int64_t realtime_offset_ns) {
    if (options.events == nullptr) return;
    auto publish_one = [&](const char* type, std::uint64_t cookie, std::uint32_t workload_id,
                           std::int64_t unix_ns, const boost::json::object& record) {
        const std::string* name = workload_name(cookie);
        auto details = event_details(record);
        details["workload_id"] = std::to_string(workload_id);
        options.events->publish(events::Event{.unix_time_ms = unix_ns / 1'000'000,
                                              .type = type,
                                              .workload = name ? *name : std::string(),
                                              .details = std::move(details)});
    };
    for (const auto& e : connects) {
        const auto unix_ns = static_cast<std::int64_t>(e.timestamp_ns) + realtime_offset_ns;
        publish_one(kConnectEventType, e.netns_cookie, e.workload_id, unix_ns,
                    to_json(decode_connect(e, unix_ns)));
    }
    for (const auto& e : drops) {
        const auto unix_ns = static_cast<std::int64_t>(e.timestamp_ns) + realtime_offset_ns;
        publish_one(kDropEventType, e.netns_cookie, e.workload_id, unix_ns,
                    to_json(decode_drop(e, unix_ns, reason_name(e.reason))));
    }
}

// Kernel-side losses are per CPU, not per workload: one agent-wide notice per kind that grew,
// so a stream never has a silent gap (Hubble's LostEvent).
void Observer::Impl::publish_losses(const std::map<std::string, std::uint64_t>& losses) {
    if (options.events == nullptr) return;
    for (const auto& [kind, total] : losses) {
        auto& published = published_losses[kind];
        if (total > published)
            options.events->publish(
                events::Event{.type = kObserveLostEventType,
                              .details = {{"kind", kind},
                                          {"lost", std::to_string(total - published)},
                                          {"lost_total", std::to_string(total)}},
                              .notice = true});
        published = total;
    }
}

// Reads the kernel's exact totals for every enrolled workload, outside the lock, then swaps
// them in. drop_counts entries of namespaces that are no longer enrolled are deleted here.
void Observer::Impl::snapshot() {
    std::unordered_map<std::uint64_t, WorkloadTotals> totals;
    std::uint64_t key = 0, next = 0;
    const void* previous = nullptr;
    while (bpf_map_get_next_key(workload_map, previous, &next) == 0) {
        workload_config config{};
        if (bpf_map_lookup_elem(workload_map, &next, &config) == 0) {
            WorkloadTotals& t = totals[next];
            t.workload_id = config.workload_id;
            t.netns_cookie = next;
        }
        key = next;
        previous = &key;
    }
    const std::int64_t realtime_offset_ns = clock_ns(CLOCK_REALTIME) - clock_ns(CLOCK_MONOTONIC);
    for (auto& [cookie, t] : totals) {
        if (connect_stats_map >= 0) {
            for (std::uint32_t side = 0; side < MESHLANE_SIDE_MAX; ++side) {
                std::uint32_t index = t.workload_id * MESHLANE_SIDE_MAX + side;
                connect_stats stats{};
                if (bpf_map_lookup_elem(connect_stats_map, &index, &stats) == 0 &&
                    stats.netns_cookie == cookie)
                    t.sides[side] = side_totals(stats, realtime_offset_ns);
            }
        }
        if (tcp_counters_map >= 0) {
            tcp_counters counters{};
            if (bpf_map_lookup_elem(tcp_counters_map, &t.workload_id, &counters) == 0 &&
                counters.netns_cookie == cookie)
                t.tcp = {counters.retransmits, counters.syn_retransmits,
                         counters.synack_retransmits, counters.resets_sent,
                         counters.resets_received};
        }
    }
    if (drop_counts_map >= 0) {
        std::vector<drop_count_key> stale;
        drop_count_key dkey{}, dnext{};
        const void* dprevious = nullptr;
        while (bpf_map_get_next_key(drop_counts_map, dprevious, &dnext) == 0) {
            auto it = totals.find(dnext.netns_cookie);
            std::uint64_t count = 0;
            if (it == totals.end())
                stale.push_back(dnext);
            else if (bpf_map_lookup_elem(drop_counts_map, &dnext, &count) == 0)
                it->second.drops_by_reason[dnext.reason] = count;
            dkey = dnext;
            dprevious = &dkey;
        }
        for (const auto& k : stale) bpf_map_delete_elem(drop_counts_map, &k);
    }
    // Only the kinds each object can produce, so every reported name means something.
    std::map<std::string, std::uint64_t> losses;
    if (connect_loss_map >= 0)
        for (std::uint32_t kind : {MESHLANE_LOSS_RINGBUF_FULL, MESHLANE_LOSS_NO_CONNECT_STATE})
            losses[std::string("connect.") + kLossNames[kind]] =
                sum_per_cpu(connect_loss_map, kind);
    if (drop_loss_map >= 0)
        for (std::uint32_t kind :
             {MESHLANE_LOSS_RINGBUF_FULL, MESHLANE_LOSS_RATE_LIMITED, MESHLANE_LOSS_COUNT_MAP_FULL})
            losses[std::string("drops.") + kLossNames[kind]] = sum_per_cpu(drop_loss_map, kind);
    std::vector<WorkloadTotals> list;
    list.reserve(totals.size());
    for (auto& [cookie, t] : totals) list.push_back(std::move(t));
    publish_losses(losses);
    std::lock_guard lock(mutex);
    aggregate.apply_snapshot(std::move(list));
    lost_events = std::move(losses);
}

void Observer::Impl::drain_tls(std::int64_t realtime_offset_ns) {
    if (!tls || tls->pending().empty()) return;
    std::lock_guard lock(mutex);
    for (const auto& event : tls->pending())
        tls_aggregate.add_event(event,
                                static_cast<std::int64_t>(event.timestamp_ns) + realtime_offset_ns);
    tls_events += tls->pending().size();
    tls->pending().clear();
}

void Observer::Impl::reconcile_if_requested() {
    std::uint64_t requested = 0;
    {
        std::lock_guard lock(attach_mutex);
        if (attach_requested == attach_done) return;
        requested = attach_requested;
    }
    if (tls && options.workload_cgroups) {
        tls->reconcile(options.workload_cgroups());
        next_tls_reconcile = std::chrono::steady_clock::now() + kTlsReconcileInterval;
        std::lock_guard lock(mutex);
        tls_attached_cgroups = tls->attached_cgroups();
    }
    {
        std::lock_guard lock(attach_mutex);
        attach_done = requested;
    }
    attach_served.notify_all();
}

// TLS totals for the enrolled workloads; the wire programs follow the pods' cgroups (attached
// after enrolment, detached after removal: on request, and every kTlsReconcileInterval).
void Observer::Impl::snapshot_tls() {
    if (!tls) return;
    const auto now = std::chrono::steady_clock::now();
    if (options.workload_cgroups && now >= next_tls_reconcile) {
        tls->reconcile(options.workload_cgroups());
        next_tls_reconcile = now + kTlsReconcileInterval;
    }
    std::map<std::uint64_t, std::uint32_t> workloads;
    std::uint64_t key = 0, next = 0;
    const void* previous = nullptr;
    while (workload_map >= 0 && bpf_map_get_next_key(workload_map, previous, &next) == 0) {
        workload_config config{};
        if (bpf_map_lookup_elem(workload_map, &next, &config) == 0)
            workloads[next] = config.workload_id;
        key = next;
        previous = &key;
    }
    auto totals = tls->read_totals(workloads);
    auto losses = tls->losses();
    std::lock_guard lock(mutex);
    tls_aggregate.apply_snapshot(totals);
    tls_attached_cgroups = tls->attached_cgroups();
    for (auto& [name, count] : losses) lost_events[name] = count;
}

// Fill levels of every map of meshlane, read from the kernel: the pinned (shared) maps, then the
// maps the observe objects hold themselves. On this thread, so views never touch a map.
void Observer::Impl::count_map_fill() {
    std::vector<UniqueFd> pins;
    auto maps = pinned_maps(options.pin_root + "/maps", pins);
    if (connect.get() != nullptr) add_object_maps(connect->obj, "observe_connect", maps);
    if (drops.get() != nullptr) add_object_maps(drops->obj, "observe_drops", maps);
    if (tls)
        for (const auto& [name, object] : tls->objects()) add_object_maps(object, name, maps);
    BpfMapFillReport report;
    report.counted_unix_ms = clock_ns(CLOCK_REALTIME) / 1'000'000;
    const auto started = std::chrono::steady_clock::now();
    for (const auto& map : maps) report.maps.push_back(count_map(map));
    spdlog::debug("observe: counted {} maps in {} us", report.maps.size(),
                  std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::steady_clock::now() - started)
                      .count());
    std::lock_guard lock(mutex);
    map_fill = std::move(report);
}

void Observer::Impl::run() {
    auto next_snapshot = std::chrono::steady_clock::now();
    auto next_map_fill = next_snapshot;
    while (!stopping.load(std::memory_order_relaxed)) {
        const int polled =
            ring ? ring_buffer__poll(ring.get(), static_cast<int>(options.poll_timeout.count()))
                 : 0;
        if (!ring) std::this_thread::sleep_for(options.poll_timeout);
        if (polled < 0 && polled != -EINTR) {
            spdlog::warn("observe: ring buffer poll: {}", std::strerror(-polled));
            std::this_thread::sleep_for(options.poll_timeout);
        }
        // Drop events are submitted without a wakeup until a quarter of the ring is used
        // (bpf/observe_drops.bpf.c): collect whatever is there on every turn.
        if (ring) ring_buffer__consume(ring.get());
        // bpf_ktime_get_ns() is CLOCK_MONOTONIC; views want wall-clock time.
        const std::int64_t realtime_offset_ns =
            clock_ns(CLOCK_REALTIME) - clock_ns(CLOCK_MONOTONIC);
        drain(realtime_offset_ns);
        drain_tls(realtime_offset_ns);
        reconcile_if_requested();
        if (std::chrono::steady_clock::now() >= next_snapshot) {
            snapshot();
            snapshot_tls();
            next_snapshot = std::chrono::steady_clock::now() + options.snapshot_interval;
        }
        if (std::chrono::steady_clock::now() >= next_map_fill) {
            count_map_fill();
            next_map_fill = std::chrono::steady_clock::now() + options.map_fill_interval;
        }
    }
}

Observer::Observer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Observer::~Observer() { stop(); }

Result<std::unique_ptr<Observer>> Observer::start(const ObserverOptions& options) {
    if (options.max_workloads == 0 || options.max_workloads > 65536)
        return Error::invalid("max_workloads must be within 1..65536");
    auto impl = std::make_unique<Impl>(options);
    impl->possible_cpus = libbpf_num_possible_cpus();
    if (impl->possible_cpus <= 0) return Error::from_libbpf(impl->possible_cpus, "count CPUs");

    auto reasons = DropReasonNames::load_running_kernel();
    if (reasons)
        impl->reasons = std::move(*reasons);
    else
        impl->problems.push_back("drop reasons shown as numbers: " + reasons.error().message);

    const std::string map_dir = options.pin_root + "/maps";
    if (!options.connect_tracking)
        impl->problems.push_back("connect tracking disabled at start (see feature_states)");
    else if (auto loaded = impl->load_connect(map_dir); loaded)
        impl->connect_tracking = true;
    else
        impl->problems.push_back("connect tracking unavailable: " + loaded.error().message);
    if (!options.drop_tracking)
        impl->problems.push_back("drop tracking disabled at start (see feature_states)");
    else if (auto loaded = impl->load_drops(map_dir); loaded)
        impl->drop_tracking = true;
    else
        impl->problems.push_back("drop tracking unavailable: " + loaded.error().message);
    if (!impl->connect_tracking && !impl->drop_tracking)
        return Error{ENOTSUP, "no observe program could be loaded: " + impl->problems.back()};

    // Callbacks run on the reader thread inside ring_buffer__poll: copy, merge after the poll.
    auto on_connect_event = [](void* context, void* data, std::size_t size) -> int {
        if (size < sizeof(connect_event)) return 0;
        connect_event event{};
        std::memcpy(&event, data, sizeof(event));
        static_cast<Impl*>(context)->pending_connects.push_back(event);
        return 0;
    };
    auto on_drop_event = [](void* context, void* data, std::size_t size) -> int {
        if (size < sizeof(drop_event)) return 0;
        drop_event event{};
        std::memcpy(&event, data, sizeof(event));
        static_cast<Impl*>(context)->pending_drops.push_back(event);
        return 0;
    };
    Impl* raw = impl.get();
    if (impl->connect_tracking) {
        impl->ring.reset(ring_buffer__new(bpf_map__fd(impl->connect->maps.connect_events),
                                          on_connect_event, raw, nullptr));
        if (!impl->ring) return Error::last_errno("ring buffer for connect_events");
    }
    if (impl->drop_tracking) {
        const int fd = bpf_map__fd(impl->drops->maps.drop_events);
        if (impl->ring) {
            if (int err = ring_buffer__add(impl->ring.get(), fd, on_drop_event, raw); err)
                return Error::from_libbpf(err, "ring buffer for drop_events");
        } else {
            impl->ring.reset(ring_buffer__new(fd, on_drop_event, raw, nullptr));
            if (!impl->ring) return Error::last_errno("ring buffer for drop_events");
        }
    }
    impl->tls = TlsObserver::start({.map_dir = map_dir,
                                    .max_workloads = options.max_workloads,
                                    .wire = options.tls_wire,
                                    .libssl = options.tls_libssl,
                                    .libssl_path = options.libssl_path});
    {
        ring_buffer* ring = impl->ring.release();
        auto added = impl->tls->add_to_ring(ring);
        impl->ring.reset(ring);
        if (!added) return added.error();
        for (int fd : impl->tls->own_map_fds()) impl->own_maps.push_back(fd);
    }
    for (const auto& problem : impl->problems) spdlog::warn("observe: {}", problem);
    impl->reader = std::thread([raw] {
        pthread_setname_np(pthread_self(), "ml-observe");  // per-thread CPU in bench/overhead
        raw->run();
    });
    return std::unique_ptr<Observer>(new Observer(std::move(impl)));
}

void Observer::stop() {
    if (!impl_) return;
    impl_->stopping.store(true);
    if (impl_->reader.joinable()) impl_->reader.join();
    impl_->ring.reset();
    impl_->links.clear();
    impl_->tls.reset();
    {
        std::lock_guard lock(impl_->attach_mutex);
        impl_->attach_done = impl_->attach_requested;
    }
    impl_->attach_served.notify_all();
}

bool Observer::sync_attachments(std::chrono::milliseconds timeout) {
    if (!impl_ || impl_->stopping.load()) return false;
    std::unique_lock lock(impl_->attach_mutex);
    const std::uint64_t wanted = ++impl_->attach_requested;
    return impl_->attach_served.wait_for(lock, timeout, [&] {
        return impl_->attach_done >= wanted;
    }) && !impl_->stopping.load();
}

WorkloadConnections Observer::connections(std::uint32_t workload_id,
                                          std::uint64_t netns_cookie) const {
    WorkloadConnections view;
    view.workload_id = workload_id;
    view.netns_cookie = netns_cookie;
    std::lock_guard lock(impl_->mutex);
    const auto* workload = impl_->aggregate.find(netns_cookie);
    if (!workload) return view;
    view.sides = workload->totals.sides;
    view.tcp = workload->totals.tcp;
    for (const auto& stored : workload->connects)
        view.recent.push_back(decode_connect(stored.event, stored.unix_time_ns));
    return view;
}

WorkloadDrops Observer::drops(std::uint32_t workload_id, std::uint64_t netns_cookie,
                              const DropQuery& query) const {
    WorkloadDrops view;
    view.workload_id = workload_id;
    view.netns_cookie = netns_cookie;
    auto name_of = [this](std::uint32_t reason) { return impl_->reason_name(reason); };
    std::lock_guard lock(impl_->mutex);
    const auto* workload = impl_->aggregate.find(netns_cookie);
    if (!workload) return view;
    for (const auto& [reason, count] : workload->totals.drops_by_reason) {
        if (query.reason && *query.reason != reason) continue;
        view.by_reason.push_back({reason, name_of(reason), count});
        view.total += count;
    }
    std::vector<const ObserveAggregate::StoredDrop*> matching;
    for (const auto& stored : workload->drops) {
        if (query.reason && *query.reason != stored.event.reason) continue;
        if (query.since_unix_ns && stored.unix_time_ns < *query.since_unix_ns) continue;
        matching.push_back(&stored);
    }
    const std::size_t first = matching.size() > query.limit ? matching.size() - query.limit : 0;
    for (std::size_t i = first; i < matching.size(); ++i)
        view.recent.push_back(decode_drop(matching[i]->event, matching[i]->unix_time_ns,
                                          name_of(matching[i]->event.reason)));
    return view;
}

ObserverHealth Observer::health() const {
    ObserverHealth health;
    for (int fd : impl_->own_maps) health.bpf_map_bytes += map_memlock(fd);
    std::lock_guard lock(impl_->mutex);
    health.connect_tracking = impl_->connect_tracking;
    health.drop_tracking = impl_->drop_tracking;
    health.problems = impl_->problems;
    health.lost_events = impl_->lost_events;
    for (const auto& [kind, count] : impl_->lost_events) health.lost_events_total += count;
    health.connect_events = impl_->connect_events;
    health.drop_events = impl_->drop_events;
    health.events_evicted = impl_->aggregate.evicted();
    health.memory_bytes = impl_->aggregate.memory_bytes();
    health.memory_limit_bytes = impl_->aggregate.memory_limit_bytes();
    health.tls_wire_tracking = impl_->tls && impl_->tls->wire_tracking();
    health.tls_libssl_tracking = impl_->tls && impl_->tls->libssl_tracking();
    if (impl_->tls)
        health.problems.insert(health.problems.end(), impl_->tls->problems().begin(),
                               impl_->tls->problems().end());
    health.tls_events = impl_->tls_events;
    health.tls_attached_cgroups = impl_->tls_attached_cgroups;
    health.tls_memory_bytes = impl_->tls_aggregate.memory_bytes();
    health.tls_memory_limit_bytes = impl_->tls_aggregate.memory_limit_bytes();
    health.memory_bytes += health.tls_memory_bytes;
    health.memory_limit_bytes += health.tls_memory_limit_bytes;
    health.events_evicted += impl_->tls_aggregate.evicted();
    health.tls_destinations = impl_->tls_aggregate.destinations();
    health.tls_destinations_limit = impl_->tls_aggregate.destinations_limit();
    health.tls_destinations_evicted = impl_->tls_aggregate.destinations_evicted();
    health.drop_count_only_reasons = impl_->drop_count_only;
    return health;
}

std::chrono::milliseconds Observer::tls_slow_handshake_threshold() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
        impl_->options.tls_slow_handshake_threshold);
}

WorkloadTls Observer::tls(std::uint32_t workload_id, std::uint64_t netns_cookie) const {
    std::lock_guard lock(impl_->mutex);
    return impl_->tls_aggregate.view(workload_id, netns_cookie);
}

std::vector<ObservedProgram> Observer::programs() const { return impl_->attached_programs; }

BpfMapFillReport Observer::map_fill() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->map_fill;
}

std::optional<std::uint32_t> Observer::drop_reason_value(std::string_view name) const {
    if (!impl_->reasons) return std::nullopt;
    return impl_->reasons->value_of(name);
}

}  // namespace meshlane
