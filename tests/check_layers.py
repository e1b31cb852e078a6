#!/usr/bin/env python3
"""Holds every quoted #include of the C++ layers to the graph in cmake/MeshlaneLayers.cmake.

usage: check_layers.py <build>/layers.json <source root>

A layer may include its own folders, the folders of its (transitive) dependencies, the shared
ABI headers (include/meshlane/) and generated headers (skeletons, protobuf). The link check
catches calls that go up the graph; this catches header-only uses, which have no symbol to fail.
"""
import json
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
ALWAYS_ALLOWED = ("meshlane/",)  # include/meshlane: the ABI every layer may see
GENERATED = re.compile(r"^([a-z_]+\.skel\.h|api/meshlane(\.grpc)?\.pb\.h)$")


def transitive(layers, name, seen=None):
    seen = set() if seen is None else seen
    for dep in layers[name]["deps"]:
        if dep in layers and dep not in seen:
            seen.add(dep)
            transitive(layers, dep, seen)
    return seen


def main():
    layers = json.load(open(sys.argv[1]))
    root = sys.argv[2]
    owner = {}
    for name, layer in layers.items():
        for d in layer["dirs"]:
            owner[d] = name
    problems = []
    for name, layer in layers.items():
        allowed_dirs = set(layer["dirs"])
        for dep in transitive(layers, name):
            allowed_dirs.update(layers[dep]["dirs"])
        for d in layer["dirs"]:
            folder = os.path.join(root, d)
            for file in sorted(os.listdir(folder)):
                if not file.endswith((".cpp", ".h")):
                    continue
                text = open(os.path.join(folder, file)).read()
                for inc in INCLUDE.findall(text):
                    if inc.startswith(ALWAYS_ALLOWED) or GENERATED.match(inc) or "/" not in inc:
                        continue
                    inc_dir = os.path.dirname(inc)
                    if inc_dir in allowed_dirs:
                        continue
                    target = owner.get(inc_dir, "no layer")
                    problems.append(f"{d}/{file}: includes {inc} ({target}), which {name} does "
                                    f"not depend on")
    for p in problems:
        print(p)
    print(f"{len(layers)} layers checked, {len(problems)} include(s) against the graph")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
