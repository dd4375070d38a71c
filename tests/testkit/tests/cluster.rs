//! Throwaway clusters: start in parallel, serve logical replication, restart,
//! authenticate, and leave nothing behind.

use std::os::unix::fs::PermissionsExt;

use testkit::{process_alive as process_exists, PasswordAuth, PgCluster, StopMode};

#[test]
fn two_clusters_at_once_each_with_a_logical_slot_leave_nothing_behind() {
    let starts: Vec<_> = (0..2).map(|_| std::thread::spawn(PgCluster::start)).collect();
    let clusters: Vec<PgCluster> = starts.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    assert_ne!(clusters[0].port(), clusters[1].port());
    assert_ne!(clusters[0].data_dir(), clusters[1].data_dir());

    let mut leftovers = Vec::new();
    for (i, cluster) in clusters.iter().enumerate() {
        cluster
            .psql(&format!(
                "select pg_create_logical_replication_slot('slot_{i}', 'pgoutput')"
            ))
            .unwrap();
        let slots = cluster
            .psql("select slot_name || ':' || plugin || ':' || slot_type from pg_replication_slots")
            .unwrap();
        assert_eq!(slots, format!("slot_{i}:pgoutput:logical"));
        assert_eq!(cluster.psql("show wal_level").unwrap(), "logical");
        let pid = cluster.postmaster_pid().expect("running");
        assert!(process_exists(pid));
        leftovers.push((
            pid,
            cluster.data_dir().to_path_buf(),
            cluster.socket_dir().to_path_buf(),
        ));
    }
    drop(clusters);
    for (pid, data, socket_dir) in leftovers {
        assert!(!process_exists(pid), "postmaster {pid} still running");
        assert!(!data.exists(), "{} left behind", data.display());
        assert!(!socket_dir.exists(), "{} left behind", socket_dir.display());
    }
}

#[test]
fn restarts_keep_data_and_port() {
    let cluster = PgCluster::start().unwrap();
    let port = cluster.port();
    cluster
        .psql("create table t (n int); insert into t values (1), (2);")
        .unwrap();
    let before = cluster.postmaster_pid().unwrap();
    cluster.restart(StopMode::Fast).unwrap();
    cluster.psql("insert into t values (3)").unwrap();
    cluster.restart(StopMode::Immediate).unwrap();
    assert_eq!(
        cluster
            .psql("select string_agg(n::text, ',' order by n) from t")
            .unwrap(),
        "1,2,3"
    );
    assert_eq!(cluster.port(), port);
    assert_ne!(cluster.postmaster_pid().unwrap(), before);
    assert!(!process_exists(before));
}

#[test]
fn stop_and_start_again() {
    let cluster = PgCluster::start().unwrap();
    cluster.stop(StopMode::Fast).unwrap();
    assert_eq!(cluster.postmaster_pid(), None);
    assert!(cluster.psql("select 1").is_err());
    cluster.start_again().unwrap();
    assert_eq!(cluster.psql("select 1").unwrap(), "1");
}

#[test]
fn replica_wal_level_refuses_logical_slots() {
    let cluster = PgCluster::builder().wal_level("replica").start().unwrap();
    assert_eq!(cluster.psql("show wal_level").unwrap(), "replica");
    let err = cluster
        .psql("select pg_create_logical_replication_slot('s', 'pgoutput')")
        .unwrap_err();
    assert!(err.to_string().contains("wal_level"), "{err}");
}

#[test]
fn settings_and_parameters() {
    let cluster = PgCluster::builder()
        .setting("wal_sender_timeout", "7s")
        .start()
        .unwrap();
    assert_eq!(cluster.psql("show wal_sender_timeout").unwrap(), "7s");
    cluster.set_parameter("wal_sender_timeout", "2s").unwrap();
    assert_eq!(cluster.psql("show wal_sender_timeout").unwrap(), "2s");
    assert!(cluster.server_version_num().unwrap() >= 140_000);
}

#[tokio::test]
async fn md5_and_scram_users_authenticate_and_wrong_passwords_fail() {
    let cluster = PgCluster::start().unwrap();
    cluster
        .create_user("md5_user", "md5 secret", PasswordAuth::Md5)
        .unwrap();
    cluster
        .create_user("scram_user", "scram secret", PasswordAuth::ScramSha256)
        .unwrap();
    let stored = cluster.psql("select rolname || ':' || left(rolpassword, 6) from pg_authid where rolname like '%_user' order by 1").unwrap();
    let prefixes: Vec<(&str, &str)> = stored.lines().map(|l| l.split_once(':').unwrap()).collect();
    assert_eq!(prefixes.len(), 2);
    assert!(
        prefixes[0].0 == "md5_user" && prefixes[0].1.starts_with("md5"),
        "{stored}"
    );
    assert_eq!(prefixes[1], ("scram_user", "SCRAM-"));

    for (user, password) in [("md5_user", "md5 secret"), ("scram_user", "scram secret")] {
        let mut config = cluster.config(user, "postgres");
        config.password(password);
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let who: String = client
            .query_one("select current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);

        config.password("wrong");
        let Err(err) = config.connect(tokio_postgres::NoTls).await else {
            panic!("{user} connected with a wrong password")
        };
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_else(|| err.to_string());
        assert!(message.contains("password authentication failed"), "{message}");

        let mut no_password = cluster.config(user, "postgres");
        no_password.dbname("postgres");
        assert!(
            no_password.connect(tokio_postgres::NoTls).await.is_err(),
            "{user} connected without a password"
        );
    }
}

#[tokio::test]
async fn hba_lines_apply_to_the_next_connection() {
    let cluster = PgCluster::start().unwrap();
    cluster.psql("create role blocked login").unwrap();
    cluster
        .add_hba_line("host all blocked 127.0.0.1/32 reject")
        .unwrap();
    let Err(err) = cluster
        .config("blocked", "postgres")
        .connect(tokio_postgres::NoTls)
        .await
    else {
        panic!("a rejected user connected")
    };
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_else(|| err.to_string());
    assert!(message.contains("rejects connection"), "{message}");
    // Everyone else still gets in.
    let client = cluster.connect().await.unwrap();
    client.simple_query("select 1").await.unwrap();
}

#[test]
fn tls_with_the_given_certificate() {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cluster = PgCluster::builder()
        .ssl(cert.pem(), key_pair.serialize_pem())
        .start()
        .unwrap();
    let key = std::fs::metadata(cluster.data_dir().join("server.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert_eq!(cluster.psql("show ssl").unwrap(), "on");
    // psql's default sslmode is `prefer`: with a certificate, it negotiates TLS.
    assert_eq!(
        cluster
            .psql("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
            .unwrap(),
        "t"
    );
}

#[test]
fn a_bad_setting_fails_at_once_quoting_the_server_log() {
    let err = PgCluster::builder()
        .setting("wal_level", "sideways")
        .start()
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not start"), "{err}");
    assert!(err.contains("invalid value for parameter \"wal_level\""), "{err}");
}
