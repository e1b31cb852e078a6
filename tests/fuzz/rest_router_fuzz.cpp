// libFuzzer target for the REST request path: raw bytes through Beast's request parser (with the
// server's header and body limits) into RestRouter::handle, including the streaming variant, and
// JSON bodies through workload_spec_from_json/validate. The first byte picks the mode, so one
// corpus covers all three. Invariants checked beyond "no crash, no sanitizer report": every
// response has a status in 200..599 and, unless streaming, a JSON/NDJSON/text body whose
// Content-Length matches.
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/json.hpp>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/events/event_bus.h"
#include "agent/model/workload_spec.h"
#include "api/rest/rest_router.h"
#include "tests/unit/fake_workload_registry.h"

namespace {

namespace http = boost::beast::http;
using meshlane::rest::Request;
using meshlane::rest::Response;

void check(const Response& response, bool streaming) {
    const unsigned status = response.result_int();
    if (status < 200 || status > 599) std::abort();
    if (!streaming &&
        response[http::field::content_length] != std::to_string(response.body().size()))
        std::abort();
}

void route(const Request& request) {
    meshlane::testing::FakeWorkloadRegistry registry;
    meshlane::events::EventBus bus({.queue_capacity = 8, .history_capacity = 8});
    bus.publish({.type = "workload_enrolled", .workload = "web"});
    meshlane::rest::RestRouter router(registry, 1 << 20, nullptr, &bus);
    check(router.handle(request), false);
    meshlane::rest::StreamingReply streaming;
    streaming.allowed = true;
    const auto response = router.handle(request, streaming);
    check(response, streaming.subscription != nullptr);
    if (streaming.subscription) {
        bus.publish({.type = "workload_removed", .workload = "web"});
        for (const auto& item : streaming.subscription->poll(16)) (void)streaming.encode(item);
    }
}

void fuzz_raw_request(std::string_view bytes) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(16 * 1024);
    parser.body_limit(1 << 20);
    parser.eager(true);
    boost::beast::error_code ec;
    parser.put(boost::asio::buffer(bytes.data(), bytes.size()), ec);
    if (ec == http::error::need_more) parser.put_eof(ec);
    if (ec || !parser.is_done()) return;
    route(parser.get());
}

void fuzz_json_body(std::string_view bytes) {
    boost::system::error_code ec;
    auto value = boost::json::parse(bytes, ec);
    if (!ec) {
        auto spec = meshlane::workload_spec_from_json(value);
        if (spec) {
            (void)meshlane::validate(*spec);
            (void)meshlane::workload_spec_from_json(meshlane::to_json(*spec));
        }
    }
    Request request{http::verb::post, "/v1/workloads", 11};
    request.body() = std::string(bytes);
    request.prepare_payload();
    route(request);
}

void fuzz_target(std::string_view bytes) {
    std::string target(bytes);
    for (auto& c : target)
        if (c == '\0' || c == '\r' || c == '\n') c = '_';
    for (const auto method : {http::verb::get, http::verb::delete_}) {
        Request request{method, target, 11};
        route(request);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
    switch (data[0] % 3) {
        case 0:
            fuzz_raw_request(rest);
            break;
        case 1:
            fuzz_json_body(rest);
            break;
        default:
            fuzz_target(rest);
            break;
    }
    return 0;
}
