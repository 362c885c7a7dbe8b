//! meshd as a Debian package: the systemd unit as systemd itself judges it (`systemd-analyze
//! verify` and `security`), and the .deb built, linted and run from a scratch root by
//! scripts/package.sh. Both fail, never skip, when the tools are missing.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshd_integration::meshd_bin;

/// The highest `systemd-analyze security` exposure the unit may reach: 2.5 is well inside
/// systemd's "OK" band (below 3.0); the unit scores 1.7 with Debian 12's systemd 252, so a
/// dropped hardening line shows here.
const MAX_EXPOSURE: f64 = 2.5;

fn repo() -> PathBuf {
    // At run time: a build shared by clones at other paths keeps the compile-time one.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

/// Runs `systemd-analyze ARGS`; a missing binary fails the test with what to install.
fn systemd_analyze(args: &[&str]) -> Output {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "systemd-analyze is missing: install Debian's `systemd` package (apt-get install systemd)"
        ),
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

/// Every value of `key` in the unit, in order (comments and section headers skipped).
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect()
}

#[test]
fn unit_file_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(repo().join("config/meshd.service")).unwrap();
    assert_eq!(
        values(&unit, "ExecStart"),
        ["/usr/bin/meshd run --config /etc/meshd/meshd.yaml"],
        "the packaged binary on the packaged configuration"
    );
    let one = |key: &str| -> &str {
        match values(&unit, key)[..] {
            [value] => value,
            ref other => panic!("{key}: expected one value, found {other:?}"),
        }
    };
    assert_eq!(one("Type"), "notify");
    assert!(!matches!(one("WatchdogSec"), "" | "0"), "WatchdogSec set");
    assert_eq!(
        values(&unit, "ExecReload"),
        [
            "/usr/bin/meshd validate --daemon-config /etc/meshd/meshd.yaml",
            "/bin/kill -HUP $MAINPID"
        ],
        "reload validates what meshd runs on, then signals (systemd.rs runs them)"
    );
    assert_eq!(one("Restart"), "on-failure");
    assert!(
        one("RestartPreventExitStatus")
            .split_whitespace()
            .any(|s| s == "78"),
        "a configuration error (EX_CONFIG) is not restarted"
    );
    assert_eq!(one("User"), "meshd");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    // Without capture meshd needs no CAP_NET_ADMIN: the unit does not grant it.
    let allowed = BTreeSet::from(["CAP_NET_BIND_SERVICE"]);
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        assert_eq!(caps(&unit, key), allowed, "{key}");
    }
    // Limits that stop a leak, each with a value that leaves normal load room.
    let memory = bytes(one("MemoryMax"));
    assert!(
        (MIN_MEMORY_MAX..=MAX_MEMORY_MAX).contains(&memory),
        "MemoryMax={memory}"
    );
    let tasks: u64 = one("TasksMax").parse().unwrap();
    assert!(
        (MIN_TASKS_MAX..=MAX_TASKS_MAX).contains(&tasks),
        "TasksMax={tasks}"
    );

    // The unit as installed, but starting the binary this test suite built.
    let dir = tempfile::TempDir::new().unwrap();
    let path = installed(&unit, dir.path());
    let path = path.to_str().unwrap();
    verify(path);

    let report = security(path);
    // systemd's own reading of the unit: CAP_NET_ADMIN is not in the bounding set.
    assert!(
        report
            .lines()
            .any(|l| l.contains("CAP_NET_ADMIN") && l.trim_start().starts_with('✓')),
        "systemd-analyze security does not clear CAP_NET_ADMIN\n{report}"
    );
}

#[test]
fn capture_drop_in_grants_cap_net_admin_and_installs_the_rules() {
    drop_in_grants_cap_net_admin_and_installs_the_rules("capture.conf");
}

#[test]
fn original_source_drop_in_grants_cap_net_admin_and_installs_the_rules() {
    drop_in_grants_cap_net_admin_and_installs_the_rules("original-source.conf");
}

fn drop_in_grants_cap_net_admin_and_installs_the_rules(name: &str) {
    // A shipped drop-in (capture, original source), installed next to the unit as an
    // administrator would: systemd accepts the pair, and the drop-in adds exactly what the
    // feature needs: CAP_NET_ADMIN, and the rules installed as root before each start.
    let unit = std::fs::read_to_string(repo().join("config/meshd.service")).unwrap();
    let drop_in = std::fs::read_to_string(repo().join("packaging/systemd").join(name)).unwrap();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        assert_eq!(
            caps(&drop_in, key),
            BTreeSet::from(["CAP_NET_ADMIN"]),
            "{key}"
        );
    }
    assert_eq!(
        values(&drop_in, "ExecStartPre"),
        ["+/usr/bin/meshd redirect install --config /etc/meshd/meshd.yaml"],
        "the rules from the packaged configuration, installed as root (`+`)"
    );
    let dir = tempfile::TempDir::new().unwrap();
    let path = installed(&unit, dir.path());
    let drop_ins = dir.path().join("meshd.service.d");
    std::fs::create_dir(&drop_ins).unwrap();
    let bin = meshd_bin();
    std::fs::write(
        drop_ins.join(name),
        drop_in.replace("/usr/bin/meshd ", &format!("{} ", bin.display())),
    )
    .unwrap();
    let path = path.to_str().unwrap();
    verify(path);
    // systemd reads the drop-in: with it, CAP_NET_ADMIN is granted.
    let report = security(path);
    assert!(
        report
            .lines()
            .any(|l| l.contains("CAP_NET_ADMIN") && l.trim_start().starts_with('✗')),
        "systemd-analyze security does not see the drop-in's CAP_NET_ADMIN\n{report}"
    );
}

/// `MemoryMax` bounds: enough for thousands of connections moving bulk data (up to 2 x 256 KiB
/// each, README), and below what a small VM has, so a leak is stopped before the machine is.
const MIN_MEMORY_MAX: u64 = 512 << 20;
const MAX_MEMORY_MAX: u64 = 8 << 30;
/// `TasksMax` bounds: above tokio's blocking pool (512 threads) plus workers, far below the
/// kernel's default pid limit (32768).
const MIN_TASKS_MAX: u64 = 600;
const MAX_TASKS_MAX: u64 = 8192;

/// A systemd size (`2G`, `512M`, `1073741824`) in bytes.
fn bytes(value: &str) -> u64 {
    let (number, shift) = match value.as_bytes().last() {
        Some(b'K') => (&value[..value.len() - 1], 10),
        Some(b'M') => (&value[..value.len() - 1], 20),
        Some(b'G') => (&value[..value.len() - 1], 30),
        Some(b'T') => (&value[..value.len() - 1], 40),
        _ => (value, 0),
    };
    number
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("not a size: {value}: {e}"))
        << shift
}

/// The capabilities `key` lists, over all its lines.
fn caps<'a>(unit: &'a str, key: &str) -> BTreeSet<&'a str> {
    values(unit, key)
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect()
}

/// Writes `unit` as `dir/meshd.service`, running the binary this suite built.
fn installed(unit: &str, dir: &Path) -> PathBuf {
    let path = dir.join("meshd.service");
    let bin = meshd_bin();
    // ExecStart= and ExecReload=.
    let installed = unit.replace("=/usr/bin/meshd ", &format!("={} ", bin.display()));
    std::fs::write(&path, installed).unwrap();
    path
}

/// `systemd-analyze verify` accepts the unit (and its drop-ins) without a word about them.
fn verify(path: &str) {
    let verify = systemd_analyze(&["verify", path]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let problems: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("meshd.service") || l.contains(path))
        .collect();
    assert!(
        verify.status.success() && problems.is_empty(),
        "systemd-analyze verify: {}\n{said}",
        verify.status
    );
}

/// `systemd-analyze security`'s report on the unit; its exposure must stay within
/// [`MAX_EXPOSURE`].
fn security(path: &str) -> String {
    let security = systemd_analyze(&["security", "--offline=yes", path]);
    let report = String::from_utf8_lossy(&security.stdout).into_owned();
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for meshd.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in systemd-analyze security's report: {}\n{report}{}",
                security.status,
                String::from_utf8_lossy(&security.stderr)
            )
        });
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}: the unit lost hardening\n{report}"
    );
    report
}

#[test]
fn deb_builds_lints_and_runs() {
    // Package the binary this suite just built instead of building again: same profile, same
    // target directory.
    let bin = meshd_bin();
    let profile_dir = bin.parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let mut command = Command::new("bash");
    command
        .arg(repo().join("scripts/package.sh"))
        .arg("--no-build")
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        command.arg("--release");
    }
    // The binary's features, so the licence notices list what it links.
    if cfg!(feature = "quic") {
        command.env("DEB_FEATURES", "quic");
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/package.sh: {}\n{stdout}\n{stderr}",
        out.status
    );
    let deb = stdout.lines().last().unwrap_or_default();
    assert!(
        deb.ends_with(".deb") && Path::new(deb).is_file(),
        "package.sh names its .deb on its last line, got {deb:?}\n{stdout}"
    );
    assert!(
        stdout.contains("meshd run: ready, then exit 0 on SIGTERM"),
        "{stdout}"
    );
}

/// A private copy of `/etc` (and an empty `/var/log`, where useradd writes lastlog and faillog)
/// that `sh packaging/debian/postinst configure` runs against for real, adduser included, in a
/// mount namespace of its own: this machine's users and files are never touched.
struct ScratchEtc {
    dir: tempfile::TempDir,
}

impl ScratchEtc {
    fn new() -> ScratchEtc {
        let dir = tempfile::TempDir::new().unwrap();
        let copy = Command::new("cp")
            .arg("-a")
            .arg("/etc")
            .arg(dir.path().join("etc"))
            .status()
            .unwrap();
        assert!(copy.success(), "cp -a /etc: {copy}");
        std::fs::create_dir(dir.path().join("log")).unwrap();
        ScratchEtc { dir }
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// Runs the package's postinst with `configure`, as dpkg does; a missing `unshare` (or a
    /// kernel without mount namespaces) fails the test.
    fn postinst_configure(&self) -> String {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                r#"mount --bind "$1" /etc && mount --bind "$2" /var/log && exec sh "$3" configure"#,
            )
            .arg("sh")
            .arg(self.etc())
            .arg(self.dir.path().join("log"))
            .arg(repo().join("packaging/debian/postinst"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run unshare (util-linux): {e}"));
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "postinst configure: {}\n{said}",
            out.status
        );
        said
    }

    /// The meshd group's id in the scratch `/etc/group`.
    fn meshd_gid(&self) -> u32 {
        let group = std::fs::read_to_string(self.etc().join("group")).unwrap();
        group
            .lines()
            .find_map(|l| l.strip_prefix("meshd:x:"))
            .and_then(|rest| rest.split(':').next())
            .and_then(|gid| gid.parse().ok())
            .unwrap_or_else(|| panic!("postinst made no meshd group"))
    }
}

/// (uid, gid, permission bits) of `path`, the link itself for a symbolic link.
fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn postinst_fixes_the_permissions_of_an_existing_tls_directory() {
    // An /etc/meshd/tls left open to every user (a hand-made directory, a restored backup): the
    // key was readable by anyone, and postinst used to leave it so because the directory
    // existed. Each configure now brings it to root:meshd 0750, what it holds to group meshd
    // with nothing for others, and follows no symbolic link out of it.
    let scratch = ScratchEtc::new();
    let tls = scratch.etc().join("meshd/tls");
    let data = tls.join("..data");
    std::fs::create_dir_all(&data).unwrap();
    set_mode(&tls, 0o777);
    set_mode(&data, 0o755);
    let files = [
        (tls.join("svid_key.pem"), 0o644, 0o640),
        (tls.join("svid.pem"), 0o666, 0o640),
        (tls.join("svid_bundle.pem"), 0o600, 0o640),
        (data.join("key.pem"), 0o604, 0o640),
    ];
    for (path, before, _) in &files {
        std::fs::write(path, "not a real key\n").unwrap();
        set_mode(path, *before);
    }
    let outside = scratch.dir.path().join("outside.pem");
    std::fs::write(&outside, "someone else's file\n").unwrap();
    set_mode(&outside, 0o600);
    std::os::unix::fs::symlink(&outside, tls.join("link.pem")).unwrap();

    scratch.postinst_configure();
    let gid = scratch.meshd_gid();
    assert_eq!(owner_and_mode(&tls), (0, gid, 0o750), "{}", tls.display());
    assert_eq!(owner_and_mode(&data), (0, gid, 0o750), "{}", data.display());
    for (path, _, after) in &files {
        assert_eq!(owner_and_mode(path), (0, gid, *after), "{}", path.display());
    }
    assert_eq!(
        owner_and_mode(&outside),
        (0, 0, 0o600),
        "a link's target is left alone"
    );

    // An upgrade runs it again: the same result, the user not added twice.
    let said = scratch.postinst_configure();
    assert!(!said.contains("Adding system user"), "{said}");
    assert_eq!(owner_and_mode(&tls), (0, gid, 0o750));
    assert_eq!(owner_and_mode(&files[0].0), (0, gid, 0o640));
}

#[test]
fn postinst_creates_the_tls_directory_and_leaves_a_symlinked_one() {
    // A first install creates it root:meshd 0750. A directory that is a symbolic link (to
    // wherever an agent keeps its files) is not followed: postinst says so and changes nothing.
    let scratch = ScratchEtc::new();
    let tls = scratch.etc().join("meshd/tls");
    let _ = std::fs::remove_dir_all(scratch.etc().join("meshd"));
    scratch.postinst_configure();
    let gid = scratch.meshd_gid();
    assert_eq!(owner_and_mode(&tls), (0, gid, 0o750));

    std::fs::remove_dir(&tls).unwrap();
    let elsewhere = scratch.dir.path().join("agent");
    std::fs::create_dir(&elsewhere).unwrap();
    set_mode(&elsewhere, 0o755);
    std::os::unix::fs::symlink(&elsewhere, &tls).unwrap();
    let said = scratch.postinst_configure();
    assert!(said.contains("is a symbolic link"), "{said}");
    assert_eq!(owner_and_mode(&elsewhere), (0, 0, 0o755));
}
