// What meshlane-cni remembers between calls, per the CNI spec's advice for plugins that keep
// state (key: network name, CNI_CONTAINERID, CNI_IFNAME): one small JSON file per attachment
// under <dataDir>/<network>/<containerID>-<ifname>, written after a successful ADD and removed
// by DEL. GC (CNI 1.1) needs it: the runtime names only the container IDs it still knows, and
// the workload to unenroll for the others is read from here. A missing or unwritable data
// directory never fails ADD or DEL (the agent removes workloads whose netns vanished anyway).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "agent/common/result.h"

namespace meshlane::cni {

inline constexpr const char* kDefaultDataDir = "/var/lib/cni/meshlane";

struct Attachment {
    std::string container_id;
    std::string ifname;
    std::string workload;
};

class AttachmentStore {
  public:
    // `network` must already be validated (a CNI network name holds no '/').
    AttachmentStore(const std::string& data_dir, const std::string& network);

    Status record(const Attachment& attachment) const;  // atomic (write + rename)
    std::optional<Attachment> find(const std::string& container_id,
                                   const std::string& ifname) const;
    Status forget(const std::string& container_id, const std::string& ifname) const;
    // Every readable record; unreadable files are skipped (reported through `skipped`).
    std::vector<Attachment> list(std::vector<std::string>* skipped = nullptr) const;

    const std::string& dir() const { return dir_; }

  private:
    std::string path(const std::string& container_id, const std::string& ifname) const;
    std::string dir_;
};

}  // namespace meshlane::cni
