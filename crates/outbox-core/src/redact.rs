//! Secrets never leave the process in text: every place that shows a
//! connection URL, a libpq `key=value` string or a property map (`outboxd
//! config`, `Debug` output, error messages) goes through [`redact`] or
//! [`redact_property`].
//!
//! What may be shown is an allow-list ([`may_show`]): a setting outboxd does
//! not know is redacted, so a secret property added by a newer librdkafka or
//! libpq (or a typo of a known one) is hidden rather than printed.

/// What a hidden value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Settings whose values are never secret: libpq connection keys and
/// librdkafka properties. Absent on purpose: everything librdkafka marks
/// sensitive (`sasl.username`, `sasl.password`, `ssl.key.*`,
/// `ssl.keystore.*`, `ssl.ca.pem`, `sasl.oauthbearer.client.*`,
/// `sasl.oauthbearer.config`, `sasl.oauthbearer.assertion.*`, …) and
/// libpq's `password` and `sslpassword`.
const SHOWN: &[&str] = &[
    // libpq
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslcrl",
    "sslnegotiation",
    "sslcompression",
    "application_name",
    "fallback_application_name",
    "connect_timeout",
    "options",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "load_balance_hosts",
    "channel_binding",
    "gssencmode",
    "require_auth",
    "client_encoding",
    "replication",
    // librdkafka
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "client.rack",
    "client.dns.lookup",
    "broker.address.family",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
    "retries",
    "message.send.max.retries",
    "retry.backoff.ms",
    "retry.backoff.max.ms",
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "batch.size",
    "batch.num.messages",
    "sticky.partitioning.linger.ms",
    "compression.type",
    "compression.codec",
    "compression.level",
    "message.max.bytes",
    "message.copy.max.bytes",
    "receive.message.max.bytes",
    "request.timeout.ms",
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "socket.nagle.disable",
    "connections.max.idle.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "topic.metadata.refresh.interval.ms",
    "topic.metadata.refresh.sparse",
    "metadata.max.age.ms",
    "allow.auto.create.topics",
    "api.version.request",
    "broker.version.fallback",
    "statistics.interval.ms",
    "debug",
    "log_level",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.kerberos.service.name",
    "sasl.kerberos.principal",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.scope",
    "sasl.oauthbearer.token.endpoint.url",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    "ssl.cipher.suites",
    "ssl.curves.list",
];

/// Whether the value of setting `key` may be shown.
pub fn may_show(key: &str) -> bool {
    SHOWN.contains(&key)
}

/// A connection URL (`scheme://user:password@host/db?password=…`) or a
/// libpq `key=value` string with every secret replaced by [`REDACTED`]: the
/// URL's password, and every value whose key is not on the allow-list
/// (quoted values with spaces, and spaces around `=`, included). Text that
/// cannot be read as either is hidden from the first thing not understood.
/// Text with no `=` and no `://` holds no setting and is returned as is.
pub fn redact(text: &str) -> String {
    if let Some((scheme, rest)) = text.split_once("://") {
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return format!("{scheme}://{}", redact_url_rest(rest));
        }
    }
    if !text.contains('=') {
        return text.to_owned();
    }
    redact_key_values(text)
}

/// One property's value as it may be shown: [`REDACTED`] unless the key is
/// on the allow-list; an allowed value that is a URL still loses its password.
pub fn redact_property(key: &str, value: &str) -> String {
    if !may_show(key) {
        REDACTED.to_owned()
    } else if value.contains("://") {
        redact(value)
    } else {
        value.to_owned()
    }
}

fn redact_url_rest(rest: &str) -> String {
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    // The last `@` ends the user info: a careless password may hold one.
    let authority_and_path = match before_query.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => before_query.to_owned(),
    };
    let Some(query) = query else {
        return authority_and_path;
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if may_show(key) => format!("{key}={value}"),
            Some((key, _)) => format!("{key}={REDACTED}"),
            None if pair.is_empty() || may_show(pair) => pair.to_owned(),
            None => REDACTED.to_owned(),
        })
        .collect();
    let mut out = format!("{authority_and_path}?{}", pairs.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// libpq's `key = value` syntax: spaces around `=` allowed, values in single
/// quotes may hold spaces, backslash escapes a character.
fn redact_key_values(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    let skip_spaces = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_spaces(&mut i);
        if i == bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &text[start..i];
        skip_spaces(&mut i);
        if key.is_empty() || i == bytes.len() || bytes[i] != b'=' {
            out.push(REDACTED.to_owned());
            break;
        }
        i += 1;
        skip_spaces(&mut i);
        let value_start = i;
        let mut complete = true;
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => {
                        complete = false;
                        break;
                    }
                    Some(b'\\') => i += 2,
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
        }
        let i_end = i.min(bytes.len());
        if complete && may_show(key) {
            out.push(format!("{key}={}", &text[value_start..i_end]));
        } else {
            out.push(format!("{key}={REDACTED}"));
        }
        if !complete {
            break;
        }
        i = i_end;
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hides(text: &str, secret: &str) -> String {
        let shown = redact(text);
        assert!(!shown.contains(secret), "{secret:?} in {shown:?}");
        shown
    }

    #[test]
    fn url_passwords_in_user_info_and_query_string_are_hidden() {
        assert_eq!(
            hides("postgres://u:hunter2@db:5432/app", "hunter2"),
            "postgres://u:<redacted>@db:5432/app"
        );
        assert_eq!(
            hides(
                "postgresql://u@db/app?sslmode=require&password=hunter2",
                "hunter2"
            ),
            "postgresql://u@db/app?sslmode=require&password=<redacted>"
        );
        hides("postgres://u:hun@ter2@db/app", "ter2");
        hides("postgres://u@db/app?sslpassword=hunter2#x", "hunter2");
        hides("postgres://u@db/app?hunter2", "hunter2");
        assert_eq!(redact("postgres://u@db/app"), "postgres://u@db/app");
    }

    #[test]
    fn key_value_passwords_with_spaces_and_quotes_are_hidden() {
        assert_eq!(
            hides("host=db user=u password=hunter2 dbname=app", "hunter2"),
            "host=db user=u password=<redacted> dbname=app"
        );
        assert_eq!(
            hides("host=db password = hunter2 dbname=app", "hunter2"),
            "host=db password=<redacted> dbname=app"
        );
        assert_eq!(
            hides(r"host=db password='hunter2 with \' spaces' port=5432", "hunter2"),
            "host=db password=<redacted> port=5432"
        );
        hides("host=db password='hunter2 unterminated", "hunter2");
        hides("host=db oops hunter2", "hunter2");
        hides(r"password=hun\ ter2", "ter2");
        assert_eq!(redact("localhost:9092"), "localhost:9092");
    }

    #[test]
    fn every_property_librdkafka_marks_sensitive_is_hidden() {
        // rdkafka_conf.c, properties flagged _RK_SENSITIVE (librdkafka 2.12).
        for key in [
            "sasl.username",
            "sasl.password",
            "ssl.key.location",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl_key",
            "ssl.keystore.location",
            "ssl.keystore.password",
            "ssl.ca.pem",
            "https.ca.pem",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.id",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.client.credentials.client.id",
            "sasl.oauthbearer.client.credentials.client.secret",
            "sasl.oauthbearer.assertion.private.key.file",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.oauthbearer.assertion.jwt.template.file",
            "some.future.secret",
        ] {
            assert_eq!(redact_property(key, "hunter2"), REDACTED, "{key}");
        }
        assert_eq!(redact_property("linger.ms", "5"), "5");
        assert_eq!(
            redact_property(
                "sasl.oauthbearer.token.endpoint.url",
                "https://u:hunter2@idp/token"
            ),
            "https://u:<redacted>@idp/token"
        );
    }
}
