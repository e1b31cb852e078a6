#include "cni/agent_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>
#include <thread>

#include "agent/common/unique_fd.h"

namespace meshlane::cni {

namespace {

using Clock = std::chrono::steady_clock;

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; };
        if (lower(a[i]) != lower(b[i])) return false;
    }
    return true;
}

std::string_view trim(std::string_view text) {
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
    return text;
}

struct Head {
    unsigned status = 0;
    std::optional<std::size_t> content_length;
    bool chunked = false;
    std::size_t body_offset = 0;
};

// nullopt: the header block is not complete yet.
std::optional<Result<Head>> parse_head(std::string_view raw) {
    const auto end = raw.find("\r\n\r\n");
    if (end == std::string_view::npos) return std::nullopt;
    Head head;
    head.body_offset = end + 4;
    std::string_view lines = raw.substr(0, end);
    auto line_end = lines.find("\r\n");
    std::string_view status_line = lines.substr(0, line_end);
    // "HTTP/1.1 200 OK"
    if (status_line.substr(0, 5) != "HTTP/" || status_line.size() < 12)
        return Result<Head>(Error::invalid("agent reply: not an HTTP status line"));
    auto code = status_line.substr(9, 3);
    if (std::from_chars(code.data(), code.data() + 3, head.status).ec != std::errc{} ||
        head.status < 100)
        return Result<Head>(Error::invalid("agent reply: bad status code"));
    while (line_end != std::string_view::npos) {
        lines.remove_prefix(line_end + 2);
        line_end = lines.find("\r\n");
        std::string_view line = lines.substr(0, line_end);
        auto colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        auto name = trim(line.substr(0, colon));
        auto value = trim(line.substr(colon + 1));
        if (iequals(name, "content-length")) {
            std::size_t length = 0;
            if (std::from_chars(value.data(), value.data() + value.size(), length).ec !=
                std::errc{})
                return Result<Head>(Error::invalid("agent reply: bad Content-Length"));
            head.content_length = length;
        } else if (iequals(name, "transfer-encoding")) {
            head.chunked = value.find("chunked") != std::string_view::npos;
        }
    }
    return Result<Head>(head);
}

// nullopt: more chunks to come.
std::optional<Result<std::string>> decode_chunked(std::string_view data) {
    std::string body;
    while (true) {
        auto line_end = data.find("\r\n");
        if (line_end == std::string_view::npos) return std::nullopt;
        std::size_t size = 0;
        auto size_text = data.substr(0, line_end);
        size_text = size_text.substr(0, size_text.find(';'));  // chunk extensions
        if (std::from_chars(size_text.data(), size_text.data() + size_text.size(), size, 16).ec !=
            std::errc{})
            return Result<std::string>(Error::invalid("agent reply: bad chunk size"));
        data.remove_prefix(line_end + 2);
        if (size == 0) return Result<std::string>(std::move(body));  // trailers ignored
        if (data.size() < size + 2) return std::nullopt;
        body.append(data.substr(0, size));
        data.remove_prefix(size + 2);
    }
}

// nullopt: incomplete, read more (at_eof: no more will come, so that is an error).
std::optional<Result<AgentReply>> parse_reply(std::string_view raw, bool at_eof) {
    auto head = parse_head(raw);
    if (!head) {
        if (!at_eof) return std::nullopt;
        return Result<AgentReply>(
            Error{EPROTO, "agent reply: connection closed before the headers"});
    }
    if (!*head) return Result<AgentReply>(head->error());
    const auto body = raw.substr((*head)->body_offset);
    AgentReply reply{(*head)->status, {}};
    if ((*head)->chunked) {
        auto decoded = decode_chunked(body);
        if (!decoded) {
            if (!at_eof) return std::nullopt;
            return Result<AgentReply>(Error{EPROTO, "agent reply: chunked body truncated"});
        }
        if (!*decoded) return Result<AgentReply>(decoded->error());
        reply.body = std::move(**decoded);
        return Result<AgentReply>(std::move(reply));
    }
    if (auto length = (*head)->content_length) {
        if (body.size() < *length) {
            if (!at_eof) return std::nullopt;
            return Result<AgentReply>(Error{EPROTO, "agent reply: body truncated"});
        }
        reply.body = std::string(body.substr(0, *length));
        return Result<AgentReply>(std::move(reply));
    }
    if (!at_eof) return std::nullopt;  // body delimited by the end of the connection
    reply.body = std::string(body);
    return Result<AgentReply>(std::move(reply));
}

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

// Waits for `events` on fd until the deadline; ETIMEDOUT when it passes.
Status wait_for(int fd, short events, Clock::time_point deadline, const std::string& what) {
    while (true) {
        pollfd p{fd, events, 0};
        int ready = ::poll(&p, 1, remaining_ms(deadline));
        if (ready > 0) return Ok{};
        if (ready == 0) return Error::from_errno(ETIMEDOUT, what);
        if (errno != EINTR) return Error::last_errno(what);
    }
}

Result<UniqueFd> connect_unix(const std::string& path, Clock::time_point deadline) {
    const std::string what = "connect " + path;
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(address.sun_path))
        return Error::invalid(what + ": not a usable unix socket path");
    std::memcpy(address.sun_path, path.data(), path.size());
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) return Error::last_errno("socket(AF_UNIX)");
    // A unix stream connect completes at once or fails with EAGAIN when the listener's backlog
    // is full (the agent is busy): retry until the deadline.
    while (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return Error::last_errno(what);
        if (remaining_ms(deadline) == 0) return Error::from_errno(ETIMEDOUT, what);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return fd;
}

Status write_all(int fd, std::string_view data, Clock::time_point deadline) {
    while (!data.empty()) {
        ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
            data.remove_prefix(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN) return Error::last_errno("send to the agent");
        if (auto ready = wait_for(fd, POLLOUT, deadline, "send to the agent"); !ready)
            return ready.error();
    }
    return Ok{};
}

Result<AgentReply> read_reply(int fd, Clock::time_point deadline) {
    std::string raw;
    char buffer[16384];
    while (true) {
        ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN) return Error::last_errno("read the agent's reply");
        if (n < 0) {
            if (auto ready = wait_for(fd, POLLIN, deadline, "read the agent's reply"); !ready)
                return ready.error();
            continue;
        }
        raw.append(buffer, static_cast<std::size_t>(n));
        if (raw.size() > kMaxReplyBytes) return Error{EMSGSIZE, "agent reply: too large"};
        if (auto reply = parse_reply(raw, n == 0)) return std::move(*reply);
    }
}

}  // namespace

std::string_view to_string(Method method) {
    switch (method) {
        case Method::kGet:
            return "GET";
        case Method::kPost:
            return "POST";
        case Method::kDelete:
            return "DELETE";
    }
    return "GET";
}

Result<AgentReply> parse_http_reply(std::string_view raw) { return *parse_reply(raw, true); }

Result<AgentReply> unix_http_request(const std::string& socket_path, Method method,
                                     const std::string& target, const std::string& body,
                                     std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    auto fd = connect_unix(socket_path, deadline);
    if (!fd) return fd.error();
    std::string request = std::string(to_string(method)) + " " + target +
                          " HTTP/1.1\r\nHost: meshlane\r\nConnection: close\r\n"
                          "User-Agent: meshlane-cni\r\nAccept: application/json\r\n";
    if (!body.empty() || method == Method::kPost)
        request +=
            "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
            "\r\n";
    request += "\r\n" + body;
    if (auto sent = write_all(fd->get(), request, deadline); !sent) return sent.error();
    return read_reply(fd->get(), deadline);
}

}  // namespace meshlane::cni
