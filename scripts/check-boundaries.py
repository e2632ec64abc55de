#!/usr/bin/env python3
"""Fails when a crate that DESIGN.md gives to one module is used outside it ("Modules and
who may touch what"): ONNX Runtime only in the engine, the HTTP stack only in the
protocols (and the wiring in server.rs), the Kubernetes API only in kube/, Prometheus,
OpenTelemetry and the tracing subscriber only in telemetry/. Each use outside is printed
as file:line with the rule it breaks. Comments and string literals do not count; nor does
a path through a module of the crate's own (`crate::kube::Cluster`). Two of ortserve's own
modules are also kept out of places DESIGN.md keeps them out of: the protocols never reach
into the scheduler or the engine, and the configuration never imports the engine.

    usage: check-boundaries.py [SRC]   (SRC defaults to src/)
"""

import pathlib
import re
import sys

# (what, crate names as Rust spells them, where they may be used)
RULES = [
    ("ONNX Runtime", ["ort"], ["engine/"]),
    (
        "the HTTP stack",
        ["axum", "hyper", "hyper_util", "tower", "tower_service", "tower_http", "tonic"],
        ["protocol/", "server.rs"],
    ),
    ("the Kubernetes API", ["kube", "kube_client", "kube_runtime", "k8s_openapi"], ["kube/"]),
    ("Prometheus", ["prometheus"], ["telemetry/"]),
    (
        "OpenTelemetry and the tracing subscriber",
        [
            "opentelemetry",
            "opentelemetry_sdk",
            "opentelemetry_otlp",
            "opentelemetry_http",
            "opentelemetry_proto",
            "tracing_opentelemetry",
            "tracing_subscriber",
        ],
        ["telemetry/"],
    ),
]

# (who, ortserve modules they must not import, why)
LAYERS = [
    (
        "protocol/",
        ["scheduler", "engine"],
        "protocol adapters never reach into the scheduler or the engine",
    ),
    ("config/", ["engine"], "settings only produce values; the engine reads them"),
]


# Where a comment or a literal may begin; the code between is copied as it is.
OPENING = re.compile(r"""//|/\*|b?r#*"|b?"|b?'""")
RAW_STRING = re.compile(r'b?r(#*)"')
CHAR = re.compile(r"b?'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'\n])'")


def literal_end(text, i):
    """Where the comment or literal that opens at `i` ends (`i + 1`: none does)."""
    if text.startswith("//", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end
    if text.startswith("/*", i):
        depth, j = 1, i + 2
        while j < len(text) and depth:
            pair = text[j : j + 2]
            if pair in ("/*", "*/"):
                depth += 1 if pair == "/*" else -1
                j += 2
            else:
                j += 1
        return j
    if raw := RAW_STRING.match(text, i):
        end = text.find('"' + raw.group(1), raw.end())
        return len(text) if end < 0 else end + 1 + len(raw.group(1))
    if char := CHAR.match(text, i):
        return char.end()
    if text[i] == "'" or text.startswith("b'", i):
        return i + 1  # a lifetime
    j = text.index('"', i) + 1
    while j < len(text) and text[j] != '"':
        j += 2 if text[j] == "\\" else 1
    return j + 1


def strip(text):
    """The code with comments and string and char literals blanked (newlines kept)."""
    out, i = [], 0
    while opening := OPENING.search(text, i):
        end = literal_end(text, opening.start())
        out.append(text[i : opening.start()])
        literal = text[opening.start() : end]
        out.append(literal if end == opening.start() + 1 else re.sub(r"[^\n]", " ", literal))
        i = end
    out.append(text[i:])
    return "".join(out)


# A path that starts at a name (`ort::…`, `::kube::…`), and `use ort;` / `extern crate ort`.
PATH_START = re.compile(r"(?<![\w:])(::\s*)?([A-Za-z_]\w*)\s*::")
WHOLE_USE = re.compile(r"\b(?:use\s+(?:::)?|extern\s+crate\s+)([A-Za-z_]\w*)\s*(?:;|\bas\b)")
# Names a file binds to modules of its own: `use crate::kube;`, `use super::{kube, …}`,
# `mod kube`.
LOCAL_USE = re.compile(r"\b(?:crate|self|super)::(?:\w+::)*(\w+)\b(?!\s*::)")
LOCAL_BRACES = re.compile(r"\b(?:crate|self|super)::(?:\w+::)*\{([^}]*)\}")
LOCAL_MOD = re.compile(r"\bmod\s+(\w+)")


def line_of(code, position):
    return code.count("\n", 0, position) + 1


def local_names(code):
    """The names that, written bare, mean one of the crate's own modules in this file."""
    names = {m[1] for m in LOCAL_USE.finditer(code)} | {m[1] for m in LOCAL_MOD.finditer(code)}
    for braces in LOCAL_BRACES.finditer(code):
        names |= set(re.findall(r"\b(\w+)\b(?!\s*::)", braces[1]))
    return names


def crate_uses(code, crates):
    """(line, crate) for each use of one of `crates`; a bare name a module shadows is not one."""
    local = local_names(code)
    paths = [m for m in PATH_START.finditer(code) if m[2] in crates and (m[1] or m[2] not in local)]
    wholes = [m for m in WHOLE_USE.finditer(code) if m[1] in crates]
    return {(line_of(code, m.start()), m[2]) for m in paths} | {
        (line_of(code, m.start()), m[1]) for m in wholes
    }


def crate_failures(src, relative, code):
    """(line, message) for each crate this file uses outside the module that owns it."""
    owners = {name: (what, allowed) for what, crates, allowed in RULES for name in crates}
    found = []
    for line, name in crate_uses(code, owners):
        what, allowed = owners[name]
        if not any(relative == a or relative.startswith(a) for a in allowed):
            places = " and ".join(f"{src.as_posix()}/{a}" for a in allowed)
            found.append((line, f"uses `{name}`, which only {places} may use ({what}; DESIGN.md)"))
    return found


def layer_failures(relative, code):
    """(line, message) for each ortserve module this file must not import."""
    found = []
    for who, modules, why in LAYERS:
        if relative.startswith(who):
            imports = re.finditer(rf"\bcrate::({'|'.join(modules)})\b", code)
            found += [
                (line_of(code, m.start()), f"imports crate::{m[1]}; {why} (DESIGN.md)")
                for m in imports
            ]
    return found


def check(src):
    """Each use across a boundary, as `file:line: message`, in file and line order."""
    failures = []
    for path in sorted(src.rglob("*.rs")):
        relative = path.relative_to(src).as_posix()
        code = strip(path.read_text(encoding="utf-8"))
        found = crate_failures(src, relative, code) + layer_failures(relative, code)
        failures += [f"{path.as_posix()}:{line}: {message}" for line, message in sorted(found)]
    return failures


def main():
    src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    failures = check(src)
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        print(f"{len(failures)} use(s) across a module boundary", file=sys.stderr)
        return 1
    print(f"module boundaries hold ({sum(1 for _ in src.rglob('*.rs'))} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
