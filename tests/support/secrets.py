"""Reading the compose stack's `.env` as docker compose reads it."""

from __future__ import annotations


def dotenv_values(text: str) -> dict[str, str]:
    """The NAME=value settings of a .env's text (as docker compose reads this project's files)."""
    lines = [line for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#")]
    return {name.strip(): value.strip() for name, value in (line.split("=", 1) for line in lines)}
