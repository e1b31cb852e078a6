#include "agent/workload/discovery.h"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "agent/common/unique_fd.h"
#include "cni/config/cni_config.h"

namespace meshlane {

namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kCacheKind = "cniCacheV1";
constexpr int kKubepodsSearchDepth = 3;

// Go's encoding/json writes []byte as standard base64 with padding.
std::optional<std::string> base64_decode(std::string_view text) {
    auto value_of = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    std::string out;
    std::uint32_t buffer = 0;
    int bits = 0;
    std::size_t padding = 0;
    for (char c : text) {
        if (c == '=') {
            ++padding;
            continue;
        }
        if (padding > 0) return std::nullopt;  // data after padding
        const int v = value_of(c);
        if (v < 0) return std::nullopt;
        buffer = (buffer << 6) | static_cast<std::uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((buffer >> bits) & 0xff));
        }
    }
    if (padding > 2 || (text.size() % 4) != 0) return std::nullopt;
    return out;
}

Result<std::string> required_string(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    if (v == nullptr || !v->is_string() || v->get_string().empty())
        return Error::invalid(std::string(key) + ": required string");
    return std::string(v->get_string());
}

std::optional<std::uint64_t> inode_of(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return static_cast<std::uint64_t>(st.st_ino);
}

std::vector<std::string> subdirectories(const std::string& dir) {
    std::vector<std::string> names;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        std::error_code type_ec;
        if (it->is_directory(type_ec) && !it->is_symlink(type_ec))
            names.push_back(it->path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
}

// Pod cgroups are directly under the kubepods parent (Guaranteed QoS) or one level down.
void collect_pods(const std::string& dir, int levels, std::map<std::string, std::string>& out) {
    for (const auto& name : subdirectories(dir)) {
        const std::string path = dir + "/" + name;
        if (auto uid = pod_uid_from_cgroup_name(name)) {
            out.emplace(*uid, path);
        } else if (levels > 1) {
            collect_pods(path, levels - 1, out);
        }
    }
}

void find_kubepods(const std::string& dir, int depth, std::map<std::string, std::string>& out) {
    for (const auto& name : subdirectories(dir)) {
        const std::string path = dir + "/" + name;
        if (name == "kubepods.slice" || name == "kubepods")
            collect_pods(path, 2, out);
        else if (depth < kKubepodsSearchDepth)
            find_kubepods(path, depth + 1, out);
    }
}

bool all_digits(std::string_view s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

std::string joined(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
    return out;
}

// Whether meshlane-cni's cgroup for the pod names an existing directory (absolute, or relative
// to the cgroup2 mount as runtimes name them).
bool cgroup_resolvable(const std::string& cgroup, const std::string& cgroup2_mount) {
    if (cgroup.empty()) return false;
    std::error_code ec;
    if (cgroup.front() == '/' && fs::is_directory(cgroup, ec)) return true;
    const auto relative = cgroup.substr(cgroup.find_first_not_of('/') == std::string::npos
                                            ? cgroup.size()
                                            : cgroup.find_first_not_of('/'));
    return !relative.empty() && fs::is_directory(cgroup2_mount + "/" + relative, ec);
}

}  // namespace

std::string CniCacheEntry::cni_args_text() const {
    std::string out;
    for (const auto& [key, value] : cni_args) out += (out.empty() ? "" : ";") + key + "=" + value;
    return out;
}

std::string CniCacheEntry::cni_arg(std::string_view key) const {
    for (const auto& [k, v] : cni_args)
        if (k == key) return v;
    return {};
}

Result<CniCacheEntry> parse_cni_cache_entry(std::string_view text) {
    boost::system::error_code ec;
    json::value root = json::parse(text, ec);
    if (ec || !root.is_object()) return Error::invalid("not a JSON object");
    const auto& o = root.get_object();
    const auto* kind = o.if_contains("kind");
    if (kind == nullptr || !kind->is_string() || kind->get_string() != kCacheKind)
        return Error::invalid("kind: expected \"cniCacheV1\"");
    CniCacheEntry entry;
    for (auto [key, target] :
         {std::pair{"containerId", &entry.container_id}, std::pair{"ifName", &entry.ifname},
          std::pair{"networkName", &entry.network_name}}) {
        auto value = required_string(o, key);
        if (!value) return value.error();
        *target = *value;
    }
    if (const auto* netns = o.if_contains("netns"); netns != nullptr && netns->is_string())
        entry.netns = std::string(netns->get_string());
    const auto* config = o.if_contains("config");
    if (config == nullptr || !config->is_string())
        return Error::invalid("config: required (base64 of the network config)");
    auto bytes = base64_decode(config->get_string());
    if (!bytes) return Error::invalid("config: not valid base64");
    entry.config = json::parse(*bytes, ec);
    if (ec || !entry.config.is_object()) return Error::invalid("config: not a JSON object");
    if (const auto* args = o.if_contains("cniArgs"); args != nullptr && !args->is_null()) {
        if (!args->is_array()) return Error::invalid("cniArgs: must be an array of [key, value]");
        for (const auto& pair : args->get_array()) {
            if (!pair.is_array() || pair.get_array().size() != 2 ||
                !pair.get_array()[0].is_string() || !pair.get_array()[1].is_string())
                return Error::invalid("cniArgs: must be an array of [key, value]");
            entry.cni_args.emplace_back(std::string(pair.get_array()[0].get_string()),
                                        std::string(pair.get_array()[1].get_string()));
        }
    }
    if (const auto* caps = o.if_contains("capabilityArgs"); caps != nullptr && !caps->is_null()) {
        if (!caps->is_object()) return Error::invalid("capabilityArgs: must be an object");
        entry.capability_args = caps->get_object();
    }
    if (const auto* result = o.if_contains("result"); result != nullptr && result->is_object()) {
        if (const auto* ips = result->get_object().if_contains("ips");
            ips != nullptr && ips->is_array()) {
            for (const auto& ip : ips->get_array()) {
                const auto* address =
                    ip.is_object() ? ip.get_object().if_contains("address") : nullptr;
                if (address == nullptr || !address->is_string()) continue;
                std::string text(address->get_string());
                entry.ips.push_back(text.substr(0, text.find('/')));
            }
        }
    }
    return entry;
}

std::optional<std::string> pod_uid_from_cgroup_name(std::string_view name) {
    std::string uid;
    constexpr std::string_view kSlice = ".slice";
    if (name.rfind("kubepods", 0) == 0 && name.size() > kSlice.size() &&
        name.substr(name.size() - kSlice.size()) == kSlice) {
        const auto stem = name.substr(0, name.size() - kSlice.size());
        const auto pod = stem.rfind("-pod");
        if (pod == std::string_view::npos) return std::nullopt;
        uid = std::string(stem.substr(pod + 4));
        std::replace(uid.begin(), uid.end(), '_', '-');
    } else if (name.rfind("pod", 0) == 0) {
        uid = std::string(name.substr(3));
    } else {
        return std::nullopt;
    }
    if (uid.empty() || !std::all_of(uid.begin(), uid.end(),
                                    [](unsigned char c) { return std::isxdigit(c) || c == '-'; }))
        return std::nullopt;
    return uid;
}

std::map<std::string, std::string> find_kube_pod_cgroups(const std::string& cgroup2_mount) {
    std::map<std::string, std::string> out;
    find_kubepods(cgroup2_mount, 1, out);
    return out;
}

PodDiscovery::PodDiscovery(DiscoveryOptions options) : options_(std::move(options)) {}

PodDiscovery::NetnsIndex PodDiscovery::index_network_namespaces() const {
    NetnsIndex index;
    const auto own = inode_of(options_.proc_dir + "/self/ns/net");
    auto add = [&](const std::string& path) {
        auto inode = inode_of(path);
        if (!inode || (own && *inode == *own) || index.count(*inode)) return;
        UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd.valid()) return;
        auto addresses = netns_addresses(fd.get());
        if (!addresses) return;  // not a netns file, or the process went away
        index[*inode] = NetnsInfo{path, std::move(*addresses)};
    };
    std::error_code ec;
    std::vector<std::string> named;
    for (fs::directory_iterator it(options_.netns_dir, ec), end; !ec && it != end; it.increment(ec))
        named.push_back(it->path().string());
    std::sort(named.begin(), named.end());
    for (const auto& path : named) add(path);  // stable names first
    for (fs::directory_iterator it(options_.proc_dir, ec), end; !ec && it != end;
         it.increment(ec)) {
        const auto pid = it->path().filename().string();
        if (all_digits(pid)) add(options_.proc_dir + "/" + pid + "/ns/net");
    }
    return index;
}

std::vector<std::uint64_t> PodDiscovery::netns_of_cgroup(const std::string& cgroup_dir) const {
    std::set<std::uint64_t> inodes;
    std::error_code ec;
    std::vector<std::string> dirs{cgroup_dir};
    for (fs::recursive_directory_iterator it(cgroup_dir, ec), end; !ec && it != end;
         it.increment(ec)) {
        std::error_code type_ec;
        if (it->is_directory(type_ec)) dirs.push_back(it->path().string());
    }
    for (const auto& dir : dirs) {
        std::ifstream procs(dir + "/cgroup.procs");
        std::string pid;
        while (procs >> pid)
            if (auto inode = inode_of(options_.proc_dir + "/" + pid + "/ns/net"))
                inodes.insert(*inode);
    }
    return {inodes.begin(), inodes.end()};
}

DiscoveryOutcome PodDiscovery::consider(
    const std::string& file, WorkloadRegistry& registry, std::optional<NetnsIndex>& netns_index,
    std::optional<std::map<std::string, std::string>>& pod_cgroups) {
    DiscoveryOutcome outcome;
    outcome.source = file;
    auto skip = [&outcome](std::string reason) {
        outcome.reason = std::move(reason);
        return outcome;
    };
    std::ifstream in(options_.cni_cache_dir + "/" + file);
    std::stringstream text;
    text << in.rdbuf();
    auto entry = parse_cni_cache_entry(text.str());
    if (!entry) return skip("not a libcni cache entry: " + entry.error().message);
    const std::string args = entry->cni_args_text();
    outcome.workload = cni::workload_name(cni::parse_cni_args(args), entry->container_id);

    auto plugin_stdin = cni::plugin_stdin_from_list(entry->config, entry->capability_args);
    if (!plugin_stdin) return skip("network config: " + plugin_stdin.error().message);
    if (!plugin_stdin->has_value())
        return skip("network " + entry->network_name + " does not chain meshlane-cni");
    auto config = cni::parse_config(**plugin_stdin);
    if (!config) return skip("meshlane-cni config: " + config.error().message);
    if (registry.get(outcome.workload)) return skip("already enrolled");
    if (entry->ips.empty()) return skip("the cached CNI result has no pod IP");

    // The pod cgroup: meshlane-cni's own choice when it names a directory, else pod<uid>.
    if (!pod_cgroups) pod_cgroups = find_kube_pod_cgroups(options_.cgroup2_mount);
    std::string pod_cgroup;
    if (auto it = pod_cgroups->find(entry->cni_arg("K8S_POD_UID")); it != pod_cgroups->end())
        pod_cgroup = it->second;
    if (!cgroup_resolvable(config->cgroup, options_.cgroup2_mount) && !pod_cgroup.empty())
        config->cgroup = pod_cgroup;

    std::string netns_path = entry->netns;
    if (netns_path.empty() || !inode_of(netns_path)) {
        if (!netns_index) netns_index = index_network_namespaces();
        std::vector<std::uint64_t> candidates;
        for (const auto& [inode, info] : *netns_index) {
            for (const auto& address : info.addresses) {
                if (address.interface != entry->ifname) continue;
                if (std::find(entry->ips.begin(), entry->ips.end(), address.text) ==
                    entry->ips.end())
                    continue;
                candidates.push_back(inode);
                break;
            }
        }
        const std::string where = joined(entry->ips) + " on " + entry->ifname;
        if (candidates.empty())
            return skip("its network namespace is gone: no namespace has " + where +
                        " (the pod was deleted while the agent was down?)");
        // With the pod's processes known, the netns must be theirs (a stale entry's IP may be
        // reused by another pod).
        if (!pod_cgroup.empty()) {
            const auto own = netns_of_cgroup(pod_cgroup);
            if (!own.empty()) {
                std::erase_if(candidates, [&](std::uint64_t inode) {
                    return std::find(own.begin(), own.end(), inode) == own.end();
                });
                if (candidates.empty())
                    return skip("no process of pod cgroup " + pod_cgroup +
                                " is in the network namespace that has " + where);
            }
        }
        if (candidates.size() > 1)
            return skip("ambiguous: " + std::to_string(candidates.size()) +
                        " network namespaces have " + where);
        netns_path = (*netns_index)[candidates.front()].path;
    }

    cni::Environment env{"ADD", entry->container_id, netns_path, entry->ifname, args};
    auto spec = cni::build_spec(*config, env);
    if (!spec) return skip("meshlane-cni would refuse it: " + spec.error().message);
    if (!spec->has_value())
        return skip(
            "passed through by its CNI config (excluded namespace or "
            "sidecar.istio.io/inject=false)");
    auto enrolled = registry.enroll(**spec);
    if (!enrolled) return skip("enrolment refused: " + enrolled.error().message);
    if (enrolled->outcome == EnrollOutcome::kUnchanged) return skip("already enrolled");
    outcome.adopted = true;
    outcome.reason = "netns " + netns_path + ", cgroup " + enrolled->status.cgroup_resolved;
    return outcome;
}

std::vector<DiscoveryOutcome> PodDiscovery::run(WorkloadRegistry& registry) {
    std::vector<DiscoveryOutcome> outcomes;
    std::vector<std::pair<std::string, std::int64_t>> files;
    std::error_code ec;
    for (fs::directory_iterator it(options_.cni_cache_dir, ec), end; !ec && it != end;
         it.increment(ec)) {
        struct stat st {};
        if (::stat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
        const std::int64_t mtime =
            static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
        const auto name = it->path().filename().string();
        if (auto seen = considered_.find(name); seen != considered_.end() && seen->second == mtime)
            continue;
        files.emplace_back(name, mtime);
    }
    if (ec && ec != std::errc::no_such_file_or_directory)
        spdlog::warn("discovery: cannot read the CNI cache {}: {}", options_.cni_cache_dir,
                     ec.message());
    std::sort(files.begin(), files.end());
    std::optional<NetnsIndex> netns_index;
    std::optional<std::map<std::string, std::string>> pod_cgroups;
    for (const auto& [file, mtime] : files) {
        auto outcome = consider(file, registry, netns_index, pod_cgroups);
        // A refused enrolment may succeed later (a slot freed, the datapath back): retry it.
        if (outcome.reason.rfind("enrolment refused", 0) != 0) considered_[file] = mtime;
        if (outcome.adopted)
            spdlog::info("discovery: adopted pod {} from CNI cache entry {} ({})", outcome.workload,
                         file, outcome.reason);
        else
            spdlog::info("discovery: skipped CNI cache entry {}{}: {}", file,
                         outcome.workload.empty() ? "" : " (pod " + outcome.workload + ")",
                         outcome.reason);
        outcomes.push_back(std::move(outcome));
    }
    return outcomes;
}

}  // namespace meshlane
