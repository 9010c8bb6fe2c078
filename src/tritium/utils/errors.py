"""The one error base of tritium.

Every error a user can cause (a bad flag, a missing or damaged file, an input the methods cannot take)
is a ``TritiumError``: the CLI prints its message and exits with status 2. Subclasses keep their older
built-in bases too (``ValueError``, ``FileNotFoundError``, ...) so that callers catching those still work.
Anything that is not a ``TritiumError`` is a bug in tritium.
"""

from __future__ import annotations


class TritiumError(Exception):
    """A problem with the user's input or files; the message names the problem and the fix."""
