"""The process an app runs in: ``python -m interop.jobs.appproc``.

It imports the heavy parts every app needs (torch, MONAI, the Holoscan-based SDK) first and then waits for
one job on stdin, a JSON line ``{"module": ..., "argv": [...], "cwd": ..., "stdout": path, "stderr": path,
"logging": {"format", "level", "correlation_id"}}`` (its log lines then carry the job's correlation id),
so a worker can start it before a job arrives and the import time (seconds) is not on the job's clock. It runs
the app module as ``__main__`` (the SDK's ``-i/-o/-m`` arguments) exactly as ``python -m <module>`` would, then
exits; one process per run, so nothing leaks from one job into the next. The parent sets the 32 MB stack
limit Holoscan wants before exec (see interop.jobs.worker).
"""

from __future__ import annotations

import json
import os
import runpy
import sys


def _preload(modules: list[str]) -> None:
    """Import the SDK stack, then each installed app's ``<module>.app`` (its operators, scikit-learn ...)."""
    import contextlib
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import monai.deploy.core  # noqa: F401  (Holoscan, MONAI)
        import numpy  # noqa: F401
        import pydicom  # noqa: F401
        import torch  # noqa: F401

        for name in modules:
            # Not our layout, or broken: the run itself will say so.
            with contextlib.suppress(Exception):
                importlib.import_module(f"{name}.app")


def main() -> None:
    if os.environ.get("INTEROP_APPPROC_PRELOAD", "1") == "1":
        try:
            _preload([m for m in os.environ.get("INTEROP_APPPROC_MODULES", "").split(",") if m])
        except Exception as exc:  # the app's own imports will report it properly
            print(f"preload failed: {exc}", file=sys.stderr)
    line = sys.stdin.readline()
    if not line.strip():
        return  # the worker closed the pipe: not needed any more
    job = json.loads(line)
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(job["cwd"])
    from interop.logs import configure_child

    configure_child(job.get("logging"), job["cwd"])
    for path in reversed(job.get("python_path", [])):
        if path not in sys.path:
            sys.path.insert(0, path)
    sys.argv = [job["module"], *job["argv"]]
    runpy.run_module(job["module"], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
