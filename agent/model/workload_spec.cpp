// Parsing and validation of WorkloadSpec. Everything here is pure: no kernel, no filesystem.
//
// Canonical form: the parsers sort port lists and CIDR lists and normalise CIDRs (host bits
// cleared), so the same intent always yields an equal WorkloadSpec. The registry decides
// "unchanged" vs "different settings" with operator==; without a canonical form "80,443" and
// "443,80" would count as a conflicting re-enrolment.
#include "agent/model/workload_spec.h"

#include <arpa/inet.h>

#include <algorithm>
#include <boost/json.hpp>
#include <charconv>
#include <limits>
#include <set>

#include "meshlane/redirect_abi.h"

namespace meshlane {

namespace json = boost::json;

namespace {

// Bounds keep the per-workload map footprint small and predictable (port_rules and cidr_rules
// are shared by all workloads).
constexpr std::size_t kMaxPortsPerList = 256;
constexpr std::size_t kMaxCidrsPerList = 256;
constexpr std::size_t kMaxNameLength = 63;
// Ports the Istio injector always excludes inbound (HBONE, agent status, health, Prometheus):
// a proxy listener on one of them would collide with those functions.
constexpr std::uint16_t kReservedPorts[] = MESHLANE_ALWAYS_EXCLUDED_INBOUND_PORTS;

std::string quoted(std::string_view text) { return "\"" + std::string(text) + "\""; }

std::string_view trim(std::string_view text) {
    const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
    while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
    return text;
}

// Splits on ',' keeping empty tokens, so "80,,443" can be reported instead of ignored.
std::vector<std::string_view> split_commas(std::string_view text) {
    std::vector<std::string_view> tokens;
    for (;;) {
        const auto comma = text.find(',');
        tokens.push_back(trim(text.substr(0, comma)));
        if (comma == std::string_view::npos) return tokens;
        text.remove_prefix(comma + 1);
    }
}

// Decimal digits only: no sign, no spaces, no hex, no trailing garbage.
std::optional<std::uint64_t> parse_decimal(std::string_view text) {
    if (text.empty() || text.size() > 19) return std::nullopt;
    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
    return value;
}

Result<std::uint16_t> parse_port(std::string_view token, std::string_view field) {
    const auto value = parse_decimal(token);
    if (!value || *value < 1 || *value > 65535) {
        return Error::invalid(std::string(field) + ": " + quoted(token) +
                              " is not a port (1..65535)");
    }
    return static_cast<std::uint16_t>(*value);
}

// Shared by the text and JSON parsers: sorted, and duplicates named.
Status sort_and_check_ports(std::vector<std::uint16_t>& ports, std::string_view field) {
    std::sort(ports.begin(), ports.end());
    const auto dup = std::adjacent_find(ports.begin(), ports.end());
    if (dup != ports.end()) {
        return Error::invalid(std::string(field) + ": port " + std::to_string(*dup) +
                              " is listed twice");
    }
    return Ok{};
}

bool cidr_less(const Cidr& a, const Cidr& b) {
    // IPv4 first, then by address, then shorter prefixes first.
    if (a.is_v4 != b.is_v4) return a.is_v4;
    if (a.addr != b.addr) return a.addr < b.addr;
    return a.prefix_len < b.prefix_len;
}

Status sort_and_check_cidrs(std::vector<Cidr>& cidrs, std::string_view field) {
    std::sort(cidrs.begin(), cidrs.end(), cidr_less);
    const auto dup = std::adjacent_find(cidrs.begin(), cidrs.end());
    if (dup != cidrs.end()) {
        return Error::invalid(std::string(field) + ": " + dup->to_string() +
                              " is listed twice (after clearing host bits)");
    }
    return Ok{};
}

void clear_host_bits(std::array<std::uint8_t, 16>& addr, unsigned first_byte, unsigned bits) {
    // bits counts from addr[first_byte]; everything after them becomes zero.
    for (unsigned i = first_byte; i < addr.size(); ++i) {
        const unsigned bit_offset = (i - first_byte) * 8;
        if (bit_offset >= bits) {
            addr[i] = 0;
        } else if (bits - bit_offset < 8) {
            addr[i] &= static_cast<std::uint8_t>(0xff << (8 - (bits - bit_offset)));
        }
    }
}

bool has_host_bits(const Cidr& cidr) {
    Cidr copy = cidr;
    clear_host_bits(copy.addr, cidr.is_v4 ? 12 : 0, cidr.prefix_len);
    return copy.addr != cidr.addr;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Cidr
// ---------------------------------------------------------------------------------------------

// Host bits are accepted and cleared ("10.0.0.1/8" -> 10.0.0.0/8), as iptables does and as
// istio-iptables does through Go's net.ParseCIDR; to_string() then shows what is applied. A
// bare address means a single host (/32 or /128).
Result<Cidr> Cidr::parse(std::string_view text) {
    const std::string_view original = text;
    text = trim(text);
    const auto slash = text.find('/');
    const std::string address(text.substr(0, slash));
    Cidr cidr;
    if (inet_pton(AF_INET, address.c_str(), cidr.addr.data() + 12) == 1) {
        cidr.is_v4 = true;
        cidr.addr[10] = cidr.addr[11] = 0xff;  // ::ffff:a.b.c.d
    } else if (inet_pton(AF_INET6, address.c_str(), cidr.addr.data()) != 1) {
        return Error::invalid(quoted(original) + " is not an IPv4 or IPv6 address or CIDR");
    }
    const unsigned max_len = cidr.is_v4 ? 32 : 128;
    cidr.prefix_len = static_cast<std::uint8_t>(max_len);
    if (slash != std::string_view::npos) {
        const auto len = parse_decimal(text.substr(slash + 1));
        if (!len || *len > max_len) {
            return Error::invalid(quoted(original) + " has an invalid prefix length (0.." +
                                  std::to_string(max_len) + ")");
        }
        cidr.prefix_len = static_cast<std::uint8_t>(*len);
    }
    clear_host_bits(cidr.addr, cidr.is_v4 ? 12 : 0, cidr.prefix_len);
    return cidr;
}

std::string Cidr::to_string() const {
    char buffer[INET6_ADDRSTRLEN] = {};
    if (is_v4) {
        inet_ntop(AF_INET, addr.data() + 12, buffer, sizeof buffer);
    } else {
        inet_ntop(AF_INET6, addr.data(), buffer, sizeof buffer);
    }
    return std::string(buffer) + "/" + std::to_string(prefix_len);
}

// ---------------------------------------------------------------------------------------------
// StartupPolicy
// ---------------------------------------------------------------------------------------------

std::string_view to_string(StartupPolicy policy) {
    switch (policy) {
        case StartupPolicy::kRefuse:
            return "refuse";
        case StartupPolicy::kPassthrough:
            return "passthrough";
    }
    return "unknown";
}

Result<StartupPolicy> parse_startup_policy(std::string_view text) {
    if (text == "refuse") return StartupPolicy::kRefuse;
    if (text == "passthrough") return StartupPolicy::kPassthrough;
    return Error::invalid("startup_policy: " + quoted(text) +
                          " is not one of \"refuse\", \"passthrough\"");
}

std::string_view to_string(DnsCapture mode) {
    switch (mode) {
        case DnsCapture::kOff:
            return "off";
        case DnsCapture::kNameservers:
            return "nameservers";
        case DnsCapture::kAll:
            return "all";
    }
    return "unknown";
}

Result<DnsCapture> parse_dns_capture(std::string_view text) {
    if (text == "off") return DnsCapture::kOff;
    if (text == "nameservers") return DnsCapture::kNameservers;
    if (text == "all") return DnsCapture::kAll;
    return Error::invalid("dns_capture: " + quoted(text) +
                          " is not one of \"off\", \"nameservers\", \"all\"");
}

// ---------------------------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------------------------

bool Cidr::is_loopback() const {
    if (is_v4) return addr[12] == 127;
    const std::array<std::uint8_t, 16> v6_loopback{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    return addr == v6_loopback;
}

Cidr Cidr::localhost_v4() {
    Cidr cidr;
    cidr.addr = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1};
    cidr.prefix_len = 32;
    cidr.is_v4 = true;
    return cidr;
}

Result<std::vector<std::uint32_t>> parse_id_list(std::string_view text, std::string_view field) {
    std::vector<std::uint32_t> ids;
    for (const auto token : split_commas(text)) {
        const auto value = parse_decimal(token);
        if (!value || *value > std::numeric_limits<std::uint32_t>::max())
            return Error::invalid(std::string(field) + ": " + quoted(token) +
                                  " is not a uid/gid (0..4294967294)");
        const auto id = static_cast<std::uint32_t>(*value);
        if (std::find(ids.begin(), ids.end(), id) != ids.end())
            return Error::invalid(std::string(field) + ": " + std::to_string(id) +
                                  " is listed twice");
        ids.push_back(id);
    }
    return ids;
}

Status parse_ip_families(std::string_view text, WorkloadSpec& spec) {
    bool v4 = false, v6 = false;
    for (const auto token : split_commas(text)) {
        if (token == "ipv4")
            v4 = true;
        else if (token == "ipv6")
            v6 = true;
        else
            return Error::invalid("--ip-families: " + quoted(token) +
                                  " is not ipv4 or ipv6 (comma-separated)");
    }
    spec.capture_ipv4 = v4;
    spec.capture_ipv6 = v6;
    return Ok{};
}

std::string format_ip_families(const WorkloadSpec& spec) {
    if (spec.capture_ipv4 && spec.capture_ipv6) return "ipv4,ipv6";
    if (spec.capture_ipv4) return "ipv4";
    return spec.capture_ipv6 ? "ipv6" : "";
}

Result<std::vector<std::uint16_t>> parse_port_list(std::string_view text, std::string_view field) {
    std::vector<std::uint16_t> ports;
    if (trim(text).empty()) return ports;
    for (const auto token : split_commas(text)) {
        if (token.empty()) {
            return Error::invalid(std::string(field) + ": empty entry in " + quoted(text));
        }
        auto port = parse_port(token, field);
        if (!port) return port.error();
        ports.push_back(*port);
    }
    if (auto status = sort_and_check_ports(ports, field); !status) return status.error();
    return ports;
}

Result<std::optional<std::vector<Cidr>>> parse_cidr_list(std::string_view text,
                                                         std::string_view field) {
    if (trim(text) == "*") return std::optional<std::vector<Cidr>>{};
    std::vector<Cidr> cidrs;
    if (trim(text).empty()) return std::optional(cidrs);
    for (const auto token : split_commas(text)) {
        if (token.empty()) {
            return Error::invalid(std::string(field) + ": empty entry in " + quoted(text));
        }
        if (token == "*") {
            return Error::invalid(std::string(field) + ": \"*\" must stand alone");
        }
        auto cidr = Cidr::parse(token);
        if (!cidr) return cidr.error().with_context(std::string(field));
        cidrs.push_back(*cidr);
    }
    if (auto status = sort_and_check_cidrs(cidrs, field); !status) return status.error();
    return std::optional(cidrs);
}

std::string format_port_list(const std::vector<std::uint16_t>& ports) {
    std::string text;
    for (const auto port : ports) {
        if (!text.empty()) text += ',';
        text += std::to_string(port);
    }
    return text;
}

namespace {

Result<Cidr> parse_host(std::string_view text, std::string_view field) {
    if (text.find('/') != std::string_view::npos)
        return Error::invalid(std::string(field) + ": " + quoted(text) +
                              " is a prefix; give nameserver addresses");
    auto host = Cidr::parse(text);
    if (!host) return host.error().with_context(std::string(field));
    return *host;
}

}  // namespace

std::string address_to_string(const Cidr& host) {
    std::string text = host.to_string();
    return text.substr(0, text.find('/'));
}

Result<std::vector<Cidr>> parse_address_list(std::string_view text, std::string_view field) {
    std::vector<Cidr> hosts;
    if (trim(text).empty()) return hosts;
    for (const auto token : split_commas(text)) {
        auto host = parse_host(token, field);
        if (!host) return host.error();
        hosts.push_back(*host);
    }
    if (auto status = sort_and_check_cidrs(hosts, field); !status) return status.error();
    return hosts;
}

std::string format_address_list(const std::vector<Cidr>& hosts) {
    std::string text;
    for (const auto& host : hosts) {
        if (!text.empty()) text += ',';
        text += address_to_string(host);
    }
    return text;
}

std::string format_cidr_list(bool all, const std::vector<Cidr>& cidrs) {
    if (all) return "*";
    std::string text;
    for (const auto& cidr : cidrs) {
        if (!text.empty()) text += ',';
        text += cidr.to_string();
    }
    return text;
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

Status validate_name(std::string_view name) {
    if (name.empty()) return Error::invalid("name: must not be empty");
    if (name.size() > kMaxNameLength) {
        return Error::invalid("name: " + quoted(name) + " is longer than " +
                              std::to_string(kMaxNameLength) + " characters");
    }
    const auto allowed = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
    };
    const auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
    if (!alnum(name.front())) {
        return Error::invalid("name: " + quoted(name) + " must start with [a-z0-9]");
    }
    if (!std::all_of(name.begin(), name.end(), allowed)) {
        return Error::invalid("name: " + quoted(name) +
                              " may only contain [a-z0-9], '-', '_', '.'");
    }
    // The name becomes a bpffs directory; ".." inside it is harmless there but confusing in
    // paths and logs, so it is refused outright.
    if (name.find("..") != std::string_view::npos) {
        return Error::invalid("name: " + quoted(name) + " must not contain \"..\"");
    }
    return Ok{};
}

namespace {

bool contains(const std::vector<std::uint16_t>& ports, std::uint16_t port) {
    return std::find(ports.begin(), ports.end(), port) != ports.end();
}

Status validate_path(const std::string& path, std::string_view field, bool must_be_absolute) {
    if (path.empty()) return Error::invalid(std::string(field) + ": must not be empty");
    if (path.find('\0') != std::string::npos) {
        return Error::invalid(std::string(field) + ": contains a NUL byte");
    }
    if (must_be_absolute && path.front() != '/') {
        return Error::invalid(std::string(field) + ": " + quoted(path) + " is not absolute");
    }
    // A relative cgroup path is resolved under the cgroup2 mount; ".." could leave it.
    std::string_view rest = path;
    while (!rest.empty()) {
        const auto slash = rest.find('/');
        if (rest.substr(0, slash) == "..") {
            return Error::invalid(std::string(field) + ": " + quoted(path) +
                                  " must not contain \"..\"");
        }
        if (slash == std::string_view::npos) break;
        rest.remove_prefix(slash + 1);
    }
    return Ok{};
}

Status validate_id(std::uint32_t id, std::string_view field) {
    // (uid_t)-1 means "no change" to chown(2) and never owns a socket.
    if (id == std::numeric_limits<std::uint32_t>::max()) {
        return Error::invalid(std::string(field) + ": " + std::to_string(id) +
                              " is not a valid id");
    }
    return Ok{};
}

Status validate_listener_port(std::uint16_t port, std::string_view field) {
    if (port == 0) return Error::invalid(std::string(field) + ": must be 1..65535");
    for (const auto reserved : kReservedPorts) {
        if (port == reserved) {
            return Error::invalid(std::string(field) + ": " + std::to_string(port) +
                                  " is reserved (15008, 15020, 15021 and 15090 are always "
                                  "excluded inbound)");
        }
    }
    return Ok{};
}

Status validate_port_list(const std::vector<std::uint16_t>& ports, std::string_view field) {
    if (ports.size() > kMaxPortsPerList) {
        return Error::invalid(std::string(field) + ": " + std::to_string(ports.size()) +
                              " ports, at most " + std::to_string(kMaxPortsPerList) +
                              " are allowed");
    }
    if (contains(ports, 0)) return Error::invalid(std::string(field) + ": port 0 is not a port");
    auto sorted = ports;
    return sort_and_check_ports(sorted, field);
}

Status validate_cidr_list(const std::vector<Cidr>& cidrs, std::string_view field) {
    if (cidrs.size() > kMaxCidrsPerList) {
        return Error::invalid(std::string(field) + ": " + std::to_string(cidrs.size()) +
                              " CIDRs, at most " + std::to_string(kMaxCidrsPerList) +
                              " are allowed");
    }
    for (const auto& cidr : cidrs) {
        if (cidr.prefix_len > (cidr.is_v4 ? 32 : 128) || has_host_bits(cidr)) {
            return Error::invalid(std::string(field) + ": " + cidr.to_string() +
                                  " is not a normalised CIDR");
        }
    }
    auto sorted = cidrs;
    return sort_and_check_cidrs(sorted, field);
}

// A listener port that is excluded (or explicitly included outbound) would let the proxy's own
// traffic be captured or its listener bypassed; either makes the datapath silently wrong.
Status validate_listener_not_listed(const WorkloadSpec& spec) {
    const std::pair<const std::vector<std::uint16_t>*, std::string_view> lists[] = {
        {&spec.exclude_outbound_ports, "exclude_outbound_ports"},
        {&spec.exclude_inbound_ports, "exclude_inbound_ports"},
        {&spec.include_outbound_ports, "include_outbound_ports"},
    };
    const std::pair<std::uint16_t, std::string_view> listeners[] = {
        {spec.outbound_port, "outbound listener"},
        {spec.inbound_port, "inbound listener"},
    };
    for (const auto& [list, field] : lists) {
        for (const auto& [port, what] : listeners) {
            if (contains(*list, port)) {
                return Error::invalid(std::string(field) + ": " + std::to_string(port) +
                                      " is the proxy's " + std::string(what) + " port");
            }
        }
    }
    return Ok{};
}

Status validate_ports(const WorkloadSpec& spec) {
    if (auto s = validate_listener_port(spec.outbound_port, "outbound_port"); !s) return s;
    if (auto s = validate_listener_port(spec.inbound_port, "inbound_port"); !s) return s;
    if (spec.outbound_port == spec.inbound_port) {
        return Error::invalid("inbound_port: must differ from outbound_port (both " +
                              std::to_string(spec.inbound_port) + ")");
    }
    const std::pair<const std::vector<std::uint16_t>*, std::string_view> lists[] = {
        {&spec.exclude_outbound_ports, "exclude_outbound_ports"},
        {&spec.exclude_inbound_ports, "exclude_inbound_ports"},
        {&spec.include_inbound_ports, "include_inbound_ports"},
        {&spec.include_outbound_ports, "include_outbound_ports"},
    };
    for (const auto& [list, field] : lists) {
        if (auto s = validate_port_list(*list, field); !s) return s;
    }
    if (spec.include_all_inbound_ports && !spec.include_inbound_ports.empty()) {
        return Error::invalid("include_inbound_ports: both \"*\" and a list of ports");
    }
    return validate_listener_not_listed(spec);
}

Status validate_cidrs(const WorkloadSpec& spec) {
    if (auto s = validate_cidr_list(spec.include_cidrs, "include_cidrs"); !s) return s;
    if (auto s = validate_cidr_list(spec.exclude_cidrs, "exclude_cidrs"); !s) return s;
    if (spec.include_all_cidrs && !spec.include_cidrs.empty()) {
        return Error::invalid("include_cidrs: both \"*\" and a list of CIDRs");
    }
    return Ok{};
}

constexpr std::size_t kMaxAdditionalProxyIds = 64;

Status validate_proxy_ids(std::uint32_t first, const std::vector<std::uint32_t>& more,
                          std::string_view field, std::string_view more_field) {
    if (auto s = validate_id(first, field); !s) return s;
    if (more.size() > kMaxAdditionalProxyIds)
        return Error::invalid(std::string(more_field) + ": at most " +
                              std::to_string(kMaxAdditionalProxyIds) + " ids");
    for (std::size_t i = 0; i < more.size(); ++i) {
        if (auto s = validate_id(more[i], more_field); !s) return s;
        if (more[i] == first || std::find(more.begin(), more.begin() + i, more[i]) !=
                                    more.begin() + static_cast<std::ptrdiff_t>(i))
            return Error::invalid(std::string(more_field) + ": " + std::to_string(more[i]) +
                                  " is listed twice");
    }
    return Ok{};
}

// Istio's rule: HostIPv4LoopbackCidr must lie inside 127.0.0.0/8.
Status validate_capture_scope(const WorkloadSpec& spec) {
    const Cidr& lo = spec.host_loopback_cidr;
    if (!lo.is_v4 || !lo.is_loopback() || lo.prefix_len < 8)
        return Error::invalid("host_loopback_cidr: " + lo.to_string() +
                              " is not inside 127.0.0.0/8");
    if (!spec.capture_ipv4 && !spec.capture_ipv6)
        return Error::invalid(
            "capture_ipv4, capture_ipv6: neither family would be captured (unenroll instead)");
    return Ok{};
}

// DNS capture: a listener port of its own, and nameservers exactly when they are used.
Status validate_dns(const WorkloadSpec& spec) {
    if (auto s = validate_listener_port(spec.dns_port, "dns_port"); !s) return s;
    if (spec.dns_port == spec.outbound_port || spec.dns_port == spec.inbound_port)
        return Error::invalid("dns_port: " + std::to_string(spec.dns_port) +
                              " is the proxy's outbound or inbound listener port");
    if (spec.dns_port == MESHLANE_DNS_PORT)
        return Error::invalid("dns_port: 53 would capture the proxy's own DNS listener");
    if (auto s = validate_cidr_list(spec.dns_servers, "dns_servers"); !s) return s;
    for (const auto& host : spec.dns_servers)
        if (host.prefix_len != (host.is_v4 ? 32 : 128))
            return Error::invalid("dns_servers: " + host.to_string() + " is not an address");
    if (spec.dns_capture == DnsCapture::kNameservers && spec.dns_servers.empty())
        return Error::invalid(
            "dns_servers: dns_capture \"nameservers\" needs the pod's nameserver addresses "
            "(the nameserver lines of its /etc/resolv.conf)");
    if (spec.dns_capture != DnsCapture::kNameservers && !spec.dns_servers.empty())
        return Error::invalid("dns_servers: only used with dns_capture \"nameservers\"");
    return Ok{};
}

}  // namespace

// Kubernetes names: a namespace is a DNS label (<= 63), a pod name a DNS subdomain (<= 253),
// lowercase letters, digits, '-' and '.'. Checked so a metric label never carries anything else.
Status validate_pod_identity(const WorkloadSpec& spec) {
    if (spec.k8s_namespace.empty() != spec.k8s_pod.empty())
        return Error::invalid("k8s_namespace and k8s_pod: give both or neither");
    const auto dns_name = [](const std::string& text, std::size_t max) {
        return text.size() <= max && std::all_of(text.begin(), text.end(), [](char c) {
                   return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
               });
    };
    if (!dns_name(spec.k8s_namespace, 63))
        return Error::invalid(
            "k8s_namespace: a Kubernetes namespace name (at most 63 of a-z 0-9 - .)");
    if (!dns_name(spec.k8s_pod, 253))
        return Error::invalid("k8s_pod: a Kubernetes pod name (at most 253 of a-z 0-9 - .)");
    return Ok{};
}

Status validate(const WorkloadSpec& spec) {
    if (auto s = validate_name(spec.name); !s) return s;
    if (auto s = validate_path(spec.cgroup_path, "cgroup", false); !s) return s;
    if (auto s = validate_path(spec.netns_path, "netns", true); !s) return s;
    if (auto s = validate_proxy_ids(spec.proxy_uid, spec.additional_proxy_uids, "proxy_uid",
                                    "additional_proxy_uids");
        !s)
        return s;
    if (auto s = validate_proxy_ids(spec.proxy_gid, spec.additional_proxy_gids, "proxy_gid",
                                    "additional_proxy_gids");
        !s)
        return s;
    if (auto s = validate_capture_scope(spec); !s) return s;
    if (auto s = validate_ports(spec); !s) return s;
    if (auto s = validate_dns(spec); !s) return s;
    if (auto s = validate_pod_identity(spec); !s) return s;
    return validate_cidrs(spec);
}

std::vector<std::string> differing_fields(const WorkloadSpec& a, const WorkloadSpec& b) {
    std::vector<std::string> fields;
    const auto check = [&fields](bool differs, const char* name) {
        if (differs) fields.emplace_back(name);
    };
    check(a.name != b.name, "name");
    check(a.cgroup_path != b.cgroup_path, "cgroup");
    check(a.netns_path != b.netns_path, "netns");
    check(a.proxy_uid != b.proxy_uid, "proxy_uid");
    check(a.proxy_gid != b.proxy_gid, "proxy_gid");
    check(a.additional_proxy_uids != b.additional_proxy_uids, "additional_proxy_uids");
    check(a.additional_proxy_gids != b.additional_proxy_gids, "additional_proxy_gids");
    check(a.capture_ipv4 != b.capture_ipv4, "capture_ipv4");
    check(a.capture_ipv6 != b.capture_ipv6, "capture_ipv6");
    check(a.host_loopback_cidr != b.host_loopback_cidr, "host_loopback_cidr");
    check(a.outbound_port != b.outbound_port, "outbound_port");
    check(a.inbound_port != b.inbound_port, "inbound_port");
    check(a.exclude_outbound_ports != b.exclude_outbound_ports, "exclude_outbound_ports");
    check(a.exclude_inbound_ports != b.exclude_inbound_ports, "exclude_inbound_ports");
    check(a.include_all_cidrs != b.include_all_cidrs || a.include_cidrs != b.include_cidrs,
          "include_cidrs");
    check(a.exclude_cidrs != b.exclude_cidrs, "exclude_cidrs");
    check(a.include_all_inbound_ports != b.include_all_inbound_ports ||
              a.include_inbound_ports != b.include_inbound_ports,
          "include_inbound_ports");
    check(a.include_outbound_ports != b.include_outbound_ports, "include_outbound_ports");
    check(a.proxy_self_to_inbound != b.proxy_self_to_inbound, "proxy_self_to_inbound");
    check(a.startup_policy != b.startup_policy, "startup_policy");
    check(a.fast_path != b.fast_path, "fast_path");
    check(a.fast_path_proxy_proxy != b.fast_path_proxy_proxy, "fast_path_proxy_proxy");
    check(a.dns_capture != b.dns_capture, "dns_capture");
    check(a.dns_port != b.dns_port, "dns_port");
    check(a.dns_servers != b.dns_servers, "dns_servers");
    check(a.k8s_namespace != b.k8s_namespace, "k8s_namespace");
    check(a.k8s_pod != b.k8s_pod, "k8s_pod");
    return fields;
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

namespace {

json::array ports_to_json(const std::vector<std::uint16_t>& ports) {
    json::array array;
    for (const auto port : ports) array.emplace_back(port);
    return array;
}

json::value cidrs_to_json(bool all, const std::vector<Cidr>& cidrs) {
    if (all) return "*";
    json::array array;
    for (const auto& cidr : cidrs) array.emplace_back(cidr.to_string());
    return array;
}

Error wrong_type(std::string_view field, std::string_view expected) {
    return Error::invalid(std::string(field) + ": must be " + std::string(expected));
}

Result<std::string> string_from_json(const json::value& value, std::string_view field) {
    if (!value.is_string()) return wrong_type(field, "a string");
    return std::string(value.get_string());
}

// Accepts JSON integers only (1.0 is refused: a port or uid is never fractional).
Result<std::uint64_t> integer_from_json(const json::value& value, std::string_view field,
                                        std::uint64_t min, std::uint64_t max) {
    std::optional<std::uint64_t> number;
    std::string shown;
    if (value.is_uint64()) {
        number = value.get_uint64();
    } else if (value.is_int64()) {
        if (value.get_int64() >= 0) number = static_cast<std::uint64_t>(value.get_int64());
        shown = std::to_string(value.get_int64());
    } else {
        return wrong_type(field, "an integer");
    }
    if (!number || *number < min || *number > max) {
        if (shown.empty()) shown = std::to_string(*number);
        return Error::invalid(std::string(field) + ": " + shown + " is out of range " +
                              std::to_string(min) + ".." + std::to_string(max));
    }
    return *number;
}

Result<std::vector<std::uint16_t>> ports_from_array(const json::array& array,
                                                    std::string_view field) {
    std::vector<std::uint16_t> ports;
    for (std::size_t i = 0; i < array.size(); ++i) {
        const std::string element = std::string(field) + "[" + std::to_string(i) + "]";
        auto port = integer_from_json(array[i], element, 1, 65535);
        if (!port) return port.error();
        ports.push_back(static_cast<std::uint16_t>(*port));
    }
    if (auto status = sort_and_check_ports(ports, field); !status) return status.error();
    return ports;
}

Result<std::vector<std::uint16_t>> ports_from_json(const json::value& value,
                                                   std::string_view field) {
    if (!value.is_array()) return wrong_type(field, "an array of ports");
    return ports_from_array(value.get_array(), field);
}

// nullopt for "*".
Result<std::optional<std::vector<std::uint16_t>>> ports_or_all_from_json(const json::value& value,
                                                                         std::string_view field) {
    if (value.is_string() && value.get_string() == "*") {
        return std::optional<std::vector<std::uint16_t>>{};
    }
    if (!value.is_array()) return wrong_type(field, "an array of ports or \"*\"");
    auto ports = ports_from_array(value.get_array(), field);
    if (!ports) return ports.error();
    return std::optional(std::move(*ports));
}

Result<std::vector<Cidr>> cidrs_from_array(const json::array& array, std::string_view field) {
    std::vector<Cidr> cidrs;
    for (std::size_t i = 0; i < array.size(); ++i) {
        const std::string element = std::string(field) + "[" + std::to_string(i) + "]";
        if (!array[i].is_string()) return wrong_type(element, "a CIDR string");
        auto cidr = Cidr::parse(array[i].get_string());
        if (!cidr) return cidr.error().with_context(element);
        cidrs.push_back(*cidr);
    }
    if (auto status = sort_and_check_cidrs(cidrs, field); !status) return status.error();
    return cidrs;
}

// nullopt for "*" when allowed.
Result<std::optional<std::vector<Cidr>>> cidrs_from_json(const json::value& value,
                                                         std::string_view field, bool allow_all) {
    if (allow_all && value.is_string() && value.get_string() == "*") {
        return std::optional<std::vector<Cidr>>{};
    }
    if (!value.is_array()) {
        return wrong_type(field, allow_all ? "an array of CIDRs or \"*\"" : "an array of CIDRs");
    }
    auto cidrs = cidrs_from_array(value.get_array(), field);
    if (!cidrs) return cidrs.error();
    return std::optional(std::move(*cidrs));
}

// One field of the JSON object into the spec. Each entry knows its own type rules.
using FieldParser = Status (*)(const json::value&, WorkloadSpec&);

template <std::string WorkloadSpec::*member>
Status string_field(const json::value& v, WorkloadSpec& spec, std::string_view field) {
    auto text = string_from_json(v, field);
    if (!text) return text.error();
    spec.*member = std::move(*text);
    return Ok{};
}

template <typename T>
Status integer_field(const json::value& v, T& out, std::string_view field, std::uint64_t min) {
    auto number = integer_from_json(v, field, min, std::numeric_limits<T>::max());
    if (!number) return number.error();
    out = static_cast<T>(*number);
    return Ok{};
}

Status ports_field(const json::value& v, std::vector<std::uint16_t>& out, std::string_view field) {
    auto ports = ports_from_json(v, field);
    if (!ports) return ports.error();
    out = std::move(*ports);
    return Ok{};
}

Status ids_field(const json::value& v, std::vector<std::uint32_t>& out, std::string_view field) {
    if (!v.is_array()) return wrong_type(field, "an array of uids/gids");
    std::vector<std::uint32_t> ids;
    for (std::size_t i = 0; i < v.get_array().size(); ++i) {
        const std::string element = std::string(field) + "[" + std::to_string(i) + "]";
        auto id = integer_from_json(v.get_array()[i], element, 0,
                                    std::numeric_limits<std::uint32_t>::max());
        if (!id) return id.error();
        ids.push_back(static_cast<std::uint32_t>(*id));
    }
    out = std::move(ids);
    return Ok{};
}

Status bool_field(const json::value& v, bool& out, std::string_view field) {
    if (!v.is_bool()) return wrong_type(field, "true or false");
    out = v.get_bool();
    return Ok{};
}

struct FieldEntry {
    std::string_view name;
    FieldParser parse;
};

// The JSON field names, once. Keep in step with to_json() below and api/openapi.yaml.
constexpr FieldEntry kFields[] = {
    {"name", [](const json::value& v,
                WorkloadSpec& s) { return string_field<&WorkloadSpec::name>(v, s, "name"); }},
    {"cgroup",
     [](const json::value& v, WorkloadSpec& s) {
         return string_field<&WorkloadSpec::cgroup_path>(v, s, "cgroup");
     }},
    {"netns",
     [](const json::value& v, WorkloadSpec& s) {
         return string_field<&WorkloadSpec::netns_path>(v, s, "netns");
     }},
    {"proxy_uid", [](const json::value& v,
                     WorkloadSpec& s) { return integer_field(v, s.proxy_uid, "proxy_uid", 0); }},
    {"proxy_gid", [](const json::value& v,
                     WorkloadSpec& s) { return integer_field(v, s.proxy_gid, "proxy_gid", 0); }},
    {"additional_proxy_uids",
     [](const json::value& v, WorkloadSpec& s) {
         return ids_field(v, s.additional_proxy_uids, "additional_proxy_uids");
     }},
    {"additional_proxy_gids",
     [](const json::value& v, WorkloadSpec& s) {
         return ids_field(v, s.additional_proxy_gids, "additional_proxy_gids");
     }},
    {"capture_ipv4", [](const json::value& v,
                        WorkloadSpec& s) { return bool_field(v, s.capture_ipv4, "capture_ipv4"); }},
    {"capture_ipv6", [](const json::value& v,
                        WorkloadSpec& s) { return bool_field(v, s.capture_ipv6, "capture_ipv6"); }},
    {"host_loopback_cidr",
     [](const json::value& v, WorkloadSpec& s) -> Status {
         if (!v.is_string()) return wrong_type("host_loopback_cidr", "a CIDR string");
         auto cidr = Cidr::parse(v.get_string());
         if (!cidr) return cidr.error().with_context("host_loopback_cidr");
         s.host_loopback_cidr = *cidr;
         return Ok{};
     }},
    {"outbound_port",
     [](const json::value& v, WorkloadSpec& s) {
         return integer_field(v, s.outbound_port, "outbound_port", 1);
     }},
    {"inbound_port",
     [](const json::value& v, WorkloadSpec& s) {
         return integer_field(v, s.inbound_port, "inbound_port", 1);
     }},
    {"exclude_outbound_ports",
     [](const json::value& v, WorkloadSpec& s) {
         return ports_field(v, s.exclude_outbound_ports, "exclude_outbound_ports");
     }},
    {"exclude_inbound_ports",
     [](const json::value& v, WorkloadSpec& s) {
         return ports_field(v, s.exclude_inbound_ports, "exclude_inbound_ports");
     }},
    {"include_outbound_ports",
     [](const json::value& v, WorkloadSpec& s) {
         return ports_field(v, s.include_outbound_ports, "include_outbound_ports");
     }},
    {"include_inbound_ports",
     [](const json::value& v, WorkloadSpec& s) -> Status {
         auto ports = ports_or_all_from_json(v, "include_inbound_ports");
         if (!ports) return ports.error();
         s.include_all_inbound_ports = !ports->has_value();
         s.include_inbound_ports = ports->value_or(std::vector<std::uint16_t>{});
         return Ok{};
     }},
    {"include_cidrs",
     [](const json::value& v, WorkloadSpec& s) -> Status {
         auto cidrs = cidrs_from_json(v, "include_cidrs", true);
         if (!cidrs) return cidrs.error();
         s.include_all_cidrs = !cidrs->has_value();
         s.include_cidrs = cidrs->value_or(std::vector<Cidr>{});
         return Ok{};
     }},
    {"exclude_cidrs",
     [](const json::value& v, WorkloadSpec& s) -> Status {
         auto cidrs = cidrs_from_json(v, "exclude_cidrs", false);
         if (!cidrs) return cidrs.error();
         s.exclude_cidrs = std::move(**cidrs);
         return Ok{};
     }},
    {"proxy_self_to_inbound",
     [](const json::value& v, WorkloadSpec& s) {
         return bool_field(v, s.proxy_self_to_inbound, "proxy_self_to_inbound");
     }},
    {"startup_policy",
     [](const json::value& v, WorkloadSpec& s) -> Status {
         if (!v.is_string()) return wrong_type("startup_policy", "\"refuse\" or \"passthrough\"");
         auto policy = parse_startup_policy(v.get_string());
         if (!policy) return policy.error();
         s.startup_policy = *policy;
         return Ok{};
     }},
    {"fast_path",
     [](const json::value& v, WorkloadSpec& s) { return bool_field(v, s.fast_path, "fast_path"); }},
    {"fast_path_proxy_proxy",
     [](const json::value& v, WorkloadSpec& s) {
         return bool_field(v, s.fast_path_proxy_proxy, "fast_path_proxy_proxy");
     }},
    {"dns_capture",
     [](const json::value& v, WorkloadSpec& s) -> Status {
         if (!v.is_string())
             return wrong_type("dns_capture", "\"off\", \"nameservers\" or \"all\"");
         auto mode = parse_dns_capture(v.get_string());
         if (!mode) return mode.error();
         s.dns_capture = *mode;
         return Ok{};
     }},
    {"dns_port", [](const json::value& v,
                    WorkloadSpec& s) { return integer_field(v, s.dns_port, "dns_port", 1); }},
    {"dns_servers",
     [](const json::value& v, WorkloadSpec& s) -> Status {
         if (!v.is_array()) return wrong_type("dns_servers", "an array of IP addresses");
         std::vector<Cidr> hosts;
         const auto& array = v.get_array();
         for (std::size_t i = 0; i < array.size(); ++i) {
             const std::string element = "dns_servers[" + std::to_string(i) + "]";
             if (!array[i].is_string()) return wrong_type(element, "an IP address string");
             auto host = parse_host(array[i].get_string(), element);
             if (!host) return host.error();
             hosts.push_back(*host);
         }
         if (auto status = sort_and_check_cidrs(hosts, "dns_servers"); !status) return status;
         s.dns_servers = std::move(hosts);
         return Ok{};
     }},
    {"k8s_namespace",
     [](const json::value& v, WorkloadSpec& s) {
         return string_field<&WorkloadSpec::k8s_namespace>(v, s, "k8s_namespace");
     }},
    {"k8s_pod",
     [](const json::value& v, WorkloadSpec& s) {
         return string_field<&WorkloadSpec::k8s_pod>(v, s, "k8s_pod");
     }},
};

const FieldEntry* find_field(std::string_view name) {
    for (const auto& entry : kFields) {
        if (entry.name == name) return &entry;
    }
    return nullptr;
}

}  // namespace

json::object to_json(const WorkloadSpec& spec) {
    json::object object;
    object["name"] = spec.name;
    object["cgroup"] = spec.cgroup_path;
    object["netns"] = spec.netns_path;
    object["proxy_uid"] = spec.proxy_uid;
    object["proxy_gid"] = spec.proxy_gid;
    json::array uids, gids;
    for (auto id : spec.additional_proxy_uids) uids.emplace_back(id);
    for (auto id : spec.additional_proxy_gids) gids.emplace_back(id);
    object["additional_proxy_uids"] = std::move(uids);
    object["additional_proxy_gids"] = std::move(gids);
    object["capture_ipv4"] = spec.capture_ipv4;
    object["capture_ipv6"] = spec.capture_ipv6;
    object["host_loopback_cidr"] = spec.host_loopback_cidr.to_string();
    object["outbound_port"] = spec.outbound_port;
    object["inbound_port"] = spec.inbound_port;
    object["exclude_outbound_ports"] = ports_to_json(spec.exclude_outbound_ports);
    object["exclude_inbound_ports"] = ports_to_json(spec.exclude_inbound_ports);
    object["include_cidrs"] = cidrs_to_json(spec.include_all_cidrs, spec.include_cidrs);
    object["exclude_cidrs"] = cidrs_to_json(false, spec.exclude_cidrs);
    object["include_inbound_ports"] = spec.include_all_inbound_ports
                                          ? json::value("*")
                                          : json::value(ports_to_json(spec.include_inbound_ports));
    object["include_outbound_ports"] = ports_to_json(spec.include_outbound_ports);
    object["proxy_self_to_inbound"] = spec.proxy_self_to_inbound;
    object["startup_policy"] = to_string(spec.startup_policy);
    object["fast_path"] = spec.fast_path;
    object["fast_path_proxy_proxy"] = spec.fast_path_proxy_proxy;
    object["dns_capture"] = to_string(spec.dns_capture);
    object["dns_port"] = spec.dns_port;
    json::array servers;
    for (const auto& host : spec.dns_servers) servers.emplace_back(address_to_string(host));
    object["dns_servers"] = std::move(servers);
    object["k8s_namespace"] = spec.k8s_namespace;
    object["k8s_pod"] = spec.k8s_pod;
    return object;
}

Result<WorkloadSpec> workload_spec_from_json(const json::value& value) {
    if (!value.is_object()) return Error::invalid("workload spec: must be a JSON object");
    const auto& object = value.get_object();
    WorkloadSpec spec;
    for (const auto& [key, field_value] : object) {
        const auto* entry = find_field(key);
        if (entry == nullptr) {
            return Error::invalid(std::string(key) + ": unknown field");
        }
        if (auto status = entry->parse(field_value, spec); !status) return status.error();
    }
    for (const auto* required : {"name", "cgroup", "netns"}) {
        if (!object.contains(required)) {
            return Error::invalid(std::string(required) + ": required field is missing");
        }
    }
    return spec;
}

}  // namespace meshlane
