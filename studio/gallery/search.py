"""Text search over prompts: SQLite FTS5 or PostgreSQL full text, one behaviour for both.

Both backends get the same query language on purpose: the user's text is split into words
(letters and digits) and every word must match the start of a word of the prompt, so
``"red circ"`` finds "a red circle". Nothing the user types reaches the query syntax of
either engine, so no input can make a search fail.

The search structures are created by migration 0003 and are not mapped in the ORM:
    SQLite:     a standalone FTS5 table ``prompt_search(job_id UNINDEXED, prompt)`` whose rowid
                mirrors ``jobs.rowid`` (for cheap deletes), kept in step by triggers on ``jobs``.
    PostgreSQL: a GIN expression index ``ix_jobs_prompt_search`` on ``to_tsvector('simple', prompt)``.
"""

from __future__ import annotations

import re

from sqlalchemy import ColumnElement, and_, func, literal_column, select, text

#: Names of the unmapped schema objects behind search (the ORM comparison ignores them).
SEARCH_OBJECT_PREFIXES = ("prompt_search", "ix_jobs_prompt_search")
TS_CONFIG = "simple"  # no stemming and no stop words: the same matches as SQLite's unicode61
MAX_TERMS = 16

_WORD = re.compile(r"[^\W_]+")


def terms(query: str) -> list[str]:
    """The words of a search, lower-cased, at most :data:`MAX_TERMS` of them."""
    return [w.lower() for w in _WORD.findall(query or "")][:MAX_TERMS]


def is_search_object(name: str | None) -> bool:
    return bool(name) and name.startswith(SEARCH_OBJECT_PREFIXES)


def fts5_query(words: list[str]) -> str:
    """An FTS5 MATCH string: every word a quoted prefix term, all required."""
    return " AND ".join(f'"{w}"*' for w in words)


def tsquery(words: list[str]) -> str:
    """A to_tsquery string: every word a prefix term, all required (words hold no operators)."""
    return " & ".join(f"{w}:*" for w in words)


def prompt_matches(dialect: str, job_id: ColumnElement, prompt: ColumnElement, query: str) -> ColumnElement[bool] | None:
    """A WHERE clause selecting jobs whose prompt matches ``query``; None when it has no words."""
    words = terms(query)
    if not words:
        return None
    if dialect == "sqlite":
        hits = select(literal_column("job_id")).select_from(text("prompt_search")).where(
            text("prompt_search MATCH :fts_query").bindparams(fts_query=fts5_query(words))
        )
        return job_id.in_(hits.scalar_subquery())
    if dialect == "postgresql":
        vector = func.to_tsvector(literal_column(f"'{TS_CONFIG}'"), prompt)
        return vector.op("@@")(func.to_tsquery(literal_column(f"'{TS_CONFIG}'"), tsquery(words)))
    # Any other database: a substring test per word (correct, not indexed).
    return and_(*[func.lower(prompt).contains(w, autoescape=True) for w in words])
