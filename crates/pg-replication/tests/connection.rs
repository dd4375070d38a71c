//! The replication connection against real clusters: TCP and Unix socket,
//! every password method, and the errors an operator has to act on.

use pg_replication::{Error, ReplicationConfig, ReplicationConnection};
use pgoutput::Lsn;
use testkit::{PasswordAuth, PgCluster};

fn config(text: &str) -> ReplicationConfig {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn tcp(cluster: &PgCluster, rest: &str) -> ReplicationConfig {
    config(&format!(
        "host=127.0.0.1 port={} dbname=postgres {rest}",
        cluster.port()
    ))
}

async fn connect_err(config: &ReplicationConfig) -> Error {
    match ReplicationConnection::connect(config).await {
        Ok(conn) => panic!("connected: {conn:?}"),
        Err(err) => err,
    }
}

#[tokio::test]
async fn trust_over_tcp_identifies_the_system_like_sql_does() {
    let cluster = PgCluster::start().unwrap();
    let mut conn = ReplicationConnection::connect(&config(&cluster.url("postgres", "postgres")))
        .await
        .unwrap();
    assert!(!conn.is_tls());
    assert!(conn.parameter("server_version").is_some_and(|v| !v.is_empty()));
    assert_eq!(conn.parameter("integer_datetimes"), Some("on"));
    assert!(conn.backend_pid().is_some());

    let before: Lsn = cluster
        .psql("select pg_current_wal_flush_lsn()")
        .unwrap()
        .parse()
        .unwrap();
    let raw = conn.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    let raw_xlogpos = raw[0].get("xlogpos").unwrap().to_owned();
    let identity = conn.identify_system().await.unwrap();
    // `replication=database` also runs SQL: the same position, as the server prints it.
    let sql = conn
        .simple_query("select pg_current_wal_flush_lsn()::text as lsn")
        .await
        .unwrap();
    let after = sql[0].get("lsn").unwrap().to_owned();

    assert_eq!(raw[0].columns(), ["systemid", "timeline", "xlogpos", "dbname"]);
    assert_eq!(
        raw_xlogpos.parse::<Lsn>().unwrap().to_string(),
        raw_xlogpos,
        "same text form"
    );
    assert_eq!(after.parse::<Lsn>().unwrap().to_string(), after);
    assert!(before <= identity.xlogpos && identity.xlogpos <= after.parse().unwrap());
    assert_eq!(identity.timeline, 1);
    assert_eq!(identity.dbname.as_deref(), Some("postgres"));
    let system_id = cluster
        .psql("select system_identifier from pg_control_system()")
        .unwrap();
    assert_eq!(identity.system_id, system_id);

    // The connection is a walsender in pg_stat_replication terms, with our application_name.
    let pid = conn.backend_pid().unwrap();
    let seen = cluster
        .psql(&format!(
            "select backend_type || ' ' || application_name from pg_stat_activity where pid = {pid}"
        ))
        .unwrap();
    assert_eq!(seen, "walsender outboxd");
}

#[tokio::test]
async fn trust_over_the_unix_socket() {
    let cluster = PgCluster::start().unwrap();
    let dir = cluster.socket_dir().display().to_string();
    let mut conn = ReplicationConnection::connect(&config(&format!(
        "host={dir} port={} user=postgres",
        cluster.port()
    )))
    .await
    .unwrap();
    assert!(!conn.is_tls());
    assert_eq!(
        conn.identify_system().await.unwrap().dbname.as_deref(),
        Some("postgres")
    );
    let rows = conn
        .simple_query("select inet_client_addr() is null as local")
        .await
        .unwrap();
    assert_eq!(rows[0].get("local"), Some("t"), "not over the socket");

    // The catalog connection goes over the socket too.
    let client = config(&format!("host={dir} port={} user=postgres", cluster.port()))
        .connect_catalog()
        .await
        .unwrap();
    let row = client
        .query_one("select inet_client_addr() is null", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "catalog connection not over the socket");

    // The URL form, with the directory percent-encoded as the host.
    let url = format!(
        "postgresql://postgres@{}:{}/postgres",
        dir.replace('/', "%2F"),
        cluster.port()
    );
    ReplicationConnection::connect(&config(&url)).await.unwrap();

    // PostgreSQL has no TLS on Unix sockets: a mode that requires it is refused up front.
    let err = connect_err(&config(&format!(
        "host={dir} port={} user=postgres sslmode=require",
        cluster.port()
    )))
    .await;
    assert!(
        matches!(err, Error::Config(_)) && err.to_string().contains("Unix socket"),
        "{err}"
    );
}

#[tokio::test]
async fn md5_and_scram_users_connect_and_wrong_passwords_are_definite() {
    let cluster = PgCluster::start().unwrap();
    cluster
        .create_user("md5_user", "md5 secret", PasswordAuth::Md5)
        .unwrap();
    cluster
        .create_user("scram_user", "scram 'secret'", PasswordAuth::ScramSha256)
        .unwrap();

    let mut md5 = ReplicationConnection::connect(&tcp(&cluster, "user=md5_user password='md5 secret'"))
        .await
        .unwrap();
    md5.identify_system().await.unwrap();
    let mut scram =
        ReplicationConnection::connect(&tcp(&cluster, r"user=scram_user password='scram \'secret\''"))
            .await
            .unwrap();
    scram.identify_system().await.unwrap();
    // The URL form with a percent-encoded password.
    let url = format!(
        "postgresql://scram_user:scram%20%27secret%27@127.0.0.1:{}/postgres",
        cluster.port()
    );
    ReplicationConnection::connect(&config(&url)).await.unwrap();

    for user in ["md5_user", "scram_user"] {
        let err = connect_err(&tcp(&cluster, &format!("user={user} password=wrong"))).await;
        assert!(matches!(err, Error::Auth { .. }), "{user}: {err:?}");
        assert!(!err.is_transient(), "{user}: {err}");
        assert_eq!(err.code(), Some("28P01"));
        let text = err.to_string();
        assert!(
            text.contains("password authentication failed") && text.contains(user),
            "{text}"
        );
        assert!(text.contains("check the password"), "{text}");
        assert!(!text.contains("wrong"), "the password leaked: {text}");

        let err = connect_err(&tcp(&cluster, &format!("user={user}"))).await;
        assert!(
            matches!(err, Error::PasswordRequired(ref u) if u == user),
            "{err:?}"
        );
        assert!(!err.is_transient());
    }
}

#[tokio::test]
async fn role_without_replication_is_a_definite_error_naming_the_grant() {
    let cluster = PgCluster::start().unwrap();
    cluster.psql("create role plain_user login").unwrap();
    let err = connect_err(&tcp(&cluster, "user=plain_user")).await;
    assert!(matches!(err, Error::NotReplicationRole { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(err.code(), Some("42501"));
    assert!(
        err.to_string().contains("ALTER ROLE \"plain_user\" REPLICATION"),
        "{err}"
    );

    let err = connect_err(&tcp(&cluster, "user=no_such_role")).await;
    assert!(
        matches!(err, Error::Auth { .. }) && !err.is_transient(),
        "{err:?}"
    );
    assert_eq!(err.code(), Some("28000"));
}

#[tokio::test]
async fn pg_hba_rejection_names_the_line_to_add() {
    let cluster = PgCluster::start().unwrap();
    cluster.psql("create role app login replication").unwrap();
    // A logical replication connection matches pg_hba.conf lines for its
    // database; the `replication` keyword is for physical replication only.
    cluster
        .add_hba_line("host replication app 127.0.0.1/32 reject")
        .unwrap();
    ReplicationConnection::connect(&tcp(&cluster, "user=app"))
        .await
        .unwrap();
    cluster
        .add_hba_line("host postgres app 127.0.0.1/32 reject")
        .unwrap();
    let err = connect_err(&tcp(&cluster, "user=app")).await;
    assert!(
        matches!(err, Error::Auth { .. }) && !err.is_transient(),
        "{err:?}"
    );
    assert!(err.to_string().contains("host <database> <user>"), "{err}");
}

#[tokio::test]
async fn nothing_listening_is_transient() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = connect_err(&config(&format!(
        "host=127.0.0.1 port={port} user=u sslmode=disable"
    )))
    .await;
    assert!(matches!(err, Error::Io { .. }) && err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn the_next_host_is_tried_when_one_is_down() {
    let cluster = PgCluster::start().unwrap();
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "host=127.0.0.1,127.0.0.1 port={down},{} user=postgres",
        cluster.port()
    );
    let mut conn = ReplicationConnection::connect(&config(&text)).await.unwrap();
    conn.identify_system().await.unwrap();
}

#[tokio::test]
async fn server_errors_in_queries_carry_their_sqlstate_and_the_connection_survives() {
    let cluster = PgCluster::start().unwrap();
    let mut conn = ReplicationConnection::connect(&config(&cluster.url("postgres", "postgres")))
        .await
        .unwrap();
    let err = conn
        .simple_query("DROP_REPLICATION_SLOT \"no such slot\"")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("42704"), "{err}");
    assert!(!err.is_transient());
    // Still in sync: the next command works.
    let rows = conn.simple_query("SHOW wal_level").await.unwrap();
    assert_eq!(rows[0].get("wal_level"), Some("logical"));
    assert_eq!(
        conn.wal_sender_timeout().await.unwrap(),
        Some(std::time::Duration::from_secs(60))
    );
}

#[tokio::test]
async fn catalog_connection_uses_the_same_settings() {
    let cluster = PgCluster::start().unwrap();
    cluster
        .create_user("scram_user", "pw", PasswordAuth::ScramSha256)
        .unwrap();
    let client = tcp(&cluster, "user=scram_user password=pw")
        .connect_catalog()
        .await
        .unwrap();
    let row = client
        .query_one(
            "select current_user::text, current_setting('application_name')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "scram_user");
    assert_eq!(row.get::<_, String>(1), "outboxd");

    let err = tcp(&cluster, "user=scram_user password=wrong")
        .connect_catalog()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Auth { .. }) && !err.is_transient(),
        "{err:?}"
    );
    let err = tcp(&cluster, "user=scram_user")
        .connect_catalog()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PasswordRequired(_)), "{err:?}");
}
