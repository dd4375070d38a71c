//! The inbox tables.

use tokio_postgres::Client;

use crate::error::InboxError;

/// `sql/07_inbox.sql`: the inbox and aggregate-guard tables, idempotent.
pub const SCHEMA_SQL: &str = include_str!("../../../sql/07_inbox.sql");

/// Creates the inbox tables if they do not exist (`sql/07_inbox.sql`), in the
/// first schema of the connection's `search_path`. Safe to run at every start.
pub async fn setup(client: &Client) -> Result<(), InboxError> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .map_err(|e| InboxError::new("creating the inbox tables", e))
}
