// systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram with
// "READY=1", "STOPPING=1", ... to the unix socket named by $NOTIFY_SOCKET (a path, or '@' for
// the abstract namespace). Under Type=notify `systemctl start` returns only after READY=1.
#pragma once

#include <string_view>

#include "agent/common/result.h"

namespace meshlane {

// Sends `state` (newline-separated KEY=VALUE assignments) when $NOTIFY_SOCKET is set; Ok and
// nothing sent when it is not (not started by systemd).
Status sd_notify(std::string_view state);

}  // namespace meshlane
