//! Leaf certificates the tests make themselves, signed by the workspace's dev CA: for
//! certificates meshd must wait for or refuse (not valid yet, expired, a key of another
//! certificate), which `meshd ca issue` never writes.

use std::path::Path;

/// A leaf for `spiffe://cluster.local/ns/<namespace>/sa/<sa>` from the dev CA in `ca_dir`
/// (`ca-cert.pem`, `ca-key.pem`), valid from `from` to `until` relative to now, with the
/// key usages `meshd ca issue` gives; (certificate, key) PEM.
///
/// # Panics
/// When the CA files cannot be read or signing fails (a broken test setup).
pub fn leaf(
    ca_dir: &Path,
    namespace: &str,
    sa: &str,
    from: time::Duration,
    until: time::Duration,
) -> (String, String) {
    let read = |name: &str| {
        let path = ca_dir.join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    let ca_key = rcgen::KeyPair::from_pem(&read("ca-key.pem")).expect("CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca-cert.pem"), ca_key).expect("CA");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = format!("spiffe://cluster.local/ns/{namespace}/sa/{sa}");
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("SPIFFE URI"))];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + from;
    params.not_after = now + until;
    let cert = params.signed_by(&key, &issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}
