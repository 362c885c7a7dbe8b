//! The HTTP/1.1 servers (hyper): one accept loop per endpoint, one task per connection.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::Handlers;

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

/// Serves `endpoint` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, handlers: Handlers) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, ?endpoint, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handlers = handlers.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handlers = handlers.clone();
                async move { Ok::<_, Infallible>(route(endpoint, &handlers, request)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, ?endpoint, "admin connection ended");
            }
        });
    }
}

fn route(
    endpoint: Endpoint,
    handlers: &Handlers,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    tracing::debug!(?endpoint, %method, %path, "admin request");
    let query = request.uri().query().unwrap_or_default().to_string();
    match (endpoint, path.as_str()) {
        (Endpoint::Admin, "/config_dump") if method == Method::GET => {
            let dump = (handlers.config_dump)();
            let body = serde_json::to_string_pretty(&dump).unwrap_or_else(|_| "{}".into());
            respond(StatusCode::OK, "application/json", body)
        }
        (Endpoint::Admin, "/") if method == Method::GET => page(handlers.page),
        (Endpoint::Admin, view) if method == Method::GET && view.starts_with("/status/") => {
            status(handlers, view.trim_start_matches("/status/"))
        }
        (Endpoint::Admin, "/logging") if matches!(method, Method::GET | Method::POST) => {
            logging(handlers, &query)
        }
        (Endpoint::Admin, "/quitquitquit") if method == Method::POST => {
            (handlers.quit)();
            text(StatusCode::OK, "draining\n")
        }
        (Endpoint::Admin, "/quitquitquit") => {
            // A GET from a crawler or a prefetching browser must never stop the proxy.
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        (Endpoint::Metrics, "/metrics" | "/stats/prometheus") if method == Method::GET => {
            match (handlers.metrics)() {
                Ok(body) => respond(StatusCode::OK, handlers.metrics_content_type, body),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
        (Endpoint::Readiness, "/healthz/ready") if method == Method::GET => {
            let blockers = handlers.readiness.blockers();
            if blockers.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("not ready:\n{}\n", blockers.join("\n")),
                )
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
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

fn logging(handlers: &Handlers, query: &str) -> Response<Full<Bytes>> {
    let level = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "level")
        .map(|(_, value)| percent_decode(value));
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
