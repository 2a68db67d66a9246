import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite on one worker process per core (pytest-xdist): each computes on one
    # thread, so two workers on two cores do not fight over them.
    torch.set_num_threads(1)
