"""retain_freed_memory: a freed block is reused without new page faults (each case in its own
process, since malloc's settings are process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from trainer.cpu_memory import retain_freed_memory
took = retain_freed_memory() if sys.argv[1] == "retain" else None
def cycle():  # a training step's pattern: allocate a 64 MiB activation, use it, free it
    x = torch.empty(16 * 1024 * 1024).fill_(1.0)
    del x
for _ in range(12):  # the heap grows until freed blocks fit the next requests, then stays
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(mode: str) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    took, faults = result.stdout.split()
    return took, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings: Linux only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    _, default_faults = probe("default")
    took, retained_faults = probe("retain")
    assert took == "True"
    # glibc's default maps a block above 32 MiB on its own and unmaps it when freed: each of the
    # 20 cycles faults in its 16,384 pages afresh
    pages = 16 * 1024 * 1024 * 4 // 4096
    assert default_faults > 20 * pages * 0.9
    # kept in the heap, the block is reused: once the heap has grown, no cycle faults again
    assert retained_faults < pages
