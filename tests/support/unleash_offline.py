"""The real UnleashClient, built offline: the reference our bucketing is checked against.

The constructor loads a bootstrapped cache into its engine (yggdrasil); registration,
metrics and fetching all start in `initialize_client()`, which is never called (and
both are disabled besides). The URL is the discard port, to be sure nothing connects.
Used by the agreement tests and by `make bench`.
"""

from __future__ import annotations

import json
from typing import Any

from UnleashClient import UnleashClient
from UnleashClient.cache import BaseCache
from UnleashClient.constants import FEATURES_URL
from UnleashClient.utils import InstanceAllowType


class MemoryCache(BaseCache):
    """An Unleash cache holding a bootstrap payload in memory (no files, no fetching)."""

    def __init__(self, features: list[dict[str, Any]]) -> None:
        self._data: dict[str, Any] = {FEATURES_URL: json.dumps({"version": 2, "features": features})}
        self.bootstrapped = True

    def set(self, key: str, value: Any) -> None:
        self._data[key] = value

    def mset(self, data: dict) -> None:
        self._data.update(data)

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def exists(self, key: str) -> bool:
        return key in self._data

    def destroy(self) -> None:
        self._data.clear()


def offline_unleash(features: list[dict[str, Any]], app_name: str = "rolloutd-tests") -> UnleashClient:
    """An UnleashClient answering from `features` only."""
    client = UnleashClient(
        url="http://127.0.0.1:9",
        app_name=app_name,
        disable_metrics=True,
        disable_registration=True,
        cache=MemoryCache(features),
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
    loaded = client.feature_definitions()
    missing = [f["name"] for f in features if f["name"] not in loaded]
    if missing:
        raise RuntimeError(f"the Unleash engine did not load {missing} from the bootstrap")
    return client
