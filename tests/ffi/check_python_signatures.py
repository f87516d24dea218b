#!/usr/bin/env python3
"""Checks python/capvault.py against include/capvault.h: every function the header
declares has a SIGNATURES entry with the same return and argument types (and no entry
names a function the header lacks), and every numeric #define CAPVAULT_X has a module
constant X of the same value.

    check_python_signatures.py HEADER MODULE_DIR

Prints one line per mismatch and exits 1, or a summary and exits 0.
"""
import ctypes
import re
import sys

P = ctypes.POINTER
# C type (normalized) -> the ctypes declarations that are correct for it.
ACCEPT = {
    "void": {None},
    "bool": {ctypes.c_bool},
    "int32_t": {ctypes.c_int32},
    "capvault_result": {ctypes.c_int32},
    "int64_t": {ctypes.c_int64},
    "uint32_t": {ctypes.c_uint32},
    "size_t": {ctypes.c_size_t},
    "const char *": {ctypes.c_char_p},
    "char *": {ctypes.c_char_p, ctypes.c_void_p},
    "char **": {P(ctypes.c_void_p), P(ctypes.c_char_p)},
    "const uint8_t *": {ctypes.c_char_p, P(ctypes.c_uint8)},
    "size_t *": {P(ctypes.c_size_t)},
    "capvault *": {ctypes.c_void_p},
    "const capvault *": {ctypes.c_void_p},
    "capvault_bundle *": {ctypes.c_void_p},
    "const capvault_bundle *": {ctypes.c_void_p},
    "capvault **": {P(ctypes.c_void_p)},
    "capvault_bundle **": {P(ctypes.c_void_p)},
}


def norm(t):
    t = re.sub(r"\s*\*", " *", t.strip())
    t = re.sub(r"\* \*", "**", t)
    return re.sub(r"\s+", " ", t)


def prototypes(header):
    text = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"^\s*#[^\n]*", "", text, flags=re.M)
    protos = {}
    for m in re.finditer(r"([A-Za-z_][\w\s\*]*?)\b(capvault_\w+)\s*\(([^)]*)\)\s*;", text):
        ret, name, args = norm(m.group(1)), m.group(2), m.group(3).strip()
        params = []
        if args != "void":
            for a in args.split(","):
                pm = re.match(r"(.*?)(\w+)\s*$", a.strip(), flags=re.S)
                params.append(norm(pm.group(1)))
        protos[name] = (ret, params)
    return protos


def main():
    header_path, module_dir = sys.argv[1], sys.argv[2]
    header = open(header_path).read()
    sys.path.insert(0, module_dir)
    import capvault

    problems = []
    protos = prototypes(header)
    if not protos:
        problems.append("no prototypes found in the header")
    for name, (ret, params) in protos.items():
        if name not in capvault.SIGNATURES:
            problems.append(f"{name}: declared in the header, missing from SIGNATURES")
            continue
        restype, argtypes = capvault.SIGNATURES[name]
        if ret not in ACCEPT:
            problems.append(f"{name}: return type `{ret}` unknown to this check")
        elif restype not in ACCEPT[ret]:
            problems.append(f"{name}: returns `{ret}`, module says {restype}")
        if len(params) != len(argtypes):
            problems.append(f"{name}: {len(params)} parameters in the header, "
                            f"{len(argtypes)} in the module")
            continue
        for i, (c, py) in enumerate(zip(params, argtypes)):
            if c not in ACCEPT:
                problems.append(f"{name}: parameter {i + 1} type `{c}` unknown to this check")
            elif py not in ACCEPT[c]:
                problems.append(f"{name}: parameter {i + 1} is `{c}`, module says {py}")
    for name in capvault.SIGNATURES:
        if name not in protos:
            problems.append(f"{name}: in SIGNATURES, not declared in the header")

    consts = dict(re.findall(r"^#define CAPVAULT_(\w+) (-?\d+)\s*$", header, flags=re.M))
    for name, value in consts.items():
        got = getattr(capvault, name, None)
        if got != int(value):
            problems.append(f"CAPVAULT_{name} is {value} in the header, module says {got}")

    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"python/capvault.py matches the header: {len(protos)} functions, "
          f"{len(consts)} constants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
