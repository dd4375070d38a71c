//! sink-redis against the machine's Redis (`OUTBOXD_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), each test under its own key prefix, removed after.

mod append;
