// What this binary was built from, baked in at build time (cli/build_info.cmake writes
// <build>/generated/cli/build_info.cpp): `meshlane version` prints it.
#pragma once

namespace meshlane::cli {

struct BuildInfo {
    const char* version;     // project version (CMakeLists.txt)
    const char* revision;    // git describe, or the tarball's REVISION, or "unknown"
    const char* build_type;  // CMAKE_BUILD_TYPE
    const char* compiler;    // compiler id and version
    const char* cxx_flags;   // CMAKE_CXX_FLAGS + the build type's flags
    const char* libbpf;      // libbpf version the binary was built against
    const char* arch;        // CMAKE_SYSTEM_PROCESSOR
};

const BuildInfo& build_info();

}  // namespace meshlane::cli
