//! What a Kafka error means for the pipeline.

use outbox_core::{ErrorClass, PermanentReason};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Classifies a produce or delivery error.
///
/// * **Permanent** — this record can never be delivered as it is: larger
///   than the limits, the topic is not authorized, does not exist (and is not
///   created automatically), or is not a valid name; the broker's policy
///   rejects it. The permanent-error policy decides (stop, or dead-letter).
/// * **Fatal** — the idempotent producer itself can no longer guarantee
///   order or no-duplicates (librdkafka's `_FATAL`, fenced, sequence errors),
///   or the cluster refuses idempotent writes or our credentials: stop.
/// * **Retriable** — everything else (broker down, leader moved, timeouts of
///   a request): librdkafka retries those itself, forever with
///   `message.timeout.ms=0`; if one is reported anyway, the record is failed
///   and acking stops.
pub fn classify(error: &KafkaError) -> ErrorClass {
    let Some(code) = error.rdkafka_error_code() else {
        return ErrorClass::Retriable;
    };
    let permanent = |reason| ErrorClass::Permanent { reason };
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize => {
            permanent(PermanentReason::TooLarge)
        }
        RDKafkaErrorCode::InvalidMessage
        | RDKafkaErrorCode::InvalidRecord
        | RDKafkaErrorCode::PolicyViolation => permanent(PermanentReason::Rejected),
        RDKafkaErrorCode::TopicAuthorizationFailed => permanent(PermanentReason::Unauthorized),
        RDKafkaErrorCode::UnknownTopicOrPartition
        | RDKafkaErrorCode::UnknownTopic
        | RDKafkaErrorCode::UnknownPartition => permanent(PermanentReason::Unroutable),
        RDKafkaErrorCode::InvalidTopic => permanent(PermanentReason::InvalidDestination),
        RDKafkaErrorCode::Fatal
        | RDKafkaErrorCode::OutOfOrderSequenceNumber
        | RDKafkaErrorCode::InvalidProducerEpoch
        | RDKafkaErrorCode::ProducerFenced
        | RDKafkaErrorCode::InvalidProducerIdMapping
        | RDKafkaErrorCode::ClusterAuthorizationFailed
        | RDKafkaErrorCode::SaslAuthenticationFailed
        | RDKafkaErrorCode::Authentication
        | RDKafkaErrorCode::InvalidRequiredAcks => ErrorClass::Fatal,
        _ => ErrorClass::Retriable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let produce = |code| KafkaError::MessageProduction(code);
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::MessageSizeTooLarge)),
            ErrorClass::Permanent {
                reason: PermanentReason::TooLarge
            }
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::TopicAuthorizationFailed)),
            ErrorClass::Permanent {
                reason: PermanentReason::Unauthorized
            }
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::UnknownTopic)),
            ErrorClass::Permanent {
                reason: PermanentReason::Unroutable
            }
        );
        assert_eq!(classify(&produce(RDKafkaErrorCode::Fatal)), ErrorClass::Fatal);
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::SaslAuthenticationFailed)),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::OutOfOrderSequenceNumber)),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::BrokerTransportFailure)),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::MessageTimedOut)),
            ErrorClass::Retriable
        );
        assert_eq!(classify(&KafkaError::Canceled), ErrorClass::Retriable);
    }
}
