"""Session set-up shared by every test module."""

import os

import pytest
import torch


def pytest_configure(config):
    # pytest-xdist runs one worker per core; a worker using every core's threads would
    # oversubscribe the machine, and the tests' tiny models gain nothing from intra-op threads.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture
def interrupt_after_epoch(monkeypatch):
    """``interrupt_after_epoch(config, out, epoch=1)`` trains ``config`` into ``out`` and stops it as a crash
    would, right after the checkpoint at the end of ``epoch``; ``clusterclr.resume(out)`` then continues it."""
    from clusterclr import api
    from clusterclr.training.loop import Trainer

    def interrupt(config, out, epoch: int = 1) -> None:
        save = Trainer.save

        def save_then_crash(self):
            save(self)
            if self.epoch == epoch:
                raise KeyboardInterrupt

        with monkeypatch.context() as patched:
            patched.setattr(Trainer, "save", save_then_crash)
            with pytest.raises(KeyboardInterrupt):
                api.train(config, out=out)

    return interrupt
