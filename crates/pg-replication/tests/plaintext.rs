//! A server (or a man in the middle) that declines TLS and asks for the
//! password in clear: refused unless the operator allows it.

use pg_replication::{Error, ReplicationConfig, ReplicationConnection};
use testkit::{PasswordAuth, PgCluster};

fn tcp(cluster: &PgCluster, rest: &str) -> ReplicationConfig {
    format!("host=127.0.0.1 port={} dbname=postgres {rest}", cluster.port())
        .parse()
        .unwrap()
}

fn assert_refused(err: &Error) {
    assert!(
        matches!(err, Error::CleartextPasswordRefused { user, .. } if user == "clear_user"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains("postgres.allow_cleartext_password"), "{text}");
    assert!(!text.contains("clear secret"), "the password leaked: {text}");
}

#[tokio::test]
async fn cleartext_password_over_a_plaintext_fallback_is_refused_unless_allowed() {
    // No TLS on this server, and the `password` method for this role.
    let cluster = PgCluster::start().unwrap();
    cluster
        .create_user("clear_user", "clear secret", PasswordAuth::ScramSha256)
        .unwrap();
    cluster
        .add_hba_line("host all clear_user 127.0.0.1/32 password")
        .unwrap();

    for sslmode in ["prefer", "disable"] {
        let config = tcp(
            &cluster,
            &format!("user=clear_user password='clear secret' sslmode={sslmode}"),
        );
        let err = ReplicationConnection::connect(&config).await.unwrap_err();
        assert_refused(&err);
        let err = config.connect_catalog().await.unwrap_err();
        assert_refused(&err);

        let mut allowed = config.clone();
        allowed.allow_cleartext_password(true);
        let mut conn = ReplicationConnection::connect(&allowed).await.unwrap();
        assert!(!conn.is_tls());
        conn.identify_system().await.unwrap();
        let client = allowed.connect_catalog().await.unwrap();
        let user: String = client
            .query_one("select current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(user, "clear_user");
    }

    // SCRAM over the same plaintext connection never sends the password: fine.
    cluster
        .create_user("scram_user", "pw", PasswordAuth::ScramSha256)
        .unwrap();
    let config = tcp(&cluster, "user=scram_user password=pw");
    ReplicationConnection::connect(&config).await.unwrap();
    config.connect_catalog().await.unwrap();
}

#[tokio::test]
async fn the_catalog_connection_still_honours_target_session_attrs() {
    // The catalog connection opens its own socket now; tokio-postgres's
    // connect used to apply target_session_attrs, so it must still hold.
    let cluster = PgCluster::start().unwrap();
    let primary = tcp(&cluster, "user=postgres target_session_attrs=read-write");
    primary.connect_catalog().await.unwrap();
    let err = tcp(&cluster, "user=postgres target_session_attrs=read-only")
        .connect_catalog()
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("read-write"), "{err}");
}
