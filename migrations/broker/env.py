from migrations.environment import run_migrations

run_migrations("broker")
