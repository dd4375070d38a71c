//! The few reads of RabbitMQ's management HTTP API that AMQP 0-9-1 cannot
//! do: an exchange's type and the bindings that have it as their source.
//! Plain HTTP/1.0 over a TCP stream (one request, body read to the end), so
//! the sink needs no HTTP client stack for two GETs.

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the management API listens and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Management {
    /// `host:port`.
    pub(crate) address: String,
    pub(crate) user: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("address", &self.address)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// An exchange as the API describes it.
#[derive(Debug, Deserialize)]
pub(crate) struct ExchangeInfo {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) durable: bool,
}

/// A GET's outcome.
#[derive(Debug)]
pub(crate) enum Answer<T> {
    Found(T),
    NotFound,
}

impl Management {
    /// `GET /api/exchanges/{vhost}/{name}`.
    pub(crate) async fn exchange(&self, vhost: &str, name: &str) -> Result<Answer<ExchangeInfo>, String> {
        self.get_json(&format!("/api/exchanges/{}/{}", encode(vhost), encode(name)))
            .await
    }

    /// `GET /api/exchanges/{vhost}/{name}/bindings/source`: how many
    /// bindings have the exchange as their source.
    pub(crate) async fn bindings_from(&self, vhost: &str, name: &str) -> Result<Answer<usize>, String> {
        let answer: Answer<Vec<serde::de::IgnoredAny>> = self
            .get_json(&format!(
                "/api/exchanges/{}/{}/bindings/source",
                encode(vhost),
                encode(name)
            ))
            .await?;
        Ok(match answer {
            Answer::Found(list) => Answer::Found(list.len()),
            Answer::NotFound => Answer::NotFound,
        })
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<Answer<T>, String> {
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), self.get(path))
            .await
            .map_err(|_| format!("management API at {} did not answer within 5 s", self.address))??;
        match status {
            200 => serde_json::from_slice(&body)
                .map(Answer::Found)
                .map_err(|e| format!("management API answered {path} with unexpected JSON: {e}")),
            404 => Ok(Answer::NotFound),
            401 => Err(format!(
                "management API at {} refused the credentials (the user needs the `monitoring` or `management` tag)",
                self.address
            )),
            other => Err(format!("management API answered {path} with HTTP {other}")),
        }
    }

    async fn get(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let mut stream = TcpStream::connect(&self.address)
            .await
            .map_err(|e| format!("management API at {} is not reachable: {e}", self.address))?;
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password));
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Basic {auth}\r\nAccept: application/json\r\n\r\n",
            self.address
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("management API at {}: {e}", self.address))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("management API at {}: {e}", self.address))?;
        parse_response(&response)
            .ok_or_else(|| format!("management API at {} sent no HTTP response", self.address))
    }
}

/// Status code and body of an HTTP/1.x response without chunked encoding
/// (an HTTP/1.0 request gets none).
fn parse_response(response: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..split]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response[split + 4..].to_vec()))
}

/// Percent-encodes a path segment (`/` is `%2F`, as the API wants vhost `/`).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let (status, body) =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[1,2]").unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, b"[1,2]");
        assert!(parse_response(b"garbage").is_none());
    }

    #[test]
    fn path_segments() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("outbox.x:y"), "outbox.x%3Ay");
    }
}
