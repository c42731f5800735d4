"""Worker side of the --dist-timeout test: rank 1 freezes (sleeps far past the
timeout), rank 0 enters an all_reduce and must get an error after the process
group's timeout instead of waiting for rank 1. Rank 0 prints what happened."""
import os
import sys
import time

import torch
import torch.distributed as dist

from ies_fast.io import distributed as dist_utils

timeout_s = float(sys.argv[1])
dist_utils.init_from_env(timeout_s=timeout_s)
if dist.get_rank() == 1:
    time.sleep(300)  # frozen
    sys.exit(0)
start = time.monotonic()
try:
    dist.all_reduce(torch.ones(1))
except RuntimeError as exc:
    print(f"TIMED OUT after {time.monotonic() - start:.1f}s: {str(exc).splitlines()[0][:200]}", flush=True)
    os._exit(3)  # no teardown with a peer that never answers
print("NO TIMEOUT", flush=True)
