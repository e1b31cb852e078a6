#include "agent/loader/libbpf_log.h"

#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <cstdarg>
#include <cstdio>
#include <utility>
#include <vector>

namespace meshlane {

namespace {

constexpr std::string_view kBeginLog = "-- BEGIN PROG LOAD LOG --";
constexpr std::string_view kEndLog = "-- END PROG LOAD LOG --";
constexpr std::string_view kLoadFailed = "BPF program load failed: ";

// libbpf loads on the caller's thread, so the callback and the loader share this.
thread_local std::optional<ProgramRejection> last_rejection;

std::optional<std::string> program_named(std::string_view message) {
    auto start = message.find("prog '");
    if (start == std::string_view::npos) return std::nullopt;
    start += 6;
    auto end = message.find('\'', start);
    if (end == std::string_view::npos) return std::nullopt;
    return std::string(message.substr(start, end - start));
}

std::string format_message(const char* format, va_list args) {
    va_list copy;
    va_copy(copy, args);
    const int needed = std::vsnprintf(nullptr, 0, format, copy);
    va_end(copy);
    if (needed <= 0) return {};
    std::vector<char> buffer(static_cast<std::size_t>(needed) + 1);
    std::vsnprintf(buffer.data(), buffer.size(), format, args);
    std::string text(buffer.data(), static_cast<std::size_t>(needed));
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return text;
}

int print_to_spdlog(enum libbpf_print_level level, const char* format, va_list args) {
    const std::string text = format_message(format, args);
    const bool about_load = note_libbpf_message(text, last_rejection);
    if (level != LIBBPF_WARN) {
        spdlog::debug("{}", text);
    } else if (about_load && text.find(kBeginLog) != std::string::npos && last_rejection) {
        // The whole verifier log can be thousands of lines: its tail says why.
        spdlog::warn("verifier log of {} (last {} lines):\n{}", last_rejection->program,
                     kVerifierLogTailLines, last_rejection->log_tail);
        spdlog::debug("{}", text);
    } else {
        spdlog::warn("{}", text);
    }
    return static_cast<int>(text.size());
}

}  // namespace

std::string last_lines(std::string_view text, std::size_t lines) {
    while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
    std::size_t start = text.size();
    for (std::size_t seen = 0; start > 0; --start) {
        if (text[start - 1] == '\n' && ++seen == lines) break;
    }
    return std::string(text.substr(start));
}

bool note_libbpf_message(std::string_view message, std::optional<ProgramRejection>& rejection,
                         std::size_t tail_lines) {
    auto program = program_named(message);
    if (!program) return false;
    const auto failed = message.find(kLoadFailed);
    const auto begin = message.find(kBeginLog);
    if (failed == std::string_view::npos && begin == std::string_view::npos &&
        message.find("failed to load") == std::string_view::npos)
        return false;
    if (!rejection || rejection->program != *program)
        rejection = ProgramRejection{*program, "", ""};
    if (failed != std::string_view::npos) {
        auto reason = message.substr(failed + kLoadFailed.size());
        if (auto nl = reason.find('\n'); nl != std::string_view::npos)
            reason = reason.substr(0, nl);
        rejection->reason = std::string(reason);
    }
    if (begin != std::string_view::npos) {
        auto log = message.substr(begin + kBeginLog.size());
        if (auto end = log.rfind(kEndLog); end != std::string_view::npos) log = log.substr(0, end);
        while (!log.empty() && log.front() == '\n') log.remove_prefix(1);
        rejection->log_tail = last_lines(log, tail_lines);
    }
    return true;
}

std::string ProgramRejection::describe() const {
    std::string text = "program " + program + " was rejected by the kernel";
    if (!reason.empty()) text += " (" + reason + ")";
    if (!log_tail.empty()) text += "; verifier log tail:\n" + log_tail;
    return text;
}

void install_libbpf_logger() { libbpf_set_print(print_to_spdlog); }

std::optional<ProgramRejection> take_program_rejection() {
    return std::exchange(last_rejection, std::nullopt);
}

}  // namespace meshlane
