"""What the broker holds: waiting messages per queue and the job ids they carry.

Read straight from Redis (the broker Studio supports), through kombu's own channel so the
URL, database number and key prefix are those Celery uses. A message is held either in a
queue list (one per priority step) or, once a worker took it and until it acknowledges
it, in kombu's ``unacked`` hash (with the time it was taken in ``unacked_index``). Each message's task id is its job id.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator

from kombu.exceptions import OperationalError as BrokerUnavailable

from studio.db.session import redact
from studio.errors import StudioError

if TYPE_CHECKING:
    from celery import Celery

READ_CHUNK = 1000


@contextmanager
def redis_channel(app: "Celery") -> Iterator[object]:
    """kombu's Redis channel for this app's broker (its ``client`` is a redis-py client)."""
    with app.connection_for_read() as conn:
        if conn.transport.driver_type != "redis":
            raise StudioError(f"the broker must be Redis; {conn.transport.driver_type!r} is not supported")
        try:
            conn.ensure_connection(max_retries=1)
        except BrokerUnavailable as exc:
            raise StudioError(f"cannot reach the broker {redact(app.conf.broker_url)}: {exc}") from None
        yield conn.default_channel


def queue_keys(channel, queue: str) -> list[str]:
    """The Redis lists behind one queue: one per priority step (kombu's naming)."""
    return [channel._q_for_pri(queue, pri) for pri in channel.priority_steps]  # noqa: SLF001


def depth(channel, queue: str) -> int:
    """Messages waiting in ``queue`` (not counting those a worker has taken)."""
    return sum(channel.client.llen(key) for key in queue_keys(channel, queue))


def _task_id(raw: bytes | str) -> str | None:
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    if isinstance(payload, list):  # unacked entries are [message, exchange, routing key]
        payload = payload[0] if payload else {}
    headers = payload.get("headers") if isinstance(payload, dict) else None
    return headers.get("id") if isinstance(headers, dict) else None


@dataclass
class Held:
    """The job ids a broker holds: waiting in a queue, or taken by a worker (with when)."""

    waiting: set[str] = field(default_factory=set)
    taken: dict[str, float] = field(default_factory=dict)  # job id -> unix time it was delivered


def held(channel, queues: Iterable[str]) -> Held:
    """What the broker holds for ``queues`` (taken messages are listed for every queue)."""
    client = channel.client
    result = Held()
    for queue in queues:
        for key in queue_keys(channel, queue):
            for start in range(0, client.llen(key), READ_CHUNK):
                result.waiting.update(filter(None, map(_task_id, client.lrange(key, start, start + READ_CHUNK - 1))))
    delivered = dict(client.zrange(channel.unacked_index_key, 0, -1, withscores=True))
    for tag, raw in client.hgetall(channel.unacked_key).items():
        job_id = _task_id(raw)
        if job_id:
            result.taken[job_id] = max(result.taken.get(job_id, 0.0), delivered.get(tag, 0.0))
    return result
