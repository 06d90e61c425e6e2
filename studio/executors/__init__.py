"""Where jobs run: in this process (default) or on Celery workers (when a broker is configured)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from studio.config import Settings


def uses_broker(settings: "Settings") -> bool:
    return bool(settings.broker_url)
