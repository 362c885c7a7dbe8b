//! The dev CA's files on disk: an SVID is written through a sibling temporary and a rename,
//! and the temporary's predictable name cannot be used to redirect the write.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use meshd_identity::dev_ca::{SVID_BUNDLE_FILE, SVID_FILE, SVID_KEY_FILE};
use meshd_identity::{DevCa, Error, IssuedSvid};

fn issue() -> IssuedSvid {
    DevCa::generate("cluster.local")
        .unwrap()
        .issue("shop", "web", Duration::from_secs(3600))
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// Holds: a symlink planted at the key's temporary path (pointing at an existing file) and a
/// dangling one at the certificate's are not followed: the file pointed at keeps its bytes,
/// nothing is created at the dangling target, and the SVID is written correctly, as regular
/// files, the key readable by its owner only.
#[test]
fn a_symlink_planted_at_the_temporary_path_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    std::fs::create_dir(&out).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    symlink(&victim, out.join(format!(".{SVID_KEY_FILE}.tmp"))).unwrap();
    let dangling = dir.path().join("created-through-a-link");
    symlink(&dangling, out.join(format!(".{SVID_FILE}.tmp"))).unwrap();

    let svid = issue();
    svid.write_spiffe_helper_dir(&out).unwrap();

    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert!(
        std::fs::symlink_metadata(&dangling).is_err(),
        "a file was created through the dangling link"
    );
    for (file, text, want) in [
        (SVID_KEY_FILE, &svid.key_pem, 0o600),
        (SVID_FILE, &svid.cert_pem, 0o644),
        (SVID_BUNDLE_FILE, &svid.bundle_pem, 0o644),
    ] {
        let path = out.join(file);
        assert!(
            std::fs::symlink_metadata(&path).unwrap().is_file(),
            "{file} is a regular file"
        );
        assert_eq!(&std::fs::read_to_string(&path).unwrap(), text, "{file}");
        assert_eq!(mode(&path), want, "{file}");
    }
    // The written set is the issued one, usable as is.
    let reread = IssuedSvid {
        key_pem: std::fs::read_to_string(out.join(SVID_KEY_FILE)).unwrap(),
        ..svid
    };
    reread.credential_set().unwrap();
}

/// Holds: an entry at the temporary path that cannot be cleared (a directory) is neither
/// written into nor followed: the write fails with an error naming the temporary, and no key
/// file appears.
#[test]
fn a_temporary_path_that_cannot_be_cleared_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join(format!(".{SVID_KEY_FILE}.tmp"));
    std::fs::create_dir(&tmp).unwrap();
    let err = issue().write_spiffe_helper_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if *path == tmp),
        "{err:?}"
    );
    assert!(!dir.path().join(SVID_KEY_FILE).exists());
    assert!(std::fs::read_dir(&tmp).unwrap().next().is_none());
}

/// Holds: a leftover temporary from an interrupted write (a regular file of someone else's
/// bytes) is replaced, not appended to or reused with its old mode.
#[test]
fn a_leftover_temporary_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join(format!(".{SVID_KEY_FILE}.tmp"));
    std::fs::write(
        &tmp,
        "left over from a crash, and longer than nothing at all",
    )
    .unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
    let svid = issue();
    svid.write_spiffe_helper_dir(dir.path()).unwrap();
    let key = dir.path().join(SVID_KEY_FILE);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), svid.key_pem);
    assert_eq!(mode(&key), 0o600);
    assert!(!tmp.exists());
}
