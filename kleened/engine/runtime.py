"""What every engine operation needs: settings, the store and the host drivers.

Built once by app start-up (`kleened.app`) and handed to engine functions; the
host drivers are the Protocols of `kleened.host.base`, chosen per platform by
`kleened.host.factory`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kleened.config import Settings
from kleened.host.base import Jails, Mounts, Storage


@dataclass
class Runtime:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    storage: Storage
    jails: Jails | None = None
    mounts: Mounts | None = None
    network: Any = None  # the network driver, once networking is set up
    # Operations on one object are serialised; different objects run in parallel.
    _locks: dict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    # Shared state that engine modules keep between requests (exec registry, ...).
    services: dict[str, Any] = field(default_factory=dict)

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks[key]
