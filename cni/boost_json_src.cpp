// Boost.JSON compiled into meshlane-cni (header-only mode) so the static plugin needs no
// libboost_json; the agent and CLI link the library instead (cni/CMakeLists.txt).
#include <boost/json/src.hpp>
