#!/usr/bin/env python3
"""check-layers — kmsd's include graph follows docs/architecture.md.

A module is a .c/.h pair under kmsd/. Its layer is its folder:
  api      the doors (HTTP server, route table, one file per door)
  service  what issues, delivers and destroys keys; knows nothing of HTTP
  store    PostgreSQL: pool, queries, migrations
  entropy  the entropy sources and their health tests
  root     main, config, log, metrics, errors: usable by every layer
Arrows run one way: api -> service -> {store, entropy, pkcs11/}; every layer
may use root and common/. Checked here:
  1. no module includes a module of a layer above it (or a sibling lower
     layer it must not see: store and entropy do not see each other);
  2. no file outside kmsd/api/ (and main.c) includes <microhttpd.h>;
  3. no import circle among modules (a -> b -> ... -> a).
Exit status 1 with one line per violation. Pure: reads files only.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
KMSD = os.path.join(ROOT, "kmsd")
if len(sys.argv) == 3 and sys.argv[1] == "--root":  # a tree to check instead (tests)
    ROOT = sys.argv[2]
    KMSD = os.path.join(ROOT, "kmsd")
# layer -> layers it may include (besides itself and root)
ALLOWED = {
    "api": {"service", "store", "entropy"},
    "service": {"store", "entropy"},
    "store": set(),
    "entropy": set(),
    "root": set(),
}
INC = re.compile(r'^\s*#\s*include\s+([<"])([^>"]+)[>"]', re.M)


def modules():
    mods = {}
    for d, _, files in os.walk(KMSD):
        for f in files:
            if f.endswith((".c", ".h")):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, KMSD)
                mods.setdefault(rel[:-2], []).append(path)
    return mods


def layer(mod):
    return mod.split("/")[0] if "/" in mod else "root"


def main():
    mods = modules()
    errors = []
    graph = {m: set() for m in mods}
    for m, paths in mods.items():
        for p in paths:
            text = open(p, encoding="utf-8").read()
            for kind, inc in INC.findall(text):
                if kind == "<":
                    if inc == "microhttpd.h" and layer(m) != "api" and m != "main":
                        errors.append(f"{os.path.relpath(p, ROOT)}: includes <microhttpd.h> outside kmsd/api/")
                    continue
                if inc.endswith(".c"):
                    continue
                target = inc[:-2]
                if target not in mods:
                    continue  # common/, pkcs11/, device/, generated
                if target == m:
                    continue
                graph[m].add(target)
                lm, lt = layer(m), layer(target)
                if m == "main" or lt == lm or lt == "root":
                    continue
                if lt not in ALLOWED[lm]:
                    errors.append(f"{os.path.relpath(p, ROOT)}: {lm} includes {lt} ({inc})")
    # circles: Tarjan's strongly connected components
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    for comp in out:
        errors.append("import circle among: " + " ".join(comp))
    for e in errors:
        print(e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
