// Paths of the API's unix sockets (REST and gRPC): parent directories created traversable, a
// stale socket left by a dead agent replaced, anything else at the path refused.
#pragma once

#include <string>

#include "agent/common/result.h"

namespace meshlane {

// mkdir -p of the socket's parent directories, mode 0755.
Status create_parent_directories(const std::string& socket_path);

// Removes a socket nobody serves on; EADDRINUSE if an agent answers there, EEXIST if the path
// is not a socket.
Status remove_stale_socket(const std::string& path);

// Absolute, short enough for sun_path, parents created, stale socket removed.
Status prepare_unix_socket_path(const std::string& path);

}  // namespace meshlane
