#!/usr/bin/env python3
"""How many 64 KiB bundles per second this disk makes durable under each write pattern
the collector's directory store could use (docs/PERFORMANCE.md, "Collector ingest").

    python3 harness/fsync_patterns.py [BUNDLES=1600] [DIR=/tmp]

Patterns: one file per bundle with fdatasync (1 and 16 writers: the ingest harness's
baseline), the same plus a directory fsync per file (what the store did before segments),
groups of 64 files synced by 16 threads in parallel plus one directory fsync per group,
and appends to one segment file with one fdatasync per group of 16 or 64 bundles.
"""
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1600
BASE = os.path.join(sys.argv[2] if len(sys.argv) > 2 else "/tmp", f"fsync-patterns-{os.getpid()}")
DATA = os.urandom(65881)  # a sealed 64 KiB bundle


def fresh():
    shutil.rmtree(BASE, ignore_errors=True)
    os.makedirs(BASE)


def sync_dir():
    d = os.open(BASE, os.O_RDONLY)
    os.fsync(d)
    os.close(d)


def write_file(i):
    fd = os.open(f"{BASE}/{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, DATA)
    return fd


def per_file(threads, dirsync=False):
    def one(i):
        fd = write_file(i)
        os.fdatasync(fd)
        os.close(fd)
        if dirsync:
            sync_dir()

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(N)))


def group_files(group, threads):
    with ThreadPoolExecutor(threads) as ex:
        for g in range(0, N, group):
            fds = [write_file(i) for i in range(g, min(g + group, N))]
            list(ex.map(os.fdatasync, fds))
            for fd in fds:
                os.close(fd)
            sync_dir()


def segment(group):
    fd = os.open(f"{BASE}/seg", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sync_dir()
    for g in range(0, N, group):
        for _ in range(g, min(g + group, N)):
            os.write(fd, DATA)
        os.fdatasync(fd)
    os.close(fd)


PATTERNS = [
    ("file per bundle, fdatasync, 1 writer", lambda: per_file(1)),
    ("file per bundle, fdatasync, 16 writers", lambda: per_file(16)),
    ("file per bundle, fdatasync + dir fsync, 16 writers", lambda: per_file(16, True)),
    ("64 files, 16 parallel fdatasync, 1 dir fsync", lambda: group_files(64, 16)),
    ("segment, 1 fdatasync per 16 bundles", lambda: segment(16)),
    ("segment, 1 fdatasync per 64 bundles", lambda: segment(64)),
]

for name, run in PATTERNS:
    fresh()
    t = time.time()
    run()
    print(f"{name:52s} {N / (time.time() - t):7.0f} bundles/s", flush=True)
shutil.rmtree(BASE, ignore_errors=True)
