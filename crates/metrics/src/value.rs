//! Label values: `unknown` when missing, as ztunnel renders them, and escaped.

use std::borrow::Cow;
use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// What a missing or empty label value renders as (ztunnel's `DefaultedUnknown`).
pub(crate) const UNKNOWN: &str = "unknown";

/// One label value. prometheus-client 0.24 writes label values verbatim, so this escapes the
/// three characters OpenMetrics requires (`\`, `"`, newline): a workload label or a peer's
/// identity can then never break the exposition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Value(Cow<'static, str>);

impl Value {
    /// A fixed value.
    pub(crate) const fn fixed(value: &'static str) -> Value {
        Value(Cow::Borrowed(value))
    }

    /// `unknown`.
    pub(crate) const fn unknown() -> Value {
        Value::fixed(UNKNOWN)
    }

    /// The value, or `unknown` when it is missing or empty.
    pub(crate) fn or_unknown(value: Option<&str>) -> Value {
        match value {
            Some(v) if !v.is_empty() => Value(Cow::Owned(v.to_owned())),
            _ => Value::unknown(),
        }
    }

    /// The value as a string (unescaped).
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&'static str> for Value {
    fn from(value: &'static str) -> Self {
        Value::fixed(value)
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Value(Cow::Owned(value))
    }
}

impl EncodeLabelValue for Value {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut rest = self.as_str();
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            let (plain, tail) = rest.split_at(at);
            encoder.write_str(plain)?;
            let mut chars = tail.chars();
            encoder.write_str(match chars.next() {
                Some('\\') => "\\\\",
                Some('"') => "\\\"",
                _ => "\\n",
            })?;
            rest = chars.as_str();
        }
        encoder.write_str(rest)
    }
}
