//! Column mapping and routing: the record a row becomes.

use bytes::Bytes;
use outbox_core::*;

fn row(column: &str) -> ColumnLookup {
    match column {
        "id" => ColumnLookup::Value(Bytes::from_static(b"6f1c2a52-0000-4000-8000-000000000001")),
        "aggregatetype" => ColumnLookup::Value(Bytes::from_static(b"order")),
        "aggregateid" => ColumnLookup::Value(Bytes::from_static(b"order-42")),
        "type" => ColumnLookup::Value(Bytes::from_static(b"OrderCreated")),
        "payload" => ColumnLookup::Value(Bytes::from_static(br#"{"total": 10}"#)),
        "tenant" => ColumnLookup::Value(Bytes::from_static(b"acme")),
        "trace" => ColumnLookup::Null,
        "destination" => ColumnLookup::Value(Bytes::from_static(b"orders.v2")),
        _ => ColumnLookup::Missing,
    }
}

fn position() -> Position {
    Position {
        commit_lsn: "16/B374D848".parse().unwrap(),
        index: 3,
    }
}

fn header(record: &Record, name: &str) -> Option<String> {
    record
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
}

#[test]
fn default_mapping_and_routing_match_debeziums_outbox_router() {
    let event = ColumnMapping::default().event_from_row(position(), row).unwrap();
    assert_eq!(
        event,
        OutboxEvent {
            id: "6f1c2a52-0000-4000-8000-000000000001".into(),
            aggregate_type: "order".into(),
            aggregate_id: Bytes::from_static(b"order-42"),
            event_type: "OrderCreated".into(),
            payload: Some(Bytes::from_static(br#"{"total": 10}"#)),
            extra: vec![],
            topic: None,
            position: position(),
        }
    );
    let record = Routing::default()
        .route(&event, Some("16/B374D900".parse().unwrap()))
        .unwrap();
    assert_eq!(record.topic, "outbox.event.order");
    assert_eq!(record.key, Bytes::from_static(b"order-42"));
    assert_eq!(record.value, Some(Bytes::from_static(br#"{"total": 10}"#)));
    let names: Vec<&str> = record.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "type",
            "aggregatetype",
            "outboxd.lsn",
            "outboxd.index",
            "outboxd.end_lsn"
        ]
    );
    assert_eq!(header(&record, "outboxd.lsn").as_deref(), Some("16/B374D848"));
    assert_eq!(header(&record, "outboxd.index").as_deref(), Some("3"));
    assert_eq!(header(&record, "outboxd.end_lsn").as_deref(), Some("16/B374D900"));
    assert_eq!(
        header(&record, "id").as_deref(),
        Some("6f1c2a52-0000-4000-8000-000000000001")
    );
}

#[test]
fn extra_columns_become_headers_and_null_extras_are_left_out() {
    let mapping = ColumnMapping {
        extra_headers: vec!["tenant".into(), "trace".into()],
        ..ColumnMapping::default()
    };
    let event = mapping.event_from_row(position(), row).unwrap();
    let record = Routing::default().route(&event, None).unwrap();
    assert_eq!(header(&record, "tenant").as_deref(), Some("acme"));
    assert_eq!(header(&record, "trace"), None);
    assert_eq!(header(&record, "outboxd.end_lsn"), None);
}

#[test]
fn null_payload_is_a_tombstone_only_when_enabled() {
    let lookup = |c: &str| {
        if c == "payload" {
            ColumnLookup::Null
        } else {
            row(c)
        }
    };
    let event = ColumnMapping::default()
        .event_from_row(position(), lookup)
        .unwrap();
    assert_eq!(event.payload, None);
    let plain = Routing::new(TopicRule::default(), false)
        .unwrap()
        .route(&event, None)
        .unwrap();
    assert_eq!(plain.value, Some(Bytes::new()));
    let tombstone = Routing::new(TopicRule::default(), true)
        .unwrap()
        .route(&event, None)
        .unwrap();
    assert_eq!(tombstone.value, None);
}

#[test]
fn fixed_template_and_column_topics() {
    let mapping = ColumnMapping {
        topic: Some("destination".into()),
        ..ColumnMapping::default()
    };
    let event = mapping.event_from_row(position(), row).unwrap();
    let route = |rule| {
        Routing::new(rule, false)
            .unwrap()
            .route(&event, None)
            .unwrap()
            .topic
    };
    assert_eq!(route(TopicRule::Fixed("events".into())), "events");
    assert_eq!(
        route(TopicRule::Template("${aggregatetype}.${type}".into())),
        "order.OrderCreated"
    );
    assert_eq!(route(TopicRule::Column), "orders.v2");
}

#[test]
fn unknown_template_placeholder_is_refused_at_configuration() {
    let err = Routing::new(TopicRule::Template("outbox.${aggregate}".into()), false).unwrap_err();
    assert!(
        err.to_string().contains("unknown placeholder ${aggregate}"),
        "{err}"
    );
}

#[test]
fn illegal_topic_names_are_routing_errors() {
    let lookup = |c: &str| {
        if c == "aggregatetype" {
            ColumnLookup::Value(Bytes::from_static(b"or der/1"))
        } else {
            row(c)
        }
    };
    let event = ColumnMapping::default()
        .event_from_row(position(), lookup)
        .unwrap();
    let err = Routing::default().route(&event, None).unwrap_err();
    assert!(
        matches!(&err, RoutingError::InvalidTopic { topic, .. } if topic == "outbox.event.or der/1"),
        "{err:?}"
    );
    // The same name is a legal AMQP routing key; 256 bytes is not.
    let amqp = NameRule::Bytes {
        max: 255,
        allow_empty: true,
    };
    let record = Routing::default().with_names(amqp).route(&event, None).unwrap();
    assert_eq!(record.topic, "outbox.event.or der/1");
    let long = Routing::new(TopicRule::Fixed("k".repeat(256)), false)
        .unwrap()
        .with_names(amqp);
    assert!(matches!(
        long.route(&event, None),
        Err(RoutingError::InvalidTopic { .. })
    ));
}

#[test]
fn missing_and_null_required_columns_are_mapping_errors() {
    let mapping = ColumnMapping {
        id: "event_id".into(),
        ..ColumnMapping::default()
    };
    assert_eq!(
        mapping.event_from_row(position(), row),
        Err(MappingError::MissingColumn("event_id".into()))
    );
    let lookup = |c: &str| {
        if c == "aggregateid" {
            ColumnLookup::Null
        } else {
            row(c)
        }
    };
    assert_eq!(
        ColumnMapping::default().event_from_row(position(), lookup),
        Err(MappingError::Null("aggregateid".into()))
    );
}
