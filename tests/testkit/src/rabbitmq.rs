//! RabbitMQ for tests: the machine's shared broker (isolated by unique
//! names), private broker nodes for outages and plugins, and a reader that
//! returns what reached a queue.
//!
//! The shared broker (`127.0.0.1:5672`, guest/guest, or
//! `OUTBOXD_TEST_RABBITMQ`) is never stopped or reconfigured: tests declare
//! their own uniquely named exchanges and queues and delete them afterwards.
//! A test that takes the broker down, or needs a plugin (the consistent-hash
//! exchange), starts a [`RabbitNode`]: a private `rabbitmq-server` with its
//! own node name, free ports, data, logs and Erlang cookie in a temporary
//! directory, removed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};
use tempfile::TempDir;

use crate::error::HarnessError;

/// Where RabbitMQ's scripts are on Debian.
const SBIN: &str = "/usr/lib/rabbitmq/bin";

/// The shared broker's URL: `OUTBOXD_TEST_RABBITMQ`, else the machine's
/// RabbitMQ on 5672 as guest.
pub fn shared_url() -> String {
    std::env::var("OUTBOXD_TEST_RABBITMQ").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A name no other test (or earlier run) uses: `prefix` + process id +
/// counter + time.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private RabbitMQ node, with the consistent-hash exchange plugin
/// enabled. Dropping it stops the node and removes its directory.
#[derive(Debug)]
pub struct RabbitNode {
    dir: TempDir,
    node: String,
    port: u16,
    management_port: Option<u16>,
    child: Option<Child>,
}

impl RabbitNode {
    /// Starts a node on free ports and waits until it accepts connections.
    pub fn start() -> Result<Self, HarnessError> {
        Self::launch(false)
    }

    /// Starts a node with the management plugin too (HTTP API on a free
    /// port of 127.0.0.1, see [`RabbitNode::management_address`]).
    pub fn start_with_management() -> Result<Self, HarnessError> {
        Self::launch(true)
    }

    fn launch(management: bool) -> Result<Self, HarnessError> {
        let server = PathBuf::from(SBIN).join("rabbitmq-server");
        if !server.exists() {
            return Err(HarnessError::new(format!(
                "{} not found: install RabbitMQ (Debian: apt-get install rabbitmq-server)",
                server.display()
            )));
        }
        let dir = tempfile::Builder::new().prefix("outboxd-rabbit-").tempdir()?;
        let management_port = if management { Some(free_port()?) } else { None };
        let plugins = if management {
            "[rabbitmq_consistent_hash_exchange,rabbitmq_management].\n"
        } else {
            "[rabbitmq_consistent_hash_exchange].\n"
        };
        std::fs::write(dir.path().join("enabled_plugins"), plugins)?;
        let mut conf = String::new();
        if let Some(port) = management_port {
            conf.push_str(&format!(
                "management.tcp.port = {port}\nmanagement.tcp.ip = 127.0.0.1\n"
            ));
        }
        std::fs::write(dir.path().join("rabbitmq.conf"), conf)?;
        let node = format!("{}@localhost", unique_name("outboxd-test"));
        let port = free_port()?;
        let dist_port = free_port()?;
        let log = std::fs::File::create(dir.path().join("server.out"))?;
        let child = Command::new(&server)
            .current_dir(dir.path())
            .envs(node_env(dir.path(), &node))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.path().join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", dir.path().join("rabbitmq"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                dir.path().join("advanced.config"),
            )
            .env("RABBITMQ_CONF_ENV_FILE", dir.path().join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", dir.path().join("pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| HarnessError::new(format!("cannot start {}: {e}", server.display())))?;
        let rabbit = RabbitNode {
            dir,
            node,
            port,
            management_port,
            child: Some(child),
        };
        rabbit.wait_started()?;
        Ok(rabbit)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` of the management HTTP API, when started with it.
    pub fn management_address(&self) -> Option<String> {
        self.management_port.map(|port| format!("127.0.0.1:{port}"))
    }

    /// Runs `rabbitmqctl` against this node; its output.
    pub fn ctl(&self, args: &[&str]) -> Result<String, HarnessError> {
        let output = Command::new(PathBuf::from(SBIN).join("rabbitmqctl"))
            .current_dir(self.dir.path())
            .envs(node_env(self.dir.path(), &self.node))
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(HarnessError::new(format!(
                "rabbitmqctl {} failed: {text}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(text)
    }

    /// Stops the broker application (every client connection is closed;
    /// the node and its durable data stay): an outage.
    pub fn stop_app(&self) -> Result<(), HarnessError> {
        self.ctl(&["stop_app"]).map(drop)
    }

    /// Starts the broker application again and waits for it.
    pub fn start_app(&self) -> Result<(), HarnessError> {
        self.ctl(&["start_app"])?;
        self.wait_started()
    }

    /// Creates a virtual host (guest gets all permissions on it).
    pub fn add_vhost(&self, vhost: &str) -> Result<(), HarnessError> {
        self.ctl(&["add_vhost", vhost])?;
        self.ctl(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])
            .map(drop)
    }

    /// Deletes a virtual host and everything in it.
    pub fn delete_vhost(&self, vhost: &str) -> Result<(), HarnessError> {
        self.ctl(&["delete_vhost", vhost]).map(drop)
    }

    fn wait_started(&self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let listening = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if self.ctl(&["await_startup", "--timeout", "60"]).is_ok()
                && listening(self.port)
                && self.management_port.is_none_or(listening)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default();
                return Err(HarnessError::new(format!(
                    "private rabbitmq node {} did not start within 90 s; its output:\n{log}",
                    self.node
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The environment that makes the scripts talk to this node only: its own
/// `HOME` (so its own Erlang cookie) and node name.
fn node_env(dir: &std::path::Path, node: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HOME", dir.display().to_string()),
        ("RABBITMQ_NODENAME", node.to_owned()),
    ]
}

fn free_port() -> Result<u16, HarnessError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One message as a consumer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpMessage {
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// The body.
    pub body: Vec<u8>,
    /// `message_id`.
    pub message_id: Option<String>,
    /// `type`.
    pub kind: Option<String>,
    /// `app_id`.
    pub app_id: Option<String>,
    /// `content_type`.
    pub content_type: Option<String>,
    /// `delivery_mode`.
    pub delivery_mode: Option<u8>,
    /// `timestamp` (seconds).
    pub timestamp: Option<u64>,
    /// Headers whose values are strings.
    pub headers: Vec<(String, String)>,
}

impl AmqpMessage {
    /// The header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Takes (and acks) messages from `queue` until `expected` were read or
/// nothing arrived for `idle`.
pub async fn read_queue(
    url: &str,
    queue: &str,
    expected: usize,
    idle: Duration,
) -> Result<Vec<AmqpMessage>, HarnessError> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| HarnessError::new(format!("cannot connect to {url}: {e}")))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| HarnessError::new(e.to_string()))?;
    let mut read = Vec::new();
    let mut last = Instant::now();
    while read.len() < expected && last.elapsed() < idle {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .map_err(|e| HarnessError::new(format!("basic.get from {queue}: {e}")))?;
        let Some(message) = got else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        last = Instant::now();
        let delivery = message.delivery;
        let p = &delivery.properties;
        let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
        let headers = p
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter_map(|(k, v)| match v {
                        AMQPValue::LongString(s) => Some((
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        )),
                        AMQPValue::ShortString(s) => Some((k.as_str().to_owned(), s.as_str().to_owned())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        read.push(AmqpMessage {
            exchange: delivery.exchange.as_str().to_owned(),
            routing_key: delivery.routing_key.as_str().to_owned(),
            body: delivery.data.clone(),
            message_id: text(p.message_id()),
            kind: text(p.kind()),
            app_id: text(p.app_id()),
            content_type: text(p.content_type()),
            delivery_mode: *p.delivery_mode(),
            timestamp: *p.timestamp(),
            headers,
        });
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| HarnessError::new(e.to_string()))?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(read)
}
