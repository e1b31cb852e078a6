#include "agent/observe/tls_observer.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <filesystem>
#include <unordered_map>

#include "agent/common/unique_fd.h"
#include "agent/loader/bpf_skeleton.h"
#include "features/fastpath/fastpath_datapath.h"
#include "observe_tls_libssl.skel.h"
#include "observe_tls_wire.skel.h"

namespace meshlane {

namespace {

struct LinkDeleter {
    void operator()(bpf_link* link) const { bpf_link__destroy(link); }
};
using LinkPtr = std::unique_ptr<bpf_link, LinkDeleter>;

constexpr std::size_t kMaxProblems = 32;

const char* const kLibsslCandidates[] = {
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/aarch64-linux-gnu/libssl.so.3",
    "/usr/lib64/libssl.so.3",
    "/usr/lib/libssl.so.3",
    "/lib/x86_64-linux-gnu/libssl.so.3",
};

std::string find_libssl(const std::string& configured) {
    if (!configured.empty()) return configured;
    for (const char* path : kLibsslCandidates)
        if (std::filesystem::exists(path)) return path;
    return {};
}

std::string errno_text(int err) { return std::strerror(err); }

}  // namespace

struct TlsObserver::Impl {
    TlsObserverOptions options;
    BpfSkeleton<observe_tls_wire_bpf> wire;
    BpfSkeleton<observe_tls_libssl_bpf> libssl;
    std::vector<LinkPtr> uprobe_links;
    struct CgroupLinks {
        std::string path;
        LinkPtr egress;
        LinkPtr ingress;
    };
    std::unordered_map<std::uint64_t, CgroupLinks> cgroup_links;  // by netns cookie
    std::vector<tls_handshake_event> pending;
    std::vector<std::string> problems;
    int possible_cpus = 1;
    // The fast path's fastpath_msg_observers while observe_tls_msg is in its slot.
    UniqueFd msg_observers;
    std::uint32_t msg_prog_id = 0;
    bool msg_loaded = false;  // observe_tls_msg passed the verifier

    void problem(std::string text) {
        spdlog::warn("observe: {}", text);
        if (problems.size() < kMaxProblems) problems.push_back(std::move(text));
    }
    Status load_wire(bool with_msg);
    Status load_libssl();
    void hook_fast_path();
    void unhook_fast_path();
    std::uint64_t sum_per_cpu(int fd, std::uint32_t key) const;
};

Status TlsObserver::Impl::load_wire(bool with_msg) {
    LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = options.map_dir.c_str());
    auto skel = BpfSkeleton<observe_tls_wire_bpf>::open(&open_opts, "observe_tls_wire");
    if (!skel) return skel.error();
    if (!with_msg) bpf_program__set_autoload((*skel)->progs.observe_tls_msg, false);
    bpf_map__set_max_entries((*skel)->maps.workload_by_netns, options.max_workloads);
    bpf_map__set_max_entries((*skel)->maps.tls_stats,
                             options.max_workloads * MESHLANE_TLS_SOURCE_MAX);
    if (auto loaded = skel->load("observe_tls_wire"); !loaded) return loaded.error();
    wire = std::move(*skel);
    msg_loaded = with_msg;
    return Ok{};
}

// Puts observe_tls_msg into the fast path's pinned fastpath_msg_observers (created by
// FastpathDatapath::load, before the observer starts): from then on fastpath_msg tail-calls it for
// every message it redirects. No pin: no fast path on this node, nothing is redirected; tried
// again at the next reconcile.
void TlsObserver::Impl::hook_fast_path() {
    if (!msg_loaded || msg_observers.valid()) return;
    const std::string path = options.map_dir + "/" + kFastpathMsgObserversPin;
    UniqueFd map(bpf_obj_get(path.c_str()));
    if (!map.valid()) {
        if (errno != ENOENT) problem("TLS wire: open " + path + ": " + errno_text(errno));
        return;
    }
    const std::uint32_t slot = MESHLANE_FASTPATH_MSG_OBSERVER_TLS;
    const int prog = bpf_program__fd(wire->progs.observe_tls_msg);
    if (bpf_map_update_elem(map.get(), &slot, &prog, BPF_ANY) != 0) {
        problem("TLS wire: accelerated hops not measured: put observe_tls_msg into " + path + ": " +
                errno_text(errno));
        msg_loaded = false;  // do not retry every round
        return;
    }
    bpf_prog_info info{};
    std::uint32_t info_len = sizeof(info);
    if (bpf_obj_get_info_by_fd(prog, &info, &info_len) == 0) msg_prog_id = info.id;
    msg_observers = std::move(map);
    spdlog::info("observe: TLS wire tracking on the fast path's redirected messages too");
}

// Empties the slot if it still holds our program (a newer agent may have replaced it).
void TlsObserver::Impl::unhook_fast_path() {
    if (!msg_observers.valid()) return;
    const std::uint32_t slot = MESHLANE_FASTPATH_MSG_OBSERVER_TLS;
    std::uint32_t id = 0;
    if (bpf_map_lookup_elem(msg_observers.get(), &slot, &id) == 0 && id == msg_prog_id)
        (void)bpf_map_delete_elem(msg_observers.get(), &slot);
    msg_observers.reset();
}

Status TlsObserver::Impl::load_libssl() {
    const std::string path = find_libssl(options.libssl_path);
    if (path.empty()) return Error{ENOENT, "no libssl.so.3 found in the usual library paths"};
    LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = options.map_dir.c_str());
    auto skel = BpfSkeleton<observe_tls_libssl_bpf>::open(&open_opts, "observe_tls_libssl");
    if (!skel) return skel.error();
    bpf_map__set_max_entries((*skel)->maps.workload_by_netns, options.max_workloads);
    bpf_map__set_max_entries((*skel)->maps.tls_stats,
                             options.max_workloads * MESHLANE_TLS_SOURCE_MAX);
    if (auto loaded = skel->load("observe_tls_libssl"); !loaded) return loaded.error();
    struct Probe {
        bpf_program* program;
        const char* function;
        bool retprobe;
    };
    auto* s = skel->get();
    const Probe probes[] = {
        {s->progs.libssl_handshake_entry, "SSL_do_handshake", false},
        {s->progs.libssl_handshake_return, "SSL_do_handshake", true},
        {s->progs.libssl_handshake_entry, "SSL_connect", false},
        {s->progs.libssl_handshake_return, "SSL_connect", true},
        {s->progs.libssl_handshake_entry, "SSL_accept", false},
        {s->progs.libssl_handshake_return, "SSL_accept", true},
        {s->progs.libssl_get_error_entry, "SSL_get_error", false},
        {s->progs.libssl_get_error_return, "SSL_get_error", true},
        {s->progs.libssl_free_entry, "SSL_free", false},
    };
    std::vector<LinkPtr> links;
    for (const auto& probe : probes) {
        LIBBPF_OPTS(bpf_uprobe_opts, uprobe_opts, .retprobe = probe.retprobe,
                    .func_name = probe.function);
        errno = 0;
        bpf_link* link =
            bpf_program__attach_uprobe_opts(probe.program, -1, path.c_str(), 0, &uprobe_opts);
        if (!link) {
            const int err = errno ? errno : EINVAL;
            return Error{err, std::string("attach ") + (probe.retprobe ? "uretprobe " : "uprobe ") +
                                  path + ":" + probe.function + ": " + errno_text(err)};
        }
        links.emplace_back(link);
    }
    libssl = std::move(*skel);
    uprobe_links = std::move(links);
    spdlog::info("observe: libssl handshakes from {}", path);
    return Ok{};
}

std::uint64_t TlsObserver::Impl::sum_per_cpu(int fd, std::uint32_t key) const {
    std::vector<std::uint64_t> values(static_cast<std::size_t>(possible_cpus), 0);
    if (bpf_map_lookup_elem(fd, &key, values.data()) != 0) return 0;
    std::uint64_t total = 0;
    for (auto v : values) total += v;
    return total;
}

TlsObserver::TlsObserver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TlsObserver::~TlsObserver() {
    // Links before the objects that own their programs.
    impl_->unhook_fast_path();
    impl_->cgroup_links.clear();
    impl_->uprobe_links.clear();
}

std::unique_ptr<TlsObserver> TlsObserver::start(const TlsObserverOptions& options) {
    auto impl = std::make_unique<Impl>();
    impl->options = options;
    impl->possible_cpus = std::max(1, libbpf_num_possible_cpus());
    if (options.wire) {
        // The sk_msg program (fast path) must not cost the skb programs: without it if it fails.
        if (auto loaded = impl->load_wire(true); !loaded) {
            if (auto plain = impl->load_wire(false); plain)
                impl->problem(
                    "TLS wire tracking on the fast path unavailable (accelerated hops not "
                    "measured): " +
                    loaded.error().message);
            else
                impl->problem("TLS wire tracking unavailable: " + loaded.error().message);
        }
        impl->hook_fast_path();
    }
    if (options.libssl) {
        if (auto loaded = impl->load_libssl(); !loaded)
            impl->problem("TLS libssl tracking unavailable: " + loaded.error().message);
    }
    return std::unique_ptr<TlsObserver>(new TlsObserver(std::move(impl)));
}

bool TlsObserver::wire_tracking() const { return impl_->wire.get() != nullptr; }
bool TlsObserver::libssl_tracking() const { return impl_->libssl.get() != nullptr; }
const std::vector<std::string>& TlsObserver::problems() const { return impl_->problems; }
std::vector<tls_handshake_event>& TlsObserver::pending() { return impl_->pending; }
std::size_t TlsObserver::attached_cgroups() const { return impl_->cgroup_links.size(); }

Status TlsObserver::add_to_ring(ring_buffer*& ring) {
    auto on_event = [](void* context, void* data, std::size_t size) -> int {
        if (size < sizeof(tls_handshake_event)) return 0;
        tls_handshake_event event{};
        std::memcpy(&event, data, sizeof(event));
        static_cast<Impl*>(context)->pending.push_back(event);
        return 0;
    };
    std::vector<int> fds;
    if (wire_tracking()) fds.push_back(bpf_map__fd(impl_->wire->maps.tls_events));
    if (libssl_tracking()) fds.push_back(bpf_map__fd(impl_->libssl->maps.tls_events));
    for (int fd : fds) {
        if (!ring) {
            ring = ring_buffer__new(fd, on_event, impl_.get(), nullptr);
            if (!ring) return Error::last_errno("ring buffer for tls_events");
        } else if (int err = ring_buffer__add(ring, fd, on_event, impl_.get()); err) {
            return Error::from_libbpf(err, "ring buffer for tls_events");
        }
    }
    return Ok{};
}

void TlsObserver::reconcile(const std::vector<ObservedCgroup>& cgroups) {
    if (!wire_tracking()) return;
    impl_->hook_fast_path();
    std::unordered_map<std::uint64_t, const ObservedCgroup*> wanted;
    for (const auto& c : cgroups)
        if (c.netns_cookie && !c.cgroup_path.empty()) wanted[c.netns_cookie] = &c;
    for (auto it = impl_->cgroup_links.begin(); it != impl_->cgroup_links.end();) {
        auto w = wanted.find(it->first);
        if (w != wanted.end() && w->second->cgroup_path == it->second.path)
            ++it;
        else
            it = impl_->cgroup_links.erase(it);  // detaches
    }
    for (const auto& [cookie, c] : wanted) {
        if (impl_->cgroup_links.count(cookie)) continue;
        UniqueFd fd(::open(c->cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!fd.valid()) {
            impl_->problem("TLS wire: open cgroup " + c->cgroup_path + ": " + errno_text(errno));
            continue;
        }
        Impl::CgroupLinks links;
        links.path = c->cgroup_path;
        errno = 0;
        links.egress.reset(
            bpf_program__attach_cgroup(impl_->wire->progs.observe_tls_egress, fd.get()));
        const int egress_err = links.egress ? 0 : (errno ? errno : EINVAL);
        errno = 0;
        links.ingress.reset(
            bpf_program__attach_cgroup(impl_->wire->progs.observe_tls_ingress, fd.get()));
        const int ingress_err = links.ingress ? 0 : (errno ? errno : EINVAL);
        if (egress_err || ingress_err) {
            impl_->problem("TLS wire: attach cgroup_skb to " + c->cgroup_path + ": " +
                           errno_text(egress_err ? egress_err : ingress_err));
            continue;
        }
        impl_->cgroup_links.emplace(cookie, std::move(links));
    }
}

std::vector<TlsWorkloadTotals> TlsObserver::read_totals(
    const std::map<std::uint64_t, std::uint32_t>& workloads) const {
    int fds[MESHLANE_TLS_SOURCE_MAX] = {-1, -1};
    if (wire_tracking()) fds[MESHLANE_TLS_SOURCE_WIRE] = bpf_map__fd(impl_->wire->maps.tls_stats);
    if (libssl_tracking())
        fds[MESHLANE_TLS_SOURCE_LIBSSL] = bpf_map__fd(impl_->libssl->maps.tls_stats);
    std::vector<TlsWorkloadTotals> out;
    for (const auto& [cookie, id] : workloads) {
        TlsWorkloadTotals t;
        t.workload_id = id;
        t.netns_cookie = cookie;
        for (std::uint32_t source = 0; source < MESHLANE_TLS_SOURCE_MAX; ++source) {
            if (fds[source] < 0) continue;
            // Each object counts only its own source.
            std::uint32_t index = id * MESHLANE_TLS_SOURCE_MAX + source;
            tls_stats stats{};
            if (bpf_map_lookup_elem(fds[source], &index, &stats) != 0 ||
                stats.netns_cookie != cookie)
                continue;
            auto& s = t.sources[source];
            s.completed = stats.completed;
            s.alerts = stats.alerts;
            s.resets = stats.resets;
            s.closed = stats.closed;
            s.errors = stats.errors;
            s.latency_sum_us = stats.latency_sum_us;
            s.latency = Log2Histogram::from_raw(stats.latency_hist);
        }
        out.push_back(std::move(t));
    }
    return out;
}

std::map<std::string, std::uint64_t> TlsObserver::losses() const {
    std::map<std::string, std::uint64_t> out;
    if (wire_tracking()) {
        const int fd = bpf_map__fd(impl_->wire->maps.observe_loss);
        out["tls_wire.ringbuf_full"] = impl_->sum_per_cpu(fd, MESHLANE_LOSS_RINGBUF_FULL);
        out["tls_wire.no_state"] = impl_->sum_per_cpu(fd, MESHLANE_LOSS_NO_CONNECT_STATE);
    }
    if (libssl_tracking()) {
        const int fd = bpf_map__fd(impl_->libssl->maps.observe_loss);
        out["tls_libssl.ringbuf_full"] = impl_->sum_per_cpu(fd, MESHLANE_LOSS_RINGBUF_FULL);
        out["tls_libssl.no_state"] = impl_->sum_per_cpu(fd, MESHLANE_LOSS_NO_CONNECT_STATE);
    }
    return out;
}

std::vector<std::pair<std::string, const bpf_object*>> TlsObserver::objects() const {
    std::vector<std::pair<std::string, const bpf_object*>> objects;
    if (wire_tracking()) objects.emplace_back("observe_tls_wire", impl_->wire->obj);
    if (libssl_tracking()) objects.emplace_back("observe_tls_libssl", impl_->libssl->obj);
    return objects;
}

std::vector<int> TlsObserver::own_map_fds() const {
    std::vector<int> fds;
    if (wire_tracking()) {
        auto* s = impl_->wire.get();
        for (auto* map :
             {s->maps.tls_stats, s->maps.tls_events, s->maps.tls_state_by_socket,
              s->maps.tls_window_scratch, s->maps.tls_msg_window_scratch, s->maps.observe_loss})
            fds.push_back(bpf_map__fd(map));
    }
    if (libssl_tracking()) {
        auto* s = impl_->libssl.get();
        for (auto* map :
             {s->maps.tls_stats, s->maps.tls_events, s->maps.libssl_inflight,
              s->maps.libssl_thread_call, s->maps.libssl_get_error_call, s->maps.observe_loss})
            fds.push_back(bpf_map__fd(map));
    }
    return fds;
}

}  // namespace meshlane
