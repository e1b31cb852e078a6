// libbpf's messages go to spdlog; a program the verifier rejects is remembered (its name, the
// reason and the tail of the verifier log, which libbpf prints at WARN between
// "-- BEGIN PROG LOAD LOG --" and "-- END PROG LOAD LOG --") so the load error can name it.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace meshlane {

struct ProgramRejection {
    std::string program;   // "redirect_connect4"
    std::string reason;    // "Permission denied", when libbpf said
    std::string log_tail;  // last lines of the verifier log, newline-separated

    // "program redirect_connect4 was rejected (Permission denied); verifier log tail:\n..."
    std::string describe() const;
};

inline constexpr std::size_t kVerifierLogTailLines = 25;

// Folds one libbpf message into `rejection` (starting a new one when it names another program).
// Returns true when the message was about a program load failure.
bool note_libbpf_message(std::string_view message, std::optional<ProgramRejection>& rejection,
                         std::size_t tail_lines = kVerifierLogTailLines);

// Last `lines` lines of text (without a trailing empty line).
std::string last_lines(std::string_view text, std::size_t lines);

// Installs the libbpf print callback (spdlog: WARN stays WARN with at most the log tail, the full
// verifier log at debug). Idempotent.
void install_libbpf_logger();

// The rejection seen since the previous call on this thread, if any; clears it.
std::optional<ProgramRejection> take_program_rejection();

}  // namespace meshlane
