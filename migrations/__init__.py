"""Alembic environments, one per service database (`alembic --name order|inventory|payment`).

Migrations never import application code: a revision carries the schema as it was when it was written,
so changing the application later cannot change what an old revision does."""
