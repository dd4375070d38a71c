//! `outboxd config` as an operator runs it: secrets never printed, settings
//! that cannot work refused naming the key, exposed secrets warned about.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const SECRET: &str = "hunter2";

struct Run {
    ok: bool,
    output: String,
}

/// `outboxd --config <file> config` with `text` as the file (mode 0600
/// unless `mode` says otherwise) and `env` set; stdout and stderr together.
fn outboxd_config(dir: &Path, text: &str, mode: u32, env: &[(&str, &str)]) -> Run {
    let path = dir.join("outboxd.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_outboxd"));
    command.arg("--config").arg(&path).arg("config");
    for (name, _) in std::env::vars() {
        if name.starts_with("OUTBOXD_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let out = command.output().unwrap();
    Run {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

const BASE: &str = "[kafka]\nbrokers = \"localhost:9092\"\n";

#[test]
fn outboxd_config_never_prints_a_secret_in_urls_key_values_or_properties() {
    let dir = tempfile::tempdir().unwrap();
    let file = format!(
        "[postgres]\nurl = \"postgres://outboxd:{SECRET}@db:5432/app?sslmode=prefer&password={SECRET}\"\n\
         {BASE}[kafka.properties]\n\"sasl.password\" = \"{SECRET}\"\n\"sasl.username\" = \"{SECRET}\"\n\
         \"ssl.key.pem\" = \"{SECRET}\"\n\"sasl.oauthbearer.assertion.private.key.passphrase\" = \"{SECRET}\"\n\
         \"sasl.oauthbearer.assertion.private.key.pem\" = \"{SECRET}\"\n\
         \"sasl.oauthbearer.client.secret\" = \"{SECRET}\"\n\"linger.ms\" = \"7\"\n"
    );
    let run = outboxd_config(dir.path(), &file, 0o600, &[]);
    assert!(run.ok, "{}", run.output);
    assert!(!run.output.contains(SECRET), "{}", run.output);
    assert!(run.output.contains("<redacted>"), "{}", run.output);
    assert!(run.output.contains("\"linger.ms\": \"7\""), "{}", run.output);

    for url in [
        format!("postgresql://outboxd@db/app?password={SECRET}"),
        format!("host=db user=outboxd password = {SECRET} dbname=app"),
        format!("host=db user=outboxd password='{SECRET} with spaces' dbname=app"),
    ] {
        let run = outboxd_config(dir.path(), BASE, 0o600, &[("OUTBOXD_POSTGRES_URL", &url)]);
        assert!(run.ok, "{url}: {}", run.output);
        assert!(!run.output.contains(SECRET), "{url}: {}", run.output);
    }
}

#[test]
fn toml_errors_do_not_echo_the_line_holding_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        format!("{BASE}[kafka.properties]\n\"sasl.password\" = \"{SECRET}\n"),
        format!("[postgres]\nurl = \"postgres://u:{SECRET}@db/app\" extra\n"),
        format!("[postgres]\nstatus_interval_ms = \"{SECRET}\"\n"),
        format!("[kafka]\non_permanent_error = \"{SECRET}\"\n"),
        // An invalid escape on a line inside a multi-line string.
        format!("[postgres]\nurl = \"\"\"\npostgres://u:{SECRET}@db/app?sslmode=require\\q\n\"\"\"\n"),
    ] {
        let run = outboxd_config(dir.path(), &file, 0o600, &[]);
        assert!(!run.ok, "{file}: {}", run.output);
        assert!(!run.output.contains(SECRET), "{file}: {}", run.output);
        assert!(run.output.contains("line "), "{file}: {}", run.output);
    }
    let run = outboxd_config(dir.path(), "[postgres]\nstatus_interval_ms = \"x\"\n", 0o600, &[]);
    assert!(run.output.contains("status_interval_ms"), "{}", run.output);
}

#[test]
fn settings_that_cannot_work_are_refused_by_outboxd_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let long = "s".repeat(49);
    let long_publication = "p".repeat(64);
    for (settings, key) in [
        (
            "[postgres]\nmessage_prefix = \"outboxd\"\n[heartbeat]\nprefix = \"outboxd\"\n".to_owned(),
            "heartbeat.prefix",
        ),
        ("[cleanup]\nbatch_size = 0\n".to_owned(), "cleanup.batch_size"),
        (
            "[admin]\nstall_threshold_ms = 0\n".to_owned(),
            "admin.stall_threshold_ms",
        ),
        ("[log]\nlevel = \"loud\"\n".to_owned(), "log.level"),
        (
            "[routing]\ntopic = \"orders events\"\n".to_owned(),
            "routing.topic",
        ),
        (
            "[routing]\ntopic = \"outbox/${aggregatetype}\"\n".to_owned(),
            "routing.topic",
        ),
        (
            "[postgres]\n".to_owned() + &format!("slot = \"{long}\"\n"),
            "postgres.slot",
        ),
        ("[postgres]\nslot = \"Outbox\"\n".to_owned(), "postgres.slot"),
        (
            format!("[postgres]\npublication = \"{long_publication}\"\n"),
            "postgres.publication",
        ),
    ] {
        let file = format!("{BASE}{settings}");
        let run = outboxd_config(dir.path(), &file, 0o600, &[]);
        assert!(!run.ok, "{file} was accepted: {}", run.output);
        assert!(run.output.contains(key), "{file}: {}", run.output);
    }
    let run = outboxd_config(
        dir.path(),
        BASE,
        0o600,
        &[("OUTBOXD_KAFKA_DEAD_LETTER_TOPIC", "dead letters")],
    );
    assert!(
        !run.ok && run.output.contains("kafka.dead_letter_topic"),
        "{}",
        run.output
    );
    // The longest slot name `replay` can still copy is accepted.
    let run = outboxd_config(
        dir.path(),
        &format!("{BASE}[postgres]\nslot = \"{}\"\n", "s".repeat(48)),
        0o600,
        &[],
    );
    assert!(run.ok, "{}", run.output);
}

#[test]
fn secret_files_other_users_can_read_and_auto_created_topics_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, SECRET).unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = format!(
        "[postgres]\npassword_file = \"{}\"\n{BASE}[routing]\ntopic = \"events\"\n",
        password.display()
    );
    let run = outboxd_config(dir.path(), &file, 0o644, &[]);
    assert!(run.ok, "{}", run.output);
    assert!(run.output.contains("postgres.password_file"), "{}", run.output);
    assert!(!run.output.contains("the config file"), "{}", run.output);
    assert!(!run.output.contains("allow.auto.create.topics"), "{}", run.output);

    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = format!("{BASE}[kafka.properties]\n\"sasl.password\" = \"{SECRET}\"\n");
    let run = outboxd_config(dir.path(), &file, 0o644, &[]);
    assert!(run.output.contains("the config file"), "{}", run.output);
    assert!(run.output.contains("allow.auto.create.topics"), "{}", run.output);
    assert!(!run.output.contains(SECRET), "{}", run.output);
    let run = outboxd_config(dir.path(), &file, 0o600, &[]);
    assert!(!run.output.contains("the config file"), "{}", run.output);
    let file = format!("{file}\"allow.auto.create.topics\" = \"false\"\n");
    let run = outboxd_config(dir.path(), &file, 0o600, &[]);
    assert!(
        !run.output.contains("allow.auto.create.topics ="),
        "{}",
        run.output
    );
    assert!(!run.output.contains("WARN"), "{}", run.output);
}
