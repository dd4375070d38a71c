//! Errors of the replication connection, classified by what to do about them:
//! [`Error::is_transient`] says whether reconnecting later (and resuming from
//! the slot) may succeed, or whether a human has to change something first.

use std::fmt;

/// The fields of a server `ErrorResponse` a caller may act on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    /// `ERROR`, `FATAL` or `PANIC` (the untranslated `V` field when the server sends it).
    pub severity: String,
    /// SQLSTATE, e.g. `57P01`.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint.
    pub hint: Option<String>,
}

impl ServerError {
    /// Whether the SQLSTATE says "try again later": the server is shutting
    /// down or starting (class 57P), a connection exception (class 08), an
    /// object in use (55006: "replication slot ... is active for PID ...",
    /// typically while our previous walsender is still exiting), or too many
    /// connections (53300).
    pub fn is_transient(&self) -> bool {
        let code = self.code.as_str();
        code.starts_with("57P") || code.starts_with("08") || code == "55006" || code == "53300"
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// What went wrong with the replication connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection settings are invalid or cannot be honoured.
    #[error("invalid connection settings: {0}")]
    Config(String),
    /// Socket I/O failed (refused, reset, timed out).
    #[error("connection to {target} failed: {source}")]
    Io {
        /// Host and port, or socket path.
        target: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection.
    #[error("the server closed the connection{0}")]
    Closed(String),
    /// TLS was required but the server does not offer it. Never answered by
    /// falling back to plaintext.
    #[error(
        "the server does not support TLS but sslmode={0} requires it: enable ssl on the server \
         (ssl = on, ssl_cert_file, ssl_key_file) or, on a trusted network only, use sslmode=prefer or disable"
    )]
    TlsUnsupported(&'static str),
    /// The TLS handshake or certificate verification failed.
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls {
        /// The host name verified against.
        host: String,
        /// Why, and what to check.
        reason: String,
    },
    /// The server asked for a password and none was given.
    #[error(
        "the server requires a password for user {0:?} and none was given: put it in the connection \
         string (password=... or postgresql://user:password@host/db) or the configuration"
    )]
    PasswordRequired(String),
    /// The server asked for the password in clear text over a TCP
    /// connection without TLS, and that is not allowed.
    #[error(
        "{target} asks for user {user:?}'s password in clear text over a connection without TLS, where \
         anyone on the network path (or a server posing as this one) can read it: refused. Enable TLS on the \
         server and use sslmode=verify-full, or use scram-sha-256 for this role in pg_hba.conf; to send it \
         anyway, set postgres.allow_cleartext_password = true"
    )]
    CleartextPasswordRefused {
        /// The role.
        user: String,
        /// The server.
        target: String,
    },
    /// The server asked for an authentication method this client does not speak.
    #[error(
        "the server asks for {method} authentication for user {user:?}, which outboxd does not support: \
         use scram-sha-256, md5, password or trust for this role in pg_hba.conf"
    )]
    AuthMethodUnsupported {
        /// The role.
        user: String,
        /// The method the server asked for.
        method: String,
    },
    /// Authentication failed (wrong password, no pg_hba.conf entry, unknown role, …).
    #[error("authentication failed for user {user:?}: {server}: {}", auth_fix(server))]
    Auth {
        /// The role.
        user: String,
        /// The server's error.
        server: Box<ServerError>,
    },
    /// The role may not open a replication connection.
    #[error(
        "role {user:?} may not start replication: {server}: grant it with ALTER ROLE \"{user}\" REPLICATION, \
         or connect as a role that has it"
    )]
    NotReplicationRole {
        /// The role.
        user: String,
        /// The server's error.
        server: Box<ServerError>,
    },
    /// Any other error the server reported.
    #[error("server error: {0}")]
    Server(Box<ServerError>),
    /// The server sent something this client does not understand.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What to change after an authentication failure, by what the server said.
fn auth_fix(server: &ServerError) -> &'static str {
    if server.code == "28P01" {
        "check the password in the connection string (password=... or postgresql://user:password@...) \
         against the role's password on the server"
    } else if server.message.contains("pg_hba.conf") {
        "add a pg_hba.conf line for this client and reload the server; a logical replication \
         connection matches lines for its database (not the `replication` keyword, which is for \
         physical replication), e.g. `host <database> <user> <address>/32 scram-sha-256`"
    } else if server.message.contains("does not exist") {
        "create the role (or fix user=) and make sure it has LOGIN and REPLICATION"
    } else {
        "check the role, its password and pg_hba.conf"
    }
}

impl Error {
    /// Whether retrying later (reconnecting, resuming from the slot) may succeed.
    ///
    /// Transient: I/O, a closed connection, and server errors whose SQLSTATE
    /// says so ([`ServerError::is_transient`]). Definite, needing a human:
    /// invalid settings, TLS verification or TLS not offered when required,
    /// authentication and privilege failures, protocol violations, and every
    /// other server error (a missing slot, a bad publication name, …).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Closed(_) => true,
            Error::Server(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The server's SQLSTATE, if the server reported this error.
    pub fn code(&self) -> Option<&str> {
        self.server_error().map(|e| e.code.as_str())
    }

    /// The server's error, if the server reported this error.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Error::Auth { server, .. } | Error::Server(server) | Error::NotReplicationRole { server, .. } => {
                Some(&**server)
            }
            _ => None,
        }
    }

    pub(crate) fn stream_ended() -> Self {
        Error::Closed(" (replication stream ended)".into())
    }

    pub(crate) fn server_waiting_for_us() -> Self {
        Error::Closed(
            " (by us: the server is shutting down and waits for a flush position we cannot confirm \
             while transactions are undelivered; resuming from the acknowledged position)"
                .into(),
        )
    }

    /// Classifies an error of the server during startup, when `user` is logging in.
    pub(crate) fn from_startup(user: &str, server: ServerError) -> Self {
        let server = Box::new(server);
        match server.code.as_str() {
            "28P01" | "28000" => Error::Auth {
                user: user.to_owned(),
                server,
            },
            // "must be superuser or replication role to start walsender" (PG 15),
            // "permission denied to start WAL sender" (PG 16+).
            "42501" => Error::NotReplicationRole {
                user: user.to_owned(),
                server,
            },
            _ => Error::Server(server),
        }
    }

    /// An error the server reported outside startup.
    pub(crate) fn server(server: ServerError) -> Self {
        Error::Server(Box::new(server))
    }

    /// Classifies an error of a normal `tokio-postgres` connection (the
    /// catalog connection) the same way as the replication connection's.
    pub(crate) fn from_tokio_postgres(
        err: &tokio_postgres::Error,
        user: &str,
        target: &str,
        ssl_mode: crate::SslMode,
    ) -> Self {
        if let Some(db) = err.as_db_error() {
            let server = ServerError {
                severity: db.severity().to_owned(),
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
                hint: db.hint().map(str::to_owned),
            };
            return Error::from_startup(user, server);
        }
        // tokio-postgres keeps its error kinds private and leaves the cause
        // out of its message: classify by the cause and the kind's wording.
        let mut text = err.to_string();
        let mut cause = std::error::Error::source(err);
        let io = cause.and_then(|c| c.downcast_ref::<std::io::Error>());
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        if err.is_closed() {
            return Error::Closed(format!(" ({text})"));
        }
        if let Some(tls) = io
            .and_then(|io| io.get_ref())
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return Error::Tls {
                host: target.to_owned(),
                reason: crate::tls::explain(tls),
            };
        }
        if text.starts_with("error performing TLS handshake") {
            if text.contains("server does not support TLS") {
                return Error::TlsUnsupported(ssl_mode.as_str());
            }
            if let Some(io) = io {
                return Error::Io {
                    target: target.to_owned(),
                    source: std::io::Error::new(io.kind(), text),
                };
            }
            return Error::Tls {
                host: target.to_owned(),
                reason: text,
            };
        }
        if text.contains("password missing") {
            return Error::PasswordRequired(user.to_owned());
        }
        if text.starts_with("invalid configuration") || text.starts_with("invalid connection string") {
            return Error::Config(text);
        }
        if let Some(io) = io {
            return Error::Io {
                target: target.to_owned(),
                source: std::io::Error::new(io.kind(), text),
            };
        }
        if text.starts_with("error connecting") || text.starts_with("timeout") {
            return Error::Io {
                target: target.to_owned(),
                source: std::io::Error::other(text),
            };
        }
        Error::Protocol(text)
    }
}

/// A `bytea` column's text form that is not valid hex or escape format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidBytea {
    /// `\x` followed by an odd number of digits.
    #[error("bytea hex text has an odd number of digits ({0})")]
    OddHexLength(usize),
    /// A character that is not a hex digit.
    #[error("bytea hex text has {byte:#04x} at offset {at}, not a hex digit")]
    NotHex {
        /// Offset in the text.
        at: usize,
        /// The byte found.
        byte: u8,
    },
    /// A backslash not followed by a backslash or three octal digits.
    #[error("bytea escape text has an invalid escape at offset {at}")]
    BadEscape {
        /// Offset of the backslash.
        at: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> ServerError {
        ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sqlstates_that_pass_are_transient() {
        for code in ["57P01", "57P02", "57P03", "08006", "08P01", "55006", "53300"] {
            assert!(Error::server(server(code, "x")).is_transient(), "{code}");
        }
        for code in ["42704", "42501", "55000", "XX000", "58P01"] {
            assert!(!Error::server(server(code, "x")).is_transient(), "{code}");
        }
        let io = Error::Io {
            target: "h:1".into(),
            source: std::io::ErrorKind::ConnectionReset.into(),
        };
        assert!(io.is_transient());
        assert!(Error::Closed(String::new()).is_transient());
    }

    #[test]
    fn authentication_and_privileges_are_definite_and_name_the_fix() {
        let err = Error::from_startup(
            "app",
            server("28P01", "password authentication failed for user \"app\""),
        );
        assert!(!err.is_transient());
        assert_eq!(err.code(), Some("28P01"));
        let text = err.to_string();
        assert!(
            text.contains("password authentication failed") && text.contains("check the password"),
            "{text}"
        );

        let hba = "no pg_hba.conf entry for replication connection from host \"10.0.0.1\", user \"app\", \
                   database \"app\", no encryption";
        let text = Error::from_startup("app", server("28000", hba)).to_string();
        assert!(text.contains("host <database> <user>"), "{text}");

        let err = Error::from_startup(
            "app",
            server(
                "42501",
                "must be superuser or replication role to start walsender",
            ),
        );
        assert!(matches!(err, Error::NotReplicationRole { .. }) && !err.is_transient());
        assert!(
            err.to_string().contains("ALTER ROLE \"app\" REPLICATION"),
            "{err}"
        );
    }

    #[test]
    fn tls_and_protocol_failures_are_definite() {
        assert!(!Error::TlsUnsupported("require").is_transient());
        assert!(!Error::Tls {
            host: "h".into(),
            reason: "r".into()
        }
        .is_transient());
        assert!(!Error::Protocol("p".into()).is_transient());
        assert!(!Error::Config("c".into()).is_transient());
        assert!(!Error::PasswordRequired("u".into()).is_transient());
    }
}
