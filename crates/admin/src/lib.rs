//! meshd's HTTP endpoints for operators, on ztunnel's ports:
//!
//! - admin (`listen.admin`, default `127.0.0.1:15000`, loopback unless configured otherwise):
//!   `GET /config_dump` (the configuration in force as JSON), `GET /logging` (the log filter),
//!   `POST /logging?level=...` (change it at run time), `POST /quitquitquit` (graceful drain),
//!   `GET /status/<view>` (the operator views as JSON, see meshd-status) and `GET /` (the
//!   operator page, which reads those views). Every request passes the [`guard`]: a Host that
//!   names this endpoint, no cross-site `Origin`/`Sec-Fetch-Site`, and on a state change the
//!   header `X-Meshd-Admin`;
//! - metrics (`listen.metrics`, default `127.0.0.1:15020`): `GET /metrics` and
//!   `GET /stats/prometheus`;
//! - readiness (`listen.readiness`, default `127.0.0.1:15021`): `GET /healthz/ready`, 200 once
//!   everything is up, else 500 with what is pending.
//!
//! Every connection is bounded in time and every endpoint in connections ([`Limits`]), and the
//! endpoints run on a thread of their own ([`OperatorRuntime`]), away from the data plane.
//!
//! The crate knows nothing of meshd's data: the daemon hands it [`Handlers`] (closures over its
//! state), so the endpoints are tested with stand-ins and the data flow stays one way. It does
//! not terminate TLS: the admin port is loopback-only by default, as ztunnel's.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod guard;
mod readiness;
mod runtime;
mod server;
mod settings;

pub use guard::{Refusal, STATE_CHANGE_HEADER};
pub use readiness::Readiness;
pub use runtime::{OperatorRuntime, THREAD_NAME};
pub use server::{
    CONNECTION_LIFETIME, Endpoint, HEADER_READ_TIMEOUT, Limits, MAX_CONNECTIONS, ServeSettings,
    serve,
};
pub use settings::{AdminSettings, SettingsError};

use std::sync::Arc;

/// Renders the configuration dump.
pub type DumpFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;
/// Applies a log filter (`info`, `meshd=debug,access=info`, …); returns the filter in force.
pub type LogLevelFn = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;
/// Starts a graceful drain.
pub type QuitFn = Arc<dyn Fn() + Send + Sync>;
/// Renders one operator view by name: `None` for an unknown view, `Err` with what is pending
/// while meshd is starting.
pub type StatusFn = Arc<dyn Fn(&str) -> Option<Result<serde_json::Value, String>> + Send + Sync>;
/// Renders the metrics exposition text.
pub type MetricsFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What the endpoints answer with: closures over the daemon's state.
#[derive(Clone)]
pub struct Handlers {
    /// `/config_dump`.
    pub config_dump: DumpFn,
    /// `/status/<view>`.
    pub status: StatusFn,
    /// `/`: the operator page (self-contained HTML).
    pub page: &'static str,
    /// `/logging`.
    pub set_log_level: LogLevelFn,
    /// `/quitquitquit`.
    pub quit: QuitFn,
    /// `/metrics`, `/stats/prometheus`.
    pub metrics: MetricsFn,
    /// The `Content-Type` of the metrics text.
    pub metrics_content_type: &'static str,
    /// `/healthz/ready`.
    pub readiness: Readiness,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}
