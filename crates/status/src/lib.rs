//! The operator's view of a running meshd: what `meshd status` prints and the admin page shows.
//!
//! - [`view`]: the JSON shape of each view (`GET /status/<view>` on the admin endpoint), one
//!   serde type per view: the one definition the daemon serializes and the client reads. It
//!   lives in meshd-view (re-exported here), which the proxy fills in without depending on
//!   this crate's client and tables.
//! - [`client`]: fetches a view from the admin endpoint, with errors a person can act on.
//! - [`render`] and [`table`]: the views as aligned tables fitted to the terminal.
//! - [`PAGE`]: the admin web page (one document, no external assets): `page.html`, with
//!   `traffic.js` (the traffic view's SVG graph and chart) appended.
//!
//! It does not gather the data: the proxy and the daemon fill the views in.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod client;
pub mod render;
pub mod table;

pub use meshd_view as view;

use std::io::IsTerminal;
use std::net::SocketAddr;

pub use client::ClientError;
pub use render::{Options, RenderError};

/// The admin web page, served at `/` of the admin endpoint: plain HTML, CSS and JavaScript,
/// no external assets, so it works on an air-gapped machine. One document with inline scripts
/// (the admin server's Content-Security-Policy allows nothing else), kept in two files so each
/// stays readable: the traffic view's drawing is appended to the page's own script.
pub const PAGE: &str = concat!(
    include_str!("page.html"),
    "<script>\n",
    include_str!("traffic.js"),
    "</script>\n</body>\n</html>\n"
);

/// Why `meshd status` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The admin endpoint could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The answer could not be shown.
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl Options {
    /// Options for standard output: fitted and coloured only on a terminal (and no colour
    /// when `NO_COLOR` is set, as no-color.org asks).
    pub fn for_stdout(last: usize) -> Options {
        let terminal = std::io::stdout().is_terminal();
        Options {
            width: terminal
                .then(terminal_size::terminal_size)
                .flatten()
                .map(|(w, _)| usize::from(w.0)),
            color: terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            last,
        }
    }
}

/// Fetches `view` from the admin endpoint at `admin` and returns it as text: pretty JSON with
/// `json`, else a table.
pub fn show(
    admin: SocketAddr,
    view: &str,
    json: bool,
    options: Options,
) -> Result<String, StatusError> {
    if !view::VIEWS.contains(&view) {
        return Err(RenderError::UnknownView(view.to_string()).into());
    }
    let value = client::fetch(admin, view)?;
    if json {
        // Checked against the documented shape first: a JSON answer of another shape means
        // another program (or version) answered.
        render::render(view, &value, options)?;
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        return Ok(text);
    }
    Ok(render::render(view, &value, options)?)
}
