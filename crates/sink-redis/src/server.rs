//! What a Redis server offers the sink (for `outboxd check`).

use std::time::Duration;

use redis::{AsyncConnectionConfig, Client};

use crate::RedisConfig;

/// How re-sent records are kept from being appended twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// The sink's Lua script and its per-stream dedupe set (every server).
    LuaScript,
}

/// What a server is and offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `redis_version` from `INFO server`.
    pub version: String,
    /// Whether `XADD` takes `IDMP` (Redis ≥ 8.6).
    pub has_idmp: bool,
    /// What the sink uses on it.
    pub idempotency: Idempotency,
    /// Replicas connected to it (`connected_slaves`), for `wait_replicas`.
    pub replicas: u32,
}

/// Connects and asks: `INFO server`, `INFO replication`, and `COMMAND DOCS
/// XADD` for the `IDMP` argument.
pub async fn probe(config: &RedisConfig) -> Result<ServerInfo, redis::RedisError> {
    let client = Client::open(config.connection_info().clone())?;
    let timeout = Duration::from_secs(5);
    let mut connection = client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout),
        )
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection)
        .await?;
    let replication: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut connection)
        .await?;
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.trim().to_owned())
    };
    let version = field(&info, "redis_version").unwrap_or_default();
    let docs: redis::Value = redis::cmd("COMMAND")
        .arg("DOCS")
        .arg("XADD")
        .query_async(&mut connection)
        .await?;
    let has_idmp = format!("{docs:?}").to_ascii_lowercase().contains("idmp");
    Ok(ServerInfo {
        version,
        has_idmp,
        idempotency: Idempotency::LuaScript,
        replicas: field(&replication, "connected_slaves")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    })
}
