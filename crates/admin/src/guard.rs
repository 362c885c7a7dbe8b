//! Who may talk to the admin endpoint: the checks that keep web pages out.
//!
//! A browser on the operator's machine reaches the admin port (directly, or through the
//! `ssh -L 15000:localhost:15000` the README suggests), so any page the operator opens can send
//! it requests. Three things stop those pages, as Envoy's and ztunnel's admin do:
//!
//! - **Host** (DNS rebinding): a page on `evil.test` that re-points `evil.test` at 127.0.0.1
//!   reads the answers as its own origin, but its requests say `Host: evil.test`. Only the
//!   listener's address, loopback, `localhost` and the names in `admin.allowedHosts` pass; an IP
//!   literal cannot be rebound. The port is not compared: `ssh -L 8080:localhost:15000` makes
//!   it 8080.
//! - **Origin and Sec-Fetch-Site** (cross-site requests): a form, an `<img>` or a `fetch` from
//!   another origin carries them; only the page's own origin (or none: curl, `meshd status`)
//!   passes.
//! - **A custom header on every state change** ([`STATE_CHANGE_HEADER`]): an HTML form or an
//!   `<img>` cannot send one, and a cross-origin `fetch` cannot without a CORS preflight that
//!   meshd never grants. `curl -X POST -H 'X-Meshd-Admin: 1'` can.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, StatusCode, header};

/// The header every state-changing admin request (`POST /quitquitquit`, `POST /logging`) must
/// carry. Its value is not checked: what proves the caller is not a web page is that it could
/// send the header at all.
pub const STATE_CHANGE_HEADER: &str = "x-meshd-admin";

/// Why a request was refused, with the status it is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No Host header, several, or one that is not this endpoint's (DNS rebinding).
    #[error(
        "Host {0:?} is not this admin endpoint: use its address, localhost, or a name listed in admin.allowedHosts"
    )]
    Host(String),
    /// An `Origin` other than the request's own (a page on another site).
    #[error("cross-origin request from {0:?} refused")]
    Origin(String),
    /// `Sec-Fetch-Site` says another site (or a sibling port) sent it.
    #[error("cross-site request (Sec-Fetch-Site: {0}) refused")]
    FetchSite(String),
    /// A state change without [`STATE_CHANGE_HEADER`].
    #[error(
        "state-changing requests need the header X-Meshd-Admin (curl -X POST -H 'X-Meshd-Admin: 1' ...)"
    )]
    MissingHeader,
}

impl Refusal {
    /// 421 for a Host that is not this endpoint's, 403 for the rest.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Host(_) => StatusCode::MISDIRECTED_REQUEST,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

/// The admin endpoint's checks, for one listener.
#[derive(Debug, Clone)]
pub struct Guard {
    listener: IpAddr,
    allowed_hosts: Vec<String>,
}

impl Guard {
    /// Checks for the listener bound to `listener`, which also answers to `allowed_hosts`
    /// (compared without case).
    pub fn new(listener: SocketAddr, allowed_hosts: &[String]) -> Guard {
        Guard {
            listener: listener.ip().to_canonical(),
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Checks every admin request: its Host, then where a browser says it came from.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = self.check_host(headers)?;
        check_origin(headers, host)?;
        check_fetch_site(headers)
    }

    /// The Host header's value when it names this endpoint.
    fn check_host<'a>(&self, headers: &'a HeaderMap) -> Result<&'a str, Refusal> {
        let mut hosts = headers.get_all(header::HOST).iter();
        let (Some(value), None) = (hosts.next(), hosts.next()) else {
            return Err(Refusal::Host(String::new()));
        };
        let host = value
            .to_str()
            .map_err(|_| Refusal::Host(String::from_utf8_lossy(value.as_bytes()).into_owned()))?;
        let refused = || Refusal::Host(host.to_string());
        let name = split_port(host).ok_or_else(refused)?;
        let allowed = match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            // An IP literal cannot be rebound; it must still be this machine's when the
            // listener is on one address.
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip.is_loopback() || ip == self.listener || self.listener.is_unspecified()
            }
            Err(_) => {
                let name = name.to_ascii_lowercase();
                name == "localhost" || self.allowed_hosts.contains(&name)
            }
        };
        if allowed { Ok(host) } else { Err(refused()) }
    }
}

/// `name[:port]` → `name`; `None` when the port is not a number or an IPv6 literal is not
/// bracketed.
fn split_port(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        return (rest.is_empty() || is_port(rest.strip_prefix(':')?)).then_some(&host[..=end]);
    }
    match host.split_once(':') {
        None => (!host.is_empty()).then_some(host),
        Some((name, port)) => (!name.is_empty() && is_port(port)).then_some(name),
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// A browser sends `Origin` on every POST and on cross-origin reads; it must be the origin the
/// request is addressed to (`http://` + Host). `null` (a sandboxed frame, a file) never is.
fn check_origin(headers: &HeaderMap, host: &str) -> Result<(), Refusal> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes());
    let own = format!("http://{host}");
    if origin.eq_ignore_ascii_case(&own) {
        Ok(())
    } else {
        Err(Refusal::Origin(origin.into_owned()))
    }
}

/// Fetch metadata: `same-origin` (the page itself) and `none` (typed in the address bar) pass;
/// `same-site` (another port on localhost), `cross-site` and anything unknown do not.
fn check_fetch_site(headers: &HeaderMap) -> Result<(), Refusal> {
    match headers.get("sec-fetch-site") {
        None => Ok(()),
        Some(v) if v == "same-origin" || v == "none" => Ok(()),
        Some(v) => Err(Refusal::FetchSite(
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )),
    }
}

/// A state change must carry [`STATE_CHANGE_HEADER`].
pub(crate) fn check_state_change(headers: &HeaderMap) -> Result<(), Refusal> {
    if headers.contains_key(STATE_CHANGE_HEADER) {
        Ok(())
    } else {
        Err(Refusal::MissingHeader)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn guard() -> Guard {
        Guard::new(
            "127.10.5.2:15000".parse().unwrap(),
            &["Meshd.Example".to_string()],
        )
    }

    #[test]
    fn hosts_that_name_this_endpoint_pass() {
        // The listener's address, loopback (ssh -L, any local port), configured names.
        for host in [
            "127.10.5.2:15000",
            "127.10.5.2",
            "localhost:15000",
            "LOCALHOST:8080",
            "localhost",
            "127.0.0.1:15000",
            "[::1]:15000",
            "[::1]",
            "meshd.example:15000",
        ] {
            assert_eq!(guard().check(&headers(&[("host", host)])), Ok(()), "{host}");
        }
    }

    #[test]
    fn other_hosts_are_refused_with_421() {
        // Rebinding names, lookalikes, another machine's address, malformed ports.
        for host in [
            "evil.test:15000",
            "localhost.evil.test",
            "localhost.",
            "10.1.2.3:15000",
            "meshd.example.evil.test",
            "localhost:abc",
            "localhost:",
            ":15000",
            "[::1",
            "[::1]x",
            "",
        ] {
            let refusal = guard().check(&headers(&[("host", host)])).unwrap_err();
            assert_eq!(refusal, Refusal::Host(host.to_string()), "{host}");
            assert_eq!(refusal.status(), StatusCode::MISDIRECTED_REQUEST);
        }
    }

    #[test]
    fn no_host_or_two_hosts_are_refused() {
        assert!(matches!(
            guard().check(&HeaderMap::new()),
            Err(Refusal::Host(_))
        ));
        let two = headers(&[("host", "localhost"), ("host", "evil.test")]);
        assert!(matches!(guard().check(&two), Err(Refusal::Host(_))));
    }

    #[test]
    fn an_unspecified_listener_takes_any_ip_literal_but_no_unknown_name() {
        // Listening on 0.0.0.0 (allowRemote): the machine's addresses are not known here, and
        // an IP literal cannot be rebound; names still must be configured.
        let guard = Guard::new("0.0.0.0:15000".parse().unwrap(), &[]);
        assert_eq!(guard.check(&headers(&[("host", "10.1.2.3:15000")])), Ok(()));
        assert!(guard.check(&headers(&[("host", "evil.test")])).is_err());
    }

    #[test]
    fn only_the_requests_own_origin_passes() {
        let same = headers(&[
            ("host", "localhost:15000"),
            ("origin", "http://localhost:15000"),
        ]);
        assert_eq!(guard().check(&same), Ok(()));
        for origin in [
            "http://evil.test",
            "http://localhost:3000",
            "https://localhost:15000",
            "null",
        ] {
            let h = headers(&[("host", "localhost:15000"), ("origin", origin)]);
            let refusal = guard().check(&h).unwrap_err();
            assert_eq!(refusal, Refusal::Origin(origin.to_string()));
            assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn fetch_metadata_other_than_same_origin_or_none_is_refused() {
        for site in ["same-origin", "none"] {
            let h = headers(&[("host", "localhost"), ("sec-fetch-site", site)]);
            assert_eq!(guard().check(&h), Ok(()), "{site}");
        }
        for site in ["cross-site", "same-site", "bogus"] {
            let h = headers(&[("host", "localhost"), ("sec-fetch-site", site)]);
            assert_eq!(guard().check(&h), Err(Refusal::FetchSite(site.to_string())));
        }
    }

    #[test]
    fn a_state_change_needs_the_header() {
        assert_eq!(
            check_state_change(&headers(&[("host", "localhost")])),
            Err(Refusal::MissingHeader)
        );
        assert_eq!(
            check_state_change(&headers(&[("x-meshd-admin", "1")])),
            Ok(())
        );
    }
}
