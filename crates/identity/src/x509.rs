//! Reading what meshd needs out of an X.509 SVID leaf: its one SPIFFE ID, CA flag and validity.

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{Error, SpiffeId};

/// The facts about a leaf certificate that meshd's checks and metrics use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The SPIFFE ID from the single URI SAN.
    pub id: SpiffeId,
    /// Start of the validity period.
    pub not_before: OffsetDateTime,
    /// End of the validity period.
    pub not_after: OffsetDateTime,
    /// The serial number as big-endian bytes.
    pub serial: Vec<u8>,
    /// The issuer's distinguished name (`CN=…, O=…`), for operators.
    pub issuer: String,
}

/// Parses a leaf and applies the X509-SVID shape rules: not a CA, exactly one URI SAN, and that
/// SAN a valid SPIFFE ID. Chain and validity-period checks are done elsewhere.
pub fn inspect_leaf(der: &CertificateDer<'_>) -> Result<LeafInfo, Error> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| Error::BadCertificate {
        reason: e.to_string(),
    })?;
    let bad = |e: x509_parser::error::X509Error| Error::BadCertificate {
        reason: e.to_string(),
    };

    // The X509-SVID spec: a leaf SVID MUST set CA:false; a CA cert identifying a workload could
    // otherwise mint more identities.
    if cert
        .basic_constraints()
        .map_err(bad)?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(Error::LeafIsCa);
    }

    let uris: Vec<&str> = match cert.subject_alternative_name().map_err(bad)? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    // Strict where ztunnel is lenient (it takes the first of several): with two URI SANs the
    // identity RBAC sees would depend on the order the issuer happened to write them.
    let uri = match uris.as_slice() {
        [] => return Err(Error::NoUriSan),
        [one] => *one,
        more => return Err(Error::MultipleUriSans { count: more.len() }),
    };
    if !spiffe::spiffe_id::uri_has_spiffe_scheme(uri) {
        return Err(Error::NotSpiffeUri {
            uri: uri.to_string(),
        });
    }
    let id = SpiffeId::new(uri)?;
    // X509-SVID spec: a leaf's ID must have a non-root path; `spiffe://td` is the trust domain.
    if id.path().is_empty() {
        return Err(Error::NoWorkloadPath { id: id.to_string() });
    }

    let validity = cert.validity();
    Ok(LeafInfo {
        id,
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
        serial: cert.raw_serial().to_vec(),
        issuer: cert.issuer().to_string(),
    })
}

/// Checks the validity period against `now` (Unix seconds), so the error names the exact bound.
pub fn check_validity(info: &LeafInfo, now: i64) -> Result<(), Error> {
    if now < info.not_before.unix_timestamp() {
        return Err(Error::NotYetValid {
            not_before: info.not_before,
        });
    }
    if now > info.not_after.unix_timestamp() {
        return Err(Error::Expired {
            not_after: info.not_after,
        });
    }
    Ok(())
}

/// The end of any certificate's validity period (a CA's, an intermediate's), without the SVID
/// shape checks of [`inspect_leaf`].
pub fn not_after(der: &CertificateDer<'_>) -> Result<OffsetDateTime, Error> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| Error::BadCertificate {
        reason: e.to_string(),
    })?;
    Ok(cert.validity().not_after.to_datetime())
}

/// The subject's distinguished name and the end of the validity period of any certificate (a
/// bundle's roots, for operators).
pub fn subject_and_not_after(der: &CertificateDer<'_>) -> Result<(String, OffsetDateTime), Error> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| Error::BadCertificate {
        reason: e.to_string(),
    })?;
    Ok((
        cert.subject().to_string(),
        cert.validity().not_after.to_datetime(),
    ))
}

/// Reads the first URI SAN of a certificate, if any (used to learn a CA's trust domain).
pub(crate) fn first_uri_san(der: &CertificateDer<'_>) -> Result<Option<String>, Error> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| Error::BadCertificate {
        reason: e.to_string(),
    })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::BadCertificate {
            reason: e.to_string(),
        })?;
    Ok(san.and_then(|san| {
        san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
    }))
}
