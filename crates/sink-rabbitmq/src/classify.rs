//! What a RabbitMQ outcome means for the pipeline.
//!
//! * **Permanent** — this record can never be published as it is: larger
//!   than `max_message_bytes`, an invalid exchange name or routing key, its
//!   exchange does not exist, the broker returned it (`basic.return`: no
//!   queue is bound for its routing key, `mandatory` is set) or nacked it
//!   (e.g. a queue with `overflow = reject-publish` is full). The
//!   permanent-error policy decides (stop, or dead-letter).
//! * **Retriable** — the connection or channel was lost (broker restart,
//!   network, a channel closed by the broker): the sink reconnects and
//!   re-publishes, in order, every record it has no confirm for. It is never
//!   reported: the pipeline just waits.
//! * **Fatal** — the broker refuses our credentials' access to the exchange
//!   (`ACCESS_REFUSED`), or confirms cannot be enabled: nothing published
//!   from now on could be trusted; stop.

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::ErrorKind;
use outbox_core::{DeliveryError, ErrorClass};

/// Why one record cannot be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The body is larger than the configured limit.
    TooLarge { size: usize, limit: usize },
    /// The exchange or routing key is invalid or missing.
    InvalidDestination(String),
    /// `basic.return`: no queue took it.
    Unroutable { code: u16, text: String },
    /// A nack, or a property the protocol cannot carry.
    Rejected(String),
}

impl Refusal {
    /// The failure reported for this record.
    pub(crate) fn into_error(self) -> DeliveryError {
        let message = match self {
            Refusal::TooLarge { size, limit } => format!(
                "message of {size} bytes is larger than rabbitmq max_message_bytes ({limit})"
            ),
            Refusal::InvalidDestination(why) => format!("invalid rabbitmq destination: {why}"),
            Refusal::Unroutable { code, text } => format!(
                "rabbitmq returned the message ({code} {text}): no queue is bound to the exchange for its routing key"
            ),
            Refusal::Rejected(why) => format!("rabbitmq rejected the message: {why}"),
        };
        DeliveryError {
            class: ErrorClass::Permanent,
            message,
        }
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
    /// Our access was refused: stop.
    Fatal,
}

/// Classifies an error of `basic.publish` or of a publisher confirm.
pub(crate) fn classify(error: &lapin::Error) -> Loss {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Loss::Fatal,
            AMQPErrorKind::Soft(_) => Loss::ChannelClosedByBroker,
            AMQPErrorKind::Hard(_) => Loss::Reconnect,
        },
        _ => Loss::Reconnect,
    }
}

/// A fatal failure of the sink.
pub(crate) fn fatal(message: String) -> DeliveryError {
    DeliveryError {
        class: ErrorClass::Fatal,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

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
        for refusal in [
            Refusal::TooLarge { size: 2, limit: 1 },
            Refusal::InvalidDestination("x".into()),
            Refusal::Unroutable {
                code: 312,
                text: "NO_ROUTE".into(),
            },
            Refusal::Rejected("nack".into()),
        ] {
            assert_eq!(refusal.into_error().class, ErrorClass::Permanent);
        }
    }
}
