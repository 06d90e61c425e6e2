"""Alembic environment for Studio's database (installed as ``studio.migrations``)."""
