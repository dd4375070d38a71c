//! sink-kafka against librdkafka's in-process mock cluster (real Kafka
//! protocol over TCP), read back with a real consumer.

mod delivery;
mod fence;
