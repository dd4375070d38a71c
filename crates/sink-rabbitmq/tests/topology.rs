//! `setup` and `check` on the broker: declaring the exchange, and
//! inspecting it without the management API (the shared broker has none).

use sink_rabbitmq::{declare_exchange, inspect_exchange, Bindings, ExchangeType, RabbitConfig, SinkError};
use testkit::rabbitmq::{shared_url, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_then_inspect_the_exchange() {
    let exchange = unique_name("sink-test-setup");
    // Port 1 refuses at once: the management API is not reachable.
    let config = RabbitConfig::new(&shared_url())
        .unwrap()
        .management("127.0.0.1:1");

    let missing = inspect_exchange(&config, &exchange, ExchangeType::Topic)
        .await
        .unwrap();
    assert!(!missing.exists);

    declare_exchange(&config, &exchange, ExchangeType::Topic)
        .await
        .unwrap();
    declare_exchange(&config, &exchange, ExchangeType::Topic)
        .await
        .expect("declaring again is fine");
    let report = inspect_exchange(&config, &exchange, ExchangeType::Topic)
        .await
        .unwrap();
    assert!(report.exists);
    assert_eq!(report.kind.as_deref(), Some("topic"));
    assert_eq!(report.as_expected, Some(true));
    match &report.bindings {
        Bindings::Unknown { why, how_to_check } => {
            assert!(why.contains("not reachable"), "{why}");
            assert!(
                how_to_check.contains("rabbitmqctl list_bindings"),
                "{how_to_check}"
            );
        }
        other => panic!("{other:?}"),
    }

    let err = declare_exchange(&config, &exchange, ExchangeType::Direct)
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::ExchangeMismatch { .. }), "{err}");
    let report = inspect_exchange(&config, &exchange, ExchangeType::Direct)
        .await
        .unwrap();
    assert_eq!(report.kind.as_deref(), Some("topic"), "{report:?}");
    assert_eq!(report.as_expected, Some(false));

    delete_exchange(&exchange).await;
}

async fn delete_exchange(exchange: &str) {
    let connection = lapin::Connection::connect(&shared_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_delete(exchange.into(), lapin::options::ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}
