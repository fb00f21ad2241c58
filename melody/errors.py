"""The one exception type meant for users.

Every problem a user can fix (bad input, missing file, corrupt checkpoint, full disk) is raised as
`MelodyError` with a one-line message naming the problem and the fix; the CLI prints that line and
exits with status 2, without a traceback.
"""


class MelodyError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix."""
