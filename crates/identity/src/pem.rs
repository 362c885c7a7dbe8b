//! PEM reading through rustls-pki-types (rustls-pemfile is unmaintained), with file-naming errors.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// The largest certificate, key or bundle file read: 1 MiB. The Mozilla root store (~150
/// roots) is about 220 KiB as PEM, so this leaves room for large federated bundles while a path
/// pointing at a log file, a disk image or `/dev/zero` fails at once instead of filling memory.
pub const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Reads a whole file (following symlinks, so Kubernetes `..data` links resolve), refusing
/// files over [`MAX_PEM_FILE`].
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, &e))?;
    let mut bytes = Vec::new();
    // One byte over the limit is enough to know it is too large, without reading the rest.
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, &e))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(Error::FileTooLarge {
            limit: MAX_PEM_FILE,
        }
        .in_file(path));
    }
    Ok(bytes)
}

/// Parses every `CERTIFICATE` block, in order; other block kinds are skipped.
pub fn parse_certificates(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate);
    }
    Ok(certs)
}

/// Parses the first private key block: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or
/// PKCS#1 (`RSA PRIVATE KEY`).
pub fn parse_private_key(pem_bytes: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => Error::NoPrivateKey,
        other => pem_error(other),
    })
}

/// Reads and parses a certificate PEM file; errors name the file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    parse_certificates(&read(path)?).map_err(|e| e.in_file(path))
}

/// Reads and parses a private key PEM file; errors name the file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    parse_private_key(&read(path)?).map_err(|e| e.in_file(path))
}

fn pem_error(e: pem::Error) -> Error {
    Error::Pem {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_pem_is_malformed_not_empty() {
        // A half-written file must read as an error, never as "fewer certificates".
        let err = parse_certificates(b"-----BEGIN CERTIFICATE-----\nMIIB").unwrap_err();
        assert!(matches!(err, Error::Pem { .. }), "{err}");
    }

    #[test]
    fn empty_files_name_what_is_missing() {
        assert_eq!(parse_certificates(b""), Err(Error::NoCertificate));
        assert_eq!(parse_private_key(b"junk\n"), Err(Error::NoPrivateKey));
    }

    #[test]
    fn key_formats_are_recognised() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pkcs8 = key.serialize_pem();
        assert!(matches!(
            parse_private_key(pkcs8.as_bytes()),
            Ok(PrivateKeyDer::Pkcs8(_))
        ));
        // SEC1 and PKCS#1 blocks are told apart by their PEM labels alone.
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            parse_private_key(sec1.as_bytes()),
            Ok(PrivateKeyDer::Sec1(_))
        ));
        let pkcs1 = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(
            parse_private_key(pkcs1.as_bytes()),
            Ok(PrivateKeyDer::Pkcs1(_))
        ));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_certificates(Path::new("/nonexistent/meshd/cert.pem")).unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/meshd/cert.pem: "),
            "{err}"
        );
    }
}
