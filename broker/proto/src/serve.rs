//! Running an HTTP server: plain or TLS through one hyper-util loop, for any router and any
//! listener (the broker's, the agent's TCP and Unix sockets), with connection limits and a
//! drained, bounded shutdown. docs/configuration.md (`[server]`) describes the knobs.
//! Errors answered here, outside the router, have the [`ErrorBody`] shape and a request id
//! of their own.
//!
//! Connections:
//! - At most `max_connections` are served; `ops_reserve_connections` more are accepted
//!   above the cap, but serve only [`OPS_PATHS`] (liveness, readiness, metrics), one request
//!   each, with a short header timeout; anything else on them is answered 503 `overloaded`
//!   with `Connection: close`. Beyond both, a new connection is closed at once.
//! - A connection has `header_read_timeout` from accept (TLS handshake included) to deliver
//!   its first request's headers. Between requests it may stay idle for `idle_timeout`;
//!   once the next request's first byte arrives, its headers are due within
//!   `header_read_timeout`. A request being handled is bounded by the router (the
//!   broker's request timeout), not here.
//! - HTTP/2: keep-alive pings find dead peers; streams per connection are capped.
//!
//! Shutdown, once `shutdown` resolves:
//! 1. drain: everything is still served for `drain` (readiness already says 503, so load
//!    balancers move away); HTTP/1 answers carry `Connection: close`;
//! 2. close: the listener is dropped, idle connections (and those with half-sent headers)
//!    are closed, requests in flight finish, a request that arrives now gets 503
//!    `shutting_down`;
//! 3. deadline: after `shutdown_timeout`, requests still running are answered 503
//!    `shutting_down` and every connection is closed.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use futures::FutureExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::error::{ErrorBody, code};

/// The routes a reserve connection (one above `max_connections`) may call.
pub const OPS_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The header timeout of a reserve connection (at most; `header_read_timeout` if shorter).
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a reserve connection is kept after its one answer (HTTP/1 closes by itself
/// right after it; this bounds HTTP/2).
const RESERVE_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Once connections are being closed: how long an idle one (or one with half-sent headers)
/// gets for its close (an HTTP/2 GOAWAY) to go out.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// After the deadline: how long the 503 `shutting_down` answers get to be written before
/// every connection is closed.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// File descriptors kept free of connections (store, outbound calls, files, logs).
const SPARE_FILES: u64 = 64;

/// Connection limits and shutdown timing of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    pub max_connections: usize,
    pub ops_reserve_connections: usize,
    /// After the shutdown signal, how long everything is still served.
    pub drain: Duration,
    /// After the drain, how long requests in flight may take.
    pub shutdown_timeout: Duration,
}

impl Limits {
    /// The broker's `[server]` section.
    pub fn from_config(s: &wif_config::ServerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(s.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(s.idle_timeout_secs),
            http2_keepalive_interval: Duration::from_secs(s.http2_keepalive_interval_secs),
            http2_keepalive_timeout: Duration::from_secs(s.http2_keepalive_timeout_secs),
            http2_max_concurrent_streams: s.http2_max_concurrent_streams,
            max_connections: s.max_connections,
            ops_reserve_connections: s.ops_reserve_connections,
            drain: Duration::from_secs(s.drain_secs),
            shutdown_timeout: Duration::from_secs(s.shutdown_timeout_secs),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_config(&wif_config::ServerConfig::default())
    }
}

/// What a server counts about its connections. The broker registers them as
/// `wif_connections_*` (docs/api.md); unregistered, they only count.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections accepted above `max_connections`, into the ops reserve.
    pub reserved: Counter,
    /// Connections closed at accept: both caps were full.
    pub refused: Counter,
    /// Connections closed by the header-read or idle timeout.
    pub timed_out: Counter,
}

impl ConnectionMetrics {
    /// New counters, registered in `registry` as `connections_open`,
    /// `connections_reserved_total`, `connections_refused_total` and
    /// `connections_timed_out_total` (under the registry's prefix).
    pub fn registered(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "connections_open",
            "Connections open now",
            metrics.open.clone(),
        );
        registry.register(
            "connections_reserved",
            "Connections accepted above max_connections, into the ops reserve",
            metrics.reserved.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept: max_connections and the ops reserve were full",
            metrics.refused.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections closed by the header-read or idle timeout",
            metrics.timed_out.clone(),
        );
        metrics
    }
}

/// Counts a connection open until dropped.
struct Open(Gauge);

impl Open {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where a server is in its life. Only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// Shutdown signalled: still serving, HTTP/1 answers say `Connection: close`.
    Draining,
    /// Not accepting; connections close once their requests are answered.
    Closing,
    /// Requests still running are answered 503 `shutting_down`.
    Deadline,
}

/// Serves `router` on `listener` (TLS when `tls` is given) until `shutdown` resolves, then
/// drains and stops as the module documentation describes. Returns once every connection
/// is closed (at most `drain + shutdown_timeout` and a second or two after `shutdown`).
pub async fn serve<L>(
    listener: L,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: Clone + Debug + Sync + 'static,
{
    serve_counted(
        listener,
        router,
        tls,
        shutdown,
        limits,
        ConnectionMetrics::default(),
    )
    .await
}

/// [`serve`], counting connections in `metrics`.
pub async fn serve_counted<L>(
    mut listener: L,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
    metrics: ConnectionMetrics,
) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: Clone + Debug + Sync + 'static,
{
    let limits = Arc::new(fit_to_file_limit(limits));
    let acceptor = tls.map(TlsAcceptor::from);
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let main_permits = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let reserve_permits = u32::try_from(limits.ops_reserve_connections).unwrap_or(u32::MAX);
    let main = Arc::new(Semaphore::new(main_permits as usize));
    let reserve = Arc::new(Semaphore::new(reserve_permits as usize));
    let refused = Refused::default();

    let drained = {
        let phase_tx = phase_tx.clone();
        let drain = limits.drain;
        async move {
            shutdown.await;
            tracing::info!(
                drain_secs = drain.as_secs(),
                "shutdown: draining (readiness fails, requests are still served)"
            );
            phase_tx.send_replace(Phase::Draining);
            tokio::time::sleep(drain).await;
        }
    };
    tokio::pin!(drained);
    // After the drain, connections the kernel has already completed are still taken (and
    // answered 503 `shutting_down`) rather than reset with the listener; a bounded number.
    let mut backlog = None::<usize>;
    loop {
        let (io, addr) = match &mut backlog {
            None => tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut drained => {
                    phase_tx.send_replace(Phase::Closing);
                    backlog = Some(main_permits as usize + reserve_permits as usize);
                    continue;
                }
            },
            Some(0) => break,
            Some(left) => {
                *left -= 1;
                match listener.accept().now_or_never() {
                    Some(accepted) => accepted,
                    None => break,
                }
            }
        };
        let accepted_at = Instant::now();
        let (permit, reserved) = match main.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => match reserve.clone().try_acquire_owned() {
                Ok(permit) => {
                    metrics.reserved.inc();
                    (permit, true)
                }
                Err(_) => {
                    metrics.refused.inc();
                    refused.note(limits.max_connections, limits.ops_reserve_connections);
                    drop(io);
                    continue;
                }
            },
        };
        let connection = Connection {
            router: router.clone(),
            limits: limits.clone(),
            phase: phase_rx.clone(),
            reserved,
            accepted_at,
            timed_out: metrics.timed_out.clone(),
        };
        let acceptor = acceptor.clone();
        let open = Open::new(&metrics.open);
        tokio::spawn(async move {
            match acceptor {
                None => connection.run(io, addr).await,
                Some(acceptor) => {
                    let timeout = connection.header_read_timeout();
                    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => connection.run(tls, addr).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = ?addr, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = ?addr, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
            drop(open);
        });
    }
    drop(listener);

    // Close: connections finish what they are doing, bounded by the deadline.
    let all_closed = async {
        let _main = main.acquire_many(main_permits).await;
        let _reserve = reserve.acquire_many(reserve_permits).await;
    };
    tokio::pin!(all_closed);
    if tokio::time::timeout(limits.shutdown_timeout, &mut all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            deadline_secs = limits.shutdown_timeout.as_secs(),
            "shutdown deadline passed; answering requests still running with 503 shutting_down"
        );
        phase_tx.send_replace(Phase::Deadline);
        let _ = tokio::time::timeout(DEADLINE_GRACE * 2, &mut all_closed).await;
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard one (as Go's runtime does), and lowers the
/// connection caps if the limit still cannot hold them: a server that runs out of file
/// descriptors cannot accept even its health checks.
fn fit_to_file_limit(mut limits: Limits) -> Limits {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let current = getrlimit(Resource::Nofile);
        if current.current != current.maximum {
            let raised = Rlimit {
                current: current.maximum,
                maximum: current.maximum,
            };
            if setrlimit(Resource::Nofile, raised).is_err() {
                tracing::debug!("cannot raise the open-files limit to its hard limit");
            }
        }
        let Some(files) = getrlimit(Resource::Nofile).current else {
            return limits;
        };
        let wanted = limits
            .max_connections
            .saturating_add(limits.ops_reserve_connections) as u64;
        let room = files.saturating_sub(SPARE_FILES);
        if wanted > room {
            let reserve = (limits.ops_reserve_connections as u64).min(room / 2);
            let max = room.saturating_sub(reserve).max(1);
            tracing::warn!(
                open_files_limit = files,
                max_connections = max,
                ops_reserve_connections = reserve,
                "the open-files limit cannot hold max_connections + ops_reserve_connections; \
                 lowered them (raise the limit, see docs/configuration.md)"
            );
            limits.max_connections = usize::try_from(max).unwrap_or(1);
            limits.ops_reserve_connections = usize::try_from(reserve).unwrap_or(0);
        }
    }
    limits
}

/// Connections closed at accept because both caps were full; logged at most once every
/// ten seconds, so a flood cannot flood the log.
#[derive(Default)]
struct Refused {
    count: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl Refused {
    fn note(&self, max: usize, reserve: usize) {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            self.count.store(0, Ordering::Relaxed);
            tracing::warn!(
                refused = count,
                max_connections = max,
                ops_reserve_connections = reserve,
                "connection limit reached; closing new connections"
            );
        }
    }
}

/// One accepted connection, before its HTTP protocol starts.
struct Connection {
    router: Router,
    limits: Arc<Limits>,
    phase: watch::Receiver<Phase>,
    /// Above `max_connections`: ops routes only, one request.
    reserved: bool,
    accepted_at: Instant,
    timed_out: Counter,
}

impl Connection {
    fn header_read_timeout(&self) -> Duration {
        if self.reserved {
            self.limits.header_read_timeout.min(RESERVE_HEADER_TIMEOUT)
        } else {
            self.limits.header_read_timeout
        }
    }

    fn idle_timeout(&self) -> Duration {
        if self.reserved {
            RESERVE_IDLE_TIMEOUT
        } else {
            self.limits.idle_timeout
        }
    }

    fn builder(&self) -> Builder<TokioExecutor> {
        let mut builder = Builder::new(TokioExecutor::new());
        // Header and idle timeouts are the watchdog's (hyper's own timer would also cut
        // idle keep-alive connections at the header timeout).
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(!self.reserved);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(self.limits.http2_keepalive_interval))
            .keep_alive_timeout(self.limits.http2_keepalive_timeout)
            .max_concurrent_streams(if self.reserved {
                1
            } else {
                self.limits.http2_max_concurrent_streams
            });
        builder
    }

    /// Serves HTTP on `io` until the client leaves, a timeout closes it, or shutdown does.
    async fn run<I, A>(self, io: I, addr: A)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        A: Clone + Debug + Send + Sync + 'static,
    {
        let activity = Arc::new(Activity::new(self.accepted_at));
        let service = ConnService {
            router: self.router.clone(),
            activity: activity.clone(),
            phase: self.phase.clone(),
            reserved: self.reserved,
            addr: addr.clone(),
        };
        let builder = self.builder();
        let io = TokioIo::new(Watched {
            inner: io,
            activity: activity.clone(),
        });
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let timeouts = Timeouts {
            header: self.header_read_timeout(),
            idle: self.idle_timeout(),
        };
        let mut phase = self.phase;
        let mut phase_since = (Phase::Serving, Instant::now());
        let mut graceful = false;
        loop {
            let now_phase = *phase.borrow_and_update();
            if now_phase != phase_since.0 {
                phase_since = (now_phase, Instant::now());
            }
            if now_phase >= Phase::Closing && !graceful {
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
            let notified = activity.changed.notified();
            let deadline = activity.deadline(&timeouts, phase_since);
            tokio::select! {
                // The connection first: an answer it is writing goes out before a timer
                // that fired meanwhile closes it.
                biased;
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = ?addr, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = sleep_until(deadline) => {
                    // Re-checked: activity may have moved the deadline.
                    if activity
                        .deadline(&timeouts, phase_since)
                        .is_some_and(|d| d <= Instant::now())
                    {
                        tracing::debug!(peer = ?addr, phase = ?now_phase, "closing a connection: timed out");
                        if now_phase < Phase::Closing {
                            self.timed_out.inc();
                        }
                        return;
                    }
                }
                () = notified => {}
                changed = phase.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Timeouts {
    header: Duration,
    idle: Duration,
}

/// What a connection is doing, for its watchdog.
struct Activity {
    state: Mutex<ActivityState>,
    /// Woken when the last request in flight ends, and on the first byte after being idle.
    changed: Notify,
}

struct ActivityState {
    accepted_at: Instant,
    /// Requests being handled (HTTP/2: streams), until their answer is written.
    in_flight: usize,
    /// A request was received on this connection.
    served: bool,
    /// When the last request ended.
    idle_since: Instant,
    /// The first byte read since then.
    first_byte: Option<Instant>,
}

impl Activity {
    fn new(accepted_at: Instant) -> Self {
        Self {
            state: Mutex::new(ActivityState {
                accepted_at,
                in_flight: 0,
                served: false,
                idle_since: accepted_at,
                first_byte: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) {
        let mut state = self.lock();
        if state.first_byte.is_none() {
            state.first_byte = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Not woken: a request in flight only moves the deadline later (to none), and the
    /// watchdog re-reads the state when its timer fires before it closes anything, so
    /// the one wake-up per request this would cost buys nothing.
    fn begin(&self) {
        let mut state = self.lock();
        state.in_flight += 1;
        state.served = true;
    }

    fn end(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            state.first_byte = None;
            drop(state);
            self.changed.notify_one();
        }
    }

    /// When the connection is to be closed, if nothing happens before.
    fn deadline(&self, t: &Timeouts, (phase, since): (Phase, Instant)) -> Option<Instant> {
        let state = self.lock();
        match phase {
            Phase::Deadline => Some(since + DEADLINE_GRACE),
            _ if state.in_flight > 0 => None,
            // Room for the last answer to be flushed (HTTP/1 closes by itself after it).
            Phase::Closing => Some(since.max(state.idle_since) + CLOSE_GRACE),
            Phase::Serving | Phase::Draining => Some(if !state.served {
                state.accepted_at + t.header
            } else if let Some(first) = state.first_byte {
                first + t.header
            } else {
                state.idle_since + t.idle
            }),
        }
    }
}

/// The connection's byte stream, reporting reads to its [`Activity`].
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Marks one request in flight until its answer's body is written (or dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.begin();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// An answer's body that holds its request's [`InFlight`] mark.
struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The router behind one connection: the reserve's restriction, the shutdown answers,
/// and the in-flight bookkeeping.
#[derive(Clone)]
struct ConnService<A> {
    router: Router,
    activity: Arc<Activity>,
    phase: watch::Receiver<Phase>,
    reserved: bool,
    addr: A,
}

impl<A> hyper::service::Service<Request<Incoming>> for ConnService<A>
where
    A: Clone + Send + Sync + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::begin(self.activity.clone());
        let router = self.router.clone();
        let mut phase = self.phase.clone();
        let reserved = self.reserved;
        request
            .extensions_mut()
            .insert(ConnectInfo(self.addr.clone()));
        Box::pin(async move {
            let http1 = request.version() < Version::HTTP_2;
            let mut response = if *phase.borrow() >= Phase::Closing {
                shutting_down()
            } else if reserved && !OPS_PATHS.contains(&request.uri().path()) {
                edge_error(
                    code::OVERLOADED,
                    "the server is at its connection limit; retry later",
                )
            } else {
                let handled = router.oneshot(request.map(axum::body::Body::new));
                tokio::select! {
                    response = handled => match response {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                    _ = phase.wait_for(|p| *p >= Phase::Deadline) => shutting_down(),
                }
            };
            if http1 && (reserved || *phase.borrow() >= Phase::Draining) {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| {
                axum::body::Body::new(Tracked {
                    body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

fn shutting_down() -> Response {
    edge_error(
        code::SHUTTING_DOWN,
        "the server is shutting down; retry (another replica will answer)",
    )
}

/// A 503 answered here, outside the router, with a request id of its own; retried after
/// a second.
fn edge_error(code: &str, description: &str) -> Response {
    let request_id = next_request_id();
    let body = ErrorBody {
        error: code.to_owned(),
        error_description: description.to_owned(),
        request_id: request_id.clone(),
        details: None,
    };
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", value);
    }
    response
}

/// A new request id: a random per-process prefix and a counter. Unique across replicas
/// and restarts, and cheap (no system call per request, unlike a random UUID).
pub fn next_request_id() -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{n:08x}")
}
