#include "agent/loader/redirect_datapath.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>

#include "agent/loader/bpf_skeleton.h"
#include "agent/loader/pinned_link.h"
#include "dns_capture.skel.h"
#include "redirect_inbound.skel.h"
#include "redirect_outbound.skel.h"

namespace meshlane {

namespace {

// redirect_outbound.skel.h names its program struct anonymously; reach it through decltype.
using OutboundProgs = decltype(redirect_outbound_bpf::progs);

struct CgroupProgramRef {
    const char* pin_name;
    const char* program_name;
    bpf_attach_type attach_type;
    bpf_program* OutboundProgs::*program;
};

constexpr CgroupProgramRef kCgroupPrograms[] = {
    {"connect4", "redirect_connect4", BPF_CGROUP_INET4_CONNECT, &OutboundProgs::redirect_connect4},
    {"connect6", "redirect_connect6", BPF_CGROUP_INET6_CONNECT, &OutboundProgs::redirect_connect6},
    {"getpeername4", "redirect_getpeername4", BPF_CGROUP_INET4_GETPEERNAME,
     &OutboundProgs::redirect_getpeername4},
    {"getpeername6", "redirect_getpeername6", BPF_CGROUP_INET6_GETPEERNAME,
     &OutboundProgs::redirect_getpeername6},
    {"getsockname4", "redirect_getsockname4", BPF_CGROUP_INET4_GETSOCKNAME,
     &OutboundProgs::redirect_getsockname4},
    {"getsockname6", "redirect_getsockname6", BPF_CGROUP_INET6_GETSOCKNAME,
     &OutboundProgs::redirect_getsockname6},
    {"getsockopt", "redirect_getsockopt", BPF_CGROUP_GETSOCKOPT,
     &OutboundProgs::redirect_getsockopt},
    {"sockops", "redirect_sockops", BPF_CGROUP_SOCK_OPS, &OutboundProgs::redirect_sockops},
};
// DNS capture for unconnected UDP (bpf/dns_capture.bpf.c): attached only to workloads that
// capture DNS, so every other pod's UDP sends run no program.
using DnsProgs = decltype(dns_capture_bpf::progs);
struct DnsProgramRef {
    const char* pin_name;
    const char* program_name;
    bpf_attach_type attach_type;
    bpf_program* DnsProgs::*program;
};
constexpr DnsProgramRef kDnsPrograms[] = {
    {"dns_sendmsg4", "dns_sendmsg4", BPF_CGROUP_UDP4_SENDMSG, &DnsProgs::dns_sendmsg4},
    {"dns_sendmsg6", "dns_sendmsg6", BPF_CGROUP_UDP6_SENDMSG, &DnsProgs::dns_sendmsg6},
    {"dns_recvmsg4", "dns_recvmsg4", BPF_CGROUP_UDP4_RECVMSG, &DnsProgs::dns_recvmsg4},
    {"dns_recvmsg6", "dns_recvmsg6", BPF_CGROUP_UDP6_RECVMSG, &DnsProgs::dns_recvmsg6},
};
constexpr const char* kSkLookupPin = "sk_lookup";
constexpr const char* kSkLookupProgram = "redirect_sk_lookup";

constexpr const char* kCounterNames[MESHLANE_REDIRECT_COUNTER_MAX] = {
    "outbound_redirected",
    "outbound_pass_excluded_port",
    "outbound_pass_inbound_passthrough_source",
    "outbound_pass_loopback",
    "outbound_pass_proxy_owner",
    "outbound_pass_excluded_cidr",
    "outbound_pass_not_included",
    "outbound_proxy_self_to_inbound",
    "inbound_steered",
    "inbound_pass_excluded_port",
    "inbound_pass_local_source",
    "inbound_refused_no_listener",
    "inbound_startup_passthrough",
    "orig_dst_answered",
    "orig_dst_miss",
    "orig_dst_tuple_lost",
    "proxy_listener_registered",
    "getpeername_rewritten",
    "outbound_startup_passthrough",
    "outbound_pass_family_not_captured",
    "inbound_pass_family_not_captured",
    "dns_redirected_udp",
    "dns_redirected_tcp",
    "dns_pass_proxy_owner",
    "dns_pass_not_nameserver",
    "dns_reply_source_restored",
    "orig_dst_not_redirected",
};

// The names mirror enum meshlane_redirect_counter; a counter added there without a name here
// would otherwise reach the API as a null pointer.
constexpr bool every_counter_named() {
    for (const char* name : kCounterNames)
        if (name == nullptr) return false;
    return true;
}
static_assert(every_counter_named(), "name every meshlane_redirect_counter in kCounterNames");

bool path_exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

Status make_dirs(const std::string& path) {
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    if (ec) return Error::from_errno(ec.value(), "create " + path);
    return Ok{};
}

template <typename Key>
std::vector<Key> keys_of(int map_fd) {
    std::vector<Key> keys;
    Key key{}, next{};
    const void* previous = nullptr;
    while (bpf_map_get_next_key(map_fd, previous, &next) == 0) {
        keys.push_back(next);
        key = next;
        previous = &key;
    }
    return keys;
}

}  // namespace

const char* redirect_counter_name(unsigned counter) {
    return counter < MESHLANE_REDIRECT_COUNTER_MAX ? kCounterNames[counter] : "unknown";
}

struct RedirectDatapath::Impl {
    BpfSkeleton<redirect_outbound_bpf> outbound;
    BpfSkeleton<dns_capture_bpf> dns;  // empty when dns_unavailable says why
    Status dns_unavailable;
    int workload_map = -1;
    int port_rules = -1;
    int cidr_rules = -1;
    int proxy_ids = -1;
    int listener_map = -1;
    int counters_map = -1;
    int possible_cpus = 1;
};

RedirectDatapath::RedirectDatapath(DatapathOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>()) {}
RedirectDatapath::~RedirectDatapath() = default;

// bpffs refuses names containing '.' (EPERM), which workload names may hold ("shop.web-0"):
// the directory spells '.' as '~', a character workload names never contain.
std::string RedirectDatapath::workload_pin_dir(const std::string& name) const {
    std::string dir_name = name;
    std::replace(dir_name.begin(), dir_name.end(), '.', '~');
    return options_.pin_root + "/workloads/" + dir_name;
}

// Map sizes depend on max_workloads; the same values must be set on every object that shares
// the pinned maps, or libbpf refuses to reuse them.
template <typename Skel>
static void size_maps(Skel* skel, std::uint32_t max_workloads) {
    bpf_map__set_max_entries(skel->maps.workload_by_netns, max_workloads);
    bpf_map__set_max_entries(skel->maps.inbound_listener, max_workloads * MESHLANE_LISTENER_SLOTS);
    bpf_map__set_max_entries(skel->maps.redirect_counters,
                             max_workloads * MESHLANE_REDIRECT_COUNTER_STRIDE);
}

static std::string pinned_map_hint(const std::string& map_dir) {
    return "the maps pinned under " + map_dir +
           " do not match this agent (max_workloads changed, or another meshlane version); "
           "restore the setting or run `meshlane uninstall`";
}

Result<std::unique_ptr<RedirectDatapath>> RedirectDatapath::load(const DatapathOptions& options) {
    if (options.max_workloads == 0 || options.max_workloads > 65536)
        return Error::invalid("max_workloads must be within 1..65536");
    std::unique_ptr<RedirectDatapath> datapath(new RedirectDatapath(options));
    const std::string map_dir = options.pin_root + "/maps";
    if (auto made = make_dirs(map_dir); !made) return made.error();

    LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = map_dir.c_str());
    auto outbound = BpfSkeleton<redirect_outbound_bpf>::open(&open_opts, "redirect_outbound");
    if (!outbound) return outbound.error();
    size_maps(outbound->get(), options.max_workloads);
    if (auto loaded = outbound->load("redirect_outbound"); !loaded) {
        if (loaded.error().code == EINVAL)
            return loaded.error().with_context(pinned_map_hint(map_dir) +
                                               " or the verifier "
                                               "rejected a program (see the log above)");
        return loaded.error();
    }
    Impl& impl = *datapath->impl_;
    impl.outbound = std::move(*outbound);
    auto* skel = impl.outbound.get();
    impl.workload_map = bpf_map__fd(skel->maps.workload_by_netns);
    impl.port_rules = bpf_map__fd(skel->maps.port_rules);
    impl.cidr_rules = bpf_map__fd(skel->maps.cidr_rules);
    impl.proxy_ids = bpf_map__fd(skel->maps.proxy_ids);
    impl.listener_map = bpf_map__fd(skel->maps.inbound_listener);
    impl.counters_map = bpf_map__fd(skel->maps.redirect_counters);
    impl.possible_cpus = libbpf_num_possible_cpus();
    if (impl.possible_cpus <= 0) return Error::from_libbpf(impl.possible_cpus, "count CPUs");
    if (auto made = make_dirs(options.pin_root + "/workloads"); !made) return made.error();
    impl.dns_unavailable = datapath->load_dns_capture(&open_opts);
    if (!impl.dns_unavailable)
        spdlog::warn("DNS capture unavailable: {}", impl.dns_unavailable.error().message);
    return datapath;
}

// A feature of its own: without it (a kernel that rejects the programs) the rest of the
// datapath works and enrolments that ask for DNS capture are refused with the reason.
Status RedirectDatapath::load_dns_capture(const bpf_object_open_opts* open_opts) {
    auto dns = BpfSkeleton<dns_capture_bpf>::open(open_opts, "dns_capture");
    if (!dns) return dns.error();
    size_maps(dns->get(), options_.max_workloads);
    if (auto loaded = dns->load("dns_capture"); !loaded) return loaded.error();
    impl_->dns = std::move(*dns);
    return Ok{};
}

Status RedirectDatapath::dns_capture_available() const { return impl_->dns_unavailable; }

void RedirectDatapath::disable_dns_capture(const std::string& reason) {
    impl_->dns_unavailable = Error{ENOTSUP, reason};
}

namespace {

port_rule_key port_key(std::uint32_t id, std::uint16_t port, std::uint8_t kind) {
    port_rule_key key{};
    key.workload_id = id;
    key.port = port;
    key.kind = kind;
    return key;
}

cidr_rule_key cidr_key(std::uint32_t id, const std::array<std::uint8_t, 16>& addr, bool is_v4,
                       unsigned mapped_prefix_len, std::uint32_t kind) {
    cidr_rule_key key{};
    key.prefixlen = MESHLANE_CIDR_KEY_PREFIX_BITS + mapped_prefix_len;
    key.workload_id = htonl(id);
    key.kind = htonl(MESHLANE_CIDR_KEY_KIND(kind, is_v4));
    std::memcpy(key.addr, addr.data(), 16);
    return key;
}

template <typename Key>
bool same_key(const Key& a, const Key& b) {
    return std::memcmp(&a, &b, sizeof(Key)) == 0;
}

// Rules are replaced write-then-prune: every wanted entry is written first, then the entries of
// the workload that are no longer wanted are deleted. A running workload (agent restart,
// address refresh) never sees a moment without its rules: a missing pod-local CIDR would send
// the proxy's own forward to the app back into the inbound listener.
template <typename Key>
Status replace_entries(int map_fd, const std::vector<Key>& wanted,
                       const std::function<bool(const Key&)>& owned, const char* what) {
    const std::uint8_t one = 1;
    for (const auto& key : wanted)
        if (bpf_map_update_elem(map_fd, &key, &one, BPF_ANY) != 0)
            return Error::last_errno(std::string("write ") + what);
    for (const auto& key : keys_of<Key>(map_fd)) {
        if (!owned(key)) continue;
        bool keep = false;
        for (const auto& w : wanted) keep = keep || same_key(key, w);
        if (!keep && bpf_map_delete_elem(map_fd, &key) != 0 && errno != ENOENT)
            return Error::last_errno(std::string("delete stale ") + what);
    }
    return Ok{};
}

void add_pod_addresses(std::vector<cidr_rule_key>& keys, std::uint32_t id,
                       const std::vector<PodAddress>& pod_addresses) {
    for (const auto& address : pod_addresses)
        keys.push_back(cidr_key(id, address.addr, address.is_v4, 128, MESHLANE_CIDR_POD_LOCAL));
}

std::vector<proxy_id_key> proxy_id_keys(std::uint32_t id, const WorkloadSpec& spec) {
    std::vector<proxy_id_key> keys;
    for (auto uid : spec.additional_proxy_uids) keys.push_back({id, MESHLANE_PROXY_ID_UID, uid});
    for (auto gid : spec.additional_proxy_gids) keys.push_back({id, MESHLANE_PROXY_ID_GID, gid});
    return keys;
}

bool is_pod_local(const cidr_rule_key& key) {
    return (ntohl(key.kind) >> 8) == MESHLANE_CIDR_POD_LOCAL;
}

}  // namespace

Status RedirectDatapath::write_pod_addresses(std::uint32_t id,
                                             const std::vector<PodAddress>& pod_addresses) {
    std::vector<cidr_rule_key> wanted;
    add_pod_addresses(wanted, id, pod_addresses);
    return replace_entries<cidr_rule_key>(
        impl_->cidr_rules, wanted,
        [id](const cidr_rule_key& key) {
            return ntohl(key.workload_id) == id && is_pod_local(key);
        },
        "pod address rule");
}

Status RedirectDatapath::write_rules(std::uint32_t id, const WorkloadSpec& spec,
                                     const std::vector<PodAddress>& pod_addresses) {
    struct PortList {
        const std::vector<std::uint16_t>& ports;
        std::uint8_t kind;
    };
    const std::vector<std::uint16_t> always_excluded = MESHLANE_ALWAYS_EXCLUDED_INBOUND_PORTS;
    const PortList lists[] = {
        {spec.exclude_outbound_ports, MESHLANE_PORT_EXCLUDE_OUTBOUND},
        {spec.exclude_inbound_ports, MESHLANE_PORT_EXCLUDE_INBOUND},
        {always_excluded, MESHLANE_PORT_EXCLUDE_INBOUND},
        {spec.include_inbound_ports, MESHLANE_PORT_INCLUDE_INBOUND},
        {spec.include_outbound_ports, MESHLANE_PORT_INCLUDE_OUTBOUND},
    };
    std::vector<port_rule_key> ports;
    for (const auto& list : lists)
        for (auto port : list.ports) ports.push_back(port_key(id, port, list.kind));
    std::vector<cidr_rule_key> cidrs;
    for (const auto& cidr : spec.exclude_cidrs)
        cidrs.push_back(
            cidr_key(id, cidr.addr, cidr.is_v4, cidr.mapped_prefix_len(), MESHLANE_CIDR_EXCLUDE));
    if (!spec.include_all_cidrs)
        for (const auto& cidr : spec.include_cidrs)
            cidrs.push_back(cidr_key(id, cidr.addr, cidr.is_v4, cidr.mapped_prefix_len(),
                                     MESHLANE_CIDR_INCLUDE));
    if (spec.host_loopback_cidr != Cidr::localhost_v4()) {
        const Cidr& lo = spec.host_loopback_cidr;
        cidrs.push_back(
            cidr_key(id, lo.addr, lo.is_v4, lo.mapped_prefix_len(), MESHLANE_CIDR_HOST_LOOPBACK));
    }
    add_pod_addresses(cidrs, id, pod_addresses);
    for (const auto& server : spec.dns_servers)
        cidrs.push_back(cidr_key(id, server.addr, server.is_v4, server.mapped_prefix_len(),
                                 MESHLANE_CIDR_DNS_SERVER));
    if (auto put = replace_entries<proxy_id_key>(
            impl_->proxy_ids, proxy_id_keys(id, spec),
            [id](const proxy_id_key& key) { return key.workload_id == id; }, "proxy id");
        !put)
        return put;
    if (auto put = replace_entries<port_rule_key>(
            impl_->port_rules, ports,
            [id](const port_rule_key& key) { return key.workload_id == id; }, "port rule");
        !put)
        return put;
    return replace_entries<cidr_rule_key>(
        impl_->cidr_rules, cidrs,
        [id](const cidr_rule_key& key) { return ntohl(key.workload_id) == id; }, "CIDR rule");
}

Status RedirectDatapath::attach(const AttachTarget& target) {
    const std::string dir = workload_pin_dir(target.name);
    bool dir_created = !path_exists(dir);
    if (auto made = make_dirs(dir); !made) return made.error();
    std::vector<std::string> created;
    auto rollback = [&](const Error& error) -> Status {
        for (auto it = created.rbegin(); it != created.rend(); ++it) (void)detach_pinned_link(*it);
        if (dir_created) ::rmdir(dir.c_str());
        return error;
    };

    auto* skel = impl_->outbound.get();
    for (const auto& program : kCgroupPrograms) {
        const std::string pin = dir + "/" + program.pin_name;
        int prog_fd = bpf_program__fd(skel->progs.*program.program);
        auto made = ensure_pinned_link(
            pin, prog_fd, target.cgroup_fd, program.attach_type,
            std::string(program.program_name) + " to cgroup " + target.cgroup_path);
        if (!made) return rollback(made.error());
        if (*made) created.push_back(pin);
    }
    if (auto dns = attach_dns_capture(target, dir, created); !dns) return rollback(dns.error());

    // One sk_lookup instance per workload: the program type cannot read its netns cookie.
    const std::string map_dir = options_.pin_root + "/maps";
    LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = map_dir.c_str());
    auto inbound = BpfSkeleton<redirect_inbound_bpf>::open(&open_opts, "redirect_inbound");
    if (!inbound) return rollback(inbound.error());
    (*inbound)->rodata->workload_id = target.workload_id;
    (*inbound)->rodata->netns_cookie = target.netns_cookie;
    size_maps(inbound->get(), options_.max_workloads);
    if (auto loaded = inbound->load("redirect_inbound for " + target.name); !loaded)
        return rollback(loaded.error());
    const std::string pin = dir + "/" + kSkLookupPin;
    auto made = ensure_pinned_link(
        pin, bpf_program__fd((*inbound)->progs.redirect_sk_lookup), target.netns_fd, BPF_SK_LOOKUP,
        std::string(kSkLookupProgram) + " to netns " + target.netns_path);
    if (!made) return rollback(made.error());
    return Ok{};
}

Status RedirectDatapath::attach_dns_capture(const AttachTarget& target, const std::string& dir,
                                            std::vector<std::string>& created) {
    for (const auto& program : kDnsPrograms) {
        const std::string pin = dir + "/" + program.pin_name;
        if (!target.dns_capture) {
            // Turned off (a re-enrolment with other settings is refused, but a restarted agent
            // with an edited state file is not): no stale program.
            if (auto gone = detach_pinned_link(pin); !gone) return gone;
            continue;
        }
        if (!impl_->dns_unavailable)
            return impl_->dns_unavailable.error().with_context("DNS capture unavailable");
        int prog_fd = bpf_program__fd(impl_->dns.get()->progs.*program.program);
        auto made = ensure_pinned_link(
            pin, prog_fd, target.cgroup_fd, program.attach_type,
            std::string(program.program_name) + " to cgroup " + target.cgroup_path);
        if (!made) return made.error();
        if (*made) created.push_back(pin);
    }
    return Ok{};
}

Status RedirectDatapath::activate(std::uint64_t netns_cookie, const workload_config& config) {
    if (bpf_map_update_elem(impl_->workload_map, &netns_cookie, &config, BPF_ANY) != 0) {
        if (errno == E2BIG)
            return Error{E2BIG, "workload_by_netns is full (max_workloads=" +
                                    std::to_string(options_.max_workloads) + ")"};
        return Error::last_errno("write workload config");
    }
    return Ok{};
}

Status RedirectDatapath::deactivate(std::uint64_t netns_cookie) {
    if (bpf_map_delete_elem(impl_->workload_map, &netns_cookie) != 0 && errno != ENOENT)
        return Error::last_errno("delete workload config");
    return Ok{};
}

Status RedirectDatapath::detach(const std::string& name) {
    const std::string dir = workload_pin_dir(name);
    Status first_error;
    auto note = [&](Status status) {
        if (!status && first_error) first_error = status;
    };
    note(detach_pinned_link(dir + "/" + kSkLookupPin));
    for (const auto& program : kCgroupPrograms)
        note(detach_pinned_link(dir + "/" + program.pin_name));
    for (const auto& program : kDnsPrograms) note(detach_pinned_link(dir + "/" + program.pin_name));
    if (::rmdir(dir.c_str()) != 0 && errno != ENOENT)
        note(Error::last_errno("remove " + dir + " (unexpected files left in it?)"));
    return first_error;
}

Status RedirectDatapath::clear_workload(std::uint32_t id) {
    if (auto cleared = replace_entries<proxy_id_key>(
            impl_->proxy_ids, {}, [id](const proxy_id_key& key) { return key.workload_id == id; },
            "proxy id");
        !cleared)
        return cleared;
    if (auto cleared = replace_entries<port_rule_key>(
            impl_->port_rules, {}, [id](const port_rule_key& key) { return key.workload_id == id; },
            "port rule");
        !cleared)
        return cleared;
    if (auto cleared = replace_entries<cidr_rule_key>(
            impl_->cidr_rules, {},
            [id](const cidr_rule_key& key) { return ntohl(key.workload_id) == id; }, "CIDR rule");
        !cleared)
        return cleared;
    for (unsigned slot = 0; slot < MESHLANE_LISTENER_SLOTS; ++slot) {
        std::uint32_t key = id * MESHLANE_LISTENER_SLOTS + slot;
        bpf_map_delete_elem(impl_->listener_map, &key);
    }
    std::vector<std::uint64_t> zeros(static_cast<std::size_t>(impl_->possible_cpus), 0);
    // The whole stride: counters and the time slots at its end.
    for (std::uint32_t c = 0; c < MESHLANE_REDIRECT_COUNTER_STRIDE; ++c) {
        std::uint32_t key = id * MESHLANE_REDIRECT_COUNTER_STRIDE + c;
        if (bpf_map_update_elem(impl_->counters_map, &key, zeros.data(), BPF_ANY) != 0)
            return Error::last_errno("reset counters");
    }
    return Ok{};
}

Status RedirectDatapath::register_inbound_listener(std::uint32_t id, int socket_fd) {
    int domain = 0;
    socklen_t len = sizeof(domain);
    if (::getsockopt(socket_fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0)
        return Error::last_errno("inspect the proxy's inbound listener");
    int v6only = 1;
    len = sizeof(v6only);
    if (domain == AF_INET6 &&
        ::getsockopt(socket_fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len) != 0)
        return Error::last_errno("inspect the proxy's inbound listener");
    // Same slots as sockops on_listen: a dual-stack IPv6 listener serves IPv4 too.
    std::vector<unsigned> slots;
    if (domain == AF_INET6) slots.push_back(MESHLANE_LISTENER_SLOT_V6);
    if (domain == AF_INET || !v6only) slots.push_back(MESHLANE_LISTENER_SLOT_V4);
    for (unsigned slot : slots) {
        std::uint32_t key = id * MESHLANE_LISTENER_SLOTS + slot;
        std::uint64_t value = static_cast<std::uint64_t>(socket_fd);
        if (bpf_map_update_elem(impl_->listener_map, &key, &value, BPF_ANY) != 0)
            return Error::last_errno("register the proxy's inbound listener");
    }
    return Ok{};
}

bool RedirectDatapath::inbound_listener_registered(std::uint32_t id, unsigned slot) const {
    std::uint32_t key = id * MESHLANE_LISTENER_SLOTS + slot;
    std::uint64_t cookie = 0;  // user space reads a SOCKMAP entry as the socket cookie
    return bpf_map_lookup_elem(impl_->listener_map, &key, &cookie) == 0;
}

RedirectCounters RedirectDatapath::counters(std::uint32_t id) const {
    RedirectCounters totals{};
    std::vector<std::uint64_t> per_cpu(static_cast<std::size_t>(impl_->possible_cpus));
    for (std::uint32_t c = 0; c < MESHLANE_REDIRECT_COUNTER_MAX; ++c) {
        std::uint32_t key = id * MESHLANE_REDIRECT_COUNTER_STRIDE + c;
        if (bpf_map_lookup_elem(impl_->counters_map, &key, per_cpu.data()) != 0) continue;
        for (auto v : per_cpu) totals[c] += v;
    }
    return totals;
}

RedirectTimes RedirectDatapath::times(std::uint32_t id) const {
    std::vector<std::uint64_t> per_cpu(static_cast<std::size_t>(impl_->possible_cpus));
    // FIRST slots: the earliest non-zero over CPUs; LAST slots: the latest.
    auto read = [&](std::uint32_t slot, bool earliest) {
        std::uint64_t result = 0;
        std::uint32_t key = id * MESHLANE_REDIRECT_COUNTER_STRIDE + slot;
        if (bpf_map_lookup_elem(impl_->counters_map, &key, per_cpu.data()) != 0) return result;
        for (auto v : per_cpu)
            if (v != 0 && (result == 0 || (earliest ? v < result : v > result))) result = v;
        return result;
    };
    return RedirectTimes{read(MESHLANE_TIME_INBOUND_REFUSED_FIRST, true),
                         read(MESHLANE_TIME_INBOUND_REFUSED_LAST, false),
                         read(MESHLANE_TIME_LISTENER_REGISTERED_FIRST, true),
                         read(MESHLANE_TIME_LISTENER_REGISTERED_LAST, false)};
}

std::vector<AttachedProgram> RedirectDatapath::attached_programs(const std::string& name) const {
    std::vector<AttachedProgram> programs;
    const std::string dir = workload_pin_dir(name);
    auto describe = [&](const std::string& pin_name, const std::string& program_name) {
        const std::string pin = dir + "/" + pin_name;
        UniqueFd link(bpf_obj_get(pin.c_str()));
        if (!link.valid()) return;
        bpf_link_info info{};
        std::uint32_t len = sizeof(info);
        if (bpf_obj_get_info_by_fd(link.get(), &info, &len) != 0) return;
        AttachedProgram program;
        program.program = program_name;
        program.pin = pin;
        program.link_id = info.id;
        program.prog_id = info.prog_id;
        if (info.type == BPF_LINK_TYPE_CGROUP)
            program.attach_to = "cgroup:" + std::to_string(info.cgroup.cgroup_id);
        else if (info.type == BPF_LINK_TYPE_NETNS)
            program.attach_to = "netns:" + std::to_string(info.netns.netns_ino);
        programs.push_back(std::move(program));
    };
    for (const auto& program : kCgroupPrograms) describe(program.pin_name, program.program_name);
    for (const auto& program : kDnsPrograms) describe(program.pin_name, program.program_name);
    describe(kSkLookupPin, kSkLookupProgram);
    return programs;
}

std::vector<std::string> RedirectDatapath::pinned_workloads() const {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& entry :
         std::filesystem::directory_iterator(options_.pin_root + "/workloads", ec))
        if (entry.is_directory()) {
            std::string name = entry.path().filename().string();
            std::replace(name.begin(), name.end(), '~', '.');
            names.push_back(std::move(name));
        }
    return names;
}

std::vector<std::uint64_t> RedirectDatapath::active_netns_cookies() const {
    return keys_of<std::uint64_t>(impl_->workload_map);
}

}  // namespace meshlane
