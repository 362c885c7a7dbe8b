//! systemd's notify protocol (sd-notify crate): READY once serving, RELOADING/READY around each
//! reload, STATUS with the generation in force, STOPPING on drain, and WATCHDOG pings from a task
//! on the data-plane runtime, so a wedged runtime stops the pings and systemd restarts meshd.
//! Every call is a no-op outside systemd (no `NOTIFY_SOCKET`).

use std::time::Duration;

use sd_notify::NotifyState;

/// The longest STATUS meshd sends, in characters: `systemctl status` shows it on one line, and a
/// rejected reload's error (one line per problem, a thousand problems in a bad directory) would
/// otherwise fill the datagram. Enough for the first problem with its file, line and field.
pub const MAX_STATUS_CHARS: usize = 300;

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
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(&status))]);
}

/// `text` as one bounded line for STATUS=. The notify protocol is newline-separated
/// `KEY=value` lines, so a newline in an error (one per problem, or in a file name) would end
/// STATUS early and could start a line of its own (`MAINPID=`, `READY=1`); other control
/// characters would reach the journal and terminals. Each run of control characters and
/// whitespace becomes one space; a line longer than [`MAX_STATUS_CHARS`] is cut to that many
/// characters, the last one `…`.
pub fn one_line(text: &str) -> String {
    let mut line = String::new();
    for word in text.split(|c: char| c.is_control() || c.is_whitespace()) {
        if word.is_empty() {
            continue;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if line.chars().count() > MAX_STATUS_CHARS {
        line = line.chars().take(MAX_STATUS_CHARS - 1).collect();
        line.push('…');
    }
    line
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
    let status = one_line(&format!("waiting: {reason}"));
    send(&[NotifyState::Status(&status), extend_timeout(extend)]);
}

/// Start-up is still making progress: systemd's start timeout is pushed `by` further.
pub fn extend_start(by: Duration) {
    send(&[extend_timeout(by)]);
}

fn extend_timeout(by: Duration) -> NotifyState<'static> {
    NotifyState::ExtendTimeoutUsec(u32::try_from(by.as_micros()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_one_line_without_control_characters() {
        let error = "configuration rejected with 2 errors\n/etc/a.yaml:1:1: bad\r\n\t/etc/b\x1b[31m.yaml: worse\nMAINPID=1";
        assert_eq!(
            one_line(error),
            "configuration rejected with 2 errors /etc/a.yaml:1:1: bad /etc/b [31m.yaml: worse MAINPID=1"
        );
    }

    #[test]
    fn status_is_bounded_on_a_character_boundary() {
        let long = "é".repeat(MAX_STATUS_CHARS * 3);
        let line = one_line(&long);
        assert_eq!(line.chars().count(), MAX_STATUS_CHARS);
        assert!(line.ends_with("é…"), "{line}");
        let exact = "x".repeat(MAX_STATUS_CHARS);
        assert_eq!(one_line(&exact), exact);
    }
}
