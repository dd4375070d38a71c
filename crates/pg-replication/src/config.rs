//! Connection settings, written the way libpq users write them: a URL
//! (`postgresql://user:pw@host:5432/db?sslmode=verify-full&sslrootcert=/ca.pem`)
//! or key=value pairs (`host=db port=5432 user=outboxd sslmode=require`).
//!
//! `tokio_postgres::Config` parses everything except the TLS settings it does
//! not know (`verify-ca`, `verify-full`, `sslrootcert`): those two keys are
//! taken out first and handled here; the rest is handed to it unchanged, so
//! unknown keys are refused by it.
//!
//! Defaults and departures from libpq:
//! - `sslmode` defaults to `prefer`, as in libpq; `allow` is refused (see [`SslMode`]);
//! - a host starting with `/` is a Unix socket directory (`<dir>/.s.PGSQL.<port>`);
//!   without any host we connect to `localhost` over TCP (libpq would try its
//!   compiled-in socket directory, which differs between distributions);
//! - PostgreSQL has no TLS on Unix sockets, so a mode that requires TLS is
//!   refused for a socket host rather than silently ignored as libpq does;
//! - `sslrootcert=system` (libpq 16) and `channel_binding=require` are refused:
//!   give the CA file; SCRAM runs without channel binding.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::Host;

use crate::error::Error;

/// libpq's `sslmode`, minus `allow` (plaintext first, TLS only if the server
/// insists), which is refused at parse time: it gives no protection and only
/// obscures what is used. See the `tls` module for what each mode verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, without verifying the certificate (libpq's default).
    Prefer,
    /// TLS or fail; the certificate is verified against `sslrootcert` only if one is given (as libpq does).
    Require,
    /// TLS or fail, certificate chain verified, host name not checked.
    VerifyCa,
    /// TLS or fail, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    /// The mode as written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// TLS is mandatory.
    pub fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl FromStr for SslMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(Error::Config(
                    "sslmode=allow is not supported: use prefer (TLS when offered) or require/verify-full"
                        .into(),
                ))
            }
            other => {
                return Err(Error::Config(format!(
                    "invalid sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }
}

/// Where and how to connect, for both the replication connection and the
/// normal connection used for catalog checks.
#[derive(Clone)]
pub struct ReplicationConfig {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) ssl_mode: SslMode,
    pub(crate) ssl_root_cert: Option<PathBuf>,
    pub(crate) allow_cleartext_password: bool,
}

impl ReplicationConfig {
    /// The parsed libpq settings (host, port, user, password, dbname, …).
    /// Its own `ssl_mode` is not the one in force (it cannot express
    /// verify-ca or verify-full): connect with [`ReplicationConfig::connect_catalog`],
    /// which applies [`ReplicationConfig::ssl_mode`].
    pub fn postgres(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// The TLS mode.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The CA certificate file, if given.
    pub fn ssl_root_cert(&self) -> Option<&std::path::Path> {
        self.ssl_root_cert.as_deref()
    }

    /// The user name; libpq defaults it to the OS user, we require it.
    pub fn user(&self) -> Result<&str, Error> {
        self.pg
            .get_user()
            .ok_or_else(|| Error::Config("no user given (user=... or postgresql://user@host/db)".into()))
    }

    /// The database; defaults to the user name, as in libpq.
    pub fn dbname(&self) -> Result<&str, Error> {
        match self.pg.get_dbname() {
            Some(db) => Ok(db),
            None => self.user(),
        }
    }

    /// The servers to try, in order.
    pub(crate) fn targets(&self) -> Vec<Target> {
        let hosts = self.pg.get_hosts();
        let addrs = self.pg.get_hostaddrs();
        let ports = self.pg.get_ports();
        (0..hosts.len().max(addrs.len()))
            .map(|i| {
                let host = hosts.get(i);
                let addr = addrs.get(i).map(|ip| Host::Tcp(ip.to_string()));
                // `hostaddr` says where to connect, `host` which name to verify.
                let tls_name = match (host, &addr) {
                    (Some(Host::Tcp(name)), _) | (_, Some(Host::Tcp(name))) => Some(name.clone()),
                    _ => None,
                };
                let port = match ports {
                    [] => DEFAULT_PORT,
                    [port] => *port,
                    _ => ports.get(i).copied().unwrap_or(DEFAULT_PORT),
                };
                let addr = addr
                    .or_else(|| host.cloned())
                    .unwrap_or_else(|| Host::Tcp("localhost".into()));
                Target { addr, port, tls_name }
            })
            .collect()
    }

    /// A normal (non-replication) connection with the same settings and TLS
    /// rules, for catalog queries; its connection task is spawned on the
    /// current runtime. The socket and TLS are set up as for the replication
    /// connection (same hosts, timeouts, warnings and cleartext-password
    /// rule); `tokio-postgres` then authenticates over it. Errors are
    /// classified like the replication connection's.
    pub async fn connect_catalog(&self) -> Result<tokio_postgres::Client, Error> {
        let tls = crate::tls::client_config(self)?;
        crate::connection::for_each_target(self, |target| self.connect_catalog_to(target, tls.clone())).await
    }

    async fn connect_catalog_to(
        &self,
        target: Target,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<tokio_postgres::Client, Error> {
        let user = self.user()?.to_owned();
        let name = target.to_string();
        let (stream, is_tls) = crate::connection::open_stream(self, &target, tls.as_ref()).await?;
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guard_cleartext =
            !is_tls && !self.allow_cleartext_password && matches!(target.addr, Host::Tcp(_));
        let stream: Box<dyn crate::wire::Stream> = if guard_cleartext {
            Box::new(crate::plaintext::CleartextGuard::new(
                stream,
                std::sync::Arc::clone(&refused),
            ))
        } else {
            stream
        };
        let mut pg = self.pg.clone();
        pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
        match pg.connect_raw(stream, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                self.check_session_attrs(&client, &user, &name).await?;
                Ok(client)
            }
            Err(_) if refused.load(std::sync::atomic::Ordering::SeqCst) => {
                Err(Error::CleartextPasswordRefused { user, target: name })
            }
            Err(e) => Err(Error::from_tokio_postgres(&e, &user, &name, self.ssl_mode)),
        }
    }

    /// `target_session_attrs` as `tokio-postgres` applies it (its own
    /// connect does this; `connect_raw` does not): a server of the wrong
    /// kind is a transient failure, so the next host is tried.
    async fn check_session_attrs(
        &self,
        client: &tokio_postgres::Client,
        user: &str,
        target: &str,
    ) -> Result<(), Error> {
        use tokio_postgres::config::TargetSessionAttrs;
        let want_read_only = match self.pg.get_target_session_attrs() {
            TargetSessionAttrs::ReadWrite => false,
            TargetSessionAttrs::ReadOnly => true,
            _ => return Ok(()),
        };
        let read_only = client
            .query_one("show transaction_read_only", &[])
            .await
            .map_err(|e| Error::from_tokio_postgres(&e, user, target, self.ssl_mode))?
            .get::<_, String>(0)
            == "on";
        if read_only == want_read_only {
            return Ok(());
        }
        Err(Error::Io {
            target: target.to_owned(),
            source: std::io::Error::other(format!(
                "the server is {} (target_session_attrs asks for {})",
                if read_only { "read-only" } else { "read-write" },
                if want_read_only { "read-only" } else { "read-write" }
            )),
        })
    }

    /// Allows sending the password in clear text over a TCP connection
    /// without TLS when the server asks for the `password` method (refused
    /// by default; see the `plaintext` module).
    pub fn allow_cleartext_password(&mut self, allow: bool) {
        self.allow_cleartext_password = allow;
    }

    /// Whether a cleartext password may go over a TCP connection without TLS.
    pub fn cleartext_password_allowed(&self) -> bool {
        self.allow_cleartext_password
    }

    /// Sets the password (e.g. read from a secret file).
    pub fn set_password(&mut self, password: impl AsRef<[u8]>) {
        self.pg.password(password);
    }
}

/// The port used when none is given.
pub(crate) const DEFAULT_PORT: u16 = 5432;
/// The `application_name` used when none is given.
pub(crate) const DEFAULT_APPLICATION_NAME: &str = "outboxd";

/// One server to try: where to connect, and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// A TCP host name or address, or a Unix socket directory.
    pub(crate) addr: Host,
    pub(crate) port: u16,
    /// The name to verify the certificate against (`host`, or `hostaddr` alone); none for sockets.
    pub(crate) tls_name: Option<String>,
}

impl Target {
    /// The socket file of a Unix socket directory.
    pub(crate) fn socket_path(dir: &std::path::Path, port: u16) -> PathBuf {
        dir.join(format!(".s.PGSQL.{port}"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            Host::Tcp(name) if name.contains(':') => write!(f, "[{name}]:{}", self.port),
            Host::Tcp(name) => write!(f, "{name}:{}", self.port),
            Host::Unix(dir) => write!(f, "{}", Target::socket_path(dir, self.port).display()),
        }
    }
}

/// PostgreSQL never offers TLS on a Unix socket: say so instead of failing the handshake.
pub(crate) fn no_tls_on_unix_sockets(mode: SslMode, target: &str) -> Error {
    Error::Config(format!(
        "sslmode={} cannot be honoured over the Unix socket {target}: PostgreSQL has no TLS on Unix \
         sockets; connect over TCP, or use sslmode=disable or prefer for a local socket",
        mode.as_str()
    ))
}

impl fmt::Debug for ReplicationConfig {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConfig")
            .field("hosts", &self.pg.get_hosts())
            .field("hostaddrs", &self.pg.get_hostaddrs())
            .field("ports", &self.pg.get_ports())
            .field("user", &self.pg.get_user())
            .field("dbname", &self.pg.get_dbname())
            .field("password", &self.pg.get_password().map(|_| "<redacted>"))
            .field("application_name", &self.pg.get_application_name())
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("allow_cleartext_password", &self.allow_cleartext_password)
            .finish()
    }
}

impl FromStr for ReplicationConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (rest, tls) = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            split_url(s)?
        } else {
            split_key_values(s)?
        };
        let mut ssl_mode = SslMode::Prefer;
        let mut ssl_root_cert = None;
        for (key, value) in tls {
            match key.as_str() {
                "sslmode" => ssl_mode = value.parse()?,
                _ => ssl_root_cert = Some(PathBuf::from(value)),
            }
        }
        if ssl_root_cert.as_deref() == Some(std::path::Path::new("system")) {
            return Err(Error::Config(
                "sslrootcert=system (the operating system's trust store) is not supported: give the path \
                 of the CA certificate file"
                    .into(),
            ));
        }
        let mut pg: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| Error::Config(format!("{e} (in {:?})", outbox_core::redact::redact(s))))?;
        if pg.get_application_name().is_none() {
            pg.application_name(DEFAULT_APPLICATION_NAME);
        }
        if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
            pg.host("localhost");
        }
        let (hosts, addrs, ports) = (
            pg.get_hosts().len(),
            pg.get_hostaddrs().len(),
            pg.get_ports().len(),
        );
        if hosts > 0 && addrs > 0 && hosts != addrs {
            return Err(Error::Config(format!(
                "{hosts} hosts but {addrs} hostaddrs: give one hostaddr per host"
            )));
        }
        if ports > 1 && ports != hosts.max(addrs) {
            return Err(Error::Config(format!(
                "{ports} ports for {} hosts: give one port, or one per host",
                hosts.max(addrs)
            )));
        }
        if pg.get_channel_binding() == tokio_postgres::config::ChannelBinding::Require {
            return Err(Error::Config(
                "channel_binding=require is not supported (SCRAM runs without channel binding): \
                 use sslmode=verify-full to authenticate the server instead"
                    .into(),
            ));
        }
        if pg.get_ssl_negotiation() == tokio_postgres::config::SslNegotiation::Direct
            && !ssl_mode.requires_tls()
        {
            return Err(Error::Config(format!(
                "sslnegotiation=direct needs sslmode=require, verify-ca or verify-full, not {}",
                ssl_mode.as_str()
            )));
        }
        Ok(ReplicationConfig {
            pg,
            ssl_mode,
            ssl_root_cert,
            allow_cleartext_password: false,
        })
    }
}

const TLS_KEYS: [&str; 2] = ["sslmode", "sslrootcert"];

/// Takes the TLS keys out of a URL's query string.
fn split_url(s: &str) -> Result<(String, Vec<(String, String)>), Error> {
    let Some((base, query)) = s.split_once('?') else {
        return Ok((s.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if TLS_KEYS.contains(&key) {
            tls.push((key.to_owned(), percent_decode(value)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

fn percent_decode(s: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            let byte = hex.ok_or_else(|| Error::Config(format!("invalid percent-encoding in {s:?}")))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Config(format!("{s:?} is not UTF-8 once decoded")))
}

/// Takes the TLS keys out of a key=value string, keeping the other pairs'
/// text exactly as written (quotes and escapes included).
fn split_key_values(s: &str) -> Result<(String, Vec<(String, String)>), Error> {
    let mut kept = String::new();
    let mut tls = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() || bytes[i] != b'=' {
            return Err(Error::Config(format!(
                "expected `=` after {key:?} in the connection string"
            )));
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(Error::Config(format!("unterminated quoted value for {key:?}"))),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1]);
                        i += 2;
                    }
                    Some(&b) => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
        }
        if TLS_KEYS.contains(&key) {
            let value = String::from_utf8(value).map_err(|_| Error::Config(format!("{key} is not UTF-8")))?;
            tls.push((key.to_owned(), value));
        } else {
            kept.push_str(&s[start..i]);
            kept.push(' ');
        }
    }
    Ok((kept.trim_end().to_owned(), tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ReplicationConfig {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn tcp(name: &str, port: u16) -> Target {
        Target {
            addr: Host::Tcp(name.into()),
            port,
            tls_name: Some(name.into()),
        }
    }

    #[test]
    fn url_with_tls_settings() {
        let c = parse(
            "postgresql://outboxd:s3cret@db.internal:6432/app?sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        );
        assert_eq!(c.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(c.ssl_root_cert(), Some(std::path::Path::new("/etc/ca.pem")));
        assert_eq!(c.targets(), vec![tcp("db.internal", 6432)]);
        assert_eq!(c.user().unwrap(), "outboxd");
        assert_eq!(c.dbname().unwrap(), "app");
        assert_eq!(c.postgres().get_password(), Some(&b"s3cret"[..]));
        assert_eq!(
            c.postgres().get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        assert_eq!(c.postgres().get_application_name(), Some("outboxd"));
    }

    #[test]
    fn key_value_with_quotes_and_tls_settings() {
        let c = parse(
            r"host=/var/run/postgresql port=5433 user=outboxd password='it\'s a secret' sslmode=disable dbname=app",
        );
        assert_eq!(c.postgres().get_password(), Some(&b"it's a secret"[..]));
        assert_eq!(c.ssl_mode(), SslMode::Disable);
        let socket = Target {
            addr: Host::Unix("/var/run/postgresql".into()),
            port: 5433,
            tls_name: None,
        };
        assert_eq!(c.targets(), vec![socket.clone()]);
        assert_eq!(socket.to_string(), "/var/run/postgresql/.s.PGSQL.5433");
        assert_eq!(c.dbname().unwrap(), "app");
        let c = parse("host=h user=u sslrootcert='/path with space/ca.pem' sslmode=verify-ca");
        assert_eq!(c.ssl_mode(), SslMode::VerifyCa);
        assert_eq!(
            c.ssl_root_cert(),
            Some(std::path::Path::new("/path with space/ca.pem"))
        );
        assert_eq!(c.postgres().get_hosts(), [Host::Tcp("h".into())]);
    }

    #[test]
    fn unix_socket_hosts_in_urls() {
        let c = parse("postgresql://outboxd@%2Ftmp%2Fpg:5434/app");
        assert_eq!(
            c.targets(),
            vec![Target {
                addr: Host::Unix("/tmp/pg".into()),
                port: 5434,
                tls_name: None
            }]
        );
        let c = parse("postgresql:///app?host=/run/postgresql&user=outboxd");
        assert_eq!(
            c.targets(),
            vec![Target {
                addr: Host::Unix("/run/postgresql".into()),
                port: 5432,
                tls_name: None
            }]
        );
        assert_eq!(c.dbname().unwrap(), "app");
    }

    #[test]
    fn every_sslmode_is_parsed_in_both_forms() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(parse(&format!("user=u sslmode={text}")).ssl_mode(), mode);
            assert_eq!(
                parse(&format!("postgres://u@h/d?sslmode={text}")).ssl_mode(),
                mode
            );
            assert_eq!(mode.as_str(), text);
        }
    }

    #[test]
    fn defaults_are_libpqs() {
        let c = parse("user=outboxd");
        assert_eq!(c.ssl_mode(), SslMode::Prefer);
        assert_eq!(c.targets(), vec![tcp("localhost", 5432)]);
        assert_eq!(c.dbname().unwrap(), "outboxd");
        assert_eq!(c.postgres().get_application_name(), Some("outboxd"));
        let c = parse("user=outboxd application_name=billing-relay");
        assert_eq!(c.postgres().get_application_name(), Some("billing-relay"));
    }

    #[test]
    fn several_hosts_and_hostaddrs() {
        let c = parse("host=a,b port=1,2 user=u");
        assert_eq!(c.targets(), vec![tcp("a", 1), tcp("b", 2)]);
        let c = parse("host=db.internal hostaddr=10.0.0.7 port=5433 user=u");
        let target = &c.targets()[0];
        assert_eq!(target.addr, Host::Tcp("10.0.0.7".into()));
        assert_eq!(target.tls_name.as_deref(), Some("db.internal"));
        let c = parse("hostaddr=::1 user=u");
        assert_eq!(c.targets()[0].to_string(), "[::1]:5432");
        let err = "host=a,b,c port=1,2 user=u"
            .parse::<ReplicationConfig>()
            .unwrap_err();
        assert!(err.to_string().contains("one per host"), "{err}");
    }

    #[test]
    fn bad_sslmodes_are_refused_with_the_choices() {
        let err = "user=u sslmode=maybe".parse::<ReplicationConfig>().unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
        let err = "postgresql://u@h/d?sslmode=allow"
            .parse::<ReplicationConfig>()
            .unwrap_err();
        assert!(err.to_string().contains("allow is not supported"), "{err}");
        let err = "user=u sslmode=verify-full sslrootcert=system"
            .parse::<ReplicationConfig>()
            .unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        let err = "user=u channel_binding=require"
            .parse::<ReplicationConfig>()
            .unwrap_err();
        assert!(err.to_string().contains("channel_binding"), "{err}");
        let err = "user=u sslnegotiation=direct"
            .parse::<ReplicationConfig>()
            .unwrap_err();
        assert!(err.to_string().contains("sslnegotiation=direct"), "{err}");
        let err = "user=u sslcert=/client.pem"
            .parse::<ReplicationConfig>()
            .unwrap_err();
        assert!(err.to_string().contains("sslcert"), "{err}");
    }

    #[test]
    fn password_never_in_debug_or_errors() {
        let c = parse("postgresql://u:hunter2@h/d");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(format!("{c:?}").contains("<redacted>"));
        let c = parse("host=h user=u password=hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        let err = "postgresql://u:hunter2@h:notaport/d"
            .parse::<ReplicationConfig>()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = "user=u password=hunter2 port=x"
            .parse::<ReplicationConfig>()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
