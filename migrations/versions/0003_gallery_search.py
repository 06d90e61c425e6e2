"""Gallery: prompt text search and a lineage index.

SQLite gets a standalone FTS5 table (not "external content": that would tie the index to
``jobs.rowid`` for reads) holding the job id and the prompt; its rowid mirrors ``jobs.rowid``
only so that the delete trigger finds the row without a scan, and that delete also checks the
job id, so a renumbered rowid can never remove another job's entry. PostgreSQL gets a GIN
expression index. Both are outside the ORM (see ``studio.gallery.search``).

A later migration that rebuilds ``jobs`` on SQLite (Alembic batch mode copies the table)
drops these triggers with it and must recreate them with :func:`create_sqlite_search`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SQLITE_SEARCH = [
    "CREATE VIRTUAL TABLE prompt_search USING fts5(job_id UNINDEXED, prompt, tokenize = 'unicode61')",
    """CREATE TRIGGER prompt_search_insert AFTER INSERT ON jobs BEGIN
        INSERT OR REPLACE INTO prompt_search (rowid, job_id, prompt) VALUES (new.rowid, new.id, new.prompt);
    END""",
    """CREATE TRIGGER prompt_search_delete AFTER DELETE ON jobs BEGIN
        DELETE FROM prompt_search WHERE rowid = old.rowid AND job_id = old.id;
    END""",
    """CREATE TRIGGER prompt_search_update AFTER UPDATE OF prompt ON jobs BEGIN
        DELETE FROM prompt_search WHERE rowid = old.rowid AND job_id = old.id;
        INSERT OR REPLACE INTO prompt_search (rowid, job_id, prompt) VALUES (new.rowid, new.id, new.prompt);
    END""",
    "INSERT INTO prompt_search (rowid, job_id, prompt) SELECT rowid, id, prompt FROM jobs",
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS prompt_search_update",
    "DROP TRIGGER IF EXISTS prompt_search_delete",
    "DROP TRIGGER IF EXISTS prompt_search_insert",
    "DROP TABLE IF EXISTS prompt_search",
]
POSTGRES_INDEX = "CREATE INDEX ix_jobs_prompt_search ON jobs USING gin (to_tsvector('simple', prompt))"


def create_sqlite_search() -> None:
    for statement in SQLITE_SEARCH:
        op.execute(sa.text(statement))


def upgrade() -> None:
    op.create_index("ix_jobs_parent_id", "jobs", ["parent_id"])
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        create_sqlite_search()
    elif dialect == "postgresql":
        op.execute(sa.text(POSTGRES_INDEX))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in SQLITE_DROP:
            op.execute(sa.text(statement))
    elif dialect == "postgresql":
        op.execute(sa.text("DROP INDEX IF EXISTS ix_jobs_prompt_search"))
    op.drop_index("ix_jobs_parent_id", table_name="jobs")
