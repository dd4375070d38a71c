//! sslmode against real clusters, with a CA and server certificates made at
//! test time: what is verified, what is refused, and never a silent
//! fallback to plaintext.

use std::path::PathBuf;

use pg_replication::{Error, ReplicationConfig, ReplicationConnection};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use testkit::{PasswordAuth, PgCluster};

/// A test CA, its certificate written to a file for `sslrootcert`.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    file: tempfile::NamedTempFile,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let file = tempfile::Builder::new().suffix(".pem").tempfile().unwrap();
        std::fs::write(file.path(), cert.pem()).unwrap();
        Ca { cert, key, file }
    }

    fn path(&self) -> PathBuf {
        self.file.path().to_owned()
    }

    /// A server certificate (PEM) and key (PEM) for these subjectAltNames.
    fn server_cert(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "outboxd test server");
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn tls_cluster(ca: &Ca, names: &[&str]) -> PgCluster {
    let (cert, key) = ca.server_cert(names);
    PgCluster::builder().ssl(cert, key).start().unwrap()
}

fn config(cluster: &PgCluster, host: &str, rest: &str) -> ReplicationConfig {
    let text = format!(
        "host={host} port={} user=postgres dbname=postgres {rest}",
        cluster.port()
    );
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

async fn connect_err(config: &ReplicationConfig) -> Error {
    match ReplicationConnection::connect(config).await {
        Ok(conn) => panic!("connected: {conn:?}"),
        Err(err) => err,
    }
}

/// Whether the server sees this backend's connection as TLS.
async fn server_sees_tls(config: &ReplicationConfig, pid: i32) -> bool {
    let client = config.connect_catalog().await.unwrap();
    let own: bool = client
        .query_one("select ssl from pg_stat_ssl where pid = pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let other: bool = client
        .query_one("select ssl from pg_stat_ssl where pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(own, other, "catalog and replication connections differ");
    other
}

#[tokio::test]
async fn verify_full_with_the_right_ca_and_name_is_encrypted() {
    let ca = Ca::new("outboxd test CA");
    let cluster = tls_cluster(&ca, &["localhost", "127.0.0.1"]);
    cluster
        .create_user("scram_user", "pw", PasswordAuth::ScramSha256)
        .unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let root = ca.path().display().to_string();
        let config = config(&cluster, host, &format!("sslmode=verify-full sslrootcert={root}"));
        let mut conn = ReplicationConnection::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(conn.is_tls());
        conn.identify_system().await.unwrap();
        assert!(
            server_sees_tls(&config, conn.backend_pid().unwrap()).await,
            "{host}"
        );
    }
    // SCRAM over TLS: the server offers SCRAM-SHA-256-PLUS; we run plain SCRAM-SHA-256.
    let url = format!(
        "postgresql://scram_user:pw@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port(),
        ca.path().display()
    );
    let config: ReplicationConfig = url.parse().unwrap();
    let conn = ReplicationConnection::connect(&config).await.unwrap();
    assert!(conn.is_tls());
    assert!(server_sees_tls(&config, conn.backend_pid().unwrap()).await);
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_name() {
    let ca = Ca::new("outboxd test CA");
    let cluster = tls_cluster(&ca, &["other.example"]);
    let root = ca.path().display().to_string();
    for host in ["localhost", "127.0.0.1"] {
        let config = config(&cluster, host, &format!("sslmode=verify-full sslrootcert={root}"));
        let err = connect_err(&config).await;
        assert!(
            matches!(err, Error::Tls { .. }) && !err.is_transient(),
            "{host}: {err:?}"
        );
        assert!(err.to_string().contains("does not name the host"), "{err}");
        let err = config.connect_catalog().await.unwrap_err();
        assert!(
            matches!(err, Error::Tls { .. }) && !err.is_transient(),
            "catalog, {host}: {err:?}"
        );
    }
    // verify-ca checks the chain only: the same certificate is accepted.
    let config = config(
        &cluster,
        "localhost",
        &format!("sslmode=verify-ca sslrootcert={root}"),
    );
    let conn = ReplicationConnection::connect(&config).await.unwrap();
    assert!(conn.is_tls());
    assert!(server_sees_tls(&config, conn.backend_pid().unwrap()).await);
}

#[tokio::test]
async fn verify_ca_refuses_a_certificate_from_another_ca() {
    let ca = Ca::new("outboxd test CA");
    let stranger = Ca::new("someone else's CA");
    let cluster = tls_cluster(&ca, &["localhost", "127.0.0.1"]);
    let root = stranger.path().display().to_string();
    for mode in ["verify-ca", "verify-full", "require", "prefer"] {
        // With sslrootcert, require and prefer verify the chain too, as in libpq.
        let config = config(
            &cluster,
            "localhost",
            &format!("sslmode={mode} sslrootcert={root}"),
        );
        let err = connect_err(&config).await;
        assert!(
            matches!(err, Error::Tls { .. }) && !err.is_transient(),
            "{mode}: {err:?}"
        );
        assert!(
            err.to_string().contains("not signed by a CA in sslrootcert"),
            "{err}"
        );
        let err = config.connect_catalog().await.unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "catalog, {mode}: {err:?}");
    }
}

#[tokio::test]
async fn require_and_prefer_encrypt_without_verifying() {
    let ca = Ca::new("outboxd test CA");
    let cluster = tls_cluster(&ca, &["other.example"]);
    for mode in ["require", "prefer"] {
        let config = config(&cluster, "127.0.0.1", &format!("sslmode={mode}"));
        let conn = ReplicationConnection::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(conn.is_tls(), "{mode}");
        assert!(
            server_sees_tls(&config, conn.backend_pid().unwrap()).await,
            "{mode}"
        );
    }
    let config = config(&cluster, "127.0.0.1", "sslmode=disable");
    let conn = ReplicationConnection::connect(&config).await.unwrap();
    assert!(!conn.is_tls());
    assert!(!server_sees_tls(&config, conn.backend_pid().unwrap()).await);
}

#[tokio::test]
async fn require_against_a_server_without_tls_is_refused_never_plaintext() {
    let cluster = PgCluster::start().unwrap();
    let ca = Ca::new("outboxd test CA");
    let root = ca.path().display().to_string();
    for rest in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full sslrootcert={root}"),
    ] {
        let config = config(&cluster, "127.0.0.1", &rest);
        let err = connect_err(&config).await;
        assert!(
            matches!(err, Error::TlsUnsupported(_)) && !err.is_transient(),
            "{rest}: {err:?}"
        );
        assert!(err.to_string().contains("does not support TLS"), "{err}");
        let catalog_err = config.connect_catalog().await.unwrap_err();
        assert!(
            matches!(catalog_err, Error::TlsUnsupported(_)),
            "catalog, {rest}: {catalog_err:?}"
        );
        assert_eq!(catalog_err.to_string(), err.to_string());
    }
    // No plaintext walsender was ever started by those attempts.
    let walsenders = cluster
        .psql("select count(*) from pg_stat_activity where backend_type = 'walsender'")
        .unwrap();
    assert_eq!(walsenders, "0");
}

#[tokio::test]
async fn prefer_against_a_server_without_tls_is_plaintext() {
    let cluster = PgCluster::start().unwrap();
    let config = config(&cluster, "127.0.0.1", "sslmode=prefer");
    let mut conn = ReplicationConnection::connect(&config).await.unwrap();
    assert!(!conn.is_tls());
    conn.identify_system().await.unwrap();
    assert!(!server_sees_tls(&config, conn.backend_pid().unwrap()).await);
}
