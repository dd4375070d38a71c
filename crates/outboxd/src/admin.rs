//! The admin HTTP server: `/metrics` (Prometheus text format), `/healthz`
//! (the process answers), `/readyz` (503 with the reason while replication or
//! delivery is stalled longer than the threshold).
//!
//! It listens on a port anyone on the network may reach, so it bounds what a
//! client can hold: request headers must arrive within
//! [`HEADER_READ_TIMEOUT`], a connection silent for [`IDLE_TIMEOUT`] is
//! closed, and at most [`MAX_CONNECTIONS`] are open. A new connection over
//! the cap closes the one silent longest (a client that opened sockets and
//! sent nothing), so a health check gets through and the file descriptors
//! used stay bounded.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with no bytes either way for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections at most (Prometheus and a health checker need a few).
pub const MAX_CONNECTIONS: usize = 64;
/// Connections the kernel queues before they are accepted.
const ACCEPT_BACKLOG: u32 = 4096;

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    threshold: Duration,
}

/// Binds `listen` and serves until the task is dropped; returns the bound address.
pub async fn serve(
    listen: &str,
    metrics: Arc<Metrics>,
    threshold: Duration,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = bind(listen).await.with_context(|| {
        format!("cannot listen on admin.listen = {listen:?} (set another address, or \"\" to disable)")
    })?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AdminState { metrics, threshold });
    info!(address = %address, "admin http listening");
    Ok((address, tokio::spawn(accept_loop(listener, app))))
}

/// Binds with a long accept queue: a burst of connections waits there to be
/// accepted (and, past the cap, to close a silent one) instead of having its
/// SYNs dropped, which would hold a health check up for a second or more.
async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for address in tokio::net::lookup_host(listen).await? {
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(address).and_then(|()| socket.listen(ACCEPT_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
}

/// One open connection: its task, and when a byte last went either way.
struct Open {
    task: JoinHandle<()>,
    activity: Arc<Activity>,
}

/// The open connections; closed with the server.
struct Connections(Vec<Open>);

impl Drop for Connections {
    fn drop(&mut self) {
        for connection in &self.0 {
            connection.task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, app: Router) {
    let started = Instant::now();
    let mut connections = Connections(Vec::new());
    let open = &mut connections.0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: pause instead of spinning.
                warn!(error = %err, "admin http cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        open.retain(|c| !c.task.is_finished());
        if open.len() >= MAX_CONNECTIONS {
            // First the oldest connection that never sent a byte, then the
            // one silent longest. A client with a request (a health check)
            // sends it at once and is answered before it could be chosen.
            let quietest = open
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| (c.activity.received(), c.activity.last_ms()))
                .map(|(i, _)| i);
            if let Some(i) = quietest {
                debug!("admin http at its connection cap; closing the connection silent longest");
                let evicted = &mut open.swap_remove(i).task;
                evicted.abort();
                // Its socket closes when the task is dropped: wait for that,
                // so that descriptors cannot pile up faster than they close.
                let _ = evicted.await;
            }
        }
        let activity = Arc::new(Activity::new(started));
        let task = tokio::spawn(serve_connection(stream, app.clone(), Arc::clone(&activity)));
        open.push(Open { task, activity });
        // Let the new connection's task read what it was sent before the
        // next accept: otherwise a burst of accepts could reach the cap and
        // close a health check whose request was waiting to be read.
        tokio::task::yield_now().await;
    }
}

async fn serve_connection(stream: TcpStream, app: Router, activity: Arc<Activity>) {
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(connection);
    loop {
        let quiet = activity.quiet_for();
        if quiet >= IDLE_TIMEOUT {
            return; // dropping the connection closes it
        }
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = tokio::time::sleep(IDLE_TIMEOUT - quiet) => {}
        }
    }
}

/// When a connection last moved a byte, in milliseconds since the server
/// started, and whether it ever sent one.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    received: AtomicBool,
}

impl Activity {
    fn new(started: Instant) -> Self {
        let activity = Activity {
            started,
            last_ms: AtomicU64::new(0),
            received: AtomicBool::new(false),
        };
        activity.touch();
        activity
    }

    fn received(&self) -> bool {
        self.received.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }

    fn quiet_for(&self) -> Duration {
        Duration::from_millis((self.started.elapsed().as_millis() as u64).saturating_sub(self.last_ms()))
    }
}

/// A socket that records its activity.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
            self.activity.received.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready_handler(State(state): State<AdminState>) -> impl IntoResponse {
    match state.metrics.readiness(state.threshold) {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}
