//! Where the local identity comes from: the config-file types and the file loaders.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::credentials::{CredentialSet, Credentials};
use crate::dev_ca::{SVID_BUNDLE_FILE, SVID_FILE, SVID_KEY_FILE};
use crate::{Error, SpiffeId, TrustBundle, TrustDomain, pem};

/// Default dev CA SVID lifetime: 24 h, ztunnel's `SECRET_TTL` default.
pub const DEFAULT_DEV_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default trust domain of the dev CA: `cluster.local`, Istio's default.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The source of the local workload identity (one of six; externally tagged in YAML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum IdentitySource {
    /// PEM files kept fresh by another agent (cert-manager, Vault, an operator's CA).
    Files(FilesSource),
    /// A directory written by SPIRE's spiffe-helper (`svid.pem`, `svid_key.pem`, `svid_bundle.pem`).
    SpiffeHelper(SpiffeHelperSource),
    /// meshd's built-in development CA issues and renews the SVID itself.
    DevCa(DevCaSource),
    /// A directory kept by meshd's Istio CA client (meshd-xds): `cert-chain.pem`, `key.pem`,
    /// `root-cert.pem`, Istio's `OUTPUT_CERTS` names; loaded and rotated like spiffe-helper's.
    IstioCa(IstioCaSource),
    /// A SPIRE agent's SPIFFE Workload API: the X.509-SVID stream and the bundles it carries.
    Spire(crate::spire::SpireSource),
    /// A SPIRE agent's Delegated Identity API (its admin socket): the SVID of the workload its
    /// selectors name, and the bundles of its trust domain and those it federates with.
    SpireDelegated(crate::spire::SpireDelegatedSource),
}

/// Explicit certificate, key and bundle files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesSource {
    /// Certificate chain PEM, leaf first.
    pub cert: PathBuf,
    /// Private key PEM (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// Roots of the local trust domain (the leaf's), PEM.
    pub bundle: PathBuf,
    /// Roots of federated trust domains, one PEM file per trust domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub federated_bundles: BTreeMap<TrustDomain, PathBuf>,
    /// The SPIFFE ID the certificate must carry; if unset, any ID the bundle vouches for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<SpiffeId>,
}

/// A spiffe-helper output directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpiffeHelperSource {
    /// The directory holding `svid.pem`, `svid_key.pem` and `svid_bundle.pem`.
    pub dir: PathBuf,
    /// Roots of federated trust domains, one PEM file per trust domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub federated_bundles: BTreeMap<TrustDomain, PathBuf>,
    /// The SPIFFE ID the certificate must carry; if unset, any ID the bundle vouches for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<SpiffeId>,
}

/// Istio's certificate file names in a `certDir` (pilot-agent's `OUTPUT_CERTS`).
pub const ISTIO_CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The private key (PKCS#8 PEM, mode 0600).
pub const ISTIO_KEY_FILE: &str = "key.pem";
/// The roots of the mesh.
pub const ISTIO_ROOT_CERT_FILE: &str = "root-cert.pem";

/// The certificate directory meshd's Istio CA client writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioCaSource {
    /// The directory holding `cert-chain.pem`, `key.pem` and `root-cert.pem`.
    pub cert_dir: PathBuf,
    /// The SPIFFE ID the certificate must carry; if unset, any ID the bundle vouches for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<SpiffeId>,
}

impl From<&IstioCaSource> for FilesSource {
    fn from(src: &IstioCaSource) -> Self {
        FilesSource {
            cert: src.cert_dir.join(ISTIO_CERT_CHAIN_FILE),
            key: src.cert_dir.join(ISTIO_KEY_FILE),
            bundle: src.cert_dir.join(ISTIO_ROOT_CERT_FILE),
            federated_bundles: BTreeMap::new(),
            spiffe_id: src.spiffe_id.clone(),
        }
    }
}

/// The built-in development CA (for trying meshd; not for production).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DevCaSource {
    /// The CA directory (`ca-cert.pem`, `ca-key.pem`); a CA is created there if none exists.
    pub dir: PathBuf,
    /// Trust domain of the CA and of the issued SVID.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: TrustDomain,
    /// Namespace of the workload identity.
    #[serde(default = "default_name")]
    pub namespace: String,
    /// Service account of the workload identity.
    #[serde(default = "default_name")]
    pub service_account: String,
    /// SVID lifetime such as `24h`, `90m`, `30s`; it is re-issued at half-life.
    #[serde(default = "default_ttl", with = "duration_text")]
    pub ttl: Duration,
}

impl DevCaSource {
    /// A dev CA in `dir` issuing `spiffe://cluster.local/ns/default/sa/default` for 24 h.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DevCaSource {
            dir: dir.into(),
            trust_domain: default_trust_domain(),
            namespace: default_name(),
            service_account: default_name(),
            ttl: DEFAULT_DEV_TTL,
        }
    }
}

fn default_trust_domain() -> TrustDomain {
    // A literal known to be valid; the fallback arm cannot be taken.
    TrustDomain::new(DEFAULT_TRUST_DOMAIN).unwrap_or_else(|_| unreachable!())
}

fn default_name() -> String {
    "default".to_string()
}

fn default_ttl() -> Duration {
    DEFAULT_DEV_TTL
}

impl From<&SpiffeHelperSource> for FilesSource {
    fn from(src: &SpiffeHelperSource) -> Self {
        FilesSource {
            cert: src.dir.join(SVID_FILE),
            key: src.dir.join(SVID_KEY_FILE),
            bundle: src.dir.join(SVID_BUNDLE_FILE),
            federated_bundles: src.federated_bundles.clone(),
            spiffe_id: src.spiffe_id.clone(),
        }
    }
}

/// The bytes of every file of a [`FilesSource`], read in one go so a change can be detected
/// before anything is parsed.
#[derive(Debug, Clone, Hash)]
pub(crate) struct RawFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    bundle: Vec<u8>,
    federated: Vec<(TrustDomain, PathBuf, Vec<u8>)>,
}

impl RawFiles {
    /// A cheap digest for "did anything change since last time".
    pub(crate) fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

impl FilesSource {
    /// Loads and validates the whole set; errors name the offending file.
    pub fn load(&self) -> Result<CredentialSet, Error> {
        self.validate(self.read()?)
    }

    /// The directories to watch: the parents of every file, since editors, agents and
    /// Kubernetes replace files by renaming, which a watch on the file itself would miss.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [&self.cert, &self.key, &self.bundle]
            .into_iter()
            .chain(self.federated_bundles.values())
            .map(|p| parent_dir(p))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    pub(crate) fn read(&self) -> Result<RawFiles, Error> {
        let federated = self
            .federated_bundles
            .iter()
            .map(|(td, path)| Ok((td.clone(), path.clone(), pem::read(path)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(RawFiles {
            cert: pem::read(&self.cert)?,
            key: pem::read(&self.key)?,
            bundle: pem::read(&self.bundle)?,
            federated,
        })
    }

    pub(crate) fn validate(&self, raw: RawFiles) -> Result<CredentialSet, Error> {
        let chain = pem::parse_certificates(&raw.cert).map_err(|e| e.in_file(&self.cert))?;
        let key = pem::parse_private_key(&raw.key).map_err(|e| e.in_file(&self.key))?;
        let credentials = Credentials::new(chain, key).map_err(|e| match e {
            Error::KeyMismatch | Error::BadPrivateKey { .. } => e.in_file(&self.key),
            other => other.in_file(&self.cert),
        })?;

        let local = credentials.id().trust_domain();
        let roots = pem::parse_certificates(&raw.bundle).map_err(|e| e.in_file(&self.bundle))?;
        let mut bundle =
            TrustBundle::new(local.clone(), roots).map_err(|e| e.in_file(&self.bundle))?;
        for (td, path, bytes) in raw.federated {
            if td == local {
                return Err(Error::Config {
                    field: format!("federatedBundles.{td}"),
                    reason: "is the local trust domain, whose roots come from `bundle`".into(),
                });
            }
            let roots = pem::parse_certificates(&bytes).map_err(|e| e.in_file(&path))?;
            bundle.insert(td, roots).map_err(|e| e.in_file(&path))?;
        }
        CredentialSet::new(credentials, bundle, self.spiffe_id.as_ref()).map_err(|e| match e {
            Error::IdentityMismatch { .. } => e,
            other => other.in_file(&self.cert),
        })
    }
}

impl IdentitySource {
    /// Refuses a path no agent could ever put the identity at: a file path that names a
    /// directory, a directory path that names a file, or a path below an existing file
    /// (`/etc/meshd/meshd.yaml/cert.pem`). Only a person can fix those, so meshd exits
    /// instead of waiting; files and directories that do not exist yet are not errors (an
    /// agent may still create them), nor is anything meshd may not look at.
    pub fn check_paths(&self) -> Result<(), Error> {
        let mut paths: Vec<(String, &Path, bool)> = Vec::new();
        let federated = match self {
            IdentitySource::Files(f) => {
                paths.push(("files.cert".into(), &f.cert, false));
                paths.push(("files.key".into(), &f.key, false));
                paths.push(("files.bundle".into(), &f.bundle, false));
                ("files", &f.federated_bundles)
            }
            IdentitySource::SpiffeHelper(h) => {
                paths.push(("spiffeHelper.dir".into(), &h.dir, true));
                ("spiffeHelper", &h.federated_bundles)
            }
            IdentitySource::DevCa(d) => {
                paths.push(("devCa.dir".into(), &d.dir, true));
                ("devCa", &BTreeMap::new())
            }
            IdentitySource::IstioCa(c) => {
                paths.push(("istioCa.certDir".into(), &c.cert_dir, true));
                ("istioCa", &BTreeMap::new())
            }
            IdentitySource::Spire(s) => {
                crate::spire::check_socket(
                    "spire.socket",
                    &s.socket,
                    "the agent's Workload API socket",
                )?;
                ("spire", &BTreeMap::new())
            }
            IdentitySource::SpireDelegated(d) => {
                crate::spire::check_delegated(d)?;
                ("spireDelegated", &BTreeMap::new())
            }
        };
        let (prefix, bundles) = federated;
        for (td, path) in bundles {
            paths.push((format!("{prefix}.federatedBundles.{td}"), path, false));
        }
        for (field, path, want_dir) in paths {
            if let Some(reason) = impossible_path(path, want_dir) {
                return Err(Error::Config { field, reason });
            }
        }
        Ok(())
    }
}

/// Why nothing can ever be found at `path` (a directory when `want_dir`, else a file), judged
/// by the nearest ancestor that exists; `None` when something could.
pub(crate) fn impossible_path(path: &Path, want_dir: bool) -> Option<String> {
    for at in path.ancestors() {
        // Errors (not there, not a directory, not allowed to look) say nothing: go up.
        let Ok(meta) = std::fs::metadata(at) else {
            continue;
        };
        return match (at == path, meta.is_dir()) {
            (true, true) if !want_dir => {
                Some(format!("{} is a directory, not a file", path.display()))
            }
            (true, false) if want_dir => {
                Some(format!("{} is a file, not a directory", path.display()))
            }
            (false, false) => Some(format!(
                "{} is a file, so {} can never exist",
                at.display(),
                path.display()
            )),
            _ => None,
        };
    }
    None
}

impl SpiffeHelperSource {
    /// Loads and validates the spiffe-helper files; errors name the offending file.
    pub fn load(&self) -> Result<CredentialSet, Error> {
        FilesSource::from(self).load()
    }
}

/// Parses a lifetime such as `24h`, `90m`, `30s`, `7d` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let invalid = |reason: &str| Error::Config {
        field: "ttl".into(),
        reason: format!("{text:?}: {reason}"),
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(invalid("expected a number followed by s, m, h or d")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| invalid("expected a number before each unit"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| invalid("too long"))?;
    }
    if !digits.is_empty() {
        return Err(invalid("missing unit (s, m, h or d)"));
    }
    if total == 0 {
        return Err(invalid("must be longer than zero"));
    }
    Ok(Duration::from_secs(total))
}

/// Renders a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Durations in configuration files (`30s`, `5m`, `1h30m`), for serde's `with`: every
/// duration key of meshd's YAML reads the same forms through [`parse_duration`].
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Error;

    /// Writes `d` as [`super::format_duration`] does.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads a duration with [`super::parse_duration`]. Its error names the `ttl` flag it
    /// was first written for; here serde names the key, so only the reason is passed on.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(|e| match e {
            Error::Config { reason, .. } => serde::de::Error::custom(reason),
            other => serde::de::Error::custom(other),
        })
    }
}

/// Returns `path`'s parent, or `.` for a bare file name.
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        for bad in ["", "0s", "10", "h", "5x", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
    }

    #[test]
    fn config_shapes() {
        let files: IdentitySource = serde_json::from_str(
            r#"{"files": {"cert": "/c.pem", "key": "/k.pem", "bundle": "/b.pem",
                "federatedBundles": {"other.org": "/o.pem"},
                "spiffeId": "spiffe://cluster.local/ns/a/sa/b"}}"#,
        )
        .unwrap();
        let IdentitySource::Files(f) = &files else {
            panic!("{files:?}")
        };
        assert_eq!(f.federated_bundles.len(), 1);
        assert_eq!(
            f.watch_dirs(),
            vec![PathBuf::from("/")],
            "all files share one parent"
        );

        let dev: IdentitySource =
            serde_json::from_str(r#"{"devCa": {"dir": "/var/lib/meshd/ca", "ttl": "1h"}}"#)
                .unwrap();
        assert_eq!(
            dev,
            IdentitySource::DevCa(DevCaSource {
                ttl: Duration::from_secs(3600),
                ..DevCaSource::new("/var/lib/meshd/ca")
            })
        );
        let json = serde_json::to_string(&dev).unwrap();
        assert_eq!(serde_json::from_str::<IdentitySource>(&json).unwrap(), dev);

        let helper: IdentitySource =
            serde_json::from_str(r#"{"spiffeHelper": {"dir": "/run/spiffe"}}"#).unwrap();
        let IdentitySource::SpiffeHelper(h) = &helper else {
            panic!("{helper:?}")
        };
        assert_eq!(
            FilesSource::from(h).cert,
            PathBuf::from("/run/spiffe/svid.pem")
        );
    }

    #[test]
    fn paths_that_can_never_hold_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meshd.yaml");
        std::fs::write(&file, "").unwrap();
        let files = |cert: PathBuf| {
            IdentitySource::Files(FilesSource {
                cert,
                key: dir.path().join("tls/key.pem"),
                bundle: dir.path().join("tls/bundle.pem"),
                federated_bundles: BTreeMap::new(),
                spiffe_id: None,
            })
        };
        // Not there yet: an agent may still write it.
        files(dir.path().join("tls/cert.pem"))
            .check_paths()
            .unwrap();
        let below_a_file = files(file.join("cert.pem")).check_paths().unwrap_err();
        assert_eq!(
            below_a_file,
            Error::Config {
                field: "files.cert".into(),
                reason: format!(
                    "{} is a file, so {} can never exist",
                    file.display(),
                    file.join("cert.pem").display()
                ),
            }
        );
        let a_directory = files(dir.path().to_path_buf()).check_paths().unwrap_err();
        assert!(
            a_directory
                .to_string()
                .contains("is a directory, not a file"),
            "{a_directory}"
        );
        let helper = IdentitySource::SpiffeHelper(SpiffeHelperSource {
            dir: file.clone(),
            federated_bundles: BTreeMap::new(),
            spiffe_id: None,
        });
        let helper = helper.check_paths().unwrap_err();
        assert!(
            helper.to_string().starts_with("spiffeHelper.dir: ")
                && helper.to_string().ends_with("is a file, not a directory"),
            "{helper}"
        );
        IdentitySource::DevCa(DevCaSource::new(dir.path().join("new/ca")))
            .check_paths()
            .unwrap();
    }

    #[test]
    fn config_rejects_unknown_fields_and_bad_values() {
        for bad in [
            r#"{"files": {"cert": "/c", "key": "/k", "bundle": "/b", "crt": "/x"}}"#,
            r#"{"devCa": {"dir": "/d", "ttl": "forever"}}"#,
            r#"{"devCa": {"dir": "/d", "trustDomain": "spiffe://x"}}"#,
            r#"{"files": {"cert": "/c", "key": "/k", "bundle": "/b", "spiffeId": "http://x"}}"#,
            r#"{"vault": {}}"#,
        ] {
            assert!(
                serde_json::from_str::<IdentitySource>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
