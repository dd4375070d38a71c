//! The replication connection: socket and TLS per `sslmode`, startup with
//! `replication=database` ([`crate::auth`]), simple queries (`IDENTIFY_SYSTEM`,
//! `SHOW`, `CREATE_REPLICATION_SLOT`, …), and `START_REPLICATION`, which
//! turns the connection into a [`CopyBoth`] stream.
//!
//! Built on `postgres-protocol`'s message writers and parser; see
//! [`crate::wire`] for framing and cancel safety.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use pgoutput::Lsn;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{Host, SslNegotiation};

pub use crate::copy_both::CopyBoth;

use crate::config::{no_tls_on_unix_sockets, ReplicationConfig, SslMode, Target};
use crate::error::Error;
use crate::wire::{self, Backend, Stream, Wire};
use crate::{auth, tls};

/// How long one connection attempt (TCP, TLS and authentication) may take
/// when the settings give no `connect_timeout` (libpq waits forever).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP keepalive idle time unless `keepalives_idle` asks for less.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// One row of a simple-query result, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleRow {
    columns: Arc<Vec<String>>,
    values: Vec<Option<String>>,
}

impl SimpleRow {
    /// The value of a column by name (`None` for NULL or no such column).
    pub fn get(&self, column: &str) -> Option<&str> {
        let at = self.columns.iter().position(|c| c == column)?;
        self.values.get(at)?.as_deref()
    }

    /// The column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// All values in column order.
    pub fn values(&self) -> &[Option<String>] {
        &self.values
    }
}

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (a 64-bit number, as text).
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// The connected database (`None` for a physical replication connection).
    pub dbname: Option<String>,
}

/// A connection in logical replication mode (`replication=database`),
/// authenticated and ready for replication commands.
pub struct ReplicationConnection {
    wire: Wire,
    parameters: HashMap<String, String>,
    backend_pid: Option<i32>,
    tls: bool,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("target", &self.wire.target())
            .field("tls", &self.tls)
            .field("backend_pid", &self.backend_pid)
            .finish()
    }
}

impl ReplicationConnection {
    /// Connects to the first server that answers (trying the next host only
    /// after a transient failure), negotiates TLS per `sslmode`,
    /// authenticates, and waits until the server is ready for commands.
    /// Each attempt is bounded by `connect_timeout` (default 30 s).
    pub async fn connect(config: &ReplicationConfig) -> Result<Self, Error> {
        let tls = tls::client_config(config)?;
        for_each_target(config, |target| Self::connect_to(config, target, tls.clone())).await
    }

    async fn connect_to(
        config: &ReplicationConfig,
        target: Target,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, Error> {
        let (stream, is_tls) = open_stream(config, &target, tls.as_ref()).await?;
        // A Unix socket never leaves the machine: no one can read a password on it.
        let cleartext_ok =
            is_tls || config.cleartext_password_allowed() || matches!(target.addr, Host::Unix(_));
        let mut wire = Wire::new(stream, target.to_string());
        let session = auth::startup(&mut wire, config, cleartext_ok).await?;
        Ok(ReplicationConnection {
            wire,
            parameters: session.parameters,
            backend_pid: session.backend_pid,
            tls: is_tls,
        })
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// A run-time parameter the server reported (`server_version`,
    /// `integer_datetimes`, `server_encoding`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The process id of the server process serving this connection (the
    /// walsender), as in `pg_stat_replication.pid`.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Ends the session politely (Terminate, then close; TLS close_notify
    /// included). Dropping the connection also ends it, with a bare EOF.
    pub async fn close(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.wire.write(&buf).await;
        self.wire.shutdown().await;
    }

    /// Runs one command with the simple query protocol and returns its rows
    /// as text. Replication connections accept replication commands
    /// (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, `READ_REPLICATION_SLOT`,
    /// …) and, with `replication=database`, plain SQL.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>, Error> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).map_err(|e| Error::Protocol(format!("cannot send query: {e}")))?;
        self.wire.write(&buf).await?;
        let malformed = |e: io::Error| Error::Protocol(format!("malformed query response: {e}"));
        let mut columns = Arc::new(Vec::new());
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let message = match self.wire.read().await? {
                Backend::Other(message) => message,
                Backend::CopyBoth => {
                    return Err(Error::Protocol(
                        "CopyBothResponse to a simple query: use start_replication for START_REPLICATION"
                            .into(),
                    ))
                }
            };
            match message {
                Message::RowDescription(body) => {
                    let names: Vec<String> = body
                        .fields()
                        .map(|f| Ok(f.name().to_owned()))
                        .collect()
                        .map_err(malformed)?;
                    columns = Arc::new(names);
                }
                Message::DataRow(body) => {
                    let buffer = body.buffer();
                    let values = body
                        .ranges()
                        .map(|range| Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
                        .collect()
                        .map_err(malformed)?;
                    rows.push(SimpleRow {
                        columns: Arc::clone(&columns),
                        values,
                    });
                }
                Message::ErrorResponse(body) => {
                    error = Some(Error::server(wire::server_error(body.fields())?))
                }
                Message::ReadyForQuery(_) => return error.map_or(Ok(rows), Err),
                Message::ParameterStatus(body) => {
                    if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                        self.parameters.insert(name.to_owned(), value.to_owned());
                    }
                }
                Message::NoticeResponse(body) => wire::log_notice(body.fields()),
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {}
                Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                    return Err(Error::Protocol("COPY is not supported on this connection".into()))
                }
                _ => {
                    return Err(Error::Protocol(
                        "unexpected message in a simple query response".into(),
                    ))
                }
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: the cluster's identity, timeline and current WAL position.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, Error> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let field = |name: &str| {
            row.get(name)
                .ok_or_else(|| Error::Protocol(format!("IDENTIFY_SYSTEM returned no {name}")))
        };
        let invalid =
            |name: &str, value: &str| Error::Protocol(format!("IDENTIFY_SYSTEM returned {name} {value:?}"));
        let timeline = field("timeline")?;
        let xlogpos = field("xlogpos")?;
        Ok(SystemIdentity {
            system_id: field("systemid")?.to_owned(),
            timeline: timeline.parse().map_err(|_| invalid("timeline", timeline))?,
            xlogpos: xlogpos.parse().map_err(|_| invalid("xlogpos", xlogpos))?,
            dbname: row.get("dbname").map(str::to_owned),
        })
    }

    /// The server's `wal_sender_timeout`; `None` when disabled (0).
    pub async fn wal_sender_timeout(&mut self) -> Result<Option<Duration>, Error> {
        let rows = self.simple_query("SHOW wal_sender_timeout").await?;
        let text = rows
            .first()
            .and_then(|r| r.values().first().cloned().flatten())
            .unwrap_or_default();
        let timeout = parse_duration_setting(&text)
            .ok_or_else(|| Error::Protocol(format!("unexpected wal_sender_timeout {text:?}")))?;
        Ok((!timeout.is_zero()).then_some(timeout))
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL start ("name" 'value', …)`: the
    /// connection becomes a [`CopyBoth`] stream.
    ///
    /// The slot name is quoted as an identifier, each option name as an
    /// identifier and each value as a string literal; a value that is itself
    /// a list of identifiers (pgoutput's `publication_names`) must be built
    /// with [`publication_names`]. pgoutput's options are, for example,
    /// `[("proto_version", "1"), ("publication_names", publication_names(&["outboxd"])),
    /// ("messages", "true")]`.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, String)],
    ) -> Result<CopyBoth, Error> {
        let sql = start_replication_command(slot, start, options);
        let mut buf = BytesMut::new();
        frontend::query(&sql, &mut buf).map_err(|e| Error::Protocol(format!("cannot send query: {e}")))?;
        self.wire.write(&buf).await?;
        loop {
            match self.wire.read().await? {
                Backend::CopyBoth => return Ok(CopyBoth::new(self.wire)),
                Backend::Other(Message::ErrorResponse(body)) => {
                    return Err(Error::server(wire::server_error(body.fields())?))
                }
                Backend::Other(Message::NoticeResponse(body)) => wire::log_notice(body.fields()),
                Backend::Other(_) => {
                    return Err(Error::Protocol("unexpected reply to START_REPLICATION".into()))
                }
            }
        }
    }
}

/// Tries `connect` on each server in turn, each attempt bounded by
/// `connect_timeout` (default 30 s); the next host is tried only after a
/// transient failure.
pub(crate) async fn for_each_target<T, F, Fut>(config: &ReplicationConfig, mut connect: F) -> Result<T, Error>
where
    F: FnMut(Target) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let timeout = config
        .postgres()
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let mut last = None;
    for target in config.targets() {
        let name = target.to_string();
        let err = match tokio::time::timeout(timeout, connect(target)).await {
            Ok(Ok(connected)) => return Ok(connected),
            Ok(Err(err)) => err,
            Err(_) => Error::Io {
                target: name.clone(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within connect_timeout ({} s)", timeout.as_secs()),
                ),
            },
        };
        if !err.is_transient() {
            return Err(err);
        }
        tracing::debug!(target = %name, error = %err, "cannot connect, trying the next host if any");
        last = Some(err);
    }
    Err(last.unwrap_or_else(|| Error::Config("no host to connect to".into())))
}

/// The socket to `target`, with TLS per `sslmode`; whether it is encrypted.
pub(crate) async fn open_stream(
    config: &ReplicationConfig,
    target: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Box<dyn Stream>, bool), Error> {
    let name = target.to_string();
    let io_error = |source| Error::Io {
        target: name.clone(),
        source,
    };
    match &target.addr {
        Host::Unix(dir) => {
            if config.ssl_mode().requires_tls() {
                return Err(no_tls_on_unix_sockets(config.ssl_mode(), &name));
            }
            let path = Target::socket_path(dir, target.port);
            Ok((
                Box::new(UnixStream::connect(&path).await.map_err(io_error)?),
                false,
            ))
        }
        Host::Tcp(host) => {
            let stream = TcpStream::connect((host.as_str(), target.port))
                .await
                .map_err(io_error)?;
            configure_tcp(&stream, config).map_err(io_error)?;
            match tls {
                Some(tls) => {
                    let server_name = target.tls_name.as_deref().unwrap_or(host);
                    negotiate_tls(stream, server_name, &name, tls, config).await
                }
                None => Ok((Box::new(stream), false)),
            }
        }
    }
}

fn configure_tcp(stream: &TcpStream, config: &ReplicationConfig) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let pg = config.postgres();
    let socket = socket2::SockRef::from(stream);
    if pg.get_keepalives() {
        let mut keepalive =
            socket2::TcpKeepalive::new().with_time(pg.get_keepalives_idle().min(KEEPALIVE_IDLE));
        if let Some(interval) = pg.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = pg.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    if let Some(timeout) = pg.get_tcp_user_timeout() {
        socket.set_tcp_user_timeout(Some(*timeout))?;
    }
    Ok(())
}

/// SSLRequest (or direct TLS), then the handshake; plaintext only when the
/// mode allows it and the server said 'N'.
async fn negotiate_tls(
    mut stream: TcpStream,
    server_name: &str,
    target: &str,
    tls: &Arc<rustls::ClientConfig>,
    config: &ReplicationConfig,
) -> Result<(Box<dyn Stream>, bool), Error> {
    let io_error = |source| Error::Io {
        target: target.to_owned(),
        source,
    };
    let mode = config.ssl_mode();
    if config.postgres().get_ssl_negotiation() == SslNegotiation::Postgres {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        stream.write_all(&buf).await.map_err(io_error)?;
        // Exactly one byte: anything the server sent after it must not be
        // taken as TLS-protected (CVE-2021-23222).
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await.map_err(io_error)?;
        match answer[0] {
            b'S' => {}
            b'N' if mode == SslMode::Prefer => {
                crate::plaintext::warn_fallback(target);
                return Ok((Box::new(stream), false));
            }
            b'N' => return Err(Error::TlsUnsupported(mode.as_str())),
            // Servers older than 7.0 answer with an ErrorResponse.
            b'E' => {
                return Err(Error::Protocol(
                    "the server answered SSLRequest with an error".into(),
                ))
            }
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected answer {other:#04x} to SSLRequest"
                )))
            }
        }
    }
    let name = tls::server_name(server_name)?;
    match tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, stream)
        .await
    {
        Ok(stream) => Ok((Box::new(stream), true)),
        Err(err) => match err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => Err(Error::Tls {
                host: server_name.to_owned(),
                reason: tls::explain(tls),
            }),
            // Reset or closed mid-handshake: the network, not the certificate.
            None => Err(io_error(err)),
        },
    }
}

/// The `START_REPLICATION` command text.
fn start_replication_command(slot: &str, start: Lsn, options: &[(&str, String)]) -> String {
    let mut sql = format!("START_REPLICATION SLOT {} LOGICAL {start}", quote_ident(slot));
    if !options.is_empty() {
        let options: Vec<String> = options
            .iter()
            .map(|(name, value)| format!("{} {}", quote_ident(name), quote_literal(value)))
            .collect();
        sql.push_str(&format!(" ({})", options.join(", ")));
    }
    sql
}

/// The value of pgoutput's `publication_names` option: the server splits it
/// at commas into identifiers (`SplitIdentifierString`), folding unquoted
/// ones to lower case, so each name is double-quoted to be taken as written.
pub fn publication_names<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|name| quote_ident(name.as_ref()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a duration as `SHOW` prints it: `60s`, `1min`, `500ms`, `0`.
fn parse_duration_setting(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit {
        "" | "ms" => n,
        "s" => n * 1_000,
        "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// A double-quoted identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted literal (the replication grammar has no backslash escapes).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_show_prints_them() {
        assert_eq!(parse_duration_setting("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration_setting("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration_setting("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration_setting("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration_setting("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration_setting("soon"), None);
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident(r#"my "slot""#), r#""my ""slot""""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            publication_names(&["outboxd", "Odd,\"Name\""]),
            r#""outboxd","Odd,""Name""""#
        );
    }

    #[test]
    fn start_replication_command_quotes_everything() {
        let options = [
            ("proto_version", "1".to_owned()),
            ("publication_names", publication_names(&["outboxd"])),
            ("messages", "true".to_owned()),
        ];
        assert_eq!(
            start_replication_command("outboxd", Lsn::new(0x1_0000_00A0), &options),
            r#"START_REPLICATION SLOT "outboxd" LOGICAL 1/A0 ("proto_version" '1', "publication_names" '"outboxd"', "messages" 'true')"#
        );
        assert_eq!(
            start_replication_command("s", Lsn::ZERO, &[]),
            r#"START_REPLICATION SLOT "s" LOGICAL 0/0"#
        );
    }
}
