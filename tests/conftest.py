"""One CPU thread per pytest-xdist worker, for the worker and every script it starts.

The test command runs one worker per core (`-n auto`); torch's default of one thread per core in each of them
would put twice as many threads as cores on the machine, which makes convolutions several times slower."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, and inherited by subprocesses

    import torch

    torch.set_num_threads(1)
