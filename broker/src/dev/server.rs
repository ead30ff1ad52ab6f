//! The loopback HTTP server under the local issuer and the Entra emulator.
//!
//! A small accept loop over hyper rather than `axum::serve`, for two things tests need:
//! a handler can make the server drop the connection without answering (an "unreachable"
//! Entra), and shutdown never waits on a handler that is deliberately slow.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use super::DevError;

/// How long shutdown waits for requests in flight before cutting them off.
const GRACE: Duration = Duration::from_secs(2);

/// Put this in a response's extensions to have the server close the connection instead
/// of sending the response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropConnection;

/// Answers a request before routing when it returns `Some` (used for "issuer down").
pub(crate) type Gate = Arc<dyn Fn() -> Option<Response> + Send + Sync>;

/// Binds 127.0.0.1 on a free port.
pub(crate) async fn bind() -> Result<(TcpListener, SocketAddr), DevError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(DevError::Bind)?;
    let addr = listener.local_addr().map_err(DevError::Bind)?;
    Ok((listener, addr))
}

/// A running server. Dropping the last handle stops it, as does [`ServerHandle::shutdown`].
pub(crate) struct ServerHandle {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ServerHandle {
    pub(crate) fn spawn(listener: TcpListener, router: Router, gate: Option<Gate>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(listener, router, gate, stopped));
        Self {
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Stops accepting, lets requests in flight finish for a moment, then closes
    /// everything. Idempotent.
    pub(crate) async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

#[derive(Debug)]
struct ConnectionDropped;

impl std::fmt::Display for ConnectionDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for ConnectionDropped {}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response, ConnectionDropped>> + Send>>;

async fn run(
    listener: TcpListener,
    router: Router,
    gate: Option<Gate>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // `Err` means every handle is gone: stop as well.
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let router = router.clone();
                let gate = gate.clone();
                let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                    let router = router.clone();
                    let gate = gate.clone();
                    let fut: ServiceFuture = Box::pin(async move {
                        if let Some(response) = gate.as_ref().and_then(|gate| gate()) {
                            return Ok(response);
                        }
                        let Ok(response) = router.oneshot(request).await;
                        if response.extensions().get::<DropConnection>().is_some() {
                            return Err(ConnectionDropped);
                        }
                        Ok(response)
                    });
                    fut
                });
                let connection = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    let _ = connection.await;
                });
                while connections.try_join_next().is_some() {}
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
