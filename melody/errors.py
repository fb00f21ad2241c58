"""The one exception type meant for users.

Every problem a user can fix (bad input, missing file, corrupt checkpoint, full disk) is raised as
`MelodyError` with a one-line message naming the problem and the fix; the CLI prints that line and
exits with status 2, without a traceback.
"""


class MelodyError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix."""


def first_line(err: Exception, limit: int = 160) -> str:
    """What a caught library exception says, cut to one line for a `MelodyError` message (its type if it says nothing)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
