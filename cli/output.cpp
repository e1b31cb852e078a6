#include "cli/output.h"

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <iomanip>
#include <sstream>

namespace meshlane::cli {

namespace json = boost::json;

namespace {

void pretty(const json::value& value, std::string& out, int indent) {
    const std::string pad(static_cast<std::size_t>(indent) * 2, ' ');
    const std::string inner(static_cast<std::size_t>(indent + 1) * 2, ' ');
    if (value.is_object() && !value.get_object().empty()) {
        out += "{\n";
        bool first = true;
        for (const auto& [key, member] : value.get_object()) {
            if (!first) out += ",\n";
            first = false;
            out += inner + json::serialize(json::string(key)) + ": ";
            pretty(member, out, indent + 1);
        }
        out += "\n" + pad + "}";
    } else if (value.is_array() && !value.get_array().empty()) {
        out += "[\n";
        bool first = true;
        for (const auto& element : value.get_array()) {
            if (!first) out += ",\n";
            first = false;
            out += inner;
            pretty(element, out, indent + 1);
        }
        out += "\n" + pad + "]";
    } else {
        out += json::serialize(value);
    }
}

std::string scalar_text(const json::value& value) {
    if (value.is_string()) return std::string(value.get_string());
    if (value.is_null()) return "-";
    return json::serialize(value);
}

}  // namespace

std::string pretty_json(const json::value& value) {
    std::string out;
    pretty(value, out, 0);
    return out;
}

void Table::print(std::ostream& out) const {
    std::vector<std::size_t> widths;
    for (const auto& row : rows_) {
        widths.resize(std::max(widths.size(), row.size()));
        for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
    }
    for (const auto& row : rows_) {
        std::string line;
        for (std::size_t i = 0; i < row.size(); ++i) {
            line += row[i];
            if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
        }
        out << line << '\n';
    }
}

const json::value* field(const json::value& object, std::string_view key) {
    if (!object.is_object()) return nullptr;
    return object.get_object().if_contains(key);
}

std::string field_text(const json::value& object, std::string_view key) {
    const auto* value = field(object, key);
    return value ? scalar_text(*value) : "-";
}

std::string field_text(const json::value& object, std::string_view key, std::string_view nested) {
    const auto* value = field(object, key);
    return value ? field_text(*value, nested) : "-";
}

std::string query_escape(const std::string& text) {
    std::ostringstream out;
    for (unsigned char c : text) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
            out << c;
        else
            out << '%' << std::uppercase << std::hex << std::setw(2) << std::setfill('0')
                << static_cast<int>(c);
    }
    return out.str();
}

}  // namespace meshlane::cli
