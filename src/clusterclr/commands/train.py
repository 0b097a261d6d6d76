"""``clusterclr train --resume``: which run a resume continues, and whether it may."""

from __future__ import annotations

from collections.abc import Callable

from clusterclr.config import Config
from clusterclr.errors import UserError
from clusterclr.rundir import RUNS, RunDir
from clusterclr.weights import with_weights


def run_to_resume(resume: str, out: str | None, configured: bool, config: Callable[[], Config]) -> RunDir | None:
    """The run ``--resume`` continues; None when ``--resume auto --out DIR`` finds no run there yet (start it).

    ``--resume RUN_DIR`` continues that run with its saved config.
    ``--resume auto --out DIR`` continues DIR if it holds a run, else starts
    one there from the other flags, so one command line serves every restart
    of a pre-emptible job; flags given (``configured``; ``config`` builds
    them) must then match the saved config. ``--resume auto`` alone
    continues the run under runs/ with the newest checkpoint.
    """
    if resume != "auto":
        if configured or out:
            raise UserError("--resume continues a run in place with its saved config; drop --config, --out, --set and the other flags")
        return RunDir(resume)
    if not out:
        if configured:
            raise UserError(
                f"--resume auto without --out continues the newest run under {RUNS}/ with its saved config; "
                "drop --config, --set and the other flags, or name the run with --out"
            )
        return RunDir.newest(RUNS)
    run_dir = RunDir(out)
    if not run_dir.holds_run():
        return None
    if configured:
        # The saved config records what a weights file decided; so must the one it is compared with.
        run_dir.check_same_config(with_weights(config())[0])
    return run_dir
