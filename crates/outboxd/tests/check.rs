//! `outboxd check` and `outboxd status` on setups an operator can meet:
//! who may forge table-less outbox events, custom tables with NULLs.

use crate::support::*;

fn output_of(mut command: std::process::Command) -> (bool, String) {
    let out = command.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sql_file(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../sql")
            .join(name),
    )
    .unwrap()
}

/// `outboxd <args>` with `line` added to the test config's `[postgres]` section.
fn command_with_postgres_setting(env: &Env, line: &str, args: &[&str]) -> std::process::Command {
    let probe = env.command(&[]);
    let path = std::path::PathBuf::from(probe.get_args().nth(1).unwrap());
    let text =
        std::fs::read_to_string(&path)
            .unwrap()
            .replacen("[postgres]\n", &format!("[postgres]\n{line}\n"), 1);
    let custom = path.with_file_name("custom.toml");
    std::fs::write(&custom, text).unwrap();
    let mut command = env.command(args);
    let args: Vec<_> = command.get_args().skip(2).map(|a| a.to_owned()).collect();
    command = std::process::Command::new(command.get_program());
    command.arg("--config").arg(&custom).args(args);
    command
}

/// Whether `role` may call `pg_logical_emit_message` (tried for real).
async fn can_emit(env: &Env, role: &str) -> bool {
    let (client, connection) = env
        .pg
        .config(role, "postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query_one("select pg_logical_emit_message(true, 'outboxd', '{}')", &[])
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_while_public_may_forge_tableless_outbox_events() {
    let env = Env::start("");
    let check = || command_with_postgres_setting(&env, "message_prefix = \"outboxd\"", &["check"]);
    env.pg
        .psql("create role app_writer login; create role bystander login;")
        .unwrap();
    assert!(can_emit(&env, "bystander").await, "PostgreSQL's default");
    let (ok, text) = output_of(check());
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAIL  table-less outbox: every role (PUBLIC) may execute pg_logical_emit_message"),
        "{text}"
    );
    assert!(
        text.contains("fix: REVOKE EXECUTE ON FUNCTION ")
            && text.contains("pg_catalog.pg_logical_emit_message(boolean,text,text)")
            && text.contains("FROM PUBLIC"),
        "{text}"
    );

    // sql/05 with the writing role: only it (and superusers) may emit now.
    let file = format!(
        "\\set outbox_writer app_writer\n{}",
        sql_file("05_tableless_outbox.sql")
    );
    env.pg.psql(&file).unwrap();
    env.pg.psql(&file).unwrap();
    assert!(!can_emit(&env, "bystander").await);
    assert!(can_emit(&env, "app_writer").await);
    let (ok, text) = output_of(check());
    assert!(ok, "{text}");
    assert!(
        text.contains("ok    table-less outbox: only roles granted EXECUTE"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_survives_nulls_in_a_custom_table_and_uses_the_created_at_column() {
    let mut env = Env::start("");
    env.pg
        .psql(
            "alter table outbox alter column aggregateid drop not null;
             insert into outbox (id, aggregatetype, aggregateid, type, payload)
             values ('00000000-0000-0000-0000-00000000000a', 'order', null, 'T', null);",
        )
        .unwrap();
    let (ok, text) = output_of(env.command(&["status"]));
    assert!(ok, "{text}");
    assert!(
        text.contains("newest outbox row") && text.contains("00000000-0000-0000-0000-00000000000a"),
        "{text}"
    );

    // A table whose creation column has another name, and a newer row without one.
    env.pg
        .psql(
            "alter table outbox rename column created_at to inserted_at;
             alter table outbox alter column inserted_at drop not null;
             insert into outbox (id, aggregatetype, aggregateid, type, payload, inserted_at)
             values ('00000000-0000-0000-0000-00000000000b', 'order', 'k', 'T', null, null);",
        )
        .unwrap();
    env.extra_config = "[cleanup]\ncreated_at_column = \"inserted_at\"\n".into();
    let (ok, text) = output_of(env.command(&["status"]));
    assert!(ok, "{text}");
    let newest = text
        .lines()
        .find(|l| l.starts_with("newest outbox row"))
        .unwrap_or_else(|| panic!("no newest row: {text}"));
    assert!(
        newest.contains("00000000-0000-0000-0000-00000000000a"),
        "{newest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_status_show_that_the_connection_fell_back_to_plaintext() {
    // The test clusters have no TLS: sslmode=prefer falls back to plaintext.
    let env = Env::start("");
    let (ok, text) = output_of(env.command(&["check"]));
    assert!(ok, "a warning does not fail the check: {text}");
    assert!(
        text.contains("warn  tls: not encrypted (sslmode=prefer, the server declined TLS)"),
        "{text}"
    );
    assert!(text.contains("fix: enable ssl on the server"), "{text}");
    // With the mock, the test's topic template names topics from rows, and
    // nothing stops auto-creation (a real broker gets one fixed topic).
    if matches!(env.broker, Broker::Mock(_)) {
        assert!(
            text.contains("warn  topic creation: topics are named from row data"),
            "{text}"
        );
    }
    assert!(
        text.contains("the server declined TLS: this connection is not encrypted"),
        "the fallback is logged at warn: {text}"
    );
    let (ok, text) = output_of(env.command(&["status"]));
    assert!(ok, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("connection") && l.contains("not encrypted (sslmode=prefer")),
        "{text}"
    );
}

/// Found in review: `check` said nothing about the grants cleanup and the
/// dead-letter policy need, so a least-privilege role passed `check` and then
/// failed at run time. Now each missing grant is a FAIL naming the GRANT, and
/// sql/03_role.sql grants them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_grants_cleanup_and_dead_letter_need() {
    let mut env = Env::start("");
    let role = |extra: &str| format!("\\set outboxd_password 'pw'\n{extra}{}", sql_file("03_role.sql"));
    // `Env::start` ran `outboxd setup`, so the bookkeeping tables exist and the
    // role file grants what the dead-letter policy needs; take it back.
    env.pg.psql(&role("")).unwrap();
    env.pg.psql("revoke insert on outboxd_kept from outboxd").unwrap();
    env.postgres_url = Some(env.pg.url("outboxd", "postgres"));
    env.extra_config =
        "[cleanup]\ninterval_ms = 60000\n\n[sink]\non_permanent_error = \"dead-letter\"\n".into();
    let (ok, text) = output_of(env.command(&["check"]));
    assert!(!ok, "{text}");
    for missing in [
        "FAIL  privileges: the role lacks DELETE on public.outbox ([cleanup] deletes delivered rows)",
        "FAIL  privileges: the role lacks SELECT on public.outboxd_slot",
        "FAIL  privileges: the role lacks INSERT on public.outboxd_kept",
        "fix: GRANT DELETE ON \"public\".\"outbox\" TO \"outboxd\"",
    ] {
        assert!(text.contains(missing), "{missing:?} not in:\n{text}");
    }
    assert!(!text.contains("lacks SELECT on public.outboxd_kept"), "{text}");

    // The role file again, with what cleanup needs.
    env.pg.psql(&role("\\set outboxd_cleanup on\n")).unwrap();
    let (ok, text) = output_of(env.command(&["check"]));
    assert!(!text.contains("FAIL  privileges"), "{text}");
    assert!(
        text.contains("ok    privileges: DELETE on public.outbox, SELECT on public.outboxd_slot, SELECT on public.outboxd_kept, INSERT on public.outboxd_kept"),
        "{text}"
    );
    assert!(ok, "{text}");
}
