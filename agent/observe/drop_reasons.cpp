#include "agent/observe/drop_reasons.h"

#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <algorithm>
#include <cctype>
#include <memory>

namespace meshlane {

namespace {

constexpr std::string_view kReasonPrefix = "SKB_DROP_REASON_";
constexpr std::string_view kSubsysPrefix = "SKB_DROP_REASON_SUBSYS_";
// SKB_DROP_REASON_SUBSYS_SHIFT in include/net/dropreason.h: stable since subsystems exist.
constexpr unsigned kSubsysShift = 16;

std::string strip(std::string_view name, std::string_view prefix) {
    if (name.substr(0, prefix.size()) == prefix) name.remove_prefix(prefix.size());
    return std::string(name);
}

std::string upper(std::string_view text) {
    std::string out(text);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    return out;
}

// Calls fn(name, value) for every enumerator of the named enum (enum or enum64).
template <typename Fn>
bool for_each_enumerator(const struct btf* btf, const char* enum_name, Fn fn) {
    int id = btf__find_by_name_kind(btf, enum_name, BTF_KIND_ENUM);
    if (id < 0) id = btf__find_by_name_kind(btf, enum_name, BTF_KIND_ENUM64);
    if (id < 0) return false;
    const struct btf_type* type = btf__type_by_id(btf, id);
    if (!type) return false;
    const unsigned count = btf_vlen(type);
    if (btf_is_enum(type)) {
        const struct btf_enum* e = btf_enum(type);
        for (unsigned i = 0; i < count; ++i)
            fn(btf__name_by_offset(btf, e[i].name_off), static_cast<std::uint64_t>(e[i].val));
    } else {
        const struct btf_enum64* e = btf_enum64(type);
        for (unsigned i = 0; i < count; ++i)
            fn(btf__name_by_offset(btf, e[i].name_off), btf_enum64_value(&e[i]));
    }
    return true;
}

}  // namespace

Result<DropReasonNames> DropReasonNames::from_btf(const struct btf* btf) {
    DropReasonNames names;
    const bool found =
        for_each_enumerator(btf, "skb_drop_reason", [&](const char* name, std::uint64_t value) {
            if (!name) return;
            const std::string_view text(name);
            // SKB_DROP_REASON_MAX and the SUBSYS_MASK are bounds, not reasons.
            if (text == "SKB_DROP_REASON_MAX" || text.find("SUBSYS_MASK") != std::string_view::npos)
                return;
            names.names_.emplace(static_cast<std::uint32_t>(value), strip(text, kReasonPrefix));
        });
    if (!found)
        return Error{ENOENT, "the kernel's BTF has no enum skb_drop_reason (kernel < 5.17?)"};
    for_each_enumerator(btf, "skb_drop_reason_subsys", [&](const char* name, std::uint64_t value) {
        if (!name) return;
        const std::string_view text(name);
        if (text.find("SUBSYS_NUM") != std::string_view::npos) return;
        names.subsystems_.emplace(static_cast<std::uint32_t>(value), strip(text, kSubsysPrefix));
    });
    return names;
}

Result<DropReasonNames> DropReasonNames::load_running_kernel() {
    errno = 0;
    std::unique_ptr<struct btf, void (*)(struct btf*)> btf(btf__load_vmlinux_btf(), btf__free);
    const long err = libbpf_get_error(btf.get());
    if (!btf || err) {
        btf.release();
        return Error::from_errno(err ? static_cast<int>(-err) : (errno ? errno : ENOENT),
                                 "load the running kernel's BTF");
    }
    return from_btf(btf.get());
}

std::string DropReasonNames::name(std::uint32_t value) const {
    if (auto it = names_.find(value); it != names_.end()) return it->second;
    const std::uint32_t subsystem = value >> kSubsysShift;
    const std::uint32_t code = value & ((1u << kSubsysShift) - 1);
    if (subsystem != 0) {
        if (auto it = subsystems_.find(subsystem); it != subsystems_.end())
            return it->second + ":" + std::to_string(code);
    }
    return "UNKNOWN:" + std::to_string(value);
}

std::optional<std::uint32_t> DropReasonNames::value_of(std::string_view name) const {
    const std::string wanted = strip(upper(name), kReasonPrefix);
    for (const auto& [value, known] : names_)
        if (known == wanted) return value;
    return std::nullopt;
}

}  // namespace meshlane
