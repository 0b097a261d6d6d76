"""Session set-up shared by every test module."""

import os

import torch


def pytest_configure(config):
    # pytest-xdist runs one worker per core; a worker using every core's threads would
    # oversubscribe the machine, and the tests' tiny models gain nothing from intra-op threads.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
