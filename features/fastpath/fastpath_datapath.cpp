#include "features/fastpath/fastpath_datapath.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include "agent/common/unique_fd.h"
#include "agent/loader/bpf_skeleton.h"
#include "agent/loader/pinned_link.h"
#include "fastpath_sockmap.skel.h"

namespace meshlane {

namespace {

constexpr const char* kCounterNames[MESHLANE_FP_COUNTER_MAX] = {
    "redirected_msgs",
    "redirected_bytes",
    "passed_msgs",
    "passed_bytes",
    "conns_accelerated",
    "not_eligible_sent_first",
    "not_eligible_no_peer",
    "not_eligible_insert_failed",
    "peer_gone",
    "proxy_proxy_conns_accelerated",
    "proxy_proxy_redirected_bytes",
    "proxy_app_conns_accelerated",
    "proxy_app_redirected_bytes",
    "spilled_to_tcp",
    "returned_to_fast_path",
    "not_eligible_blocking_reader",
};
constexpr bool every_counter_named() {
    for (const char* name : kCounterNames)
        if (name == nullptr) return false;
    return true;
}
static_assert(every_counter_named(), "name every meshlane_fastpath_counter in kCounterNames");

constexpr const char* kSkMsgPin = "sk_msg";

}  // namespace

const char* fastpath_counter_name(unsigned counter) {
    return counter < MESHLANE_FP_COUNTER_MAX ? kCounterNames[counter] : "unknown";
}

struct FastpathDatapath::Impl {
    BpfSkeleton<fastpath_sockmap_bpf> skel;
    int kinds_map = -1;
    int counters_map = -1;
    int pod_addrs_map = -1;
    int possible_cpus = 1;
};

FastpathDatapath::FastpathDatapath(FastpathOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>()) {}
FastpathDatapath::~FastpathDatapath() = default;

Result<std::unique_ptr<FastpathDatapath>> FastpathDatapath::load(const FastpathOptions& options) {
    std::unique_ptr<FastpathDatapath> datapath(new FastpathDatapath(options));
    const std::string map_dir = options.pin_root + "/maps";
    LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = map_dir.c_str());
    auto skel = BpfSkeleton<fastpath_sockmap_bpf>::open(&open_opts, "fastpath_sockmap");
    if (!skel) return skel.error();
    // Same sizes as the redirect objects' view of workload_by_netns, or libbpf refuses the pin.
    bpf_map__set_max_entries((*skel)->maps.workload_by_netns, options.max_workloads);
    bpf_map__set_max_entries((*skel)->maps.fastpath_workload_kinds, options.max_workloads);
    bpf_map__set_max_entries((*skel)->maps.fastpath_counters,
                             options.max_workloads * MESHLANE_FASTPATH_COUNTER_STRIDE);
    (*skel)->rodata->reader_policy = options.reader_policy;
    if (auto loaded = skel->load("fastpath_sockmap"); !loaded) return loaded.error();
    Impl& impl = *datapath->impl_;
    impl.skel = std::move(*skel);
    impl.kinds_map = bpf_map__fd(impl.skel->maps.fastpath_workload_kinds);
    impl.counters_map = bpf_map__fd(impl.skel->maps.fastpath_counters);
    impl.pod_addrs_map = bpf_map__fd(impl.skel->maps.fastpath_pod_addrs);
    impl.possible_cpus = libbpf_num_possible_cpus();
    if (impl.possible_cpus <= 0) return Error::from_libbpf(impl.possible_cpus, "count CPUs");

    const std::string dir = options.pin_root + "/" + kFastpathDirName;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return Error::from_errno(ec.value(), "create " + dir);
    if (auto linked = ensure_pinned_link(
            dir + "/" + kSkMsgPin, bpf_program__fd(impl.skel->progs.fastpath_msg),
            bpf_map__fd(impl.skel->maps.fastpath_peers), BPF_SK_MSG_VERDICT,
            "fastpath_msg to the fastpath_peers SOCKHASH");
        !linked)
        return linked.error();
    return datapath;
}

Status FastpathDatapath::attach(const std::string& workload_pin_dir, int cgroup_fd,
                                const std::string& cgroup_path) {
    auto linked =
        ensure_pinned_link(workload_pin_dir + "/" + kFastpathSockopsPin,
                           bpf_program__fd(impl_->skel->progs.fastpath_sockops), cgroup_fd,
                           BPF_CGROUP_SOCK_OPS, "fastpath_sockops to cgroup " + cgroup_path);
    if (!linked) return linked.error();
    return Ok{};
}

Status FastpathDatapath::detach(const std::string& workload_pin_dir) {
    return detach_pinned_link(workload_pin_dir + "/" + kFastpathSockopsPin);
}

Status FastpathDatapath::set_kinds(std::uint32_t workload_id, std::uint32_t kinds) {
    if (bpf_map_update_elem(impl_->kinds_map, &workload_id, &kinds, BPF_ANY) != 0)
        return Error::last_errno("write fast-path kinds of workload id " +
                                 std::to_string(workload_id));
    return Ok{};
}

std::uint32_t FastpathDatapath::kinds(std::uint32_t workload_id) const {
    std::uint32_t kinds = 0;
    if (bpf_map_lookup_elem(impl_->kinds_map, &workload_id, &kinds) != 0) return 0;
    return kinds;
}

namespace {

// Every key of the pod-address map whose value is workload_id.
std::vector<std::uint32_t> pod_addresses_of(int map_fd, std::uint32_t workload_id) {
    std::vector<std::uint32_t> found;
    std::uint32_t key = 0, next = 0, owner = 0;
    const std::uint32_t* prev = nullptr;
    while (bpf_map_get_next_key(map_fd, prev, &next) == 0) {
        if (bpf_map_lookup_elem(map_fd, &next, &owner) == 0 && owner == workload_id)
            found.push_back(next);
        key = next;
        prev = &key;
    }
    return found;
}

}  // namespace

Status FastpathDatapath::set_pod_addresses(std::uint32_t workload_id,
                                           const std::vector<std::uint32_t>& ipv4) {
    for (std::uint32_t old : pod_addresses_of(impl_->pod_addrs_map, workload_id))
        if (std::find(ipv4.begin(), ipv4.end(), old) == ipv4.end())
            (void)bpf_map_delete_elem(impl_->pod_addrs_map, &old);
    for (std::uint32_t address : ipv4)
        if (bpf_map_update_elem(impl_->pod_addrs_map, &address, &workload_id, BPF_ANY) != 0)
            return Error::last_errno("write fast-path pod address of workload id " +
                                     std::to_string(workload_id));
    return Ok{};
}

Status FastpathDatapath::clear_workload(std::uint32_t workload_id) {
    if (auto off = set_kinds(workload_id, 0); !off) return off;
    if (auto gone = set_pod_addresses(workload_id, {}); !gone) return gone;
    std::vector<std::uint64_t> zeros(static_cast<std::size_t>(impl_->possible_cpus), 0);
    for (std::uint32_t c = 0; c < MESHLANE_FP_COUNTER_MAX; ++c) {
        std::uint32_t key = workload_id * MESHLANE_FASTPATH_COUNTER_STRIDE + c;
        if (bpf_map_update_elem(impl_->counters_map, &key, zeros.data(), BPF_ANY) != 0)
            return Error::last_errno("reset fast-path counters");
    }
    return Ok{};
}

FastpathCounters FastpathDatapath::counters(std::uint32_t workload_id) const {
    FastpathCounters totals{};
    std::vector<std::uint64_t> per_cpu(static_cast<std::size_t>(impl_->possible_cpus));
    for (std::uint32_t c = 0; c < MESHLANE_FP_COUNTER_MAX; ++c) {
        std::uint32_t key = workload_id * MESHLANE_FASTPATH_COUNTER_STRIDE + c;
        if (bpf_map_lookup_elem(impl_->counters_map, &key, per_cpu.data()) != 0) continue;
        for (auto v : per_cpu) totals[c] += v;
    }
    return totals;
}

}  // namespace meshlane
