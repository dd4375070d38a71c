//! TLS as libpq does it, on rustls (ring provider: no cmake needed), for
//! both the replication connection and the catalog connection (whose
//! socket and TLS are set up the same way before `tokio-postgres` takes over).
//!
//! | sslmode | TLS | certificate check |
//! |---|---|---|
//! | disable | never | — |
//! | prefer | if the server offers it | none; chain only when `sslrootcert` is given |
//! | require | mandatory | none; chain only when `sslrootcert` is given (libpq: "behaves like verify-ca") |
//! | verify-ca | mandatory | chain against `sslrootcert` (else `~/.postgresql/root.crt`, else an error) |
//! | verify-full | mandatory | chain, and the host name (or IP) against the certificate's subjectAltName |
//!
//! When TLS is mandatory there is no fallback to plaintext, ever: a server
//! answering 'N' is [`Error::TlsUnsupported`], a failed handshake is
//! [`Error::Tls`]. Without a chain to check, handshake signatures are still
//! verified: the connection is encrypted, the server unauthenticated.
//!
//! Departures from libpq, each towards failing loudly: `prefer` does not
//! retry in plaintext after a failed handshake (libpq does, which would hide
//! a certificate that fails `sslrootcert`); `~/.postgresql/root.crt` is not
//! consulted for prefer/require (a stray file in a home directory should not
//! decide whether a connection succeeds); the operating system's trust store
//! is not used (`sslrootcert=system` is refused): the database's CA is named
//! explicitly. The client offers ALPN `postgresql`, as libpq 17 does, which
//! `sslnegotiation=direct` needs.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{ReplicationConfig, SslMode};
use crate::error::Error;

/// The rustls configuration for these settings; `None` for `sslmode=disable`.
pub(crate) fn client_config(config: &ReplicationConfig) -> Result<Option<Arc<ClientConfig>>, Error> {
    let mode = config.ssl_mode;
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let root_file = match (&config.ssl_root_cert, mode) {
        (Some(path), _) => Some(path.clone()),
        (None, SslMode::VerifyCa | SslMode::VerifyFull) => Some(default_root_cert().ok_or_else(|| {
            Error::Config(format!(
                "sslmode={} needs the CA certificate: set sslrootcert=<file> (or put it in ~/.postgresql/root.crt)",
                mode.as_str()
            ))
        })?),
        (None, _) => None,
    };
    let roots = root_file.map(|path| load_roots(&path)).transpose()?;
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
    let mut tls = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots).with_no_client_auth(),
        (_, Some(roots)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                .with_no_client_auth()
        }
        (_, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    };
    // What libpq 17 sends: required by servers for direct TLS negotiation,
    // ignored by servers before 17.
    tls.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some(Arc::new(tls)))
}

/// A TLS failure in words, with what to check.
pub(crate) fn explain(err: &rustls::Error) -> String {
    let fix = match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "the server's certificate is not signed by a CA in sslrootcert: give the CA that issued it \
                 (the whole chain up to the root)"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the certificate does not name the host connected to: connect with a host name from its \
                 subjectAltName, or reissue the certificate for this name (sslmode=verify-ca skips the name check)"
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                "the certificate is outside its validity period: renew it on the server, and check both clocks"
            }
            _ => "check the server's ssl_cert_file and the CA given in sslrootcert",
        },
        rustls::Error::AlertReceived(_) => {
            "the server refused the handshake: check its ssl_min_protocol_version and certificate settings"
        }
        _ => "check the server's TLS settings",
    };
    format!("{err}: {fix}")
}

fn default_root_cert() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
    path.is_file().then_some(path)
}

fn load_roots(path: &std::path::Path) -> Result<RootCertStore, Error> {
    let unreadable =
        |e: &dyn std::fmt::Display| Error::Config(format!("cannot read sslrootcert {}: {e}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(Error::Config(format!(
            "sslrootcert {} holds no certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// The name to verify (and to send as SNI).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| Error::Config(format!("invalid TLS server name {host:?}: {e}")))
}

/// verify-ca: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer/require without a root certificate: encryption without
/// authentication, as libpq does. Handshake signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
