"""A user's own service function, as `--service tests.models.user_functions:fragile` loads it."""

from __future__ import annotations


def fragile(text: str) -> str:
    if text == "boom":
        raise ValueError("boom")
    return text.upper()
