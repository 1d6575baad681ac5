#!/usr/bin/env python3
"""Locked (atomic read-modify-write) instructions per request, from a callgrind profile.

    CALLGRIND=1 CG_INSTR=1 KEEP=1 benches/proxy_load.sh        # keeps callgrind.out.* files
    benches/cg_locked.py WORK/gerbang-bare/callgrind.out.1 REQUESTS [BINARY] [TOP]

Callgrind counts instructions, not what they cost: an atomic increment (an `Arc` or `Bytes`
clone, a mutex, a task's state) is one instruction to it, but a locked instruction waits for
the core's store buffer to drain. This counts how often each locked instruction ran (the
profile needs per-instruction counts: `--dump-instr=yes`, which `CG_INSTR=1` adds) by matching
the profile's instruction addresses with the disassembly (`objdump -d`) of the binary and of
libc: every `lock`-prefixed instruction, and `xchg` with a memory operand (locked without the
prefix). Prints the total per request and the functions that hold them (by the symbol table,
so inlined code counts where it was inlined).

BINARY defaults to the command line the profile names; REQUESTS is what wrk completed while
instrumentation was on (proxy_load.sh prints it).
"""

import bisect
import collections
import re
import subprocess
import sys

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def self_counts(path):
    """{object: {address: executions}} from a callgrind file with `positions: instr line`."""
    names = {}
    obj = None
    counts = collections.defaultdict(collections.Counter)
    last = 0
    call_line = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"c?ob=\((\d+)\)(?:\s+(.*))?$", line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("ob="):
                    obj = names.get(m.group(1), m.group(1))
                continue
            if line.startswith("calls="):
                # The next cost line is the call's inclusive cost: not this address's own.
                call_line = True
                continue
            if not line or line[0] not in "0123456789+-*":
                continue
            fields = line.split()
            pos = fields[0]
            if pos == "*":
                addr = last
            elif pos[0] in "+-":
                delta = int(pos[1:], 0)
                addr = last + delta if pos[0] == "+" else last - delta
            else:
                addr = int(pos, 0)
            last = addr
            if call_line:
                call_line = False
                continue
            if len(fields) >= 3:
                counts[obj][addr] += int(fields[2])
    return counts


def locked_addresses(binary):
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True, check=True
    ).stdout
    found = {}
    for line in out.split("\n"):
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)$", line)
        if not m:
            continue
        ins = m.group(2).strip()
        if ins.startswith("lock ") or (ins.startswith("xchg") and "(" in ins):
            found[int(m.group(1), 16)] = ins
    return found


def symbols(binary, dynamic=False):
    args = ["nm", "-n", "-C"] + (["-D"] if dynamic else []) + [binary]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    addrs, names = [], []
    for line in out.split("\n"):
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            addrs.append(int(parts[0], 16))
            names.append(re.sub(r"::h[0-9a-f]{16}$", "", parts[2]))
    return addrs, names


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, requests = sys.argv[1], float(sys.argv[2])
    counts = self_counts(path)
    binary = sys.argv[3] if len(sys.argv) > 3 else None
    if binary is None:
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("cmd:"):
                    binary = line.split()[1]
                    break
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    tables = {
        "binary": (locked_addresses(binary), symbols(binary)),
        "libc": (locked_addresses(LIBC), symbols(LIBC, dynamic=True)),
    }
    total = 0
    by_function = collections.Counter()
    for obj, per_addr in counts.items():
        kind = "libc" if "libc" in str(obj) else "binary"
        locked, (addrs, names) = tables[kind]
        for addr, n in per_addr.items():
            if addr not in locked:
                continue
            total += n
            i = bisect.bisect_right(addrs, addr) - 1
            name = names[i] if i >= 0 else "?"
            if kind == "libc":
                name = "libc: " + name + " (nearest exported symbol)"
            by_function[name[:150]] += n
    print(f"locked instructions per request: {total / requests:.1f}")
    for name, n in by_function.most_common(top):
        print(f"{n / requests:8.2f}  {name}")


if __name__ == "__main__":
    main()
