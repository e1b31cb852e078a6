// JSON for the TLS-handshake view (REST /v1/tls; the CLI renders it). Times are unix
// milliseconds, latencies milliseconds, percentiles from the log2 histogram.
#pragma once

#include <boost/json/object.hpp>
#include <string>

#include "agent/observe/tls_aggregate.h"

namespace meshlane {

boost::json::object to_json(const WorkloadTls& tls, const std::string& name);
boost::json::object to_json(const TlsHandshakeRecord& record);

}  // namespace meshlane
