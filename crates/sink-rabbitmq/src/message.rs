//! From a [`Record`] to an AMQP message: exchange, routing key, properties,
//! headers. Pure, so it is tested without a broker.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use outbox_core::{header, Record};

use crate::classify::Refusal;
use crate::config::APP_ID;
use crate::template::{valid_exchange_name, Template};

/// Header carrying the aggregate id (the Kafka key).
pub const AGGREGATE_ID: &str = "aggregateid";
/// `delivery_mode` of a persistent message.
pub const PERSISTENT: u8 = 2;

/// One message ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Bytes,
}

/// Builds the message for `record`, or says why it can never be published.
///
/// Properties: `message_id` = event id, `type` = event type, `app_id` =
/// `outboxd`, `timestamp` = the record's timestamp (its commit time or
/// timestamp column), else publish time (seconds), `delivery_mode` = 2
/// (persistent), `content_type` = `application/json` when the body is JSON.
/// Headers: every record header except `id` and `type` (they are the
/// properties above) — `aggregatetype`, `outboxd.lsn`, `outboxd.index`,
/// configured extra columns, `outboxd.replay` on replays — plus
/// `aggregateid`.
pub(crate) fn build(record: &Record, exchange: &Template, max_body: usize) -> Result<Message, Refusal> {
    let body = record.value.clone().unwrap_or_default();
    if body.len() > max_body {
        return Err(Refusal::TooLarge {
            size: body.len(),
            limit: max_body,
        });
    }
    let text = |name: &str| {
        record
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default()
    };
    let event_type = text(header::TYPE);
    let exchange = exchange.render(&text(header::AGGREGATE_TYPE), &event_type);
    if !valid_exchange_name(&exchange) {
        return Err(Refusal::InvalidDestination(format!(
            "exchange name {exchange:?} is not valid (at most 255 characters of a-z, A-Z, 0-9, '-', '_', '.', ':')"
        )));
    }
    let routing_key = ShortString::try_new(record.topic.clone()).map_err(|_| {
        Refusal::InvalidDestination(format!(
            "routing key of {} bytes is longer than AMQP's 255",
            record.topic.len()
        ))
    })?;
    let mut headers = FieldTable::default();
    for (name, value) in &record.headers {
        if name == header::ID || name == header::TYPE {
            continue;
        }
        let key = ShortString::try_new(name.clone()).map_err(|_| {
            Refusal::Rejected(format!(
                "header name of {} bytes is longer than AMQP's 255",
                name.len()
            ))
        })?;
        headers.insert(key, AMQPValue::LongString(LongString::from(value.to_vec())));
    }
    headers.insert(
        AGGREGATE_ID.into(),
        AMQPValue::LongString(LongString::from(record.key.to_vec())),
    );
    let short = |what: &str, value: String| {
        ShortString::try_new(value)
            .map_err(|_| Refusal::Rejected(format!("{what} is longer than AMQP's 255 bytes")))
    };
    let timestamp = match record.timestamp_ms {
        Some(ms) => u64::try_from(ms.div_euclid(1000)).unwrap_or(0),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let mut properties = BasicProperties::default()
        .with_message_id(short("event id", record.id.clone())?)
        .with_type(short("event type", event_type)?)
        .with_app_id(APP_ID.into())
        .with_timestamp(timestamp)
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if is_json(&body) {
        properties = properties.with_content_type("application/json".into());
    }
    Ok(Message {
        exchange: exchange.into(),
        routing_key,
        properties,
        body,
    })
}

/// Whether `body` is one JSON value (what a `json`/`jsonb` payload column
/// holds).
fn is_json(body: &[u8]) -> bool {
    !body.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::{Lsn, Position};

    fn record(value: Option<&'static [u8]>) -> Record {
        Record {
            topic: "order.created".into(),
            key: Bytes::from_static(b"order-7"),
            value: value.map(Bytes::from_static),
            headers: vec![
                ("id".into(), Bytes::from_static(b"e-1")),
                ("type".into(), Bytes::from_static(b"created")),
                ("aggregatetype".into(), Bytes::from_static(b"order")),
                ("outboxd.lsn".into(), Bytes::from_static(b"0/16B3748")),
                ("outboxd.index".into(), Bytes::from_static(b"3")),
                ("tenant".into(), Bytes::from_static(b"acme")),
            ],
            id: "e-1".into(),
            position: Position {
                commit_lsn: Lsn::new(0x16B3748),
                index: 3,
            },
            timestamp_ms: None,
            partition: None,
        }
    }

    fn header<'a>(m: &'a Message, name: &str) -> Option<&'a [u8]> {
        match m.properties.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongString(s) => Some(s.as_bytes()),
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn properties_and_headers() {
        let exchange = Template::new("exchange", "outbox").unwrap();
        let m = build(&record(Some(br#"{"total": 3}"#)), &exchange, 1000).unwrap();
        assert_eq!(m.exchange.as_str(), "outbox");
        assert_eq!(m.routing_key.as_str(), "order.created");
        assert_eq!(m.body.as_ref(), br#"{"total": 3}"#);
        let p = &m.properties;
        assert_eq!(p.message_id().as_ref().map(ShortString::as_str), Some("e-1"));
        assert_eq!(p.kind().as_ref().map(ShortString::as_str), Some("created"));
        assert_eq!(p.app_id().as_ref().map(ShortString::as_str), Some("outboxd"));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert!(p.timestamp().unwrap() > 1_700_000_000);
        assert_eq!(header(&m, "aggregatetype"), Some(&b"order"[..]));
        assert_eq!(header(&m, "aggregateid"), Some(&b"order-7"[..]));
        assert_eq!(header(&m, "outboxd.lsn"), Some(&b"0/16B3748"[..]));
        assert_eq!(header(&m, "outboxd.index"), Some(&b"3"[..]));
        assert_eq!(header(&m, "tenant"), Some(&b"acme"[..]));
        assert_eq!(header(&m, "id"), None, "the id is the message_id property");
        assert_eq!(header(&m, "type"), None, "the type is the type property");
    }

    #[test]
    fn content_type_only_for_json() {
        let exchange = Template::new("exchange", "outbox").unwrap();
        for body in [None, Some(&b"not json"[..]), Some(&b"{\"a\":"[..])] {
            let m = build(&record(body), &exchange, 1000).unwrap();
            assert_eq!(*m.properties.content_type(), None, "{body:?}");
        }
    }

    #[test]
    fn exchange_from_the_template() {
        let exchange = Template::new("exchange", "events.${aggregatetype}").unwrap();
        let m = build(&record(None), &exchange, 1000).unwrap();
        assert_eq!(m.exchange.as_str(), "events.order");
    }

    #[test]
    fn refusals() {
        let exchange = Template::new("exchange", "outbox").unwrap();
        let err = build(&record(Some(b"12345")), &exchange, 4).unwrap_err();
        assert_eq!(err, Refusal::TooLarge { size: 5, limit: 4 });
        let mut long = record(None);
        long.topic = "k".repeat(256);
        assert!(matches!(
            build(&long, &exchange, 4).unwrap_err(),
            Refusal::InvalidDestination(_)
        ));
        let bad = Template::new("exchange", "x ${type}").unwrap();
        assert!(matches!(
            build(&record(None), &bad, 4).unwrap_err(),
            Refusal::InvalidDestination(_)
        ));
    }
}
