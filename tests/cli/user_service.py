"""A user's own service for `--service user_service:shout`, with the kind of bug users' code has.

The server tests load it by name, as a student would load theirs (PYTHONPATH set to this folder).
"""


def shout(line: str) -> str:
    """Upper case and an exclamation mark; fails on any line that mentions a boom."""
    if "boom" in line:
        raise ValueError("no booms here")
    return line.upper() + "!"


def backwards(line: str) -> str:
    """The line reversed: never longer than the request, as a UDP answer must be (no amplification)."""
    return line[::-1]
