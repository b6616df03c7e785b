"""placeholder"""
from typing import Any


def check_claimed_profiles(resource: dict[str, Any]) -> list[tuple[str, str | None]]:
    return []
