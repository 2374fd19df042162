"""Alembic revision files, one per schema change (a package so that the wheel ships them)."""
