//! The admin HTTP server: `/metrics` (Prometheus text format), `/healthz`
//! (the process answers), `/readyz` (503 with the reason while replication or
//! delivery is stalled longer than the threshold).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tracing::info;

use crate::metrics::Metrics;

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
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on admin.listen = {listen:?} (set another address, or \"\" to disable)")
    })?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AdminState { metrics, threshold });
    info!(address = %address, "admin http listening");
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!(error = %err, "admin http server stopped");
        }
    });
    Ok((address, task))
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
