// Human and JSON rendering for the CLI. The CLI only renders what the agent's API returns; it
// never reads BPF maps or state files itself.
#pragma once

#include <boost/json/value.hpp>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace meshlane::cli {

// Two-space indented JSON, keys in the server's order.
std::string pretty_json(const boost::json::value& value);

// Column-aligned text table; the header row is printed as given.
class Table {
  public:
    explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
    void add_row(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
    void print(std::ostream& out) const;

  private:
    std::vector<std::vector<std::string>> rows_;
};

// Lenient accessors: the CLI prints "-" for anything missing rather than failing on an older
// or newer agent's JSON.
std::string field_text(const boost::json::value& object, std::string_view key);
std::string field_text(const boost::json::value& object, std::string_view key,
                       std::string_view nested);
const boost::json::value* field(const boost::json::value& object, std::string_view key);

// Percent-encodes a query-string value (RFC 3986 unreserved characters pass as they are).
std::string query_escape(const std::string& text);

}  // namespace meshlane::cli
