"""Session set-up and fixtures shared by every test module."""

import itertools
import os
import signal

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


@pytest.fixture
def ctrl_c_at_step(monkeypatch):
    """``ctrl_c_at_step(method_cls, step, times=1)``: from now on, the ``step``-th call of
    ``method_cls.training_step`` first sends this process ``times`` SIGINTs, as Ctrl-C pressed during
    that step would. ``monkeypatch.undo()`` (or the test's end) restores the method."""

    def arm(method_cls, step: int, times: int = 1) -> None:
        real, calls = method_cls.training_step, itertools.count(1)

        def training_step(self, batch):
            if next(calls) == step:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)
            return real(self, batch)

        monkeypatch.setattr(method_cls, "training_step", training_step)

    return arm
