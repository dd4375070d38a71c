//! What a Redis error means for the pipeline.
//!
//! The append is idempotent, so anything that may succeed later (the
//! connection dropped, the server loading, out of memory, a read-only replica
//! during a failover, a timed-out reply) is retried by the sink with the
//! whole batch, in order. Refused credentials are fatal; an error about one
//! record's destination is permanent for that record.

use outbox_core::{ErrorClass, PermanentReason};
use redis::{ErrorKind, RedisError};

/// The class of an error reply's code (`WRONGTYPE`, `OOM`, …) for one append.
pub fn classify_reply(code: &str, message: &str) -> ErrorClass {
    match code {
        "NOAUTH" | "WRONGPASS" => ErrorClass::Fatal,
        "NOPERM" => ErrorClass::Permanent {
            reason: PermanentReason::Unauthorized,
        },
        "WRONGTYPE" => ErrorClass::Permanent {
            reason: PermanentReason::InvalidDestination,
        },
        "OOM" | "BUSY" | "LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "NOSCRIPT"
        | "NOREPLICAS" | "MOVED" | "ASK" => ErrorClass::Retriable,
        // A script error wraps the command's: look inside once.
        _ if message.contains("WRONGTYPE") => ErrorClass::Permanent {
            reason: PermanentReason::InvalidDestination,
        },
        _ if message.contains("OOM") => ErrorClass::Retriable,
        _ => ErrorClass::Permanent {
            reason: PermanentReason::Rejected,
        },
    }
}

/// The class of a client-side error (connecting, a whole batch).
pub fn classify(err: &RedisError) -> ErrorClass {
    match err.kind() {
        ErrorKind::AuthenticationFailed => ErrorClass::Fatal,
        ErrorKind::InvalidClientConfig => ErrorClass::Fatal,
        _ if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() => ErrorClass::Retriable,
        _ => match err.code() {
            Some(code) => classify_reply(code, &err.to_string()),
            None => ErrorClass::Retriable,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_by_what_the_caller_must_do() {
        assert_eq!(classify_reply("WRONGPASS", ""), ErrorClass::Fatal);
        assert_eq!(classify_reply("OOM", ""), ErrorClass::Retriable);
        assert_eq!(classify_reply("READONLY", ""), ErrorClass::Retriable);
        assert_eq!(
            classify_reply("ERR", "Error in script: WRONGTYPE Operation against a key"),
            ErrorClass::Permanent {
                reason: PermanentReason::InvalidDestination
            }
        );
        assert_eq!(
            classify_reply("NOPERM", ""),
            ErrorClass::Permanent {
                reason: PermanentReason::Unauthorized
            }
        );
    }
}
