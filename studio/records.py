"""The job and image records handed to plugins (``job_finished``) and printed by the CLI.

Frozen snapshots of the database rows, standard library only, so a plugin or a command can
hold them without a session and without importing the database layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: The statuses a job ends in (``studio.db.models.JobStatus`` has the full set).
FINISHED = ("succeeded", "failed", "canceled")
#: Characters of an id shown where space is short. Ids are ULIDs: 10 characters of time (ms)
#: then 16 random ones, so ids made close together share their first ~8 characters; 14 keep
#: 20 random bits, and every command takes a unique prefix, so a short id shown resolves.
SHORT_ID = 14


def short_id(ident: str) -> str:
    """The start of an id, as shown in narrow places; any command takes it back."""
    return ident[:SHORT_ID]


_PHRASES = {"queued": "is queued", "running": "is running", "succeeded": "has succeeded",
            "failed": "has failed", "canceled": "was canceled"}


def status_phrase(status: str, already: bool = False) -> str:
    """A status as English after "job X": "has succeeded", "is running", "was (already) canceled"."""
    phrase = _PHRASES.get(status, f"is {status}")
    if already:
        verb, _, rest = phrase.partition(" ")
        phrase = f"{verb} already {rest}"
    return phrase


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of a job row, safe to hand to plugins and to print."""

    id: str
    prompt: str
    model_id: str
    params: dict[str, Any]
    seed: int
    count: int
    status: str
    priority: int
    attempts: int
    error: str | None
    progress_done: int
    progress_total: int
    cancel_requested: bool
    worker_id: str | None
    parent_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> "JobInfo":
        return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def fraction(self) -> float:
        if self.status == "succeeded":
            return 1.0
        return self.progress_done / self.progress_total if self.progress_total else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("created_at", "started_at", "finished_at"):
            data[key] = data[key].isoformat() if data[key] else None
        data["progress"] = round(self.fraction, 4)
        return data


@dataclass(frozen=True)
class ImageInfo:
    """A snapshot of an image row: where its file is and the recipe that made it."""

    id: str
    job_id: str
    index: int
    seed: int
    sha256: str
    path: str
    width: int
    height: int
    recipe: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> "ImageInfo":
        return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: How each status is coloured wherever it is shown (rich style names).
STATUS_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "canceled": "magenta"}


def status_style(status: str) -> str:
    return STATUS_STYLE.get(status, "white")
