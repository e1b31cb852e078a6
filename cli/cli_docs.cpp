#include "cli/cli_docs.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <sstream>

#include "cli/commands.h"
#include "cli/diagnose_commands.h"

namespace meshlane::cli {

namespace {

// Options as the renderers see them: every name, whether a value follows, what completes it.
struct OptionDoc {
    std::vector<std::string> names;  // "-f", "--follow"
    std::string value;               // type name, empty for a flag
    std::string description;
    std::string default_value;
    std::string envname;
};

enum class ValueKind { kNone, kFile, kWorkload, kCommand, kChoices, kOther };

bool contains(const std::string& text, std::string_view part) {
    return text.find(part) != std::string::npos;
}

// A type name like "refuse|passthrough": lowercase words separated by '|'.
bool is_choice_list(const std::string& type) {
    return contains(type, "|") && std::all_of(type.begin(), type.end(), [](char c) {
               return c == '|' || c == '-' || std::islower(static_cast<unsigned char>(c));
           });
}

ValueKind value_kind(const std::string& type) {
    if (type.empty()) return ValueKind::kNone;
    if (contains(type, "FILE") || contains(type, "PATH") || contains(type, "SOCKET"))
        return ValueKind::kFile;
    if (type == "WORKLOAD") return ValueKind::kWorkload;
    if (type == "COMMAND") return ValueKind::kCommand;
    if (is_choice_list(type)) return ValueKind::kChoices;
    return ValueKind::kOther;
}

std::vector<std::string> split(const std::string& text, char separator) {
    std::vector<std::string> parts;
    std::stringstream stream(text);
    for (std::string part; std::getline(stream, part, separator);) parts.push_back(part);
    return parts;
}

std::string join(const std::vector<std::string>& parts, std::string_view separator) {
    std::string out;
    for (const auto& part : parts) out += (out.empty() ? "" : std::string(separator)) + part;
    return out;
}

std::string value_name(const CLI::Option& option) {
    // A bare flag, or one with an optional value (--fast-path[=KINDS]), needs no value.
    if (option.get_items_expected_max() == 0 || option.get_expected_min() == 0) return "";
    return option.get_type_name();
}

std::vector<OptionDoc> named_options(const CLI::App& app) {
    std::vector<OptionDoc> docs;
    for (const CLI::Option* option : app.get_options()) {
        if (option->get_positional() || option->get_group().empty()) continue;
        OptionDoc doc;
        for (const auto& name : option->get_snames()) doc.names.push_back("-" + name);
        for (const auto& name : option->get_lnames()) doc.names.push_back("--" + name);
        doc.value = value_name(*option);
        doc.description = option->get_description();
        doc.default_value = option->get_default_str();
        doc.envname = option->get_envname();
        docs.push_back(std::move(doc));
    }
    return docs;
}

struct PositionalDoc {
    std::string name;
    std::string type;
    std::string description;
    bool required;
};

std::vector<PositionalDoc> positionals(const CLI::App& app) {
    std::vector<PositionalDoc> docs;
    for (const CLI::Option* option : app.get_options())
        if (option->get_positional())
            docs.push_back({option->get_name(true), option->get_type_name(),
                            option->get_description(), option->get_required()});
    return docs;
}

std::vector<std::string> subcommand_names(const CLI::App& app) {
    std::vector<std::string> names;
    for (const CLI::App* sub : visible_subcommands(app)) names.push_back(sub->get_name());
    return names;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
            diagonal = above;
        }
    }
    return row[b.size()];
}

}  // namespace

const std::vector<ExitStatusDoc>& exit_status_docs() {
    static const std::vector<ExitStatusDoc> docs{
        {kExitOk, "success"},
        {kExitFailed, "the agent refused the call, or local validation failed"},
        {kExitUsage,
         "bad command line: unknown command or option, missing argument, unreadable "
         "--cacert/--cert/--key/--token-file"},
        {kExitUnreachable, "no agent answers on the API socket (or it timed out)"},
        {kExitProblemFound, "diagnose found a critical finding, or verify a failed check"},
    };
    return docs;
}

std::string exit_status_summary() {
    std::string text = "Exit status:";
    for (const auto& doc : exit_status_docs())
        text += "\n  " + std::to_string(doc.code) + "  " + doc.meaning;
    return text;
}

std::vector<const CLI::App*> visible_subcommands(const CLI::App& app) {
    return app.get_subcommands([](const CLI::App* sub) { return !sub->get_group().empty(); });
}

std::string closest_subcommand(const CLI::App& app, std::string_view typo) {
    std::string best;
    std::size_t best_distance = 3;  // more than 2 edits: no suggestion
    for (const auto& name : subcommand_names(app)) {
        if (!typo.empty() && name.starts_with(typo)) return name;
        const std::size_t distance = edit_distance(typo, name);
        if (distance < best_distance) {
            best = name;
            best_distance = distance;
        }
    }
    return best;
}

// ---------------------------------------------------------------------------------------------
// bash
// ---------------------------------------------------------------------------------------------
namespace {

std::string bash_word_list(const CLI::App& sub, const std::vector<OptionDoc>& global) {
    std::vector<std::string> words;
    for (const auto& option : named_options(sub))
        for (const auto& name : option.names) words.push_back(name);
    for (const auto& option : global)
        for (const auto& name : option.names) words.push_back(name);
    return join(words, " ");
}

// `case $prev` arms: what completes the value of each option that takes one.
std::string bash_value_arms(const CLI::App& app) {
    std::map<std::string, std::string> arms;  // option name -> action (one per name)
    auto add = [&arms](const OptionDoc& option) {
        std::string action;
        switch (value_kind(option.value)) {
            case ValueKind::kNone:
                return;
            case ValueKind::kFile:
                action = "_meshlane_files";
                break;
            case ValueKind::kWorkload:
                action = "COMPREPLY=($(compgen -W \"$(_meshlane_workloads)\" -- \"$cur\"))";
                break;
            case ValueKind::kChoices:
                action = "COMPREPLY=($(compgen -W \"" + join(split(option.value, '|'), " ") +
                         "\" -- \"$cur\"))";
                break;
            default:
                action = "COMPREPLY=()";
                break;
        }
        for (const auto& name : option.names) arms.emplace(name, action);
    };
    for (const auto& option : named_options(app)) add(option);
    for (const CLI::App* sub : visible_subcommands(app))
        for (const auto& option : named_options(*sub)) add(option);
    std::string out;
    for (const auto& [name, action] : arms)
        out += "        " + name + ") " + action + "; return ;;\n";
    return out;
}

std::string bash_positional_words(const CLI::App& app, const CLI::App& sub) {
    std::string words;
    for (const auto& positional : positionals(sub)) {
        if (positional.type == "WORKLOAD") words += " $(_meshlane_workloads)";
        if (positional.type == "COMMAND") words += " " + join(subcommand_names(app), " ");
        if (is_choice_list(positional.type)) words += " " + join(split(positional.type, '|'), " ");
    }
    return words;
}

}  // namespace

std::string bash_completion(const CLI::App& app) {
    const auto global = named_options(app);
    const auto commands = subcommand_names(app);
    std::string global_words;
    for (const auto& option : global)
        for (const auto& name : option.names) global_words += " " + name;
    std::ostringstream out;
    out << "# bash completion for meshlane. Generated from its command-line definition by\n"
           "# `meshlane completion bash`; do not edit. Installed as\n"
           "# /usr/share/bash-completion/completions/meshlane, or: source <(meshlane "
           "completion bash)\n"
           "_meshlane_workloads() {\n"
           "    \"${COMP_WORDS[0]}\" workloads 2>/dev/null | awk 'NR > 1 { print $1 }'\n"
           "}\n"
           "_meshlane_files() {\n"
           "    compopt -o filenames 2>/dev/null\n"
           "    COMPREPLY=($(compgen -f -- \"$cur\"))\n"
           "}\n"
           "_meshlane() {\n"
           "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}\n"
           "    local cmd=\"\" i\n"
           "    for ((i = 1; i < COMP_CWORD; i++)); do\n"
           "        case ${COMP_WORDS[i]} in\n"
           "        "
        << join(commands, "|")
        << ") cmd=${COMP_WORDS[i]}; break ;;\n"
           "        esac\n"
           "    done\n"
           "    case $prev in\n"
        << bash_value_arms(app)
        << "    esac\n"
           "    local words\n"
           "    case $cmd in\n"
           "    \"\") words=\""
        << join(commands, " ") << global_words << "\" ;;\n";
    for (const CLI::App* sub : visible_subcommands(app))
        out << "    " << sub->get_name() << ") words=\"" << bash_word_list(*sub, global)
            << bash_positional_words(app, *sub) << "\" ;;\n";
    out << "    esac\n"
           "    COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
           "}\n"
           "complete -F _meshlane meshlane\n";
    return out.str();
}

// ---------------------------------------------------------------------------------------------
// zsh
// ---------------------------------------------------------------------------------------------
namespace {

// Text inside a single-quoted _arguments spec: ' closes the quote; [ ] : are spec syntax.
std::string zsh_escape(std::string_view text) {
    std::string out;
    for (char c : text) {
        if (c == '\'')
            out += "'\\''";
        else if (c == '[' || c == ']' || c == ':')
            out += std::string("\\") + c;
        else
            out += c;
    }
    return out;
}

std::string zsh_action(const std::string& type, const CLI::App& app) {
    switch (value_kind(type)) {
        case ValueKind::kFile:
            return "_files";
        case ValueKind::kWorkload:
            return "_meshlane_workloads";
        case ValueKind::kCommand:
            return "(" + join(subcommand_names(app), " ") + ")";
        case ValueKind::kChoices:
            return "(" + join(split(type, '|'), " ") + ")";
        default:
            return " ";
    }
}

// One spec per line; `continued` ends each with " \\" (arguments of one _arguments call).
std::string zsh_option_specs(const std::vector<OptionDoc>& options, const CLI::App& app,
                             bool continued) {
    std::string out;
    for (const auto& option : options) {
        const std::string description = zsh_escape(option.description);
        for (const auto& name : option.names) {
            out += "        '" + name + "[" + description + "]";
            if (!option.value.empty())
                out += ":" + zsh_escape(option.value) + ":" + zsh_action(option.value, app);
            out += continued ? "' \\\n" : "'\n";
        }
    }
    return out;
}

std::string zsh_positional_specs(const CLI::App& sub, const CLI::App& app) {
    std::string out;
    for (const auto& positional : positionals(sub)) {
        out += "        '" + std::string(positional.required ? "" : ":") + ":" +
               zsh_escape(positional.name) + ":" + zsh_action(positional.type, app) + "' \\\n";
    }
    return out;
}

}  // namespace

std::string zsh_completion(const CLI::App& app) {
    const auto global = named_options(app);
    std::ostringstream out;
    out << "#compdef meshlane\n"
           "# zsh completion for meshlane. Generated from its command-line definition by\n"
           "# `meshlane completion zsh`; do not edit. Installed as _meshlane in a directory of\n"
           "# $fpath (Debian: /usr/share/zsh/vendor-completions).\n"
           "_meshlane_workloads() {\n"
           "    local -a names\n"
           "    names=(${(f)\"$(meshlane workloads 2>/dev/null | awk 'NR > 1 { print $1 }')\"})\n"
           "    compadd -a names\n"
           "}\n"
           "_meshlane() {\n"
           "    local curcontext=$curcontext state line ret=1\n"
           "    local -a global_opts commands\n"
           "    global_opts=(\n"
        << zsh_option_specs(global, app, false)
        << "    )\n"
           "    commands=(\n";
    for (const CLI::App* sub : visible_subcommands(app))
        out << "        '" << sub->get_name() << ":" << zsh_escape(sub->get_description()) << "'\n";
    out << "    )\n"
           "    _arguments -C $global_opts '1: :->command' '*:: :->args' && return 0\n"
           "    case $state in\n"
           "    command) _describe -t commands 'meshlane command' commands && ret=0 ;;\n"
           "    args)\n"
           "        case $line[1] in\n";
    for (const CLI::App* sub : visible_subcommands(app)) {
        out << "        " << sub->get_name() << ")\n"
            << "            _arguments $global_opts \\\n"
            << zsh_option_specs(named_options(*sub), app, true) << zsh_positional_specs(*sub, app)
            << "            && ret=0 ;;\n";
    }
    out << "        esac ;;\n"
           "    esac\n"
           "    return ret\n"
           "}\n"
           "_meshlane \"$@\"\n";
    return out.str();
}

// ---------------------------------------------------------------------------------------------
// man page
// ---------------------------------------------------------------------------------------------
namespace {

// roff within one line: backslashes and hyphens escaped.
std::string roff_inline(std::string_view text) {
    std::string out;
    for (char c : text) {
        if (c == '\\')
            out += "\\e";
        else if (c == '-')
            out += "\\-";
        else
            out += c;
    }
    return out;
}

// roff lines: escaped, and no line may start with '.' or '\'' (a request).
std::string roff(std::string_view text) {
    std::string out;
    for (const auto& line : split(std::string(text), '\n')) {
        if (!line.empty() && (line[0] == '.' || line[0] == '\'')) out += "\\&";
        out += roff_inline(line) + "\n";
    }
    return out;
}

std::string man_option(const OptionDoc& option) {
    std::vector<std::string> names;
    for (const auto& name : option.names) names.push_back("\\fB" + roff_inline(name) + "\\fR");
    std::string out = ".TP\n" + join(names, ", ");
    if (!option.value.empty()) out += " \\fI" + roff_inline(option.value) + "\\fR";
    out += "\n" + roff(option.description);
    if (!option.default_value.empty()) out += roff("(default: " + option.default_value + ")");
    if (!option.envname.empty()) out += roff("(environment: " + option.envname + ")");
    return out;
}

std::string man_usage(const CLI::App& sub) {
    std::string out = ".SS \"meshlane " + sub.get_name();
    for (const auto& positional : positionals(sub)) {
        std::string upper = positional.name;
        std::transform(upper.begin(), upper.end(), upper.begin(),
                       [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
        out += positional.required ? " \\fI" + upper + "\\fR" : " [\\fI" + upper + "\\fR]";
    }
    if (!named_options(sub).empty()) out += " [\\fIOPTIONS\\fR]";
    return out + "\"\n";
}

}  // namespace

std::string man_page(const CLI::App& app, const ManPageInfo& info) {
    std::ostringstream out;
    out << ".\\\" Generated from meshlane's command-line definition by `meshlane man`; do not "
           "edit.\n"
        << ".TH MESHLANE 8 \"\" \"meshlane " << info.version << "\" \"System Administration\"\n"
        << ".SH NAME\nmeshlane \\- " << roff_inline(app.get_description()) << "\n"
        << ".SH SYNOPSIS\n.B meshlane\n[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR "
           "[\\fIARGUMENTS\\fR] [\\fIOPTIONS\\fR]\n"
        << ".SH DESCRIPTION\n";
    for (const auto& paragraph : split(info.description, '\n'))
        out << (paragraph.empty() ? ".PP\n" : roff(paragraph));
    out << ".SH GLOBAL OPTIONS\n";
    for (const auto& option : named_options(app)) out << man_option(option);
    out << ".SH COMMANDS\n";
    for (const CLI::App* sub : visible_subcommands(app)) {
        out << man_usage(*sub) << roff(sub->get_description());
        for (const auto& positional : positionals(*sub)) {
            OptionDoc doc{{positional.name}, "", positional.description, "", ""};
            out << man_option(doc);
        }
        for (const auto& option : named_options(*sub)) out << man_option(option);
    }
    out << ".SH EXIT STATUS\n";
    for (const auto& doc : exit_status_docs())
        out << ".TP\n.B " << doc.code << "\n" << roff(doc.meaning);
    out << ".SH FILES\n";
    for (const auto& file : info.files) {
        const auto parts = split(file, '\t');
        out << ".TP\n.I " << roff_inline(parts.at(0)) << "\n" << roff(parts.at(1));
    }
    out << ".SH SEE ALSO\n" << roff_inline(join(info.see_also, ", ")) << "\n";
    return out.str();
}

}  // namespace meshlane::cli
