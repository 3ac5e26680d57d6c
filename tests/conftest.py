"""How the test command shares two cores: one CPU thread per pytest-xdist worker, and the longest tests first.

The test command runs one worker per core (`-n auto`); torch's default of one thread per core in each of them
would put twice as many threads as cores on the machine, which makes convolutions several times slower. With
`--dist load --maxschedchunk 1` a worker takes the next queued test each time it finishes one, so tests queued
longest first (`@pytest.mark.seconds(n)`) are shared out evenly and the suite does not end on one long test on one
core while the other idles."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, and inherited by subprocesses

    import torch

    torch.set_num_threads(1)


def expected_seconds(item) -> float:
    marker = item.get_closest_marker("seconds")
    return marker.args[0] if marker else 0.0


def pytest_collection_modifyitems(items):
    items.sort(key=expected_seconds, reverse=True)  # stable: the unmarked tests keep their order
