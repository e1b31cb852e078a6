// Shell completion scripts and the man page, rendered from the CLI11 definition itself (the
// same descriptions `meshlane help` prints), so they cannot drift from the commands. The build
// writes them with `meshlane completion bash|zsh` and `meshlane man`; a test checks that each
// lists every command.
//
// Conventions the renderers read from the definition:
//   - an option or positional whose type name contains FILE, PATH or SOCKET completes file names;
//   - type name WORKLOAD completes the names `meshlane workloads` prints;
//   - type name COMMAND completes the subcommand names;
//   - a type name "a|b|c" of lowercase words completes those words.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace meshlane::cli {

// One documented exit status: `meshlane help` and the man page print the same table.
struct ExitStatusDoc {
    int code;
    const char* meaning;
};
const std::vector<ExitStatusDoc>& exit_status_docs();
// "Exit status: 0 ok, 1 ..." for the help footer.
std::string exit_status_summary();

// Visible subcommands in definition order (hidden ones have an empty group).
std::vector<const CLI::App*> visible_subcommands(const CLI::App& app);

// The visible subcommand closest to `typo` (prefix, or edit distance <= 2); empty if none.
std::string closest_subcommand(const CLI::App& app, std::string_view typo);

std::string bash_completion(const CLI::App& app);
std::string zsh_completion(const CLI::App& app);

struct ManPageInfo {
    std::string version;
    std::string description;            // DESCRIPTION paragraphs, separated by blank lines
    std::vector<std::string> files;     // "PATH\tmeaning" for FILES
    std::vector<std::string> see_also;  // "systemctl(1)"
};
// man(7) roff source for section 8.
std::string man_page(const CLI::App& app, const ManPageInfo& info);

}  // namespace meshlane::cli
