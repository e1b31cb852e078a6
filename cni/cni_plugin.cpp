#include "cni/cni_plugin.h"

#include <algorithm>
#include <boost/json.hpp>
#include <functional>
#include <memory>

namespace meshlane::cni {

namespace json = boost::json;
namespace http = boost::beast::http;

namespace {

constexpr const char* kSupportedVersions[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0"};

bool version_supported(const std::string& version) {
    return std::any_of(std::begin(kSupportedVersions), std::end(kSupportedVersions),
                       [&](const char* v) { return version == v; });
}

Outcome failure(const std::string& version, int code, const std::string& msg,
                const std::string& details = "") {
    Outcome outcome;
    outcome.exit_code = 1;
    outcome.output = error_document(version, code, msg, details);
    outcome.log.push_back("meshlane-cni: " + msg + (details.empty() ? "" : ": " + details));
    return outcome;
}

std::string reply_error(const rest::HttpReply& reply) {
    boost::system::error_code ec;
    auto body = json::parse(reply.body, ec);
    if (!ec) {
        const auto* e = body.is_object() ? body.get_object().if_contains("error") : nullptr;
        if (e != nullptr && e->is_string()) return std::string(e->get_string());
    }
    return "HTTP " + std::to_string(reply.status);
}

// ADD: the chained result is the previous plugin's, unchanged, in the config's version.
std::string add_result(const PluginConfig& config) {
    json::object result =
        config.prev_result->is_object() ? config.prev_result->get_object() : json::object{};
    result["cniVersion"] = config.cni_version;
    return json::serialize(result);
}

}  // namespace

std::string error_document(const std::string& cni_version, int code, const std::string& msg,
                           const std::string& details) {
    json::object doc{{"cniVersion", cni_version}, {"code", code}, {"msg", msg}};
    if (!details.empty()) doc["details"] = details;
    return json::serialize(doc);
}

Outcome run(const Environment& env, std::string_view stdin_text,
            const std::function<std::unique_ptr<AgentClient>(const PluginConfig&)>& client_for) {
    if (env.command == "VERSION") {
        json::array versions;
        for (const char* v : kSupportedVersions) versions.emplace_back(v);
        Outcome outcome;
        outcome.output = json::serialize(
            json::object{{"cniVersion", "1.0.0"}, {"supportedVersions", std::move(versions)}});
        return outcome;
    }
    auto config = parse_config(stdin_text);
    if (!config) return failure("1.0.0", kDecodeFailure, config.error().message);
    const std::string& version = config->cni_version;
    if (!version_supported(version))
        return failure(version, kIncompatibleVersion, "unsupported cniVersion " + version);
    if (env.command != "ADD" && env.command != "DEL" && env.command != "CHECK")
        return failure(version, kInvalidEnvironment,
                       "CNI_COMMAND must be ADD, DEL, CHECK or VERSION, got '" + env.command + "'");
    if (env.command == "ADD" && !config->prev_result)
        return failure(version, kInvalidConfig,
                       "meshlane-cni is a chained plugin: it needs a prevResult (list it after the "
                       "interface plugin in a .conflist)");
    if (env.command != "DEL" && (env.netns.empty() || env.container_id.empty()))
        return failure(version, kInvalidEnvironment, "CNI_NETNS and CNI_CONTAINERID are required");

    const auto name = workload_name(parse_cni_args(env.args), env.container_id);
    auto client = client_for(*config);
    Outcome outcome;

    if (env.command == "DEL") {
        // Never fails: the pod may be long gone, and so may the agent (its reconcile loop
        // removes a workload whose netns disappeared anyway).
        auto reply = client->request(http::verb::delete_, "/v1/workloads/" + name, std::nullopt);
        if (!reply)
            outcome.log.push_back("meshlane-cni: DEL " + name + ": agent unreachable (" +
                                  reply.error().message + "); the agent cleans up on its own");
        else if (reply->status >= 400 && reply->status != 404)
            outcome.log.push_back("meshlane-cni: DEL " + name + ": " + reply_error(*reply));
        return outcome;
    }

    auto spec = build_spec(*config, env);
    if (!spec) return failure(version, kInvalidConfig, "pod " + name + ": " + spec.error().message);
    if (!spec->has_value()) {  // passed through by configuration
        if (env.command == "ADD") outcome.output = add_result(*config);
        outcome.log.push_back("meshlane-cni: " + name +
                              " is not captured (excluded namespace or "
                              "sidecar.istio.io/inject=false)");
        return outcome;
    }

    const bool add = env.command == "ADD";
    auto reply =
        add ? client->request(http::verb::post, "/v1/workloads", json::value(to_json(**spec)))
            : client->request(http::verb::get, "/v1/workloads/" + name, std::nullopt);
    if (!reply) {
        const std::string msg = "meshlane agent unreachable at " + config->agent_socket + ": pod " +
                                name + " cannot be captured";
        if (config->fail_open) {
            outcome.log.push_back("meshlane-cni: " + msg + " (failOpen: starting it uncaptured)");
            if (add) outcome.output = add_result(*config);
            return outcome;
        }
        return failure(version, kTryAgainLater, msg, reply.error().message);
    }
    if (reply->status >= 400) {
        if (!add && reply->status == 404)
            return failure(version, kNotEnrolled, "pod " + name + " is not enrolled with meshlane");
        return failure(version, kEnrolmentRefused, "meshlane refused to enroll pod " + name,
                       reply_error(*reply));
    }
    if (add) outcome.output = add_result(*config);
    return outcome;
}

}  // namespace meshlane::cni
