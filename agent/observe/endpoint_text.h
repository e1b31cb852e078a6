// Text for the 16-byte addresses (IPv4 as v4-mapped) that the observe objects put in their
// events: one spelling for every view.
#pragma once

#include <linux/types.h>

#include <cstdint>
#include <string>

namespace meshlane {

bool is_zero_address(const __u8 (&addr)[16]);

// "10.1.2.3:80" for v4-mapped, "[fd00::1]:80" otherwise; "" for the zero address.
std::string endpoint_text(const __u8 (&addr)[16], std::uint16_t port);

}  // namespace meshlane
