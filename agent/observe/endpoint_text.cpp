#include "agent/observe/endpoint_text.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <iterator>

namespace meshlane {

bool is_zero_address(const __u8 (&addr)[16]) {
    return std::all_of(std::begin(addr), std::end(addr), [](__u8 b) { return b == 0; });
}

std::string endpoint_text(const __u8 (&addr)[16], std::uint16_t port) {
    if (is_zero_address(addr)) return {};
    char text[INET6_ADDRSTRLEN] = {};
    static constexpr __u8 kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::equal(std::begin(kMapped), std::end(kMapped), addr)) {
        ::inet_ntop(AF_INET, addr + 12, text, sizeof(text));
        return std::string(text) + ":" + std::to_string(port);
    }
    ::inet_ntop(AF_INET6, addr, text, sizeof(text));
    return "[" + std::string(text) + "]:" + std::to_string(port);
}

}  // namespace meshlane
