//! The views as tables a person reads at a glance.

use std::fmt::Write as _;

use serde::de::DeserializeOwned;

use crate::table::{Cell, Table, Tone};
use crate::view::{
    Certs, Connections, ControlPlane, Denials, Policies, Services, Summary, Traffic, Workloads,
    XdsReply,
};

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Fit tables to this many columns (a terminal's width); `None`: no limit.
    pub width: Option<usize>,
    /// ANSI colours (only on a terminal).
    pub color: bool,
    /// How many denials to show, the most recent first.
    pub last: usize,
}

/// Why a view could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// Not one of [`crate::view::VIEWS`].
    #[error("unknown view {0:?}")]
    UnknownView(String),
    /// The JSON is not the view's shape (a different meshd version?).
    #[error("unexpected {view} data from meshd: {reason}")]
    Shape {
        /// The view.
        view: String,
        /// What did not fit.
        reason: String,
    },
}

fn parse<T: DeserializeOwned>(view: &str, value: &serde_json::Value) -> Result<T, RenderError> {
    T::deserialize(value).map_err(|e| RenderError::Shape {
        view: view.to_string(),
        reason: e.to_string(),
    })
}

/// Renders the JSON of `view` as text.
pub fn render(view: &str, value: &serde_json::Value, o: Options) -> Result<String, RenderError> {
    Ok(match view {
        "summary" => summary(&parse(view, value)?, o),
        "workloads" => workloads(&parse(view, value)?, o),
        "services" => services(&parse(view, value)?, o),
        "policies" => policies(&parse(view, value)?, o),
        "certs" => certs(&parse(view, value)?, o),
        "control-plane" => control_plane(&parse(view, value)?, o),
        "connections" => connections(&parse(view, value)?, o),
        "denials" => denials(&parse(view, value)?, o),
        "traffic" => traffic(&parse(view, value)?, o),
        other => return Err(RenderError::UnknownView(other.to_string())),
    })
}

/// `2d 3h`, `4h 5m`, `6m 7s`, `8s`; negative durations read `expired 3m ago`-style by callers.
pub fn duration(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `1.2 KiB`-style byte counts.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn left(seconds: i64) -> String {
    if seconds < 0 {
        format!("expired {} ago", duration(seconds))
    } else {
        format!("{} left", duration(seconds))
    }
}

fn opt(value: &Option<String>) -> Cell {
    value.clone().unwrap_or_default().into()
}

fn summary(s: &Summary, o: Options) -> String {
    let mut t = Table::new(&["", ""]);
    let warn =
        |text: String, bad: bool| Cell::toned(text, if bad { Tone::Bad } else { Tone::Plain });
    t.row(vec!["version".into(), s.version.clone().into()]);
    t.row(vec!["generation".into(), s.generation.to_string().into()]);
    t.row(vec![
        "last reload error".into(),
        match &s.last_reload_error {
            Some(e) => warn(e.clone(), true),
            None => Cell::toned("none", Tone::Good),
        },
    ]);
    t.row(vec!["identity".into(), s.identity.clone().into()]);
    let expiry = format!("{} ({})", s.not_after, left(s.seconds_left));
    t.row(vec![
        "certificate".into(),
        Cell::toned(
            match &s.certificate_warning {
                Some(w) => format!("{expiry}: {w}"),
                None => expiry,
            },
            if s.certificate_warning.is_some() {
                Tone::Warn
            } else {
                Tone::Good
            },
        ),
    ]);
    t.row(vec![
        "local workloads".into(),
        s.local_workloads.to_string().into(),
    ]);
    t.row(vec![
        "open connections".into(),
        s.open_connections.to_string().into(),
    ]);
    t.row(vec!["denials".into(), s.denials_total.to_string().into()]);
    // A key/value table has no header worth showing.
    let text = t.render(o.width, o.color);
    text.split_once('\n')
        .map_or(text.clone(), |(_, rest)| rest.to_string())
}

fn workloads(w: &Workloads, o: Options) -> String {
    let mut t = Table::new(&[
        "workload", "local", "identity", "address", "labels", "policies", "mTLS",
    ]);
    for wl in &w.workloads {
        let labels: Vec<String> = wl.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let policies: Vec<String> = wl
            .policies
            .iter()
            .map(|p| format!("{} {}", p.policy, p.action))
            .collect();
        let strict = wl.mtls.iter().any(|m| m.mode == "STRICT");
        let mtls: Vec<String> = wl
            .mtls
            .iter()
            .map(|m| match m.port {
                0 => format!("*:{}", m.mode),
                port => format!("{port}:{}", m.mode),
            })
            .collect();
        t.row(vec![
            wl.name.clone().into(),
            if wl.local {
                Cell::toned("yes", Tone::Good)
            } else {
                Cell::toned("no", Tone::Dim)
            },
            wl.identity.clone().into(),
            wl.address.clone().into(),
            labels.join(",").into(),
            policies.join(", ").into(),
            Cell::toned(
                mtls.join(" "),
                if strict { Tone::Good } else { Tone::Plain },
            ),
        ]);
    }
    format!(
        "generation {}\n{}",
        w.generation,
        t.render(o.width, o.color)
    )
}

fn services(s: &Services, o: Options) -> String {
    let mut t = Table::new(&["service", "hosts", "vips", "ports", "endpoints"]);
    for svc in &s.services {
        let ports: Vec<String> = svc
            .ports
            .iter()
            .map(|p| match (&p.name, p.target_port) {
                (Some(name), Some(target)) => format!("{}/{name}→{target}", p.number),
                (Some(name), None) => format!("{}/{name}", p.number),
                (None, Some(target)) => format!("{}→{target}", p.number),
                (None, None) => p.number.to_string(),
            })
            .collect();
        let unhealthy = svc.endpoints.iter().any(|e| !e.healthy);
        let endpoints: Vec<String> = svc
            .endpoints
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e.address,
                    if e.healthy { "ok" } else { "UNHEALTHY" }
                )
            })
            .collect();
        t.row(vec![
            svc.name.clone().into(),
            svc.hosts.join(",").into(),
            svc.vips.join(",").into(),
            ports.join(" ").into(),
            Cell::toned(
                if endpoints.is_empty() {
                    "none".to_string()
                } else {
                    endpoints.join(", ")
                },
                if unhealthy || svc.endpoints.is_empty() {
                    Tone::Bad
                } else {
                    Tone::Good
                },
            ),
        ]);
    }
    format!(
        "generation {}\n{}",
        s.generation,
        t.render(o.width, o.color)
    )
}

fn policies(p: &Policies, o: Options) -> String {
    let mut t = Table::new(&[
        "kind", "policy", "scope", "action", "rules", "warnings", "source",
    ]);
    for pol in &p.policies {
        let kind = match pol.kind.as_str() {
            "AuthorizationPolicy" => "authz",
            "PeerAuthentication" => "peerauthn",
            other => other,
        };
        let tone = match pol.action.as_str() {
            "DENY" | "CUSTOM" | "STRICT" => Tone::Bad,
            "ALLOW" => Tone::Good,
            _ => Tone::Plain,
        };
        t.row(vec![
            kind.into(),
            pol.name.clone().into(),
            pol.scope.clone().into(),
            Cell::toned(pol.action.clone(), tone),
            pol.rules.to_string().into(),
            Cell::toned(pol.warnings.join("; "), Tone::Warn),
            pol.source.clone().into(),
        ]);
    }
    format!(
        "generation {}, root namespace {}\n{}",
        p.generation,
        crate::table::escape(&p.root_namespace),
        t.render(o.width, o.color)
    )
}

fn certs(c: &Certs, o: Options) -> String {
    let mut t = Table::new(&["", ""]);
    t.row(vec!["identity".into(), c.identity.clone().into()]);
    t.row(vec!["serial".into(), c.serial.clone().into()]);
    t.row(vec!["issuer".into(), c.issuer.clone().into()]);
    t.row(vec!["not before".into(), c.not_before.clone().into()]);
    let tone = if c.warning.is_some() {
        Tone::Warn
    } else {
        Tone::Good
    };
    t.row(vec![
        "not after".into(),
        Cell::toned(format!("{} ({})", c.not_after, left(c.seconds_left)), tone),
    ]);
    if let Some(warning) = &c.warning {
        t.row(vec![
            "warning".into(),
            Cell::toned(warning.clone(), Tone::Bad),
        ]);
    }
    t.row(vec![
        "rotations".into(),
        format!("{} ({} failed)", c.rotations, c.failed_rotations).into(),
    ]);
    let text = t.render(o.width, o.color);
    let mut out = text
        .split_once('\n')
        .map_or(text.clone(), |(_, rest)| rest.to_string());
    let mut roots = Table::new(&["trust domain", "root", "not after"]);
    for td in &c.trust_domains {
        for root in &td.roots {
            roots.row(vec![
                td.trust_domain.clone().into(),
                root.subject.clone().into(),
                root.not_after.clone().into(),
            ]);
        }
    }
    let _ = write!(out, "\n{}", roots.render(o.width, o.color));
    if !c.workloads.is_empty() {
        let mut own = Table::new(&["workload identity", "serial", "not after"]);
        for w in &c.workloads {
            let tone = if w.warning.is_some() {
                Tone::Bad
            } else {
                Tone::Good
            };
            own.row(vec![
                w.identity.clone().into(),
                w.serial.clone().into(),
                Cell::toned(format!("{} ({})", w.not_after, left(w.seconds_left)), tone),
            ]);
        }
        let _ = write!(out, "\n{}", own.render(o.width, o.color));
    }
    out
}

/// The facts as a two-column table without its header line.
fn facts(rows: Vec<Vec<Cell>>, o: Options) -> String {
    let mut t = Table::new(&["", ""]);
    for row in rows {
        t.row(row);
    }
    let text = t.render(o.width, o.color);
    text.split_once('\n')
        .map_or(text.clone(), |(_, rest)| rest.to_string())
}

fn reply(r: &Option<XdsReply>) -> Cell {
    match r {
        None => "-".into(),
        Some(r) => {
            let what = if r.ack { "ACK" } else { "NACK" };
            let text = match &r.error {
                Some(e) => format!("{what} {} {} ({e})", r.nonce, r.at),
                None => format!("{what} {} {}", r.nonce, r.at),
            };
            Cell::toned(text, if r.ack { Tone::Plain } else { Tone::Bad })
        }
    }
}

fn control_plane(c: &ControlPlane, o: Options) -> String {
    if !c.configured {
        return "no control plane: this meshd reads its configuration directory only\n".into();
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let stream = show(&c.stream);
    let tone = if stream == "connected" {
        Tone::Good
    } else {
        Tone::Warn
    };
    let mut rows = vec![
        vec!["istiod".into(), show(&c.address).into()],
        vec!["dialled".into(), show(&c.dial).into()],
        vec!["verified as".into(), show(&c.server_name).into()],
        vec![
            "stream".into(),
            Cell::toned(format!("{stream} since {}", show(&c.since)), tone),
        ],
        vec![
            "ready".into(),
            Cell::toned(
                if c.ready { "yes" } else { "no" },
                if c.ready { Tone::Good } else { Tone::Bad },
            ),
        ],
        vec!["streams opened".into(), c.connections.to_string().into()],
    ];
    if let Some(e) = &c.last_error {
        rows.push(vec![
            "last error".into(),
            Cell::toned(e.clone(), Tone::Warn),
        ]);
    }
    if let Some(at) = &c.started_on_persisted_state {
        rows.push(vec![
            "started on the state persisted at".into(),
            at.clone().into(),
        ]);
    }
    let own = c
        .certificate
        .iter()
        .map(|cert| ("certificate".to_string(), cert));
    let workloads =
        (c.workload_certificates.iter()).map(|(id, cert)| (format!("certificate {id}"), cert));
    for (what, cert) in own.chain(workloads) {
        let text = format!(
            "from the Istio CA ({}), until {}",
            cert.source,
            show(&cert.not_after)
        );
        rows.push(vec![what.into(), text.into()]);
        if let Some(e) = &cert.last_error {
            rows.push(vec![
                "renewal error".into(),
                Cell::toned(e.clone(), Tone::Bad),
            ]);
        }
    }
    for conflict in &c.conflicts {
        rows.push(vec![
            "conflict".into(),
            Cell::toned(conflict.clone(), Tone::Bad),
        ]);
    }
    for (reason, n) in &c.refused {
        rows.push(vec![
            format!("refused: {reason}").into(),
            Cell::toned(n.to_string(), Tone::Warn),
        ]);
    }
    let mut out = facts(rows, o);
    let mut types = Table::new(&["type", "resources", "ACKs", "NACKs", "last", "last NACK"]);
    for t in &c.types {
        let short = t.type_url.rsplit('/').next().unwrap_or(&t.type_url);
        types.row(vec![
            short.to_string().into(),
            t.resources.to_string().into(),
            t.acks.to_string().into(),
            Cell::toned(
                t.nacks.to_string(),
                if t.nacks > 0 { Tone::Warn } else { Tone::Plain },
            ),
            reply(&t.last),
            reply(&t.last_nack),
        ]);
    }
    let _ = write!(out, "\n{}", types.render(o.width, o.color));
    let mut sources = Table::new(&["source", "workloads", "services", "policies"]);
    for s in &c.sources {
        sources.row(vec![
            s.source.clone().into(),
            s.workloads.to_string().into(),
            s.services.to_string().into(),
            s.policies.to_string().into(),
        ]);
    }
    let _ = write!(out, "\n{}", sources.render(o.width, o.color));
    out
}

fn connections(c: &Connections, o: Options) -> String {
    let mut t = Table::new(&[
        "direction",
        "peer identity",
        "source",
        "destination",
        "upstream",
        "transport",
        "in",
        "out",
        "age",
    ]);
    for conn in &c.connections {
        // The peer is the other side: the source inbound, the destination outbound.
        let peer = match conn.direction.as_str() {
            "inbound" => &conn.source_identity,
            _ => &conn.destination_identity,
        };
        let transport = match (conn.transport.as_str(), conn.mtls) {
            (t, true) => format!("{t}+mTLS"),
            (t, false) => t.to_string(),
        };
        t.row(vec![
            Cell::toned(
                conn.direction.clone(),
                if conn.established {
                    Tone::Plain
                } else {
                    Tone::Dim
                },
            ),
            opt(peer),
            conn.source.clone().into(),
            conn.destination.clone().into(),
            opt(&conn.upstream),
            transport.into(),
            bytes(conn.bytes_in).into(),
            bytes(conn.bytes_out).into(),
            duration(conn.age_seconds as i64).into(),
        ]);
    }
    format!(
        "{} open\n{}",
        c.connections.len(),
        t.render(o.width, o.color)
    )
}

fn denials(d: &Denials, o: Options) -> String {
    let mut t = Table::new(&[
        "at",
        "direction",
        "source",
        "source identity",
        "destination",
        "outcome",
        "policy",
        "reason",
    ]);
    for denial in d.denials.iter().take(o.last) {
        t.row(vec![
            denial.at.clone().into(),
            denial.direction.clone().into(),
            denial.source.clone().into(),
            opt(&denial.source_identity),
            denial.destination.clone().into(),
            Cell::toned(denial.outcome.clone(), Tone::Bad),
            opt(&denial.policy),
            denial.reason.clone().into(),
        ]);
    }
    format!(
        "{} refused or denied since start, last {} shown\n{}",
        d.total,
        t.len(),
        t.render(o.width, o.color)
    )
}

/// The terminal has no picture: the window's totals, then the graph's edges as rows.
fn traffic(v: &Traffic, o: Options) -> String {
    let sum = |f: fn(&crate::view::TrafficBucket) -> u64| v.buckets.iter().map(f).sum::<u64>();
    let minutes = v.bucket_seconds * v.buckets.len() as u64 / 60;
    let mut out = format!(
        "last {minutes} min: {} connections, {} refused or denied, {}\n",
        sum(|b| b.connections),
        sum(|b| b.denials),
        bytes(sum(|b| b.bytes)),
    );
    let mut t = Table::new(&[
        "from",
        "to",
        "verdict",
        "connections",
        "open",
        "bytes",
        "policy",
    ]);
    for e in &v.edges {
        let tone = if e.verdict == "denied" {
            Tone::Bad
        } else {
            Tone::Good
        };
        t.row(vec![
            e.from.clone().into(),
            e.to.clone().into(),
            Cell::toned(e.verdict.clone(), tone),
            e.connections.to_string().into(),
            e.open.to_string().into(),
            bytes(e.bytes).into(),
            opt(&e.policy),
        ]);
    }
    out.push_str(&t.render(o.width, o.color));
    if v.omitted_edges > 0 || v.omitted_nodes > 0 {
        let _ = writeln!(
            out,
            "{} more edges and {} more nodes not shown (at most {} edges, {} nodes)",
            v.omitted_edges, v.omitted_nodes, v.max_edges, v.max_nodes
        );
    }
    out
}
