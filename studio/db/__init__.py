"""Database layer: SQLAlchemy models, the one session factory, and schema migrations."""

from studio.db.models import Base, Image, Job, JobStatus
from studio.db.session import Database, DatabaseError, open_database

__all__ = ["Base", "Database", "DatabaseError", "Image", "Job", "JobStatus", "open_database"]
