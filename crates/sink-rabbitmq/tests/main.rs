//! sink-rabbitmq against real RabbitMQ: the machine's shared broker (each
//! test with its own uniquely named exchange and queue, removed afterwards
//! or expiring on their own) and private nodes (testkit::rabbitmq) for
//! outages and the consistent-hash plugin.

mod fixture;
mod outage;
mod proxy;
mod publish;
mod topology;
