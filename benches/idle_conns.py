#!/usr/bin/env python3
"""Memory per idle keep-alive connection: opens N client connections to a proxy, sends one
request on each (with the given header), keeps them all open and idle, and reports the resident
memory (VmRSS, the process and its children) of the proxy before, with the connections idle,
and after they closed; plus how long opening them took.

    benches/idle_conns.py --url http://127.0.0.1:18205/bench/up/data/1 --pid PID \
        [--count 10000] [--header 'Authorization: Bearer ...']

Used by hand beside benches/proxy_load.sh (KEEP=1 keeps its servers' work directory; the PIDs
are in `ps`). Loopback only. Needs `ulimit -n` above the count.
"""
import argparse
import asyncio
import os
import ssl
import time
from urllib.parse import urlsplit


def rss_kib(pid: int) -> int:
    """VmRSS of pid and its descendants, in KiB."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


async def one(host, port, request, conns, failures, sem, tls):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                failures.append(head[:40])
            conns.append(writer)
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures.append(repr(e))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--hold", type=float, default=3.0, help="seconds idle before measuring")
    ap.add_argument("--concurrency", type=int, default=64, help="connections being opened at once")
    a = ap.parse_args()
    u = urlsplit(a.url)
    extra = "".join(h + "\r\n" for h in a.header)
    request = f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\n{extra}\r\n".encode()
    before = rss_kib(a.pid)
    conns, failures = [], []
    sem = asyncio.Semaphore(a.concurrency)
    t0 = time.monotonic()
    tls = None
    if u.scheme == "https":
        # A benchmark's self-signed certificate on loopback: not verified.
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["http/1.1"])
    await asyncio.gather(*(one(u.hostname, u.port, request, conns, failures, sem, tls) for _ in range(a.count)))
    opened = time.monotonic() - t0
    await asyncio.sleep(a.hold)
    idle = rss_kib(a.pid)
    for w in conns:
        w.close()
    await asyncio.sleep(2)
    after = rss_kib(a.pid)
    n = len(conns)
    print(f"connections open and idle: {n} of {a.count} ({len(failures)} failed: {failures[:3]})")
    print(f"opening them took {opened:.1f} s")
    print(f"RSS before {before / 1024:.1f} MiB, with them idle {idle / 1024:.1f} MiB "
          f"(+{(idle - before) / 1024:.1f} MiB, {(idle - before) / max(n, 1):.2f} KiB each), "
          f"after they closed {after / 1024:.1f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
