"""Starting an app the way Holoscan wants: a 32 MB stack, then ``Application().run()`` with the SDK's arguments.

Holoscan (MONAI Deploy App SDK 4.x) warns, and can crash, when the stack limit is below 32 MB. A process can't
grow its own main-thread stack after start-up, so :func:`main` raises the soft limit and re-executes itself
once; the job runner (interop.jobs) sets the limit in the child before exec, so no re-exec happens there.
Apps are run with the SDK's convention ``python -m apps.<name> -i INPUT -o OUTPUT -m MODEL``.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable

STACK_BYTES = 32 * 1024 * 1024
_REEXEC_FLAG = "INTEROP_STACK_RAISED"


def raise_stack_limit() -> bool:
    """Raise the soft stack limit to 32 MB (where the hard limit allows); True when it is now at least that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft >= STACK_BYTES:
        return True
    target = STACK_BYTES if hard == resource.RLIM_INFINITY else min(STACK_BYTES, hard)
    resource.setrlimit(resource.RLIMIT_STACK, (target, hard))
    return target >= STACK_BYTES


def main(app_factory: Callable[[], object]) -> None:
    """Entry point of ``python -m apps.<name>``: ensure the stack, then build and run the app."""
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    too_small = soft != resource.RLIM_INFINITY and soft < STACK_BYTES
    if too_small and not os.environ.get(_REEXEC_FLAG) and raise_stack_limit():
        os.environ[_REEXEC_FLAG] = "1"
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    app = app_factory()
    app.run()  # type: ignore[attr-defined]
