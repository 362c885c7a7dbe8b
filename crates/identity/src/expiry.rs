//! The expiry alarm of the identity manager: a warning as the SVID nears its end, an error once
//! it has passed, so an agent that stopped renewing is noticed before handshakes fail.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{error, warn};

use crate::credentials::CredentialSet;

/// Warns once as the current SVID nears expiry and logs an error once it has expired; re-arms
/// whenever the set changes.
pub(crate) struct ExpiryAlarm {
    warn_before: Option<Duration>,
    serial: Vec<u8>,
    warned: bool,
    expired: bool,
}

impl ExpiryAlarm {
    pub(crate) fn new(warn_before: Option<Duration>) -> Self {
        ExpiryAlarm {
            warn_before,
            serial: Vec::new(),
            warned: false,
            expired: false,
        }
    }

    fn rearm_if_rotated(&mut self, set: &CredentialSet) {
        if self.serial != set.credentials().serial() {
            self.serial = set.credentials().serial().to_vec();
            self.warned = false;
            self.expired = false;
        }
    }

    fn warn_at(&self, set: &CredentialSet) -> OffsetDateTime {
        let creds = set.credentials();
        let margin = match self.warn_before {
            Some(d) => time::Duration::try_from(d).unwrap_or(time::Duration::MAX),
            None => (creds.not_after() - creds.not_before()) / 4,
        };
        // A margin reaching before year -9999 (a `warn_before_expiry` of centuries) means "warn
        // now", not an overflow panic.
        creds
            .not_after()
            .checked_sub(margin)
            .unwrap_or(creds.not_before())
    }

    pub(crate) fn next_deadline(&mut self, set: &CredentialSet) -> Option<Instant> {
        self.rearm_if_rotated(set);
        let at = if !self.warned {
            self.warn_at(set)
        } else if !self.expired {
            set.not_after()
        } else {
            return None;
        };
        let wait = at - OffsetDateTime::now_utc();
        let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
        // Beyond Instant's range (a certificate valid for millennia) is as good as never.
        Instant::now().checked_add(wait)
    }

    pub(crate) fn fire(&mut self, set: &CredentialSet) {
        self.rearm_if_rotated(set);
        let now = OffsetDateTime::now_utc();
        if now >= set.not_after() {
            self.warned = true;
            self.expired = true;
            error!(id = %set.id(), not_after = %set.not_after(),
                "certificate has expired and no valid replacement arrived; new mTLS handshakes will fail");
        } else if now >= self.warn_at(set) {
            self.warned = true;
            warn!(id = %set.id(), not_after = %set.not_after(),
                "certificate expires soon and has not been rotated; check the agent that writes it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DevCa;

    fn set(ttl: Duration) -> CredentialSet {
        let ca = DevCa::generate("cluster.local").unwrap();
        ca.issue("ns", "sa", ttl).unwrap().credential_set().unwrap()
    }

    #[test]
    fn expiry_alarm_warns_once_then_waits_for_expiry() {
        // 1 h SVID, warn 2 h ahead: the warning is due at once, then the next alarm is expiry.
        let set = set(Duration::from_secs(3600));
        let mut alarm = ExpiryAlarm::new(Some(Duration::from_secs(7200)));
        let first = alarm.next_deadline(&set).unwrap();
        assert!(first <= Instant::now());
        alarm.fire(&set);
        assert!(alarm.warned && !alarm.expired);
        let next = alarm.next_deadline(&set).unwrap();
        assert!(next > Instant::now() + Duration::from_secs(3500));

        // A rotated set re-arms the warning.
        let rotated = self::set(Duration::from_secs(3600));
        assert!(alarm.next_deadline(&rotated).unwrap() <= Instant::now());
        assert!(!alarm.warned);
    }

    #[test]
    fn warning_margin_of_centuries_warns_now() {
        // `warn_before_expiry` is config input; a margin reaching before year -9999 used to
        // overflow the date subtraction and panic the manager's task.
        let set = set(Duration::from_secs(3600));
        let mut alarm = ExpiryAlarm::new(Some(Duration::MAX));
        assert!(alarm.next_deadline(&set).unwrap() <= Instant::now());
        alarm.fire(&set);
        assert!(alarm.warned && !alarm.expired);
    }

    #[test]
    fn default_warning_is_a_quarter_of_the_lifetime() {
        let set = set(Duration::from_secs(4 * 3600));
        let alarm = ExpiryAlarm::new(None);
        let creds = set.credentials();
        let lifetime = creds.not_after() - creds.not_before();
        assert_eq!(alarm.warn_at(&set), creds.not_after() - lifetime / 4);
    }
}
