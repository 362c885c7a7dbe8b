//! The HTTP/1.1 servers (hyper): one accept loop per endpoint, one task per connection, each
//! connection bounded in time and the connections of each endpoint bounded in number, so a
//! client that sends nothing (or one byte a second) cannot hold the endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::Handlers;
use crate::guard::{Guard, Refusal, check_state_change};

/// Which set of routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/config_dump`, `/logging`, `/quitquitquit`.
    Admin,
    /// `/metrics`, `/stats/prometheus`.
    Metrics,
    /// `/healthz/ready`.
    Readiness,
}

/// A request's headers must arrive within 5 s of the connection opening or of the previous
/// response (hyper starts this timer whenever it waits for a request, so it is also the idle
/// timeout of a kept-alive connection). curl, `meshd status`, the page and a Prometheus
/// scrape send their headers in one packet; hyper's own default, 30 s, lets a slowloris hold a
/// connection six times longer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection lives at most 30 s (the request timeout): a body sent byte by byte or a
/// response read byte by byte cannot hold it longer. Every answer is built from memory in
/// microseconds; the page polls once a second and simply opens a new connection.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// After [`CONNECTION_LIFETIME`], a request in progress gets this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Open connections per endpoint. An operator's page, `meshd status` and a scraper or two use
/// a handful; past 32 a new connection is closed at once, so a flood costs at most 32
/// connections' buffers (hyper's read buffer grows to at most ~400 KiB each).
pub const MAX_CONNECTIONS: usize = 32;

/// Time and connection limits of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`CONNECTION_LIFETIME`].
    pub connection_lifetime: Duration,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            connection_lifetime: CONNECTION_LIFETIME,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// How a listener serves: which names the admin endpoint also answers to, and its limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeSettings {
    /// Host names, besides its address and `localhost`, the admin endpoint answers to
    /// (`admin.allowedHosts`).
    pub allowed_hosts: Vec<String>,
    /// Time and connection limits.
    pub limits: Limits,
}

/// Serves `endpoint` on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    handlers: Handlers,
    settings: ServeSettings,
) {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let guard = Arc::new(Guard::new(local, &settings.allowed_hosts));
    let limits = settings.limits;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, ?endpoint, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: closed at once rather than queued, so the flood, not the operator, waits.
            tracing::debug!(%peer, ?endpoint, "too many operator connections: closed");
            drop(stream);
            continue;
        };
        let handlers = handlers.clone();
        let guard = guard.clone();
        tokio::spawn(async move {
            connection(stream, endpoint, handlers, guard, limits).await;
            tracing::trace!(%peer, ?endpoint, "operator connection closed");
            drop(slot);
        });
    }
}

/// One connection, within its limits.
async fn connection(
    stream: TcpStream,
    endpoint: Endpoint,
    handlers: Handlers,
    guard: Arc<Guard>,
    limits: Limits,
) {
    let service = service_fn(move |request| {
        let response = route(endpoint, &handlers, &guard, request);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = tokio::time::sleep(limits.connection_lifetime) => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, ?endpoint, "operator connection ended");
    }
}

fn route(
    endpoint: Endpoint,
    handlers: &Handlers,
    guard: &Guard,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    tracing::debug!(?endpoint, %method, %path, "admin request");
    let query = request.uri().query().unwrap_or_default().to_string();
    match endpoint {
        Endpoint::Admin => match guard.check(request.headers()) {
            Ok(()) => admin(handlers, &method, &path, &query, request.headers()),
            Err(refusal) => refuse(&refusal, &method, &path),
        },
        Endpoint::Metrics => match path.as_str() {
            "/metrics" | "/stats/prometheus" if method == Method::GET => {
                match (handlers.metrics)() {
                    Ok(body) => respond(StatusCode::OK, handlers.metrics_content_type, body),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
                }
            }
            _ => not_found(),
        },
        Endpoint::Readiness => match path.as_str() {
            "/healthz/ready" if method == Method::GET => ready(handlers),
            _ => not_found(),
        },
    }
}

/// The admin routes, once the request passed the [`Guard`].
fn admin(
    handlers: &Handlers,
    method: &Method,
    path: &str,
    query: &str,
    headers: &http::HeaderMap,
) -> Response<Full<Bytes>> {
    let get = method == Method::GET;
    let post = method == Method::POST;
    match path {
        "/config_dump" if get => {
            let dump = (handlers.config_dump)();
            let body = serde_json::to_string_pretty(&dump).unwrap_or_else(|_| "{}".into());
            respond(StatusCode::OK, "application/json", body)
        }
        "/" if get => page(handlers.page),
        view if get && view.starts_with("/status/") => {
            status(handlers, view.trim_start_matches("/status/"))
        }
        "/logging" if get && level(query).is_some() => {
            // A GET only reads: an <img src=".../logging?level=off"> must change nothing.
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST to change the log level\n",
            )
        }
        "/logging" if get => logging(handlers, None),
        "/logging" | "/quitquitquit" if post => {
            if let Err(refusal) = check_state_change(headers) {
                return refuse(&refusal, method, path);
            }
            if path == "/logging" {
                logging(handlers, level(query))
            } else {
                (handlers.quit)();
                text(StatusCode::OK, "draining\n")
            }
        }
        "/quitquitquit" => {
            // A GET from a crawler or a prefetching browser must never stop the proxy.
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        _ => not_found(),
    }
}

fn refuse(refusal: &Refusal, method: &Method, path: &str) -> Response<Full<Bytes>> {
    tracing::warn!(%method, %path, "admin request refused: {refusal}");
    text(refusal.status(), &format!("{refusal}\n"))
}

fn not_found() -> Response<Full<Bytes>> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn ready(handlers: &Handlers) -> Response<Full<Bytes>> {
    let blockers = handlers.readiness.blockers();
    if blockers.is_empty() {
        let notes = handlers.readiness.notes();
        let mut body = "ready\n".to_string();
        for note in notes {
            body.push_str(&note);
            body.push('\n');
        }
        text(StatusCode::OK, &body)
    } else {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("not ready:\n{}\n", blockers.join("\n")),
        )
    }
}

fn status(handlers: &Handlers, view: &str) -> Response<Full<Bytes>> {
    let (code, body) = match (handlers.status)(view) {
        Some(Ok(value)) => (StatusCode::OK, value),
        Some(Err(pending)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "pending": pending }),
        ),
        None => (
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("unknown view {view:?}") }),
        ),
    };
    let mut response = respond(code, "application/json", body.to_string());
    // Live views: a cached answer would show connections that are gone.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The operator page. Its script and style are inline and it only talks to this origin;
/// the policy says so, so a stray `<script src>` could never load anything from elsewhere.
fn page(html: &'static str) -> Response<Full<Bytes>> {
    let mut response = respond(StatusCode::OK, "text/html; charset=utf-8", html.to_string());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The `level` parameter of the query, decoded.
fn level(query: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "level")
        .map(|(_, value)| percent_decode(value))
}

/// Reads the log filter (`None`) or changes it.
fn logging(handlers: &Handlers, level: Option<String>) -> Response<Full<Bytes>> {
    let Some(level) = level else {
        return match (handlers.set_log_level)("") {
            Ok(current) => text(StatusCode::OK, &format!("current log level: {current}\n")),
            Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };
    };
    match (handlers.set_log_level)(&level) {
        Ok(current) => text(StatusCode::OK, &format!("log level set to {current}\n")),
        Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    }
}

/// `%2C` → `,`, `+` → space; malformed escapes stay as they are.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.to_string())
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        // Filters carry commas and equals signs; a stray % must not panic.
        assert_eq!(
            percent_decode("meshd%3Ddebug%2Caccess%3Dinfo"),
            "meshd=debug,access=info"
        );
        assert_eq!(percent_decode("info"), "info");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
