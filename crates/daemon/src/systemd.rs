//! systemd's notify protocol (sd-notify crate): READY once serving, RELOADING/READY around each
//! reload, STATUS with the generation in force, STOPPING on drain, and WATCHDOG pings from a task
//! on the data-plane runtime, so a wedged runtime stops the pings and systemd restarts meshd.
//! Every call is a no-op outside systemd (no `NOTIFY_SOCKET`).

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Serving: listeners up, certificate loaded.
pub fn ready(generation: u64) {
    let status = format!("serving configuration generation {generation}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload starts (systemd's `Type=notify-reload` protocol: RELOADING=1 with the monotonic
/// time, then READY=1).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A reload ended; `generation` is in force (unchanged when the new configuration was bad).
pub fn reloaded(generation: u64, error: Option<&str>) {
    let status = match error {
        None => format!("serving configuration generation {generation}"),
        Some(e) => {
            format!("serving configuration generation {generation}; last reload rejected: {e}")
        }
    };
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Draining before exit.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Pings the watchdog at half its interval from a task on the current runtime, when systemd
/// asked for one (`WatchdogSec=`).
pub fn spawn_watchdog() {
    if let Some(interval) = sd_notify::watchdog_enabled() {
        spawn_pinger((interval / 2).max(Duration::from_millis(10)), || {
            send(&[NotifyState::Watchdog])
        });
    }
}

/// Calls `ping` every `period` from a task on the current runtime: when the runtime's workers
/// are wedged the task is not polled and the pings stop, which is the point of a watchdog.
pub fn spawn_pinger(
    period: Duration,
    ping: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            ping();
        }
    })
}

/// Start-up waits (not ready) for `reason`, a certificate that is not usable yet or a port in
/// use, and asks systemd to extend its start timeout by `extend` meanwhile. One line: a
/// newline would end the STATUS field early.
pub fn waiting(reason: &str, extend: Duration) {
    let flat: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let status = format!("waiting: {flat}");
    send(&[NotifyState::Status(&status), extend_timeout(extend)]);
}

/// Start-up is still making progress: systemd's start timeout is pushed `by` further.
pub fn extend_start(by: Duration) {
    send(&[extend_timeout(by)]);
}

fn extend_timeout(by: Duration) -> NotifyState<'static> {
    NotifyState::ExtendTimeoutUsec(u32::try_from(by.as_micros()).unwrap_or(u32::MAX))
}
