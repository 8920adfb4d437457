#!/usr/bin/env python3
"""Checks that the crate's modules depend on each other in one direction.

Every `crate::…` path in a module's code (a `use` line or a path; not comments)
is an edge from that module to the module the path names; a type imported
from the crate root (`crate::UsagePlans`) counts as an edge to the module
`lib.rs` re-exports it from. Each edge must go down LAYERS, which is the
order the README's layout notes show. Prints the graph; exits 1 on an edge
that goes up (which is what a cycle needs).
"""
import pathlib
import re
import sys

# Lowest first: a module may use only modules listed before it.
LAYERS = [
    "error", "clock", "prehashed", "log_throttle", "route", "key", "model",
    "decision", "limit", "store", "registry", "layer", "admin", "gateway",
]

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".rs")


def root_exports() -> dict:
    """Name -> module, from `pub use module::{…}` lines in lib.rs."""
    text = (SRC / "lib.rs").read_text()
    names = {}
    for module, items in re.findall(r"pub use (\w+)::\{([^}]*)\}", text):
        for item in items.split(","):
            name = item.strip().split(" as ")[-1].strip()
            if name:
                names[name] = module
    for module, name in re.findall(r"pub use (\w+)::(\w+);", text):
        names[name] = module
    return names


def targets(text: str, exports: dict) -> set:
    # Comments (doc links included) name paths without depending on them.
    text = re.sub(r"//.*", "", text)
    found = set()
    for group, single in re.findall(r"crate::(?:\{([^}]*)\}|(\w+))", text):
        heads = [g.strip().split("::")[0] for g in group.split(",")] if group else [single]
        for head in heads:
            head = head.strip()
            if head in LAYERS:
                found.add(head)
            elif head in exports:
                found.add(exports[head])
    return found


def main() -> int:
    exports = root_exports()
    graph = {}
    for path in sorted(SRC.rglob("*.rs")):
        if path.name == "lib.rs" and path.parent == SRC:
            continue
        module = module_of(path)
        if module not in LAYERS:
            print(f"check-imports: module `{module}` is not in LAYERS ({path})", file=sys.stderr)
            return 1
        graph.setdefault(module, set()).update(targets(path.read_text(), exports) - {module})
    bad = []
    for module in LAYERS:
        deps = sorted(graph.get(module, ()), key=LAYERS.index)
        print(f"{module:>10} -> {' '.join(deps) if deps else '(nothing)'}")
        bad += [(module, d) for d in deps if LAYERS.index(d) > LAYERS.index(module)]
    for module, dep in bad:
        print(f"check-imports: `{module}` uses `{dep}`, which sits above it", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
