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
            payload_kind: ValueKind::Text,
            extra: vec![],
            envelope: vec![],
            key: None,
            timestamp_ms: None,
            commit_time_ms: None,
            partition: None,
            source: None,
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

fn fields(entries: &[&str]) -> Vec<AdditionalField> {
    entries.iter().map(|e| e.parse().unwrap()).collect()
}

#[test]
fn additional_fields_parse_debeziums_placement_syntax() {
    assert_eq!(
        fields(&[
            "type:header:eventType",
            "tenant:header",
            "version:envelope:v",
            "shard:partition"
        ]),
        vec![
            AdditionalField {
                column: "type".into(),
                placement: Placement::Header("eventType".into())
            },
            AdditionalField {
                column: "tenant".into(),
                placement: Placement::Header("tenant".into())
            },
            AdditionalField {
                column: "version".into(),
                placement: Placement::Envelope("v".into())
            },
            AdditionalField {
                column: "shard".into(),
                placement: Placement::Partition
            },
        ]
    );
    for bad in ["type", "type:body", "type:header:", ":header", "a:header:b:c"] {
        assert!(bad.parse::<AdditionalField>().is_err(), "{bad:?} parsed");
    }
    // Debezium ignores an alias on a partition placement.
    assert_eq!(fields(&["shard:partition:p"]), fields(&["shard:partition"]));
}

#[test]
fn header_placements_aliases_headers_column_and_static_headers_in_order() {
    let mapping = ColumnMapping {
        additional: fields(&[
            "type:header:eventType",
            "trace:header:traceparent",
            "tenant:header",
        ]),
        headers_column: Some("headers".into()),
        ..ColumnMapping::default()
    };
    let lookup = |c: &str| match c {
        "headers" => ColumnLookup::Json(Bytes::from_static(br#"{"b": "x", "a": 1, "n": null}"#)),
        other => row(other),
    };
    let event = mapping.event_from_row(position(), lookup).unwrap();
    let routing =
        Routing::default().with_static_headers(vec![("source".into(), Bytes::from_static(b"billing"))]);
    let record = routing.route(&event, None).unwrap();
    let got: Vec<(&str, &[u8])> = record
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_ref()))
        .collect();
    assert_eq!(
        got,
        [
            ("id", &b"6f1c2a52-0000-4000-8000-000000000001"[..]),
            ("type", b"OrderCreated"),
            ("aggregatetype", b"order"),
            ("outboxd.lsn", b"16/B374D848"),
            ("outboxd.index", b"3"),
            ("eventType", b"OrderCreated"),
            ("tenant", b"acme"),
            ("a", b"1"),
            ("b", b"x"),
            ("source", b"billing"),
        ]
    );
    let not_object = |c: &str| match c {
        "headers" => ColumnLookup::Json(Bytes::from_static(b"[1]")),
        other => row(other),
    };
    let err = mapping.event_from_row(position(), not_object).unwrap_err();
    assert!(err.to_string().contains("\"headers\" is malformed"), "{err}");
}

#[test]
fn key_column_apart_from_the_aggregate_id_and_its_null_is_refused() {
    let mapping = ColumnMapping {
        key: Some("tenant".into()),
        ..ColumnMapping::default()
    };
    let record = Routing::default()
        .route(&mapping.event_from_row(position(), row).unwrap(), None)
        .unwrap();
    assert_eq!(record.key, Bytes::from_static(b"acme"));
    assert_eq!(header(&record, "aggregatetype").as_deref(), Some("order"));
    let mapping = ColumnMapping {
        key: Some("trace".into()),
        ..ColumnMapping::default()
    };
    assert_eq!(
        mapping.event_from_row(position(), row),
        Err(MappingError::Null("trace".into()))
    );
}

#[test]
fn timestamp_column_wins_over_the_commit_time() {
    let mapping = ColumnMapping {
        timestamp: Some("ts".into()),
        ..ColumnMapping::default()
    };
    let lookup = |c: &str| match c {
        "ts" => ColumnLookup::Value(Bytes::from_static(b"2024-05-01 14:30:00.123456+02")),
        other => row(other),
    };
    let mut event = mapping.event_from_row(position(), lookup).unwrap();
    event.commit_time_ms = Some(5);
    assert_eq!(
        Routing::default().route(&event, None).unwrap().timestamp_ms,
        Some(1_714_566_600_123)
    );
    event.timestamp_ms = None;
    assert_eq!(
        Routing::default().route(&event, None).unwrap().timestamp_ms,
        Some(5)
    );
}

#[test]
fn partition_column_must_be_a_non_negative_integer_and_null_leaves_it_to_the_key() {
    let mapping = ColumnMapping {
        additional: fields(&["shard:partition"]),
        ..ColumnMapping::default()
    };
    let with = |value: Option<&'static str>| {
        let lookup = move |c: &str| match (c, value) {
            ("shard", Some(v)) => ColumnLookup::Json(Bytes::from_static(v.as_bytes())),
            ("shard", None) => ColumnLookup::Null,
            (other, _) => row(other),
        };
        mapping.event_from_row(position(), lookup).map(|e| e.partition)
    };
    assert_eq!(with(Some("5")), Ok(Some(5)));
    assert_eq!(with(None), Ok(None));
    assert!(with(Some("-1")).is_err());
    assert!(with(Some("x")).is_err());
}

#[test]
fn envelope_wraps_the_payload_like_debezium_and_refuses_bytea_fields() {
    let mapping = ColumnMapping {
        additional: fields(&["type:envelope:eventType", "tenant:envelope", "trace:envelope"]),
        ..ColumnMapping::default()
    };
    let json_payload = |c: &str| match c {
        "payload" => ColumnLookup::Json(Bytes::from_static(br#"{"total": 10}"#)),
        other => row(other),
    };
    let event = mapping.event_from_row(position(), json_payload).unwrap();
    let raw = Routing::default().route(&event, None).unwrap();
    assert_eq!(
        raw.value.as_deref(),
        Some(&br#"{"payload":{"total": 10},"eventType":"OrderCreated","tenant":"acme","trace":null}"#[..])
    );
    let as_string = Routing::default()
        .with_encoding(PayloadEncoding::JsonString)
        .route(&event, None)
        .unwrap();
    assert_eq!(
        as_string.value.as_deref(),
        Some(
            &br#"{"payload":"{\"total\": 10}","eventType":"OrderCreated","tenant":"acme","trace":null}"#[..]
        )
    );
    let bytea = |c: &str| match c {
        "tenant" => ColumnLookup::Binary(Bytes::from_static(&[0, 1])),
        other => json_payload(other),
    };
    let event = mapping.event_from_row(position(), bytea).unwrap();
    let err = Routing::default().route(&event, None).unwrap_err();
    assert!(err.to_string().contains("\"tenant\" is a bytea column"), "{err}");
}

#[test]
fn json_string_encoding_quotes_text_and_json_and_passes_bytea_through() {
    let routing = Routing::default().with_encoding(PayloadEncoding::JsonString);
    let with = |payload: ColumnLookup| {
        let lookup = move |c: &str| if c == "payload" { payload.clone() } else { row(c) };
        let event = ColumnMapping::default()
            .event_from_row(position(), lookup)
            .unwrap();
        routing.route(&event, None).unwrap().value
    };
    assert_eq!(
        with(ColumnLookup::Json(Bytes::from_static(br#"{"a":"\u00e9"}"#))).as_deref(),
        Some(&br#""{\"a\":\"\\u00e9\"}""#[..])
    );
    assert_eq!(
        with(ColumnLookup::Value(Bytes::from("line\n\"q\""))).as_deref(),
        Some(&br#""line\n\"q\"""#[..])
    );
    let bytes = Bytes::from_static(&[0x00, 0xff, b'"']);
    assert_eq!(with(ColumnLookup::Binary(bytes.clone())), Some(bytes));
}

#[test]
fn empty_payload_is_a_tombstone_only_when_enabled() {
    let empty = |c: &str| {
        if c == "payload" {
            ColumnLookup::Binary(Bytes::new())
        } else {
            row(c)
        }
    };
    let event = ColumnMapping::default()
        .event_from_row(position(), empty)
        .unwrap();
    assert_eq!(
        Routing::default().route(&event, None).unwrap().value,
        Some(Bytes::new())
    );
    let tombstones = Routing::default().with_tombstone_on_empty(true);
    assert_eq!(tombstones.route(&event, None).unwrap().value, None);
    // A payload that is not empty is untouched.
    let event = ColumnMapping::default().event_from_row(position(), row).unwrap();
    assert_eq!(
        tombstones.route(&event, None).unwrap().value.as_deref(),
        Some(&br#"{"total": 10}"#[..])
    );
}

#[test]
fn cloudevents_binary_mode_adds_ce_headers_and_leaves_the_payload_untouched() {
    let json_payload = |c: &str| match c {
        "payload" => ColumnLookup::Json(Bytes::from_static(br#"{"total": 10}"#)),
        other => row(other),
    };
    let mut event = ColumnMapping::default()
        .event_from_row(position(), json_payload)
        .unwrap();
    event.commit_time_ms = Some(1_714_566_600_123);
    event.source = Some("public.outbox".into());
    let routing = Routing::default().with_cloudevents(Some(CloudEvents {
        source: "/outboxd/app/${table}".into(),
    }));
    let record = routing.route(&event, None).unwrap();
    assert_eq!(record.value.as_deref(), Some(&br#"{"total": 10}"#[..]));
    let ce: Vec<(&str, &[u8])> = record
        .headers
        .iter()
        .skip(5)
        .map(|(n, v)| (n.as_str(), v.as_ref()))
        .collect();
    assert_eq!(
        ce,
        [
            ("ce_specversion", &b"1.0"[..]),
            ("ce_id", b"6f1c2a52-0000-4000-8000-000000000001"),
            ("ce_source", b"/outboxd/app/public.outbox"),
            ("ce_type", b"OrderCreated"),
            ("ce_time", b"2024-05-01T12:30:00.123Z"),
            ("ce_subject", b"order-42"),
            ("content-type", b"application/json"),
        ]
    );
    // A bytea payload is not JSON.
    let bytea = |c: &str| match c {
        "payload" => ColumnLookup::Binary(Bytes::from_static(&[1, 2])),
        other => row(other),
    };
    let event = ColumnMapping::default()
        .event_from_row(position(), bytea)
        .unwrap();
    let record = routing.route(&event, None).unwrap();
    assert_eq!(
        header(&record, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        header(&record, "ce_time"),
        None,
        "no commit time known, no ce_time"
    );
}
