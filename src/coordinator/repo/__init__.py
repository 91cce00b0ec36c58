"""Persistence: the SQLAlchemy engine, sessions, the declarative base and Alembic migrations."""
