#!/usr/bin/env python3
"""Fails when an include, a proto import or a CMake link runs up the layers.

The folders are the layers, in this order (docs/architecture.md); each may
use only itself and the folders before it, and data/ uses core/ alone:

    core  kernels  data  parallel  model  checkpoint  trainer

Every #include "dir/..." of a .h/.cc/.cu/.cuh file, every import of a
.proto file and every latam_* library linked in a folder's CMakeLists.txt
is checked. Prints each violation as file:line and exits 1 if there is any.
Usage: check_layers.py [SOURCE_ROOT]
"""
import os
import re
import sys

LAYERS = ["core", "kernels", "data", "parallel", "model", "checkpoint", "trainer"]
# Besides the order: what a layer may not use although it comes earlier.
EXTRA_ALLOWED = {"data": {"core", "data"}}
LIBRARY_LAYER = {"latam_" + layer: layer for layer in LAYERS}
LIBRARY_LAYER["latam_proto"] = "model"  # the generated config/checkpoint messages

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"/]+)/')
IMPORT = re.compile(r'^\s*import\s+"([^"/]+)/')
LINK = re.compile(r"target_link_libraries\(\s*(\S+)([^)]*)\)", re.S)


def allowed(layer):
    if layer in EXTRA_ALLOWED:
        return EXTRA_ALLOWED[layer]
    return set(LAYERS[: LAYERS.index(layer) + 1])


def check_sources(root, layer, problems):
    ok = allowed(layer)
    for dirpath, _, files in os.walk(os.path.join(root, layer)):
        for name in sorted(files):
            if not name.endswith((".h", ".cc", ".cu", ".cuh", ".proto")):
                continue
            path = os.path.join(dirpath, name)
            pattern = IMPORT if name.endswith(".proto") else INCLUDE
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    m = pattern.match(line)
                    if m and m.group(1) in LAYERS and m.group(1) not in ok:
                        problems.append(f"{os.path.relpath(path, root)}:{number}: {layer}/ uses {m.group(1)}/: "
                                        f"{line.strip()}")


def check_links(root, layer, problems):
    path = os.path.join(root, layer, "CMakeLists.txt")
    if not os.path.exists(path):
        problems.append(f"{layer}/CMakeLists.txt is missing: every layer is one CMake library")
        return
    text = open(path, encoding="utf-8").read()
    if f"add_library(latam_{layer} " not in text:
        problems.append(f"{layer}/CMakeLists.txt does not define the library latam_{layer}")
    ok = allowed(layer)
    for m in LINK.finditer(text):
        for lib in m.group(2).split():
            used = LIBRARY_LAYER.get(lib)
            if used is not None and used not in ok:
                number = text[: m.start()].count("\n") + 1
                problems.append(f"{layer}/CMakeLists.txt:{number}: {m.group(1)} links {lib} ({used}/)")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    root = os.path.abspath(root)
    problems = []
    for layer in LAYERS:
        if not os.path.isdir(os.path.join(root, layer)):
            problems.append(f"{layer}/ is missing")
            continue
        check_sources(root, layer, problems)
        check_links(root, layer, problems)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} use(s) run up the layers {' < '.join(LAYERS)}", file=sys.stderr)
        return 1
    print(f"layers ok: {' < '.join(LAYERS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
