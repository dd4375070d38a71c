//! What a RabbitMQ outcome means for the pipeline.
//!
//! * **Permanent** — this record can never be published as it is: larger
//!   than `max_message_bytes` (`TooLarge`), an invalid exchange name or
//!   routing key or a missing exchange (`InvalidDestination`), the broker
//!   returned it (`basic.return`: no queue is bound for its routing key,
//!   `mandatory` is set: `Unroutable`), nacked it (e.g. a queue with
//!   `overflow = reject-publish` is full) or closed the channel because of it
//!   (`Rejected`), or our user may not write to its exchange
//!   (`ACCESS_REFUSED`: `Unauthorized`). The permanent-error policy decides
//!   (stop, or dead-letter).
//! * **Retriable** — the connection or channel was lost (broker restart,
//!   network, a channel closed by the broker): the sink reconnects and
//!   re-publishes, in order, every record it has no confirm for. It is never
//!   reported: the pipeline just waits.
//! * **Fatal** — the broker closes the connection as not allowed
//!   (`NOT_ALLOWED`), or the channel is not in confirm mode: nothing
//!   published from now on could be trusted; stop.

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::ErrorKind;
use outbox_core::{DeliveryError, PermanentReason};

/// Why one record cannot be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The body is larger than the configured limit.
    TooLarge { size: usize, limit: usize },
    /// The exchange or routing key is invalid or missing.
    InvalidDestination(String),
    /// `basic.return`: no queue took it.
    Unroutable { code: u16, text: String },
    /// A nack, a channel closed by the broker because of it, or a property
    /// the protocol cannot carry.
    Rejected(String),
    /// `ACCESS_REFUSED` for its exchange.
    Unauthorized(String),
}

impl Refusal {
    /// The failure reported for this record.
    pub(crate) fn into_error(self) -> DeliveryError {
        let (reason, message) = match self {
            Refusal::TooLarge { size, limit } => (
                PermanentReason::TooLarge,
                format!("message of {size} bytes is larger than rabbitmq max_message_bytes ({limit})"),
            ),
            Refusal::InvalidDestination(why) => (
                PermanentReason::InvalidDestination,
                format!("invalid rabbitmq destination: {why}"),
            ),
            Refusal::Unroutable { code, text } => (
                PermanentReason::Unroutable,
                format!(
                    "rabbitmq returned the message ({code} {text}): no queue is bound to the exchange for its routing key"
                ),
            ),
            Refusal::Rejected(why) => (
                PermanentReason::Rejected,
                format!("rabbitmq rejected the message: {why}"),
            ),
            Refusal::Unauthorized(why) => (
                PermanentReason::Unauthorized,
                format!("rabbitmq refused access: {why}"),
            ),
        };
        DeliveryError::permanent(reason, message)
    }
}

/// What a lapin error on the publishing channel means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loss {
    /// The connection or channel is gone: reconnect, re-publish.
    Reconnect,
    /// The broker closed the channel because of something a message did
    /// (`NOT_FOUND`, `PRECONDITION_FAILED`, …): reconnect and re-publish one
    /// by one, to fail only the record that causes it.
    ChannelClosedByBroker,
    /// The connection is not allowed: stop.
    Fatal,
}

/// Classifies an error of `basic.publish` or of a publisher confirm.
pub(crate) fn classify(error: &lapin::Error) -> Loss {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Loss::Fatal,
            AMQPErrorKind::Soft(_) => Loss::ChannelClosedByBroker,
            AMQPErrorKind::Hard(_) => Loss::Reconnect,
        },
        _ => Loss::Reconnect,
    }
}

/// The refusal for a record that made the broker close the channel.
pub(crate) fn channel_refusal(err: &lapin::Error) -> Refusal {
    let text = match err.kind() {
        ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        _ => err.to_string(),
    };
    match err.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => Refusal::InvalidDestination(text),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Refusal::Unauthorized(text),
            _ => Refusal::Rejected(text),
        },
        _ => Refusal::Rejected(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;
    use outbox_core::ErrorClass;

    fn protocol(kind: AMQPErrorKind) -> lapin::Error {
        lapin::Error::from(ErrorKind::ProtocolError(AMQPError::new(kind, "x".into())))
    }

    #[test]
    fn classes() {
        assert_eq!(
            classify(&protocol(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))),
            Loss::ChannelClosedByBroker
        );
        assert_eq!(
            classify(&protocol(AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED))),
            Loss::ChannelClosedByBroker
        );
        assert_eq!(
            classify(&protocol(AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED))),
            Loss::Fatal
        );
        assert_eq!(
            classify(&protocol(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED))),
            Loss::Reconnect
        );
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&io), Loss::Reconnect);
    }

    #[test]
    fn refusals_are_permanent() {
        for (refusal, reason) in [
            (Refusal::TooLarge { size: 2, limit: 1 }, PermanentReason::TooLarge),
            (
                Refusal::InvalidDestination("x".into()),
                PermanentReason::InvalidDestination,
            ),
            (
                Refusal::Unroutable {
                    code: 312,
                    text: "NO_ROUTE".into(),
                },
                PermanentReason::Unroutable,
            ),
            (Refusal::Rejected("nack".into()), PermanentReason::Rejected),
            (Refusal::Unauthorized("403".into()), PermanentReason::Unauthorized),
        ] {
            assert_eq!(refusal.into_error().class, ErrorClass::Permanent { reason });
        }
        let refused = protocol(AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED));
        assert!(matches!(channel_refusal(&refused), Refusal::Unauthorized(_)));
        let missing = protocol(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND));
        assert!(matches!(
            channel_refusal(&missing),
            Refusal::InvalidDestination(_)
        ));
    }
}
