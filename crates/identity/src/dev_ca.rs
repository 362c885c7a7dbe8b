//! The built-in development CA: a P-256 root on disk that issues workload SVIDs.
//!
//! For trying meshd without a PKI. It keeps its root key in a plain file and has no revocation;
//! production deployments use certificates from a real CA (SPIRE, cert-manager, Vault, ...).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::credentials::{CredentialSet, Credentials};
use crate::{Error, SpiffeId, TrustBundle, TrustDomain, format_duration, pem, x509};

/// File name of the root certificate in a dev CA directory; it is also the trust bundle.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// File name of the root's PKCS#8 private key in a dev CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// spiffe-helper's default file name for the SVID chain.
pub const SVID_FILE: &str = "svid.pem";
/// spiffe-helper's default file name for the SVID private key.
pub const SVID_KEY_FILE: &str = "svid_key.pem";
/// spiffe-helper's default file name for the trust bundle.
pub const SVID_BUNDLE_FILE: &str = "svid_bundle.pem";

/// Root lifetime: ten years, long enough that nobody trying meshd meets a root rotation.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// SVIDs start this far in the past so hosts whose clocks lag by up to a minute accept them.
const BACKDATE: Duration = Duration::from_secs(60);

/// A development certificate authority for one trust domain.
pub struct DevCa {
    trust_domain: TrustDomain,
    root_der: CertificateDer<'static>,
    root_pem: String,
    key_pem: String,
    /// The root's notAfter; an SVID may not outlive it.
    root_not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued SVID, as PEM text ready to write or load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSvid {
    /// The identity in the certificate's URI SAN.
    pub id: SpiffeId,
    /// The leaf certificate (the dev CA issues directly from the root: no intermediates).
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key.
    pub key_pem: String,
    /// The root certificate, i.e. the trust bundle.
    pub bundle_pem: String,
    /// End of the validity period.
    pub not_after: OffsetDateTime,
}

impl DevCa {
    /// Generates a new root in memory (nothing written).
    pub fn generate(trust_domain: &str) -> Result<Self, Error> {
        let trust_domain = TrustDomain::new(trust_domain)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_error)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // Istio's CA puts the trust domain in O; the CN makes the root recognisable in tools.
        dn.push(DnType::OrganizationName, trust_domain.as_str());
        dn.push(DnType::CommonName, format!("meshd dev CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // A SPIFFE bundle root conventionally names its trust domain; `load` reads it back.
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = end_of(now, ROOT_LIFETIME).ok_or_else(|| Error::DevCa {
            reason: format!("a root created at {now} would outlive the year 9999"),
        })?;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            trust_domain,
            root_der: cert.der().clone(),
            root_pem: cert.pem(),
            key_pem,
            root_not_after: whole_seconds(params.not_after),
            issuer: Issuer::new(params, key),
        })
    }

    /// Creates a root for `trust_domain` and writes [`CA_CERT_FILE`] and [`CA_KEY_FILE`] into
    /// `out_dir` (created if missing). Refuses to overwrite an existing CA.
    pub fn init(trust_domain: &str, out_dir: &Path) -> Result<Self, Error> {
        let ca = DevCa::generate(trust_domain)?;
        fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, &e))?;
        // Key first: a crash in between leaves no certificate that looks like a usable CA.
        write_new(&out_dir.join(CA_KEY_FILE), ca.key_pem.as_bytes(), 0o600)?;
        write_new(&out_dir.join(CA_CERT_FILE), ca.root_pem.as_bytes(), 0o644)?;
        Ok(ca)
    }

    /// Loads a CA written by [`DevCa::init`]; its trust domain is read from the root's URI SAN.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_bytes = pem::read(&cert_path)?;
        let root_pem = String::from_utf8(cert_bytes).map_err(|_| {
            Error::Pem {
                reason: "not UTF-8 text".into(),
            }
            .in_file(&cert_path)
        })?;
        let key_bytes = pem::read(&key_path)?;
        let key_pem = String::from_utf8(key_bytes).map_err(|_| {
            Error::Pem {
                reason: "not UTF-8 text".into(),
            }
            .in_file(&key_path)
        })?;

        let in_cert = |e: Error| e.in_file(&cert_path);
        let root_der = pem::parse_certificates(root_pem.as_bytes())
            .map_err(in_cert)?
            .into_iter()
            .next()
            .ok_or_else(|| in_cert(Error::NoCertificate))?;
        let uri = x509::first_uri_san(&root_der)
            .map_err(in_cert)?
            .ok_or_else(|| in_cert(Error::NoUriSan))?;
        let trust_domain = SpiffeId::new(&uri).map_err(in_cert)?.trust_domain();
        let root_not_after = x509::not_after(&root_der).map_err(in_cert)?;

        let key = KeyPair::from_pem(&key_pem).map_err(|e| rcgen_error(e).in_file(&key_path))?;
        if key.subject_public_key_info() != public_key_of(&root_der).map_err(in_cert)? {
            return Err(Error::KeyMismatch.in_file(&key_path));
        }
        let issuer =
            Issuer::from_ca_cert_der(&root_der, key).map_err(|e| in_cert(rcgen_error(e)))?;
        Ok(DevCa {
            trust_domain,
            root_der,
            root_pem,
            key_pem,
            root_not_after,
            issuer,
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificate as PEM (what peers need in their trust bundle).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root certificate as DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// When the root expires; SVIDs are never issued past it.
    pub fn root_not_after(&self) -> OffsetDateTime {
        self.root_not_after
    }

    /// A trust bundle holding this root for its trust domain.
    pub fn bundle(&self) -> Result<TrustBundle, Error> {
        TrustBundle::new(self.trust_domain.clone(), vec![self.root_der.clone()])
    }

    /// Issues an SVID for `spiffe://<td>/ns/<namespace>/sa/<service_account>` valid for `ttl`:
    /// P-256 key, URI SAN only, CA:false, digitalSignature, serverAuth + clientAuth (HBONE uses
    /// one SVID as both TLS client and server).
    pub fn issue(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> Result<IssuedSvid, Error> {
        let id = SpiffeId::istio(self.trust_domain.as_str(), namespace, service_account)?;
        let ttl_error = |reason: String| Error::Config {
            field: "ttl".into(),
            reason,
        };
        if ttl.is_zero() {
            return Err(ttl_error("must be longer than zero".into()));
        }
        let now = OffsetDateTime::now_utc();
        // Checked: a TTL is user input (`meshd ca issue --ttl 9999999d`), and unchecked date
        // arithmetic past year 9999 panics.
        let not_after = end_of(now, ttl)
            .filter(|end| *end <= self.root_not_after)
            .ok_or_else(|| {
                ttl_error(format!(
                    "{} would outlive the CA root, which expires at {}",
                    format_duration(ttl),
                    self.root_not_after
                ))
            })?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_error)?;
        let mut params = CertificateParams::default();
        // SPIFFE identifies by URI SAN alone; an empty subject avoids a second, conflicting name.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(&id.to_string())?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_error)?;
        Ok(IssuedSvid {
            id,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            bundle_pem: self.root_pem.clone(),
            // Certificates carry whole seconds; report what was actually encoded.
            not_after: whole_seconds(not_after),
        })
    }

    /// Issues an SVID and writes it to `out_dir` in the spiffe-helper layout
    /// ([`SVID_FILE`], [`SVID_KEY_FILE`], [`SVID_BUNDLE_FILE`]); what `meshd ca issue` calls.
    pub fn issue_to_dir(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        out_dir: &Path,
    ) -> Result<IssuedSvid, Error> {
        let svid = self.issue(namespace, service_account, ttl)?;
        svid.write_spiffe_helper_dir(out_dir)?;
        Ok(svid)
    }
}

impl DevCa {
    /// Loads the CA in `ca_dir`, issues an SVID and writes it to `out_dir` in the
    /// spiffe-helper layout: `meshd ca issue` in one call.
    pub fn issue_from(
        ca_dir: &Path,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        out_dir: &Path,
    ) -> Result<IssuedSvid, Error> {
        DevCa::load(ca_dir)?.issue_to_dir(namespace, service_account, ttl, out_dir)
    }
}

impl IssuedSvid {
    /// Writes the three spiffe-helper files into `dir` (created if missing), each replaced by
    /// an atomic rename so a watching meshd never reads half a file.
    pub fn write_spiffe_helper_dir(&self, dir: &Path) -> Result<(), Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, &e))?;
        write_atomic(&dir.join(SVID_KEY_FILE), self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(SVID_FILE), self.cert_pem.as_bytes(), 0o644)?;
        write_atomic(
            &dir.join(SVID_BUNDLE_FILE),
            self.bundle_pem.as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    /// Parses and validates this SVID against its own bundle.
    pub fn credential_set(&self) -> Result<CredentialSet, Error> {
        let creds = Credentials::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())?;
        let roots = pem::parse_certificates(self.bundle_pem.as_bytes())?;
        let bundle = TrustBundle::new(self.id.trust_domain(), roots)?;
        CredentialSet::new(creds, bundle, Some(&self.id))
    }
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain.as_str())
            .finish_non_exhaustive()
    }
}

/// `start + lifetime`, or `None` past what a date (and an X.509 GeneralizedTime) can hold.
fn end_of(start: OffsetDateTime, lifetime: Duration) -> Option<OffsetDateTime> {
    start.checked_add(time::Duration::try_from(lifetime).ok()?)
}

fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

fn uri_san(uri: &str) -> Result<SanType, Error> {
    let ia5 = uri.to_string().try_into().map_err(rcgen_error)?;
    Ok(SanType::URI(ia5))
}

fn public_key_of(der: &CertificateDer<'_>) -> Result<Vec<u8>, Error> {
    let parsed =
        rustls::server::ParsedCertificate::try_from(der).map_err(|e| Error::BadCertificate {
            reason: e.to_string(),
        })?;
    Ok(parsed.subject_public_key_info().as_ref().to_vec())
}

fn rcgen_error(e: rcgen::Error) -> Error {
    Error::DevCa {
        reason: e.to_string(),
    }
}

/// Creates `path`, failing if it exists (so `init` never overwrites a CA key) or is a symlink.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let mut file = create_exclusive(path, mode).map_err(|e| Error::io(path, &e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(path, &e))
}

/// Mode of a temporary file until it is complete: readable by its owner only, so a key is
/// never readable by others, even for a moment, whatever its final mode.
const TEMP_MODE: u32 = 0o600;

/// Writes a sibling temporary file and renames it over `path` (also meshd-xds' way of
/// persisting the Istio-CA certificate: one home for this).
///
/// The temporary's name is predictable, so whoever can write the directory could plant a
/// symlink there: it is created exclusively (`O_EXCL`) and without following a symlink
/// (`O_NOFOLLOW`), so a key is never written through a link to a file of someone else's
/// choosing. An entry already there (a leftover of an interrupted write, or a planted link) is
/// removed (unlinking never follows a link) and the creation tried once more; a second
/// collision is an error naming the temporary.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A leading dot keeps the temporary out of directory listings that skip hidden files.
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let created = match create_exclusive(&tmp, TEMP_MODE) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp).and_then(|()| create_exclusive(&tmp, TEMP_MODE))
        }
        other => other,
    };
    let mut file = created.map_err(|e| Error::io(&tmp, &e))?;
    set_mode(&file, mode)
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, &e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, &e))
}

/// Opens a new file for writing: fails if anything (a file, a symlink, dangling or not) is
/// already at `path`, and never follows a symlink in its last component.
fn create_exclusive(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode).custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

/// Gives an open file its final mode (not narrowed by the umask, unlike the mode at creation).
fn set_mode(file: &fs::File, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if mode != TEMP_MODE {
            return file.set_permissions(fs::Permissions::from_mode(mode));
        }
    }
    #[cfg(not(unix))]
    let _ = (file, mode);
    Ok(())
}
