// Names of kfree_skb drop reasons, read from the running kernel's BTF `enum skb_drop_reason`
// (values differ between kernels and carry a subsystem in bits 16+, so a hard-coded table would
// lie). Names are shown without the "SKB_DROP_REASON_" prefix: NETFILTER_DROP, NO_SOCKET.
// Values outside the core enum render as "<SUBSYSTEM>:<code>" from `enum
// skb_drop_reason_subsys`, or "UNKNOWN:<value>".
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "agent/common/result.h"

struct btf;

namespace meshlane {

class DropReasonNames {
  public:
    // Loads /sys/kernel/btf/vmlinux (libbpf btf__load_vmlinux_btf).
    static Result<DropReasonNames> load_running_kernel();
    // From an already-parsed BTF (unit tests, or a module's split BTF).
    static Result<DropReasonNames> from_btf(const struct btf* btf);

    std::string name(std::uint32_t value) const;
    // Accepts "NETFILTER_DROP" or "SKB_DROP_REASON_NETFILTER_DROP", any case.
    std::optional<std::uint32_t> value_of(std::string_view name) const;
    std::size_t size() const { return names_.size(); }

  private:
    std::map<std::uint32_t, std::string> names_;       // core reasons, prefix stripped
    std::map<std::uint32_t, std::string> subsystems_;  // subsystem id -> name
};

}  // namespace meshlane
