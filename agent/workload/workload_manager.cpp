#include "agent/workload/workload_manager.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "agent/common/unique_fd.h"
#include "agent/workload/listener_adoption.h"

namespace meshlane {

namespace json = boost::json;

namespace {

constexpr const char* kStateFile = "workloads.json";
constexpr int kStateVersion = 1;

std::string joined_fields(const std::vector<std::string>& fields) {
    std::string out;
    for (const auto& f : fields) out += (out.empty() ? "" : ", ") + f;
    return out;
}

std::uint64_t inode_of(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_ino) : 0;
}

std::vector<PodAddress> addresses_from_text(const std::vector<std::string>& texts) {
    std::vector<PodAddress> addresses;
    for (const auto& text : texts) {
        PodAddress a;
        a.text = text;
        in_addr v4{};
        if (::inet_pton(AF_INET, text.c_str(), &v4) == 1) {
            a.is_v4 = true;
            a.addr[10] = a.addr[11] = 0xff;
            std::memcpy(&a.addr[12], &v4, 4);
        } else if (::inet_pton(AF_INET6, text.c_str(), a.addr.data()) != 1) {
            continue;
        }
        addresses.push_back(a);
    }
    return addresses;
}

}  // namespace

WorkloadManager::WorkloadManager(RedirectDatapath& datapath, ManagerOptions options)
    : datapath_(datapath), options_(std::move(options)) {}

workload_config WorkloadManager::config_of(const Record& record) {
    const WorkloadSpec& spec = record.spec;
    workload_config config{};
    config.workload_id = record.workload_id;
    config.proxy_uid = spec.proxy_uid;
    config.proxy_gid = spec.proxy_gid;
    config.outbound_port = spec.outbound_port;
    config.inbound_port = spec.inbound_port;
    if (spec.include_all_cidrs) config.flags |= MESHLANE_WL_INCLUDE_ALL_CIDRS;
    if (spec.include_all_inbound_ports) config.flags |= MESHLANE_WL_INCLUDE_ALL_INBOUND_PORTS;
    if (spec.proxy_self_to_inbound) config.flags |= MESHLANE_WL_PROXY_SELF_TO_INBOUND;
    if (spec.startup_policy == StartupPolicy::kPassthrough)
        config.flags |= MESHLANE_WL_STARTUP_PASSTHROUGH;
    // istio-iptables' HasLoopBackIP: any include CIDR written with a loopback address.
    for (const auto& cidr : spec.include_cidrs)
        if (cidr.is_loopback()) config.flags |= MESHLANE_WL_INCLUDE_HAS_LOOPBACK;
    if (!spec.additional_proxy_uids.empty() || !spec.additional_proxy_gids.empty())
        config.flags |= MESHLANE_WL_MORE_PROXY_IDS;
    if (!spec.capture_ipv4) config.flags |= MESHLANE_WL_NO_CAPTURE_V4;
    if (!spec.capture_ipv6) config.flags |= MESHLANE_WL_NO_CAPTURE_V6;
    if (spec.host_loopback_cidr != Cidr::localhost_v4())
        config.flags |= MESHLANE_WL_CUSTOM_HOST_LOOPBACK;
    if (spec.dns_capture == DnsCapture::kNameservers)
        config.flags |= MESHLANE_WL_DNS_CAPTURE_NAMESERVERS;
    if (spec.dns_capture == DnsCapture::kAll) config.flags |= MESHLANE_WL_DNS_CAPTURE_ALL;
    config.dns_port = spec.dns_port;
    return config;
}

Result<std::uint32_t> WorkloadManager::free_id_locked() const {
    std::set<std::uint32_t> used;
    for (const auto& [_, r] : records_) used.insert(r.workload_id);
    for (std::uint32_t id = 0; id < datapath_.max_workloads(); ++id)
        if (!used.count(id)) return id;
    return Error{ENOSPC, "no free workload slot: max_workloads=" +
                             std::to_string(datapath_.max_workloads()) + " are enrolled"};
}

// Order matters: rules and links first (inert without a config entry), listener adoption, then
// the config entry that switches the workload on in one map update.
Status WorkloadManager::bring_up_locked(const Record& record, const CgroupHandle& cgroup,
                                        const NetnsHandle& netns) {
    if (auto rules = datapath_.write_rules(record.workload_id, record.spec, netns.addresses);
        !rules) {
        (void)datapath_.clear_workload(record.workload_id);
        return rules;
    }
    AttachTarget target{record.spec.name, record.workload_id, record.netns_cookie, cgroup.fd.get(),
                        cgroup.path,      netns.fd.get(),     netns.path};
    target.dns_capture = record.spec.dns_capture != DnsCapture::kOff;
    if (auto attached = datapath_.attach(target); !attached) {
        (void)datapath_.clear_workload(record.workload_id);
        return attached;
    }
    if (auto fast = fast_path_up_locked(record, cgroup); !fast) {
        (void)fast_path_down_locked(record);
        (void)datapath_.detach(record.spec.name);
        (void)datapath_.clear_workload(record.workload_id);
        return fast;
    }
    if (!datapath_.inbound_listener_registered(record.workload_id, MESHLANE_LISTENER_SLOT_V4) &&
        !datapath_.inbound_listener_registered(record.workload_id, MESHLANE_LISTENER_SLOT_V6))
        adopt_listeners_locked(record);
    if (auto active = datapath_.activate(record.netns_cookie, config_of(record)); !active) {
        (void)fast_path_down_locked(record);
        (void)datapath_.detach(record.spec.name);
        (void)datapath_.clear_workload(record.workload_id);
        return active;
    }
    return Ok{};
}

// The fast path's sockops link sits in the workload's pin directory next to the redirect
// links; its kinds entry is what switches acceleration on for new connections.
Status WorkloadManager::fast_path_up_locked(const Record& record, const CgroupHandle& cgroup) {
    if (options_.fastpath == nullptr) return Ok{};
    const std::uint32_t kinds =
        (record.spec.fast_path ? static_cast<std::uint32_t>(MESHLANE_FASTPATH_APP_PROXY) : 0u) |
        (record.spec.fast_path_proxy_proxy
             ? static_cast<std::uint32_t>(MESHLANE_FASTPATH_PROXY_PROXY)
             : 0u);
    if (kinds == 0 || !options_.fast_path_available)
        return fast_path_down_locked(record);  // e.g. a restart after a failed self-test
    const std::string dir = datapath_.workload_pin_dir(record.spec.name);
    if (auto attached = options_.fastpath->attach(dir, cgroup.fd.get(), cgroup.path); !attached)
        return attached;
    if (auto addresses = fast_path_addresses_locked(record); !addresses) return addresses;
    return options_.fastpath->set_kinds(record.workload_id, kinds);
}

// proxy <-> proxy: other pods' proxies may accelerate connections to this pod's IPv4 addresses.
Status WorkloadManager::fast_path_addresses_locked(const Record& record) {
    if (options_.fastpath == nullptr || !options_.fast_path_available) return Ok{};
    std::vector<std::uint32_t> ipv4;
    if (record.spec.fast_path_proxy_proxy)
        for (const auto& a : record.addresses)
            if (a.is_v4) {
                std::uint32_t v = 0;
                std::memcpy(&v, a.addr.data() + 12, 4);  // network order, as the BPF key
                ipv4.push_back(v);
            }
    return options_.fastpath->set_pod_addresses(record.workload_id, ipv4);
}

Status WorkloadManager::fast_path_down_locked(const Record& record) {
    if (options_.fastpath == nullptr) return Ok{};
    Status first = options_.fastpath->clear_workload(record.workload_id);
    if (auto detached = options_.fastpath->detach(datapath_.workload_pin_dir(record.spec.name));
        !detached && first)
        first = detached;
    return first;
}

Status WorkloadManager::tear_down_locked(const Record& record) {
    Status first = datapath_.deactivate(record.netns_cookie);
    if (auto fast = fast_path_down_locked(record); !fast && first) first = fast;
    if (auto detached = datapath_.detach(record.spec.name); !detached && first) first = detached;
    if (auto cleared = datapath_.clear_workload(record.workload_id); !cleared && first)
        first = cleared;
    return first;
}

void WorkloadManager::adopt_listeners_locked(const Record& record) {
    const auto& spec = record.spec;
    auto listeners =
        adopt_listeners(record.netns_inode, spec.inbound_port, spec.proxy_uid, spec.proxy_gid);
    if (!listeners) {
        spdlog::warn("workload {}: cannot look for an existing proxy listener: {}", spec.name,
                     listeners.error().message);
        return;
    }
    for (auto& listener : *listeners) {
        if (auto put = datapath_.register_inbound_listener(record.workload_id, listener.fd.get());
            !put)
            spdlog::warn("workload {}: {}", spec.name, put.error().message);
        else
            spdlog::info("workload {}: adopted the proxy's {} listener on port {} (pid {})",
                         spec.name, listener.ipv6 ? "IPv6" : "IPv4", spec.inbound_port,
                         listener.pid);
    }
}

void WorkloadManager::publish(const char* type, const std::string& name,
                              std::map<std::string, std::string> details) const {
    if (options_.events == nullptr) return;
    options_.events->publish(
        events::Event{.type = type, .workload = name, .details = std::move(details)});
}

Result<EnrollResult> WorkloadManager::enroll(const WorkloadSpec& spec) {
    auto result = enroll_now(spec);
    if (options_.after_change) options_.after_change();
    return result;
}

Result<bool> WorkloadManager::unenroll(const std::string& name) {
    auto result = unenroll_now(name);
    if (options_.after_change) options_.after_change();
    return result;
}

Result<EnrollResult> WorkloadManager::enroll_now(const WorkloadSpec& spec) {
    if (auto valid = validate(spec); !valid) return valid.error();
    // Paths are resolved, type-checked and opened (never blocking) before the lock is taken: a
    // hostile path costs this call, not every other one.
    auto cgroup = open_cgroup(spec.cgroup_path, options_.cgroup2_mount);
    if (!cgroup) return cgroup.error();
    auto netns = open_netns(spec.netns_path);
    if (!netns) return netns.error();
    if (auto one_pod = refuse_node_wide(*cgroup, options_.cgroup2_mount); !one_pod)
        return one_pod.error();
    if (auto one_pod = refuse_node_wide(*netns); !one_pod) return one_pod.error();
    std::lock_guard lock(mutex_);
    if (auto it = records_.find(spec.name); it != records_.end()) {
        auto fields = differing_fields(it->second.spec, spec);
        if (fields.empty())
            return EnrollResult{EnrollOutcome::kUnchanged, status_of_locked(it->second)};
        return Error{EEXIST, "workload " + spec.name +
                                 " is already enrolled with other settings (" +
                                 joined_fields(fields) + "); unenroll it first"};
    }
    for (const auto& [name, other] : records_) {
        if (other.cgroup_id != cgroup->id && cgroups_nested(other.cgroup_resolved, cgroup->path))
            return Error{EEXIST, "cgroup " + cgroup->path + " and the cgroup " +
                                     other.cgroup_resolved + " of workload " + name +
                                     " are nested: one pod's programs would capture the other's "
                                     "processes; give each pod its own cgroup"};
        if (other.netns_cookie == netns->cookie)
            return Error{EEXIST,
                         "netns " + spec.netns_path + " is already enrolled as workload " + name};
        if (other.cgroup_id == cgroup->id)
            return Error{EEXIST,
                         "cgroup " + cgroup->path + " is already enrolled as workload " + name};
    }
    auto id = free_id_locked();
    if (!id) return id.error();

    Record record{spec,          *id,          cgroup->path,    cgroup->id,
                  netns->cookie, netns->inode, netns->addresses};
    if (auto up = bring_up_locked(record, *cgroup, *netns); !up)
        return up.error().with_context("enroll " + spec.name);
    records_[spec.name] = record;
    if (auto saved = persist_locked(); !saved) {
        (void)tear_down_locked(record);
        records_.erase(spec.name);
        return saved.error().with_context("enroll " + spec.name);
    }
    spdlog::info("enrolled workload {} (id {}, cgroup {}, netns {})", spec.name, record.workload_id,
                 record.cgroup_resolved, spec.netns_path);
    publish(events::kWorkloadEnrolled, spec.name,
            {{"workload_id", std::to_string(record.workload_id)},
             {"cgroup", record.cgroup_resolved},
             {"netns", spec.netns_path}});
    return EnrollResult{EnrollOutcome::kCreated, status_of_locked(record)};
}

Result<bool> WorkloadManager::unenroll_now(const std::string& name) {
    std::lock_guard lock(mutex_);
    auto it = records_.find(name);
    if (it == records_.end()) return false;
    Status torn = tear_down_locked(it->second);
    records_.erase(it);
    Status saved = persist_locked();
    if (!torn) return torn.error().with_context("unenroll " + name);
    if (!saved) return saved.error().with_context("unenroll " + name);
    spdlog::info("unenrolled workload {}", name);
    publish(events::kWorkloadUnenrolled, name);
    return true;
}

std::vector<WorkloadStatus> WorkloadManager::list() {
    std::lock_guard lock(mutex_);
    std::vector<WorkloadStatus> out;
    for (const auto& [_, record] : records_) out.push_back(status_of_locked(record));
    return out;
}

Result<WorkloadStatus> WorkloadManager::get(const std::string& name) {
    std::lock_guard lock(mutex_);
    auto it = records_.find(name);
    if (it == records_.end()) return Error{ENOENT, "workload " + name + " is not enrolled"};
    return status_of_locked(it->second);
}

AgentStatus WorkloadManager::status() {
    std::lock_guard lock(mutex_);
    AgentStatus s;
    s.version = MESHLANE_VERSION;
    utsname uts{};
    if (::uname(&uts) == 0) s.kernel = std::string(uts.release);
    s.bpffs_pin_dir = datapath_.pin_root();
    s.cgroup2_mount = options_.cgroup2_mount;
    s.state_dir = options_.state_dir;
    s.workloads = records_.size();
    s.max_workloads = datapath_.max_workloads();
    s.features = options_.features;
    if (options_.feature_states != nullptr) s.feature_states = *options_.feature_states;
    s.fast_path_available = options_.fast_path_available;
    s.fast_path_reason = options_.fast_path_reason;
    s.fast_path_blocking_reader_hazard = options_.fast_path_blocking_reader_hazard;
    for (FastPathHop hop : {FastPathHop::kAppProxyOutbound, FastPathHop::kAppProxyInbound,
                            FastPathHop::kProxyProxy}) {
        FastPathHopState state{hop, options_.fast_path_available, FastPathOffReason::kNone};
        if (!options_.fast_path_available)
            state.reason = FastPathOffReason::kUnavailable;
        else if (options_.fast_path_reader_policy == MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY &&
                 hop != FastPathHop::kProxyProxy)
            state = {hop, false, FastPathOffReason::kBlockingReaderEagain};
        s.fast_path_hops.push_back(state);
    }
    return s;
}

WorkloadStatus WorkloadManager::status_of_locked(const Record& record) const {
    WorkloadStatus s;
    s.spec = record.spec;
    s.workload_id = record.workload_id;
    s.cgroup_resolved = record.cgroup_resolved;
    s.cgroup_id = record.cgroup_id;
    s.netns_cookie = record.netns_cookie;
    s.netns_inode = record.netns_inode;
    for (const auto& a : record.addresses) s.pod_addresses.push_back(a.text);
    s.programs = datapath_.attached_programs(record.spec.name);
    for (auto& program : s.programs) {
        if (program.attach_to == "cgroup:" + std::to_string(record.cgroup_id))
            program.attach_to = record.cgroup_resolved;
        else if (program.attach_to == "netns:" + std::to_string(record.netns_inode))
            program.attach_to = record.spec.netns_path;
    }
    s.inbound_listener_v4 =
        datapath_.inbound_listener_registered(record.workload_id, MESHLANE_LISTENER_SLOT_V4);
    s.inbound_listener_v6 =
        datapath_.inbound_listener_registered(record.workload_id, MESHLANE_LISTENER_SLOT_V6);
    auto counters = datapath_.counters(record.workload_id);
    for (unsigned c = 0; c < counters.size(); ++c)
        s.counters[redirect_counter_name(c)] = counters[c];
    if (options_.fastpath != nullptr) {
        s.fast_path_active = (record.spec.fast_path || record.spec.fast_path_proxy_proxy) &&
                             options_.fast_path_available &&
                             options_.fastpath->kinds(record.workload_id) != 0;
        auto fast = options_.fastpath->counters(record.workload_id);
        for (unsigned c = 0; c < fast.size(); ++c)
            s.fast_path_counters[fastpath_counter_name(c)] = fast[c];
    }
    const auto times = datapath_.times(record.workload_id);
    timespec realtime{}, monotonic{};
    ::clock_gettime(CLOCK_REALTIME, &realtime);
    ::clock_gettime(CLOCK_MONOTONIC, &monotonic);
    const std::int64_t offset_ns = (realtime.tv_sec - monotonic.tv_sec) * 1'000'000'000LL +
                                   (realtime.tv_nsec - monotonic.tv_nsec);
    auto to_unix = [offset_ns](std::uint64_t monotonic_ns) {
        return monotonic_ns == 0 ? std::int64_t{0}
                                 : static_cast<std::int64_t>(monotonic_ns) + offset_ns;
    };
    s.inbound_refused_first_unix_ns = to_unix(times.inbound_refused_first);
    s.inbound_refused_last_unix_ns = to_unix(times.inbound_refused_last);
    s.listener_registered_first_unix_ns = to_unix(times.listener_registered_first);
    s.listener_registered_last_unix_ns = to_unix(times.listener_registered_last);
    return s;
}

// ---- persistence -------------------------------------------------------------------------

Status WorkloadManager::persist_locked() {
    json::array workloads;
    for (const auto& [_, r] : records_) {
        json::array addresses;
        for (const auto& a : r.addresses) addresses.emplace_back(a.text);
        workloads.push_back(json::object{{"spec", to_json(r.spec)},
                                         {"workload_id", r.workload_id},
                                         {"cgroup_resolved", r.cgroup_resolved},
                                         {"cgroup_id", r.cgroup_id},
                                         {"netns_cookie", r.netns_cookie},
                                         {"netns_inode", r.netns_inode},
                                         {"pod_addresses", std::move(addresses)}});
    }
    json::object root{{"version", kStateVersion}, {"workloads", std::move(workloads)}};
    const std::string path = options_.state_dir + "/" + kStateFile;
    const std::string tmp = path + ".tmp";
    // O_NOFOLLOW: a symlink planted at the temporary name must not redirect the write. The file
    // is complete and on disk before the rename makes it the state (atomic replacement).
    UniqueFd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!out.valid()) return Error::last_errno("write " + tmp);
    const std::string text = json::serialize(root) + "\n";
    for (std::size_t done = 0; done < text.size();) {
        const ssize_t n = ::write(out.get(), text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return Error::last_errno("write " + tmp);
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(out.get()) != 0) return Error::last_errno("fsync " + tmp);
    if (::rename(tmp.c_str(), path.c_str()) != 0) return Error::last_errno("rename " + tmp);
    return Ok{};
}

Result<std::map<std::string, WorkloadManager::Record>> WorkloadManager::load_state() const {
    std::map<std::string, Record> records;
    const std::string path = options_.state_dir + "/" + kStateFile;
    std::ifstream in(path);
    if (!in) return records;  // first start
    std::stringstream text;
    text << in.rdbuf();
    boost::system::error_code ec;
    json::value root = json::parse(text.str(), ec);
    if (ec || !root.is_object()) return Error::invalid(path + ": not valid JSON");
    const auto* version = root.as_object().if_contains("version");
    if (!version || !version->is_int64() || version->as_int64() != kStateVersion)
        return Error::invalid(path + ": version " +
                              (version ? json::serialize(*version) : std::string("missing")) +
                              ", this agent reads version " + std::to_string(kStateVersion));
    const auto* workloads = root.as_object().if_contains("workloads");
    if (!workloads || !workloads->is_array()) return Error::invalid(path + ": no workloads array");
    std::set<std::uint32_t> ids;
    try {
        for (const auto& item : workloads->as_array()) {
            const auto& o = item.as_object();
            auto spec = workload_spec_from_json(o.at("spec"));
            if (!spec) return spec.error().with_context(path);
            if (auto valid = validate(*spec); !valid) return valid.error().with_context(path);
            Record r;
            r.spec = *spec;
            r.workload_id = json::value_to<std::uint32_t>(o.at("workload_id"));
            if (r.workload_id >= datapath_.max_workloads() || !ids.insert(r.workload_id).second)
                return Error::invalid(path + ": workload " + r.spec.name + " has workload_id " +
                                      std::to_string(r.workload_id) +
                                      ", out of range or used twice");
            if (records.count(r.spec.name))
                return Error::invalid(path + ": workload " + r.spec.name + " is listed twice");
            r.cgroup_resolved = json::value_to<std::string>(o.at("cgroup_resolved"));
            r.cgroup_id = json::value_to<std::uint64_t>(o.at("cgroup_id"));
            r.netns_cookie = json::value_to<std::uint64_t>(o.at("netns_cookie"));
            r.netns_inode = json::value_to<std::uint64_t>(o.at("netns_inode"));
            r.addresses = addresses_from_text(
                json::value_to<std::vector<std::string>>(o.at("pod_addresses")));
            records[r.spec.name] = std::move(r);
        }
    } catch (const std::exception& e) {
        return Error::invalid(path + ": " + e.what());
    }
    return records;
}

bool WorkloadManager::still_present(const Record& record) const {
    return inode_of(record.spec.netns_path) == record.netns_inode &&
           inode_of(record.cgroup_resolved) == record.cgroup_id;
}

// The state file is validated as a whole first (version, names, ids; load_state): a bad one is
// refused with the reason and nothing of it is adopted.
Status WorkloadManager::restore() {
    auto loaded = load_state();
    if (!loaded) return loaded.error();
    std::lock_guard lock(mutex_);
    for (auto& [name, record] : *loaded) {
        auto cgroup = open_cgroup(record.cgroup_resolved, options_.cgroup2_mount);
        auto netns = open_netns(record.spec.netns_path);
        bool same = cgroup && netns && cgroup->id == record.cgroup_id &&
                    netns->cookie == record.netns_cookie;
        if (!same) {
            spdlog::warn("workload {}: its {} is gone; removing it", name,
                         !cgroup || cgroup->id != record.cgroup_id ? "cgroup" : "netns");
            (void)tear_down_locked(record);
            publish(events::kWorkloadRemoved, name,
                    {{"reason", "netns or cgroup gone at restart"}});
            continue;
        }
        record.addresses = netns->addresses;
        if (auto up = bring_up_locked(record, *cgroup, *netns); !up) {
            spdlog::error("workload {}: cannot re-adopt: {}", name, up.error().message);
            (void)tear_down_locked(record);
            continue;
        }
        records_[name] = record;
        spdlog::info("re-adopted workload {} (id {})", name, record.workload_id);
    }
    // Kernel state no record explains: left by a crash between attach and persist.
    for (const auto& name : datapath_.pinned_workloads()) {
        if (records_.count(name)) continue;
        spdlog::warn("removing orphaned pins of workload {}", name);
        if (options_.fastpath != nullptr)
            (void)options_.fastpath->detach(datapath_.workload_pin_dir(name));
        (void)datapath_.detach(name);
    }
    std::set<std::uint64_t> cookies;
    for (const auto& [_, r] : records_) cookies.insert(r.netns_cookie);
    for (auto cookie : datapath_.active_netns_cookies())
        if (!cookies.count(cookie)) (void)datapath_.deactivate(cookie);
    return persist_locked();
}

void WorkloadManager::reconcile() {
    std::lock_guard lock(mutex_);
    bool changed = false;
    for (auto it = records_.begin(); it != records_.end();) {
        Record& record = it->second;
        if (!still_present(record)) {
            spdlog::info("workload {}: netns or cgroup disappeared; removing its datapath state",
                         it->first);
            publish(events::kWorkloadRemoved, it->first,
                    {{"reason", "netns or cgroup disappeared"}});
            (void)tear_down_locked(record);
            it = records_.erase(it);
            changed = true;
            continue;
        }
        auto netns = open_netns(record.spec.netns_path);
        if (netns && netns->cookie == record.netns_cookie) {
            std::vector<std::string> before, after;
            for (const auto& a : record.addresses) before.push_back(a.text);
            for (const auto& a : netns->addresses) after.push_back(a.text);
            if (before != after) {
                if (datapath_.write_pod_addresses(record.workload_id, netns->addresses)) {
                    record.addresses = netns->addresses;
                    changed = true;
                    if (auto fast = fast_path_addresses_locked(record); !fast)
                        spdlog::warn("workload {}: {}", it->first, fast.error().message);
                }
            }
        }
        if (!datapath_.inbound_listener_registered(record.workload_id, MESHLANE_LISTENER_SLOT_V4) &&
            !datapath_.inbound_listener_registered(record.workload_id, MESHLANE_LISTENER_SLOT_V6))
            adopt_listeners_locked(record);  // e.g. a proxy restarted as root, then dropped uid
        ++it;
    }
    if (changed) {
        if (auto saved = persist_locked(); !saved)
            spdlog::error("persist workloads: {}", saved.error().message);
    }
}

}  // namespace meshlane
