"""Alembic environment: uses the engine Studio hands over, or STUDIO_DATABASE_URL for the alembic CLI."""

from __future__ import annotations

from alembic import context

from studio.db.models import Base

config = context.config
target_metadata = Base.metadata


def _engine():
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    from studio.config import load_settings
    from studio.db.session import make_engine

    return make_engine(load_settings().database_url)


def run_migrations_offline() -> None:
    from studio.config import load_settings

    context.configure(url=load_settings().database_url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
