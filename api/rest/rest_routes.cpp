// The route table and its handlers. Handlers are small: decode, call the registry, encode.
// Mutating routes are POST or DELETE only, so a stray GET (a browser, a proxy prefetch) can
// never change datapath state.
#include <array>
#include <boost/json.hpp>
#include <map>

#include "agent/observe/map_fill.h"
#include "agent/observe/observe_json.h"
#include "api/rest/agent_routes.h"
#include "api/rest/diagnose_routes.h"
#include "api/rest/observe_routes.h"
#include "api/rest/rest_router.h"

namespace meshlane::rest {

namespace json = boost::json;

namespace {

Response health(const RouteContext&) {
    return json_response(http::status::ok, json::object{{"status", "ok"}});
}

// Programs and where they are attached: the observer's node-wide ones with their ids, and how
// many workloads have each per-pod program (each one's list: GET /v1/workloads/{name}).
json::object program_summary(const RouteContext& context) {
    json::array node;
    if (context.observations != nullptr)
        for (const auto& p : context.observations->programs())
            node.push_back(json::object{{"object", p.object},
                                        {"program", p.program},
                                        {"attach_to", p.attach_to},
                                        {"link_id", p.link_id},
                                        {"prog_id", p.prog_id}});
    std::map<std::string, std::uint64_t> counts;
    for (const auto& workload : context.registry.list())
        for (const auto& program : workload.programs) ++counts[program.program];
    json::object workloads;
    for (const auto& [program, count] : counts) workloads[program] = count;
    return {{"node", std::move(node)}, {"workloads", std::move(workloads)}};
}

Response agent_status(const RouteContext& context) {
    auto status = to_json(context.registry.status());
    if (context.events != nullptr) {
        const auto stats = context.events->stats();
        status["events"] = {{"published", stats.published},
                            {"lost", stats.dropped},
                            {"subscribers", stats.subscribers}};
    }
    // Kernel-side lost events, the aggregate's memory against its bound, the observe maps' size.
    if (context.observations != nullptr) {
        status["observer"] = to_json(context.observations->health());
        // Every BPF map of meshlane with its fill level, as the observer last counted them.
        status["bpf_maps"] = to_json(context.observations->map_fill());
    }
    status["programs"] = program_summary(context);
    return json_response(http::status::ok, status);
}

Response list_workloads(const RouteContext& context) {
    json::array workloads;
    for (const auto& status : context.registry.list()) workloads.emplace_back(to_json(status));
    return json_response(http::status::ok, json::object{{"workloads", std::move(workloads)}});
}

Result<json::value> parse_json_body(const Request& request) {
    boost::system::error_code ec;
    auto value = json::parse(request.body(), ec);
    if (ec) return Error::invalid("request body is not valid JSON: " + ec.message());
    return value;
}

Response enroll_workload(const RouteContext& context) {
    auto body = parse_json_body(context.request);
    if (!body) return error_response(body.error());
    auto spec = workload_spec_from_json(*body);
    if (!spec) return error_response(spec.error());
    if (auto valid = validate(*spec); !valid) return error_response(valid.error());
    auto result = context.registry.enroll(*spec);
    if (!result) return error_response(result.error());
    const bool created = result->outcome == EnrollOutcome::kCreated;
    auto response =
        json_response(created ? http::status::created : http::status::ok, to_json(result->status));
    if (created) response.set(http::field::location, "/v1/workloads/" + spec->name);
    return response;
}

// Refusing malformed names early gives a 400 naming the rule instead of a puzzling 404.
Result<std::string> workload_name(const RouteContext& context) {
    auto name = context.params.get("name");
    if (auto valid = validate_name(name); !valid) return valid.error();
    return name;
}

Response get_workload(const RouteContext& context) {
    auto name = workload_name(context);
    if (!name) return error_response(name.error());
    auto status = context.registry.get(*name);
    if (!status) return error_response(status.error());
    return json_response(http::status::ok, to_json(*status));
}

Response unenroll_workload(const RouteContext& context) {
    auto name = workload_name(context);
    if (!name) return error_response(name.error());
    auto removed = context.registry.unenroll(*name);
    if (!removed) return error_response(removed.error());
    return json_response(http::status::ok, json::object{{"name", *name}, {"removed", *removed}});
}

constexpr auto kRoutes = std::to_array<Route>({
    {http::verb::get, "/v1/health", "Liveness: the agent answers.", false, health},
    {http::verb::get, "/v1/status",
     "Agent version, kernel, probed features, feature states, fast-path state, observer health "
     "(lost events) and BPF map fill levels.",
     false, agent_status},
    {http::verb::get, "/v1/workloads", "Every enrolled workload with its status and counters.",
     false, list_workloads},
    {http::verb::post, "/v1/workloads",
     "Enroll a workload (body: WorkloadSpec). 201 when created, 200 when already enrolled with "
     "the same spec, 409 when the name, cgroup or netns is taken with other settings.",
     true, enroll_workload, true},
    {http::verb::get, "/v1/workloads/{name}", "One workload: spec, programs, listener, counters.",
     false, get_workload},
    {http::verb::delete_, "/v1/workloads/{name}",
     "Unenroll a workload; idempotent (\"removed\": false when it was not enrolled).", true,
     unenroll_workload, true},
    {http::verb::get, "/v1/workloads/{name}/diagnose",
     "Findings that name the cause of an interception failure: severity, cause, evidence "
     "(counts, sockets, pids, times) and fix.",
     false, diagnose_workload, true},
    {http::verb::post, "/v1/workloads/{name}/verify",
     "Hop-by-hop check: programs read back from the kernel, an outbound probe from inside the "
     "pod (never leaves it), SO_ORIGINAL_DST answered, inbound listener registered.",
     true, verify_workload, true},
    {http::verb::get, "/v1/connections",
     "TCP connect latency (p50/p90/p99, log2 histogram), refused/timed-out connects, "
     "retransmits and resets per workload, app and upstream sides apart, with recent slow or "
     "failed connects (?workload=NAME).",
     false, list_connections},
    {http::verb::get, "/v1/drops",
     "Kernel packet drops per workload and reason (named from the kernel's BTF), with recent "
     "drop events and lost-event counts (?workload=NAME&reason=NETFILTER_DROP&since=UNIX_MS"
     "&limit=N).",
     false, list_drops},
    {http::verb::get, "/v1/tls",
     "TLS-handshake latency per workload, measured on the wire (ClientHello to the client's "
     "first application_data record, any TLS library) and by libssl uprobes: p50/p90/p99, "
     "failures (alerts, resets, closes mid-handshake), per destination (SNI or original "
     "destination), recent handshakes (?workload=NAME).",
     false, list_tls},
    {http::verb::get, "/v1/events",
     "Workload lifecycle events as NDJSON: recent history, then live with follow=true "
     "(?follow=true&workload=NAME&type=workload_enrolled,workload_removed&since=UNIX_MS); "
     "lost-event notices in the stream; 429 beyond the streaming-client cap.",
     false, list_events},
    {http::verb::get, "/metrics",
     "Prometheus text format 0.0.4: redirect decisions, SO_ORIGINAL_DST lookups, listeners, "
     "enrolment, lost events, build info, process RSS/CPU (?exclude=process leaves the "
     "process_* families out, for node_exporter's textfile collector).",
     false, get_metrics},
    {http::verb::get, "/healthz",
     "Liveness: the agent answers and its pinned datapath is reachable (503 otherwise).", false,
     get_healthz},
    {http::verb::get, "/readyz",
     "Readiness: ready or degraded (200), or not_ready (503: an essential part such as the "
     "redirect datapath is off, i.e. interception is disabled), with the issues.",
     false, get_readyz},
});

}  // namespace

std::span<const Route> routes() { return kRoutes; }

}  // namespace meshlane::rest
