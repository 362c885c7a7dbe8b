//! The daemon configuration's layers: defaults < file < MESHD_* environment < flags, each
//! value's source, and errors that name where the bad value came from. figment's Jail sets
//! environment variables for one closure at a time.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::path::{Path, PathBuf};

use figment::Jail;
use meshd_daemon::settings::{Base, Flags, Settings, SettingsError, changed_keys, load};

/// The layers over an empty embedded file: built-in defaults and the environment.
fn load_empty() -> Result<Settings, SettingsError> {
    load(
        Base::Embedded {
            name: "<test>",
            text: "{}",
        },
        &Flags::default(),
    )
}

/// The layers over `meshd.yaml` in the jail's directory, without flags.
fn load_file() -> Result<Settings, SettingsError> {
    load(Base::File(Path::new("meshd.yaml")), &Flags::default())
}

/// The error `meshd.yaml` in the jail's directory is rejected with (file, line, key, reason);
/// fails the test if it loads or fails some other way.
fn file_error() -> String {
    match load_file() {
        Err(SettingsError::File(text)) => text,
        other => panic!("expected an error in meshd.yaml: {other:?}"),
    }
}

fn source_of(shown: &[meshd_daemon::settings::Shown], key: &str) -> (String, String) {
    let s = shown.iter().find(|s| s.key == key).unwrap();
    (s.value.clone(), s.source.clone())
}

#[test]
fn each_layer_overrides_the_one_below_and_says_so() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "meshd.yaml",
            "configDir: /from/file\nhbonePort: 16008\nlisten: {admin: 127.0.0.1:16000}\n",
        )?;
        jail.set_env("MESHD_HBONE_PORT", "17008");
        jail.set_env("MESHD_CONFIG_DIR", "/from/env");
        jail.set_env("MESHD_LISTEN__INBOUND_PLAINTEXT", "0.0.0.0:15006");
        let path = PathBuf::from("meshd.yaml");
        let flags = Flags {
            config_dir: Some(PathBuf::from("/from/flag")),
            ..Flags::default()
        };
        let settings = load(Base::File(&path), &flags).unwrap();
        let c = &settings.config;
        assert_eq!(
            c.config_dir,
            PathBuf::from("/from/flag"),
            "flag over env over file"
        );
        assert_eq!(c.hbone_port, 17008, "env over file");
        assert_eq!(
            c.listen.admin,
            Some("127.0.0.1:16000".parse().unwrap()),
            "file over default"
        );
        assert_eq!(
            c.listen.metrics,
            Some("127.0.0.1:15020".parse().unwrap()),
            "default"
        );
        assert_eq!(
            c.listen.inbound_plaintext,
            Some("0.0.0.0:15006".parse().unwrap())
        );
        let shown = settings.show();
        assert_eq!(source_of(&shown, "configDir").1, "--config-dir flag");
        assert!(
            source_of(&shown, "hbonePort").1.contains("environment"),
            "{shown:?}"
        );
        assert!(
            source_of(&shown, "listen.admin").1.ends_with("meshd.yaml"),
            "{shown:?}"
        );
        assert_eq!(
            source_of(&shown, "listen.metrics"),
            ("\"127.0.0.1:15020\"".into(), "default".into())
        );
        Ok(())
    });
}

#[test]
fn an_unknown_key_in_the_file_names_file_line_and_field() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "meshd.yaml",
            "configDir: /x\nlisten:\n  admn: 127.0.0.1:15000\n",
        )?;
        let text = file_error();
        assert!(text.starts_with("meshd.yaml:3:3: "), "{text}");
        assert!(text.contains("listen.admn: unknown field"), "{text}");
        Ok(())
    });
}

#[test]
fn an_invalid_trust_domain_in_trust_domains_names_file_line_and_field() {
    // `trustDomains` values are SPIFFE trust domains, by meshd-identity's rules.
    Jail::expect_with(|jail| {
        jail.create_file(
            "meshd.yaml",
            "configDir: /x\ntrustDomains:\n  bank: 'td@b'\n",
        )?;
        let text = file_error();
        assert_eq!(
            text,
            "meshd.yaml:3:9: trustDomains.bank: invalid trust domain \"td@b\": trust domain may only contain ASCII letters (case-insensitive), digits, dots, dashes, and underscores"
        );
        Ok(())
    });
}

#[test]
fn a_workload_from_the_istio_ca_without_its_token_names_file_line_and_field() {
    // The first certificate can only be asked for with the service account's own token:
    // meshd's would get meshd's identity.
    Jail::expect_with(|jail| {
        jail.create_file(
            "meshd.yaml",
            "configDir: /x\nworkloadIdentities:\n  shop/web:\n    istioCa: {certDir: /var/lib/meshd/web}\n",
        )?;
        let text = file_error();
        assert!(
            text.starts_with("meshd.yaml:4:") && text.contains("missing field `tokenFile`"),
            "{text}"
        );
        Ok(())
    });
}

#[test]
fn zero_worker_threads_is_an_error_naming_file_line_and_field() {
    Jail::expect_with(|jail| {
        jail.create_file("meshd.yaml", "configDir: /x\nworkerThreads: 0\n")?;
        let text = file_error();
        assert!(text.starts_with("meshd.yaml:2:"), "{text}");
        assert!(text.contains("workerThreads"), "{text}");
        assert!(text.contains("nonzero"), "{text}");
        Ok(())
    });
}

#[test]
fn worker_threads_default_to_ztunnel_s_two_or_one_on_small_machines() {
    Jail::expect_with(|_| {
        let settings = load_empty().unwrap();
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(
            settings.config.worker_threads.get(),
            if cpus > 2 { 2 } else { 1 }
        );
        Ok(())
    });
}

#[test]
fn pool_keys_default_to_ztunnel_s_and_read_durations() {
    Jail::expect_with(|jail| {
        let defaults = load_empty().unwrap();
        assert_eq!(
            defaults.config.pool.unused_release_timeout,
            std::time::Duration::from_secs(300)
        );
        assert_eq!(defaults.config.pool.max_streams_per_connection.get(), 100);
        assert_eq!(
            defaults.config.pool.surplus_release_timeout,
            std::time::Duration::from_secs(10)
        );
        jail.create_file(
            "meshd.yaml",
            "configDir: /x\npool: {unusedReleaseTimeout: 1m30s, surplusReleaseTimeout: 2s, maxStreamsPerConnection: 20}\n",
        )?;
        let set = load_file().unwrap();
        assert_eq!(
            set.config.pool.unused_release_timeout,
            std::time::Duration::from_secs(90)
        );
        assert_eq!(set.config.pool.max_streams_per_connection.get(), 20);
        assert_eq!(
            set.config.pool.surplus_release_timeout,
            std::time::Duration::from_secs(2)
        );
        jail.set_env("MESHD_POOL__UNUSED_RELEASE_TIMEOUT", "10s");
        let env = load_file().unwrap();
        assert_eq!(
            env.config.pool.unused_release_timeout,
            std::time::Duration::from_secs(10)
        );
        Ok(())
    });
}

#[test]
fn bad_pool_values_are_errors_naming_file_line_and_field() {
    for (value, field, reason) in [
        (
            "unusedReleaseTimeout: 0s",
            "unusedReleaseTimeout",
            "longer than zero",
        ),
        (
            "unusedReleaseTimeout: 300",
            "unusedReleaseTimeout",
            "expected a string",
        ),
        (
            "unusedReleaseTimeout: '300'",
            "unusedReleaseTimeout",
            "missing unit",
        ),
        (
            "unusedReleaseTimeout: soon",
            "unusedReleaseTimeout",
            "expected a number",
        ),
        (
            "surplusReleaseTimeout: 0s",
            "surplusReleaseTimeout",
            "longer than zero",
        ),
        (
            "maxStreamsPerConnection: 0",
            "maxStreamsPerConnection",
            "nonzero",
        ),
        (
            "maxStreamsPerConnection: -1",
            "maxStreamsPerConnection",
            "-1",
        ),
        ("idleTimeout: 5m", "idleTimeout", "unknown field"),
    ] {
        Jail::expect_with(|jail| {
            jail.create_file("meshd.yaml", &format!("configDir: /x\npool:\n  {value}\n"))?;
            let text = file_error();
            assert!(text.starts_with("meshd.yaml:3:"), "{value}: {text}");
            assert!(text.contains(field), "{value}: {text}");
            assert!(text.contains(reason), "{value}: {text}");
            Ok(())
        });
    }
}

#[test]
fn a_bad_duration_names_its_key_once() {
    // identity.devCa.ttl and pool.unusedReleaseTimeout read durations alike; the parser's own
    // `ttl` label is not repeated after the key serde names.
    Jail::expect_with(|jail| {
        jail.create_file(
            "meshd.yaml",
            "configDir: /x\nidentity:\n  devCa: {dir: /d, ttl: forever}\n",
        )?;
        let text = file_error();
        assert!(text.starts_with("meshd.yaml:3:"), "{text}");
        assert!(
            text.contains("identity.devCa.ttl: \"forever\": expected a number"),
            "{text}"
        );
        Ok(())
    });
}

#[test]
fn an_unknown_environment_key_is_an_error_naming_it() {
    // A typo in an environment variable must not be silently ignored.
    Jail::expect_with(|jail| {
        jail.set_env("MESHD_LISTEN__ADMN", "127.0.0.1:1");
        let err = load_empty().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("admn"), "{text}");
        assert!(text.contains("environment"), "{text}");
        Ok(())
    });
}

#[test]
fn a_variable_naming_no_section_is_a_warning_not_an_error() {
    // A deployment script's MESHD_BIN or a guessed MESHD_LOG must not stop meshd; a typo
    // inside a section (above) still does.
    Jail::expect_with(|jail| {
        jail.set_env("MESHD_BIN", "/usr/local/bin/meshd");
        jail.set_env("MESHD_LOG", "debug");
        let settings = load_empty().expect("stray variables are not keys");
        let warnings = settings.warnings.join("\n");
        assert!(warnings.contains("MESHD_BIN"), "{warnings}");
        // Each warning names the nearest variable meshd reads.
        assert!(
            warnings.contains(
                "environment variable MESHD_LOG names no meshd.yaml key; ignored (the nearest is MESHD_LOG_FORMAT, read by the command line)"
            ),
            "{warnings}"
        );
        jail.set_env("MESHD_LISTN", "x");
        let settings = load_empty().expect("stray variables are not keys");
        let warnings = settings.warnings.join("\n");
        assert!(
            warnings.contains("MESHD_LISTN names no meshd.yaml key; ignored (the nearest is MESHD_LISTEN, key `listen`)"),
            "{warnings}"
        );
        Ok(())
    });
}

#[test]
fn a_bad_environment_value_is_an_error_naming_the_variable() {
    Jail::expect_with(|jail| {
        jail.set_env("MESHD_HBONE_PORT", "not-a-port");
        let err = load_empty().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("hbonePort"), "{text}");
        assert!(text.contains("environment"), "{text}");
        Ok(())
    });
}

#[test]
fn the_command_line_s_own_variables_are_not_keys() {
    // MESHD_CONFIG (the file's path) and MESHD_LOG_FORMAT are read by the command line.
    Jail::expect_with(|jail| {
        jail.set_env("MESHD_CONFIG", "/etc/meshd/meshd.yaml");
        jail.set_env("MESHD_LOG_FORMAT", "json");
        assert!(load_empty().is_ok());
        Ok(())
    });
}

#[test]
fn changed_keys_lists_what_differs() {
    let a = meshd_daemon::MeshdConfig::default();
    let mut b = a.clone();
    b.listen.admin = None;
    b.hbone_port = 1;
    assert_eq!(
        changed_keys(&a, &b),
        vec!["hbonePort".to_string(), "listen.admin".to_string()]
    );
    assert!(changed_keys(&a, &a).is_empty());
}

#[test]
fn the_embedded_file_is_named_as_the_source_of_its_values() {
    Jail::expect_with(|_| {
        let settings = load(
            Base::Embedded {
                name: "<embedded config/meshd.yaml>",
                text: "hbonePort: 16008\n",
            },
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(settings.config.hbone_port, 16008);
        assert_eq!(
            source_of(&settings.show(), "hbonePort"),
            ("16008".into(), "<embedded config/meshd.yaml>".into())
        );
        Ok(())
    });
}

#[test]
fn a_quoted_number_in_the_file_is_a_string_and_refused_where_a_number_is_meant() {
    Jail::expect_with(|jail| {
        jail.create_file("meshd.yaml", "configDir: /x\nhbonePort: \"16008\"\n")?;
        let text = file_error();
        assert!(text.starts_with("meshd.yaml:2:12: "), "{text}");
        assert!(text.contains("hbonePort"), "{text}");
        Ok(())
    });
}
