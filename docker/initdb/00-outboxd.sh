#!/bin/bash
# Runs once, when the postgres container initialises its data directory: applies sql/ with the
# outboxd role's password from the environment (never from a file in the repository).
set -euo pipefail
for file in 01_outbox_table.sql 02_publication.sql 03_role.sql 04_cleanup.sql; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
         -v outboxd_password="$OUTBOXD_DB_PASSWORD" -f "/sql/$file"
done
