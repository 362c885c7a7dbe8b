//! `meshd --version`: what was built, from what, how (build.rs), and with which TLS provider.

use std::sync::LazyLock;

/// The long version text: one `key: value` line each after the first.
static LONG: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{version}\n\
         git revision: {revision}\n\
         rustc: {rustc}\n\
         profile: {profile}\n\
         crypto provider: rustls with {provider}\n\
         features: {features}",
        version = env!("CARGO_PKG_VERSION"),
        revision = env!("MESHD_GIT_REVISION"),
        rustc = env!("MESHD_RUSTC_VERSION"),
        profile = env!("MESHD_BUILD_PROFILE"),
        provider = meshd_identity::tls::CRYPTO_PROVIDER,
        features = env!("MESHD_FEATURES"),
    )
});

/// `--version`'s text (`-V` prints the version alone).
pub fn long() -> &'static str {
    LONG.as_str()
}
