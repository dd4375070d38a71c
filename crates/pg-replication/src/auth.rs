//! Startup and authentication: the StartupMessage asking for a logical
//! replication session (`replication=database`), then whatever the server's
//! `pg_hba.conf` asks for — trust, cleartext password, md5, or
//! SCRAM-SHA-256 — and the ParameterStatus and BackendKeyData messages up to
//! the first ReadyForQuery.
//!
//! SCRAM runs without channel binding (we answer `n`, not `SCRAM-SHA-256-PLUS`
//! and not `y`: the server offers `-PLUS` over TLS and would rightly take `y`
//! for a downgrade). Server authentication is what `sslmode=verify-full` is for.

use std::collections::HashMap;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::config::{ReplicationConfig, DEFAULT_APPLICATION_NAME};
use crate::error::Error;
use crate::wire::{self, Backend, Wire};

/// What the server told us during startup.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// ParameterStatus values (`server_version`, `integer_datetimes`, …).
    pub(crate) parameters: HashMap<String, String>,
    /// The backend's process id (the walsender's, for a replication connection).
    pub(crate) backend_pid: Option<i32>,
}

/// Where a SCRAM exchange stands; the server must prove it knows the
/// password (SASLFinal) before we accept AuthenticationOk.
enum Scram {
    NotStarted,
    InProgress(ScramSha256),
    Verified,
}

fn encode_error(e: std::io::Error) -> Error {
    Error::Protocol(format!("cannot encode a startup message: {e}"))
}

/// Sends the StartupMessage and authenticates; returns at ReadyForQuery.
/// `cleartext_ok`: the `password` method may be answered (TLS, a Unix socket,
/// or the operator allowed it; see [`crate::plaintext`]).
pub(crate) async fn startup(
    wire: &mut Wire,
    config: &ReplicationConfig,
    cleartext_ok: bool,
) -> Result<Session, Error> {
    let user = config.user()?.to_owned();
    let dbname = config.dbname()?.to_owned();
    let application = config
        .postgres()
        .get_application_name()
        .unwrap_or(DEFAULT_APPLICATION_NAME)
        .to_owned();
    let mut params = vec![
        ("user", user.as_str()),
        ("database", dbname.as_str()),
        ("replication", "database"),
        ("application_name", application.as_str()),
        ("client_encoding", "UTF8"),
    ];
    if let Some(options) = config.postgres().get_options() {
        params.push(("options", options));
    }
    let mut buf = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut buf).map_err(encode_error)?;
    wire.write(&buf).await?;

    let password = || {
        config
            .postgres()
            .get_password()
            .ok_or_else(|| Error::PasswordRequired(user.clone()))
    };
    let unsupported = |method: &str| Error::AuthMethodUnsupported {
        user: user.clone(),
        method: method.into(),
    };
    let mut scram = Scram::NotStarted;
    let mut session = Session::default();
    loop {
        let message = match wire.read().await {
            Ok(Backend::Other(message)) => message,
            Ok(Backend::CopyBoth) => return Err(Error::Protocol("CopyBothResponse during startup".into())),
            Err(Error::Closed(context)) => {
                return Err(Error::Closed(format!(
                    "{context} during startup and authentication"
                )))
            }
            Err(err) => return Err(err),
        };
        let mut buf = BytesMut::new();
        match message {
            Message::AuthenticationOk => {
                if matches!(scram, Scram::InProgress(_)) {
                    return Err(Error::Protocol(
                        "the server accepted SCRAM authentication without proving it knows the password"
                            .into(),
                    ));
                }
            }
            Message::AuthenticationCleartextPassword => {
                if !cleartext_ok {
                    return Err(Error::CleartextPasswordRefused {
                        user: user.clone(),
                        target: wire.target().to_owned(),
                    });
                }
                frontend::password_message(password()?, &mut buf).map_err(encode_error)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(user.as_bytes(), password()?, body.salt());
                frontend::password_message(hash.as_bytes(), &mut buf).map_err(encode_error)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut offered = Vec::new();
                while let Some(mechanism) = mechanisms
                    .next()
                    .map_err(|e| Error::Protocol(format!("malformed SASL offer: {e}")))?
                {
                    offered.push(mechanism.to_owned());
                }
                if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(unsupported(&format!("SASL ({})", offered.join(", "))));
                }
                let exchange = ScramSha256::new(password()?, ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, exchange.message(), &mut buf)
                    .map_err(encode_error)?;
                scram = Scram::InProgress(exchange);
            }
            Message::AuthenticationSaslContinue(body) => {
                let Scram::InProgress(exchange) = &mut scram else {
                    return Err(Error::Protocol("SASL continue without a SASL exchange".into()));
                };
                exchange
                    .update(body.data())
                    .map_err(|e| Error::Protocol(format!("SCRAM: {e}")))?;
                frontend::sasl_response(exchange.message(), &mut buf).map_err(encode_error)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let Scram::InProgress(exchange) = &mut scram else {
                    return Err(Error::Protocol("SASL final without a SASL exchange".into()));
                };
                exchange.finish(body.data()).map_err(|e| {
                    Error::Protocol(format!("SCRAM: the server's signature does not verify ({e})"))
                })?;
                scram = Scram::Verified;
            }
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return Err(unsupported("GSSAPI"))
            }
            Message::AuthenticationSspi => return Err(unsupported("SSPI")),
            Message::AuthenticationKerberosV5 => return Err(unsupported("Kerberos V5")),
            Message::AuthenticationScmCredential => return Err(unsupported("SCM credential")),
            Message::ParameterStatus(body) => {
                let name = body
                    .name()
                    .map_err(|e| Error::Protocol(format!("malformed ParameterStatus: {e}")))?;
                let value = body
                    .value()
                    .map_err(|e| Error::Protocol(format!("malformed ParameterStatus: {e}")))?;
                session.parameters.insert(name.to_owned(), value.to_owned());
            }
            Message::BackendKeyData(body) => session.backend_pid = Some(body.process_id()),
            Message::NoticeResponse(body) => wire::log_notice(body.fields()),
            Message::ReadyForQuery(_) => {
                if session
                    .parameters
                    .get("integer_datetimes")
                    .is_some_and(|v| v == "off")
                {
                    return Err(Error::Protocol(
                        "the server stores timestamps as floating point (integer_datetimes=off); \
                         replication timestamps are read as integers (PostgreSQL 10 and later)"
                            .into(),
                    ));
                }
                return Ok(session);
            }
            Message::ErrorResponse(body) => {
                return Err(Error::from_startup(&user, wire::server_error(body.fields())?))
            }
            _ => return Err(Error::Protocol("unexpected message during startup".into())),
        }
        if !buf.is_empty() {
            wire.write(&buf).await?;
        }
    }
}
