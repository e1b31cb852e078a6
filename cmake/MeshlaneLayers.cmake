# One static library per layer or feature, with the dependencies it may use and nothing else.
#
#   meshlane_layer(<name> DIRS <dir>... [EXCLUDE <file>...] DEPS <target>...)
#
# builds <name> from every .cpp in DIRS (relative to the source root) and links DEPS PUBLIC.
# Two checks hold the graph:
#   - link: <name>_link_check is a shared object made of <name>'s own objects, linked with
#     -Wl,--no-undefined against DEPS only. A call into a layer that is not a (transitive)
#     dependency is an undefined symbol there: a back-edge fails the build, not a review.
#   - include: the layer graph is written to <build>/layers.json; tests/check_layers.py (ctest
#     style.layers) checks that every quoted #include of a layer names its own folders or those
#     of its dependencies (header-only back-edges have no symbol to fail the link).
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
set_property(GLOBAL PROPERTY MESHLANE_LAYERS "")

function(meshlane_layer name)
  cmake_parse_arguments(LAYER "" "" "DIRS;EXCLUDE;DEPS" ${ARGN})
  set(sources "")
  foreach(dir ${LAYER_DIRS})
    file(GLOB dir_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/${dir}/*.cpp)
    list(APPEND sources ${dir_sources})
  endforeach()
  foreach(excluded ${LAYER_EXCLUDE})
    list(REMOVE_ITEM sources ${CMAKE_SOURCE_DIR}/${excluded})
  endforeach()
  if(NOT sources)
    message(FATAL_ERROR "layer ${name}: no .cpp in ${LAYER_DIRS}")
  endif()
  add_library(${name} STATIC ${sources})
  target_include_directories(${name} PUBLIC ${CMAKE_SOURCE_DIR} ${CMAKE_SOURCE_DIR}/include)
  target_compile_options(${name} PRIVATE ${MESHLANE_WARNINGS})
  target_compile_definitions(${name} PUBLIC MESHLANE_VERSION="${PROJECT_VERSION}"
    SPDLOG_FMT_EXTERNAL BOOST_ASIO_NO_DEPRECATED)
  target_link_libraries(${name} PUBLIC ${LAYER_DEPS})

  if(NOT MESHLANE_BUILD_FUZZ)
    add_library(${name}_link_check SHARED $<TARGET_OBJECTS:${name}>)
    target_link_libraries(${name}_link_check PRIVATE ${LAYER_DEPS})
    target_link_options(${name}_link_check PRIVATE -Wl,--no-undefined)
    set_target_properties(${name}_link_check PROPERTIES
      LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/layer-link-check)
  endif()

  set(internal_deps "")
  foreach(dep ${LAYER_DEPS})
    if(dep MATCHES "^meshlane_")
      list(APPEND internal_deps "\"${dep}\"")
    endif()
  endforeach()
  set(dirs_json "")
  foreach(dir ${LAYER_DIRS})
    list(APPEND dirs_json "\"${dir}\"")
  endforeach()
  list(JOIN internal_deps ", " deps_text)
  list(JOIN dirs_json ", " dirs_text)
  set_property(GLOBAL APPEND PROPERTY MESHLANE_LAYERS
    "\"${name}\": {\"dirs\": [${dirs_text}], \"deps\": [${deps_text}]}")
endfunction()

# <build>/layers.json: {"<layer>": {"dirs": [...], "deps": [...]}, ...} for tests/check_layers.py.
function(meshlane_write_layer_manifest)
  get_property(layers GLOBAL PROPERTY MESHLANE_LAYERS)
  list(JOIN layers ",\n  " body)
  file(WRITE ${CMAKE_BINARY_DIR}/layers.json "{\n  ${body}\n}\n")
endfunction()
