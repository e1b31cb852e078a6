#include "cni/cni_plugin.h"

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <charconv>
#include <functional>
#include <memory>
#include <set>

#include "cni/attachment_store.h"

namespace meshlane::cni {

namespace json = boost::json;

namespace {

enum class Command { kAdd, kDel, kCheck, kStatus, kGc, kVersion };

std::optional<Command> parse_command(std::string_view text) {
    static constexpr std::pair<std::string_view, Command> kCommands[] = {
        {"ADD", Command::kAdd},       {"DEL", Command::kDel}, {"CHECK", Command::kCheck},
        {"STATUS", Command::kStatus}, {"GC", Command::kGc},   {"VERSION", Command::kVersion}};
    for (const auto& [name, command] : kCommands)
        if (name == text) return command;
    return std::nullopt;
}

Outcome failure(const std::string& version, int code, const std::string& msg,
                const std::string& details = "") {
    Outcome outcome;
    outcome.exit_code = 1;
    outcome.output = error_document(version, code, msg, details);
    outcome.log.push_back("meshlane-cni: " + msg + (details.empty() ? "" : ": " + details));
    return outcome;
}

// ---- the environment (SPEC.md section 2 "Parameters", per operation) -------------------------

// The spec's rule for container IDs and network names: an alphanumeric, then alphanumerics,
// '_', '.' or '-'.
bool valid_identifier(std::string_view text) {
    auto alnum = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    };
    if (text.empty() || !alnum(text.front())) return false;
    return std::all_of(text.begin(), text.end(),
                       [&](char c) { return alnum(c) || c == '_' || c == '.' || c == '-'; });
}

// "must be less than 16 characters, must not be "." or "..", must not contain / or : or any
// whitespace".
std::string interface_name_problem(std::string_view name) {
    if (name.size() > 15) return "interface name is too long (at most 15 characters)";
    if (name == "." || name == "..") return "interface name is . or ..";
    for (char c : name)
        if (c == '/' || c == ':' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
            c == '\f')
            return "interface name contains / or : or whitespace characters";
    return "";
}

std::optional<Outcome> check_environment(Command command, const Environment& env) {
    const bool attachment = command == Command::kAdd || command == Command::kCheck;
    const std::pair<const char*, bool> required[] = {
        {"CNI_CONTAINERID", attachment || command == Command::kDel},
        {"CNI_NETNS", attachment},
        {"CNI_IFNAME", attachment || command == Command::kDel},
        {"CNI_PATH", command == Command::kGc},
    };
    const std::string* values[] = {&env.container_id, &env.netns, &env.ifname, &env.path};
    std::string missing;
    for (std::size_t i = 0; i < std::size(required); ++i)
        if (required[i].second && values[i]->empty())
            missing += (missing.empty() ? "" : ",") + std::string(required[i].first);
    if (!missing.empty())
        return failure(kLatestVersion, kInvalidEnvironment,
                       "required env variables [" + missing + "] missing");
    if (!env.container_id.empty() && !valid_identifier(env.container_id))
        return failure(kLatestVersion, kInvalidEnvironment,
                       "CNI_CONTAINERID: invalid characters in containerID", env.container_id);
    if (!env.ifname.empty())
        if (auto problem = interface_name_problem(env.ifname); !problem.empty())
            return failure(kLatestVersion, kInvalidEnvironment, "CNI_IFNAME: " + problem,
                           env.ifname);
    return std::nullopt;
}

// ---- versions ----------------------------------------------------------------------------------

using Version = std::array<int, 3>;

std::optional<Version> parse_version(std::string_view text) {
    Version v{};
    for (std::size_t i = 0; i < 3; ++i) {
        auto [next, ec] = std::from_chars(text.data(), text.data() + text.size(), v[i]);
        if (ec != std::errc{} || v[i] < 0) return std::nullopt;
        text.remove_prefix(static_cast<std::size_t>(next - text.data()));
        if (i < 2 && (text.empty() || text.front() != '.')) return std::nullopt;
        if (i < 2) text.remove_prefix(1);
    }
    if (!text.empty()) return std::nullopt;
    return v;
}

bool version_supported(std::string_view version) {
    return std::any_of(std::begin(kSupportedVersions), std::end(kSupportedVersions),
                       [&](const char* v) { return version == v; });
}

// The header every config must carry (name, cniVersion) and the version the command needs. On
// success, the config's version (the one every later error document uses).
Result<std::string> check_header(Command command, std::string_view stdin_text, Outcome& failed) {
    boost::system::error_code ec;
    json::value root = json::parse(stdin_text, ec);
    if (ec || !root.is_object()) {
        failed =
            failure(kLatestVersion, kDecodeFailure,
                    "error decoding the network config: not a JSON object", ec ? ec.message() : "");
        return Error::invalid("");
    }
    const auto* name = root.get_object().if_contains("name");
    if (name == nullptr || !name->is_string() || name->get_string().empty()) {
        failed = failure(kLatestVersion, kInvalidConfig, "missing network name");
        return Error::invalid("");
    }
    if (!valid_identifier(name->get_string())) {
        failed = failure(kLatestVersion, kInvalidConfig, "invalid characters found in network name",
                         std::string(name->get_string()));
        return Error::invalid("");
    }
    const auto* version_field = root.get_object().if_contains("cniVersion");
    if (version_field == nullptr || !version_field->is_string() ||
        version_field->get_string().empty()) {
        // The reference library reads a missing version as 0.1.0, which nobody speaks now.
        failed = failure(kLatestVersion, kIncompatibleVersion,
                         "incompatible CNI versions: config has no cniVersion (0.1.0 assumed)");
        return Error::invalid("");
    }
    const std::string version(version_field->get_string());
    auto number = parse_version(version);
    // Unknown and malformed alike are "incompatible", as the reference skeleton answers.
    if (!number || !version_supported(version)) {
        failed = failure(kLatestVersion, kIncompatibleVersion, "incompatible CNI versions",
                         "config is \"" + version + "\", meshlane-cni supports 0.3.0 to 1.1.0");
        return Error::invalid("");
    }
    // SPEC.md: CHECK came with 0.4.0, STATUS and GC with 1.1.0.
    const Version needed = command == Command::kCheck ? Version{0, 4, 0}
                           : (command == Command::kStatus || command == Command::kGc)
                               ? Version{1, 1, 0}
                               : Version{0, 3, 0};
    if (*number < needed) {
        const char* what = command == Command::kCheck    ? "CHECK"
                           : command == Command::kStatus ? "STATUS"
                                                         : "GC";
        failed =
            failure(version, kIncompatibleVersion,
                    std::string("config version does not allow ") + what, "cniVersion " + version);
        return Error::invalid("");
    }
    return version;
}

Outcome version_command(std::string_view stdin_text) {
    // The output names the version the runtime asked in ("cniVersion": the value on input).
    std::string in_use = kLatestVersion;
    boost::system::error_code ec;
    auto root = json::parse(stdin_text, ec);
    if (!ec && root.is_object())
        if (const auto* v = root.get_object().if_contains("cniVersion");
            v != nullptr && v->is_string() && version_supported(v->get_string()))
            in_use = std::string(v->get_string());
    json::array versions;
    for (const char* v : kSupportedVersions) versions.emplace_back(v);
    Outcome outcome;
    outcome.output = json::serialize(
        json::object{{"cniVersion", in_use}, {"supportedVersions", std::move(versions)}});
    return outcome;
}

// ---- the operations ----------------------------------------------------------------------------

struct Call {
    const Environment& env;
    const PluginConfig& config;
    AgentClient& agent;
    AttachmentStore store;
};

std::string reply_error(const AgentReply& reply) {
    boost::system::error_code ec;
    auto body = json::parse(reply.body, ec);
    if (!ec) {
        const auto* e = body.is_object() ? body.get_object().if_contains("error") : nullptr;
        if (e != nullptr && e->is_string()) return std::string(e->get_string());
    }
    return "HTTP " + std::to_string(reply.status);
}

// ADD: a chained plugin's result is the previous plugin's, passed through unchanged (the
// version is added only when the previous plugin left it out).
std::string add_result(const PluginConfig& config) {
    if (!config.prev_result->is_object()) return json::serialize(*config.prev_result);
    json::object result = config.prev_result->get_object();
    if (!result.contains("cniVersion")) result["cniVersion"] = config.cni_version;
    return json::serialize(result);
}

std::string unreachable(const Call& call, const std::string& name) {
    return "meshlane agent unreachable at " + call.config.agent_socket + ": pod " + name +
           " cannot be captured";
}

Outcome add(Call& call, const WorkloadSpec& spec) {
    Outcome outcome;
    auto reply = call.agent.request(Method::kPost, "/v1/workloads", json::value(to_json(spec)));
    if (!reply) {
        const std::string msg = unreachable(call, spec.name);
        if (!call.config.fail_open)
            return failure(call.config.cni_version, kTryAgainLater, msg, reply.error().message);
        outcome.log.push_back("meshlane-cni: " + msg + " (failOpen: starting it uncaptured)");
        outcome.output = add_result(call.config);
        return outcome;
    }
    if (reply->status >= 400)
        return failure(call.config.cni_version, kEnrolmentRefused,
                       "meshlane refused to enroll pod " + spec.name, reply_error(*reply));
    if (auto recorded = call.store.record({call.env.container_id, call.env.ifname, spec.name});
        !recorded)
        outcome.log.push_back("meshlane-cni: " + spec.name +
                              " enrolled, but GC will not know it: " + recorded.error().message);
    outcome.output = add_result(call.config);
    return outcome;
}

Outcome check(Call& call, const std::string& name) {
    auto reply = call.agent.request(Method::kGet, "/v1/workloads/" + name, std::nullopt);
    if (!reply) {
        if (call.config.fail_open) return {};
        return failure(call.config.cni_version, kTryAgainLater, unreachable(call, name),
                       reply.error().message);
    }
    if (reply->status == 404)
        return failure(call.config.cni_version, kNotEnrolled,
                       "pod " + name + " is not enrolled with meshlane");
    if (reply->status >= 400)
        return failure(call.config.cni_version, kEnrolmentRefused,
                       "meshlane cannot report pod " + name, reply_error(*reply));
    return {};
}

// ADD and CHECK: the pod's spec decides whether it is captured at all.
Outcome add_or_check(Call& call, Command command) {
    if (!call.config.prev_result)
        return failure(call.config.cni_version, kInvalidConfig,
                       command == Command::kAdd
                           ? "meshlane-cni is a chained plugin: it needs a prevResult (list it "
                             "after the interface plugin in a .conflist)"
                           : "CHECK needs the prevResult of the ADD");
    const auto name = workload_name(parse_cni_args(call.env.args), call.env.container_id);
    auto spec = build_spec(call.config, call.env);
    if (!spec)
        return failure(call.config.cni_version, kInvalidConfig,
                       "pod " + name + ": " + spec.error().message);
    if (!spec->has_value()) {  // passed through by configuration
        Outcome outcome;
        if (command == Command::kAdd) outcome.output = add_result(call.config);
        outcome.log.push_back("meshlane-cni: " + name +
                              " is not captured (excluded namespace or "
                              "sidecar.istio.io/inject=false)");
        return outcome;
    }
    return command == Command::kAdd ? add(call, **spec) : check(call, (*spec)->name);
}

// Unenrolls `name`; true when the agent no longer has it (also when it never had). Problems are
// logged into `outcome`.
bool unenroll(Call& call, const std::string& name, Outcome& outcome, std::string& error) {
    auto reply = call.agent.request(Method::kDelete, "/v1/workloads/" + name, std::nullopt);
    if (!reply) {
        error = "agent unreachable (" + reply.error().message + ")";
    } else if (reply->status >= 400 && reply->status != 404) {
        error = reply_error(*reply);
    } else {
        return true;
    }
    outcome.log.push_back("meshlane-cni: unenroll " + name + ": " + error);
    return false;
}

// DEL never fails: the pod may be long gone, and so may the agent (its reconcile loop removes a
// workload whose netns disappeared anyway; GC retries what stays recorded).
Outcome del(Call& call) {
    Outcome outcome;
    const auto recorded = call.store.find(call.env.container_id, call.env.ifname);
    const auto name = recorded
                          ? recorded->workload
                          : workload_name(parse_cni_args(call.env.args), call.env.container_id);
    std::string error;
    if (unenroll(call, name, outcome, error))
        (void)call.store.forget(call.env.container_id, call.env.ifname);
    return outcome;
}

Outcome status(Call& call) {
    auto reply = call.agent.request(Method::kGet, "/v1/health", std::nullopt);
    std::string problem;
    if (!reply)
        problem = reply.error().message;
    else if (reply->status >= 400)
        problem = reply_error(*reply);
    if (problem.empty()) return {};
    const std::string msg = "meshlane agent not available at " + call.config.agent_socket;
    if (call.config.fail_open) {  // ADD would still succeed, uncaptured
        Outcome outcome;
        outcome.log.push_back("meshlane-cni: " + msg + ": " + problem +
                              " (failOpen: pods start uncaptured)");
        return outcome;
    }
    return failure(call.config.cni_version, kPluginNotAvailable, msg, problem);
}

// GC: unenroll the recorded attachments the runtime no longer lists; keep going on errors and
// report them all (SPEC.md "GC").
Outcome gc(Call& call) {
    std::set<std::pair<std::string, std::string>> valid;
    for (const auto& key : call.config.valid_attachments)
        valid.insert({key.container_id, key.ifname});
    Outcome outcome;
    std::vector<std::string> skipped;
    std::string errors;
    for (const auto& attachment : call.store.list(&skipped)) {
        if (valid.count({attachment.container_id, attachment.ifname}) != 0) continue;
        std::string error;
        if (unenroll(call, attachment.workload, outcome, error)) {
            (void)call.store.forget(attachment.container_id, attachment.ifname);
            outcome.log.push_back("meshlane-cni: GC unenrolled " + attachment.workload +
                                  " (container " + attachment.container_id + " is gone)");
        } else {
            errors += (errors.empty() ? "" : "; ") + attachment.workload + ": " + error;
        }
    }
    for (const auto& name : skipped)
        outcome.log.push_back("meshlane-cni: GC skipped unreadable record " + call.store.dir() +
                              "/" + name);
    if (errors.empty()) return outcome;
    auto failed = failure(call.config.cni_version, kTryAgainLater,
                          "GC could not unenroll every stale pod", errors);
    failed.log.insert(failed.log.begin(), outcome.log.begin(), outcome.log.end());
    return failed;
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
    if (env.command.empty())
        return failure(kLatestVersion, kInvalidEnvironment,
                       "required env variables [CNI_COMMAND] missing");
    const auto command = parse_command(env.command);
    if (!command)
        return failure(kLatestVersion, kInvalidEnvironment, "unknown CNI_COMMAND: " + env.command,
                       "expected ADD, DEL, CHECK, STATUS, GC or VERSION");
    if (auto bad = check_environment(*command, env)) return std::move(*bad);
    if (*command == Command::kVersion) return version_command(stdin_text);

    Outcome failed;
    auto version = check_header(*command, stdin_text, failed);
    if (!version) return failed;
    auto config = parse_config(stdin_text);
    if (!config) return failure(*version, kInvalidConfig, config.error().message);

    auto agent = client_for(*config);
    Call call{env, *config, *agent, AttachmentStore(config->data_dir, config->name)};
    switch (*command) {
        case Command::kAdd:
        case Command::kCheck:
            return add_or_check(call, *command);
        case Command::kDel:
            return del(call);
        case Command::kStatus:
            return status(call);
        case Command::kGc:
            return gc(call);
        case Command::kVersion:
            break;
    }
    return {};
}

}  // namespace meshlane::cni
