//! Checks of a parsed configuration that need no server: settings that
//! cannot work are refused with a message naming the key, settings that
//! work but expose something are warned about, and TOML errors are told
//! without echoing the offending line (it may hold a secret).

use std::path::Path;

use anyhow::bail;
use outbox_core::redact::{may_show, redact};

use crate::config::{Config, PermanentErrorPolicy};
use crate::sink::SinkKind;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1); longer names are
/// truncated, so a slot or publication would not be the one configured.
const MAX_NAME_BYTES: usize = 63;
/// What `outboxd replay` appends to the slot name: `_replay_` and a pid
/// (Linux's `pid_max` is at most 4,194,304: seven digits).
const REPLAY_SUFFIX_BYTES: usize = "_replay_".len() + 7;
/// Kafka's topic name limit.
const MAX_TOPIC_CHARS: usize = 249;

/// Refuses settings that cannot work, naming the key.
pub(crate) fn refuse_unworkable(config: &Config) -> anyhow::Result<()> {
    if config.postgres.message_prefix.as_deref() == Some(config.heartbeat.prefix.as_str()) {
        bail!(
            "heartbeat.prefix {:?} equals postgres.message_prefix: heartbeats would be read as outbox events; \
             give heartbeat.prefix another value",
            config.heartbeat.prefix
        );
    }
    if config.cleanup.batch_size == 0 {
        bail!("cleanup.batch_size = 0 would never delete a row: use 1 or more (default 1000)");
    }
    if config.admin.stall_threshold_ms == 0 {
        bail!(
            "admin.stall_threshold_ms = 0 would report every instant as a stall: use a positive value \
             (default 30000)"
        );
    }
    // A bare word is a valid filter to `tracing` (every level of that
    // target) but is almost always a misspelt level that would log nothing.
    let bare_word = config.log.level.split(',').map(str::trim).find(|d| {
        !d.is_empty() && !d.contains(['=', '[']) && d.parse::<tracing::level_filters::LevelFilter>().is_err()
    });
    let invalid = tracing_subscriber::EnvFilter::try_new(&config.log.level).err();
    if bare_word.is_some() || invalid.is_some() {
        bail!(
            "log.level {:?} is not a valid filter{}: use a level (error, warn, info, debug, trace) or \
             directives such as outboxd=debug,info",
            config.log.level,
            invalid.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    // Kafka's topic rules; other sinks check their names by their own rules.
    if config.sink.kind == SinkKind::Kafka {
        if config.routing.topic_column.is_none() {
            check_topic("routing.topic", &config.routing.topic)?;
        }
        if config.policy()? == PermanentErrorPolicy::DeadLetter || !config.dead_letter().is_empty() {
            let key = if config.sink.dead_letter.is_some() {
                "sink.dead_letter"
            } else {
                "kafka.dead_letter_topic"
            };
            check_topic(key, &config.dead_letter())?;
        }
    }
    let slot = &config.postgres.slot;
    if slot.is_empty()
        || !slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        bail!(
            "postgres.slot {slot:?} is not a valid replication slot name: use lower-case letters, digits and \
             underscores"
        );
    }
    if slot.len() + REPLAY_SUFFIX_BYTES > MAX_NAME_BYTES {
        bail!(
            "postgres.slot {slot:?} is {} bytes: `outboxd replay` copies it as {slot}_replay_<pid>, which must \
             fit PostgreSQL's {MAX_NAME_BYTES}-byte limit; use at most {} bytes",
            slot.len(),
            MAX_NAME_BYTES - REPLAY_SUFFIX_BYTES
        );
    }
    let publication = &config.postgres.publication;
    if publication.len() > MAX_NAME_BYTES {
        bail!(
            "postgres.publication is {} bytes: PostgreSQL truncates names to {MAX_NAME_BYTES} bytes, so it \
             would not find the publication configured; use a shorter name",
            publication.len()
        );
    }
    Ok(())
}

/// A topic name Kafka accepts: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or
/// `..`. In a template only the text outside `${…}` is checked (the rest
/// comes from rows).
fn check_topic(key: &str, topic: &str) -> anyhow::Result<()> {
    let mut literal = String::new();
    let mut rest = topic;
    while let Some(at) = rest.find("${") {
        literal.push_str(&rest[..at]);
        rest = rest[at..].split_once('}').map_or("", |(_, after)| after);
    }
    literal.push_str(rest);
    let templated = literal.len() != topic.len();
    if let Some(bad) = literal
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        bail!(
            "{key} {topic:?} contains {bad:?}, which Kafka refuses in a topic name: use letters, digits, \
             '.', '_' and '-'"
        );
    }
    if !templated && (topic.is_empty() || topic == "." || topic == ".." || topic.len() > MAX_TOPIC_CHARS) {
        bail!("{key} {topic:?} is not a topic name Kafka accepts: 1 to {MAX_TOPIC_CHARS} characters, not . or ..");
    }
    Ok(())
}

/// Warnings about a configuration that works but exposes something: secret
/// files other users can read, topics created from row data.
pub(crate) fn warnings(config: &Config, config_file: Option<&Path>) -> Vec<String> {
    let mut warnings = Vec::new();
    let password_files = [
        ("postgres.password_file", &config.postgres.password_file),
        ("rabbitmq.password_file", &config.rabbitmq.password_file),
    ];
    for (key, path) in password_files {
        let Some(path) = path else { continue };
        if let Some(mode) = group_or_other_access(path) {
            warnings.push(format!(
                "{key} {} is accessible to other users (mode {mode:o}): chmod 600 it",
                path.display()
            ));
        }
    }
    if let Some(path) = config_file {
        let rabbitmq_password = config.sink.kind == SinkKind::RabbitMq
            && config.rabbitmq.url != crate::config::RabbitSection::default().url
            && redact(&config.rabbitmq.url) != config.rabbitmq.url;
        let holds_secret = redact(&config.postgres.url) != config.postgres.url
            || config.kafka.properties.keys().any(|k| !may_show(k))
            || rabbitmq_password;
        if holds_secret {
            if let Some(mode) = group_or_other_access(path) {
                warnings.push(format!(
                    "the config file {} holds secrets (a password in postgres.url or rabbitmq.url, or a secret \
                     kafka property) \
                     and is accessible to other users (mode {mode:o}): chmod 600 it, or move the secrets to \
                     OUTBOXD_POSTGRES_URL and postgres.password_file",
                    path.display()
                ));
            }
        }
    }
    if rows_may_create_topics(config) {
        warnings.push(format!("{ROWS_CREATE_TOPICS}. {ROWS_CREATE_TOPICS_FIX}"));
    }
    warnings
}

/// What [`rows_may_create_topics`] means, and its fix.
pub(crate) const ROWS_CREATE_TOPICS: &str =
    "topics are named from row data and the producer lets the broker \
     create missing topics: a bad row creates a topic (with the broker's default partitions)";
pub(crate) const ROWS_CREATE_TOPICS_FIX: &str = "create the topics beforehand and set \
     kafka.properties.\"allow.auto.create.topics\" = \"false\" (or auto.create.topics.enable=false on the broker)";

/// Topics come from row data (a template or a column) and the Kafka
/// producer may ask the broker to create them (its default).
pub(crate) fn rows_may_create_topics(config: &Config) -> bool {
    if config.sink.kind != SinkKind::Kafka {
        return false;
    }
    let topic_from_rows = config.routing.topic_column.is_some() || config.routing.topic.contains("${");
    let auto_create = config
        .kafka
        .properties
        .get("allow.auto.create.topics")
        .is_none_or(|v| v.trim() != "false");
    topic_from_rows && auto_create
}

/// The permission bits when the group or others have any access.
#[cfg(unix)]
fn group_or_other_access(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn group_or_other_access(_path: &Path) -> Option<u32> {
    None
}

/// A TOML error as line, column, key and message, without the line itself
/// (toml's own rendering quotes it, secret and all) and with quoted values
/// in the message hidden.
pub(crate) fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = hide_values(err.message().trim());
    let Some(span) = err.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(key, _)| key.trim())
        // Only what looks like a TOML key: the line may be the middle of a
        // multi-line string holding a secret.
        .filter(|key| {
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c))
        })
        .map(|key| format!(" (key {key})"))
        .unwrap_or_default();
    format!("line {line}, column {column}{key}: {message}")
}

/// Hides values quoted in serde's messages (`invalid type: string "…"`,
/// `unknown variant `…``) and keeps what toml and serde put in backticks
/// otherwise (field names, expected tokens).
fn hide_values(message: &str) -> String {
    let unknown_variant = message.starts_with("unknown variant");
    let mut out = String::new();
    for (i, part) in message.split('`').enumerate() {
        if i % 2 == 1 {
            out.push('`');
            out.push_str(if unknown_variant && i == 1 {
                "<redacted>"
            } else {
                part
            });
            out.push('`');
            continue;
        }
        for (j, piece) in part.split('"').enumerate() {
            if j % 2 == 1 {
                out.push_str("\"<redacted>\"");
            } else {
                out.push_str(piece);
            }
        }
    }
    out
}
