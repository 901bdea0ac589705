"""User errors: one line saying what is wrong and how to fix it, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake the user can fix (bad config, missing input, wrong data). Shown as one line."""


def exit_on_user_error(fn: Callable[[], object]) -> object:
    """Run ``fn`` and return what it returns; turn a :class:`UserError` into ``error: <message>`` on stderr and exit
    status 2."""
    try:
        return fn()
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":  # every rank hits the same mistake; say it once
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the stage was not marked complete; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
