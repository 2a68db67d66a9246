import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite on one worker process per core (pytest-xdist): each computes on one
    # thread, and so do the processes its tests start (CLI runs, torchrun, bench workers), so the
    # workers do not fight over the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
