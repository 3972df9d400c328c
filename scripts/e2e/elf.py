"""Checks that files are Linux ELF executables for one architecture.

    python elf.py arm64|x86_64 FILE...

Reads the ELF header itself (so `file` need not be installed): 64-bit,
little-endian, type EXEC or DYN with an entry point and a PT_INTERP or no
dynamic section (a PIE or a static executable, not a shared library), and
the machine the architecture names. Prints one line per file; exits 1 if
any does not match.
"""

import os
import struct
import sys

MACHINES = {"arm64": (183, "aarch64"), "x86_64": (62, "x86-64")}
PT_INTERP, PT_DYNAMIC = 3, 2


def describe(path, want_machine):
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF":
            return False, "not an ELF file"
        if head[4] != 2 or head[5] != 1:
            return False, "not a 64-bit little-endian ELF"
        e_type, e_machine, _, e_entry, e_phoff = struct.unpack_from("<HHIQQ", head, 16)
        e_phentsize, e_phnum = struct.unpack_from("<HH", head, 54)
        kinds = set()
        for i in range(e_phnum):
            f.seek(e_phoff + i * e_phentsize)
            (p_type,) = struct.unpack("<I", f.read(4))
            kinds.add(p_type)
    names = {v[0]: v[1] for v in MACHINES.values()}
    machine = names.get(e_machine, f"machine {e_machine}")
    if e_type == 2:
        kind = "static executable" if PT_INTERP not in kinds else "executable"
    elif e_type == 3 and PT_INTERP in kinds and e_entry:
        kind = "PIE executable"
    elif e_type == 3 and PT_DYNAMIC not in kinds and e_entry:
        kind = "static PIE executable"
    else:
        kind = "not an executable (ELF type %d)" % e_type
    ok = "executable" in kind and not kind.startswith("not") and e_machine == want_machine
    if not os.access(path, os.X_OK):
        ok, kind = False, kind + ", not executable by permissions"
    return ok, f"ELF 64-bit LSB {kind}, {machine}, {os.path.getsize(path)} bytes"


def main(argv):
    if len(argv) < 2 or argv[0] not in MACHINES:
        sys.exit(__doc__)
    want = MACHINES[argv[0]][0]
    bad = 0
    for path in argv[1:]:
        try:
            ok, desc = describe(path, want)
        except OSError as e:
            ok, desc = False, str(e)
        print(f"{'ok ' if ok else 'BAD'} {path}: {desc}")
        bad += not ok
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
