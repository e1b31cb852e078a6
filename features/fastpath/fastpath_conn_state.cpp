#include "features/fastpath/fastpath_conn_state.h"

namespace meshlane {

std::string fastpath_conn_state_text(const fastpath_conn& conn) {
    switch (conn.state) {
        case MESHLANE_FASTPATH_UNDECIDED:
            return "undecided";
        case MESHLANE_FASTPATH_TCP_ONLY:
            return "TCP only";
        case MESHLANE_FASTPATH_ACCELERATED:
            break;
        default:
            return "unknown state " + std::to_string(conn.state);
    }
    const bool from_connecting = conn.spilled_from_connecting != 0;
    const bool from_accepting = conn.spilled_from_accepting != 0;
    if (from_connecting && from_accepting)
        return "accelerated, both directions spilled to TCP for now (each receiver fell behind)";
    if (from_connecting)
        return "accelerated, connecting -> accepting end spilled to TCP for now (receiver fell "
               "behind), accepting -> connecting end redirected";
    if (from_accepting)
        return "accelerated, accepting -> connecting end spilled to TCP for now (receiver fell "
               "behind), connecting -> accepting end redirected";
    return "accelerated";
}

}  // namespace meshlane
