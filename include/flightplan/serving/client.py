"""A client of the inference API, with the bearer token of the scope it needs."""

from __future__ import annotations

from typing import Any

from flightplan.settings import ApiScope, Settings, api_token


def bearer(settings: Settings, scope: ApiScope) -> dict[str, str]:
    """The header that carries the inference API's token of ``scope``, when one is set."""
    token = api_token(settings, scope)
    return {"Authorization": f"Bearer {token}"} if token else {}


def service_client(settings: Settings, scope: ApiScope = "predict") -> Any:
    """An HTTP client of the inference API, with its bearer token of ``scope``."""
    import httpx

    return httpx.Client(base_url=settings.service_url, headers=bearer(settings, scope), timeout=60)
