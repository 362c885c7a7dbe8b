//! The `meshd` binary as an operator runs it: real processes, real files, exit codes and output.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

fn meshd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshd"))
}

fn example_config() -> PathBuf {
    // At run time: a build shared by clones at other paths keeps the compile-time one.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../config/mesh")
}

fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshd");
    let written = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    // meshd may exit before reading its input (e.g. on an invalid directory): that is its answer.
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    child.wait_with_output().expect("meshd runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn validate_accepts_the_example_config_with_a_summary() {
    let out = run(meshd().arg("validate").arg(example_config()), "");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.trim_end().ends_with(
            "OK: 3 AuthorizationPolicies, 1 PeerAuthentication, 2 WorkloadEntries, 2 ServiceEntries from 6 files (0 warnings)"
        ),
        "{text}"
    );
}

#[test]
fn validate_prints_every_problem_and_exits_1() {
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  action: DENY\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("b.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: b, namespace: x}\nspec:\n  mtls: {mode: DISABLE}\n  portLevelMtls: {'80': {mode: STRICT}}\n",
    )
    .expect("write");
    let out = run(meshd().arg("validate").arg(dir.path()), "");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out).replace(&format!("{}/", dir.path().display()), "");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "a.yaml:4:1: AuthorizationPolicy/x/a: spec: DENY action without `rules` is meaningless: add an empty rule `{}` if it should deny every connection",
            "b.yaml:5:10: warning: PeerAuthentication/x/b: spec.mtls.mode: DISABLE acts as PERMISSIVE in meshd: mTLS between meshd instances cannot be turned off, and plaintext is accepted",
            "b.yaml:6:3: PeerAuthentication/x/b: spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS: portLevelMtls requires a selector with labels",
        ]
    );
    assert!(
        lines[3].ends_with("INVALID: 2 errors, 1 warning; the configuration would be rejected"),
        "{text}"
    );
}

const BATCH: &str = r#"{"source":{"principal":"cluster.local/ns/shop/sa/web","ip":"127.0.0.1"},"destination":{"namespace":"shop","labels":{"app":"db"},"ip":"127.0.0.2","port":5432}}
{"source":{"principal":null,"ip":"127.0.0.1"},"destination":{"namespace":"shop","labels":{"app":"db"},"ip":"127.0.0.2","port":5432}}
not json

{"source":{"principal":"cluster.local/ns/shop/sa/db","ip":"127.0.0.2"},"destination":{"namespace":"shop","labels":{"app":"db"},"ip":"127.0.0.2","port":5432}}
{"source":{"principal":"not-a-principal","ip":"127.0.0.2"},"destination":{"namespace":"shop","labels":{},"ip":"127.0.0.2","port":1}}
{"source":{"ip":"203.0.113.9","principal":"cluster.local/ns/frontend/sa/ui"},"destination":{"namespace":"elsewhere","ip":"10.0.0.9","port":80}}
"#;

#[test]
fn authz_check_batch_answers_each_line_in_order() {
    let out = run(
        meshd()
            .args(["authz", "check", "--config-dir"])
            .arg(example_config()),
        BATCH,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "malformed lines make the exit non-zero: {out:?}"
    );
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each output line is JSON"))
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[0]["policy"], "shop/db-allow-web");
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[1]["policy"], "shop/strict");
    assert_eq!(
        lines[1]["reason"],
        "plaintext refused: PeerAuthentication shop/strict requires mTLS (STRICT) on port 5432"
    );
    assert!(
        lines[2]["error"]
            .as_str()
            .expect("error")
            .starts_with("line 3: "),
        "{:?}",
        lines[2]
    );
    assert_eq!(lines[3]["decision"], "deny");
    assert_eq!(lines[3]["policy"], serde_json::Value::Null);
    assert!(
        lines[4]["error"]
            .as_str()
            .expect("error")
            .contains("not-a-principal"),
        "{:?}",
        lines[4]
    );
    assert_eq!(lines[5]["decision"], "deny");
    assert_eq!(lines[5]["policy"], "istio-system/deny-blocked-range");
}

#[test]
fn authz_check_reads_an_input_file() {
    let dir = TempDir::new().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, BATCH.lines().next().expect("line")).expect("write");
    let out = run(
        meshd()
            .args(["authz", "check", "--config-dir"])
            .arg(example_config())
            .arg("--input")
            .arg(&input),
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains(r#""decision":"allow""#));
}

#[test]
fn authz_check_human_form() {
    let out = run(
        meshd()
            .args(["authz", "check", "--config-dir"])
            .arg(example_config())
            .args([
                "--from",
                "cluster.local/ns/frontend/sa/ui",
                "--to",
                "shop/web:8080",
            ]),
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout(&out).trim(),
        "ALLOW: cluster.local/ns/frontend/sa/ui -> shop/web:8080 (policy shop/web-allow): allowed by ALLOW policy shop/web-allow"
    );
    let out = run(
        meshd()
            .args(["authz", "check", "--config-dir"])
            .arg(example_config())
            .args(["--to", "shop/web:8080"]),
        "",
    );
    assert!(
        stdout(&out).starts_with("DENY: plaintext -> shop/web:8080 (policy shop/strict)"),
        "{out:?}"
    );
}

#[test]
fn authz_check_refuses_an_invalid_directory() {
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(dir.path().join("bad.yaml"), "kind: Nope\n").expect("write");
    let out = run(
        meshd()
            .args(["authz", "check", "--config-dir"])
            .arg(dir.path()),
        BATCH,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown kind \"Nope\""));
}

#[test]
fn ca_init_then_issue_writes_a_loadable_svid() {
    let dir = TempDir::new().expect("tempdir");
    let ca = dir.path().join("ca");
    let out = run(
        meshd()
            .args(["ca", "init", "--trust-domain", "example.org", "--out"])
            .arg(&ca),
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let svid = dir.path().join("web");
    let out = run(
        meshd()
            .args(["ca", "issue", "--ca"])
            .arg(&ca)
            .args([
                "--namespace",
                "shop",
                "--service-account",
                "web",
                "--ttl",
                "1h",
                "--out",
            ])
            .arg(&svid),
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let cert = std::fs::read(svid.join("svid.pem")).expect("svid.pem");
    let key = std::fs::read(svid.join("svid_key.pem")).expect("svid_key.pem");
    let credentials =
        meshd_identity::Credentials::from_pem(&cert, &key).expect("issued SVID loads");
    assert_eq!(
        credentials.id().to_string(),
        "spiffe://example.org/ns/shop/sa/web"
    );
    // The CA is never overwritten.
    let again = run(meshd().args(["ca", "init", "--out"]).arg(&ca), "");
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("ca-key.pem"),
        "{again:?}"
    );
}

#[test]
fn validate_accepts_a_partly_empty_source_as_istio_does() {
    // Issue 25: Istio accepts `{principals: [], namespaces: [bar]}`; meshd loads it and warns
    // how it reads the empty list (in an ALLOW: matching nothing).
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(
        dir.path().join("p.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  rules:\n  - from:\n    - source: {principals: [], namespaces: [bar]}\n",
    )
    .expect("write");
    let out = run(meshd().arg("validate").arg(dir.path()), "");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("spec.rules[0].from[0].source.principals: `principals: []` is an empty list, which Istio reads as unset; in an ALLOW rule meshd reads it as matching nothing (fail closed), so this source allows nothing"),
        "{text}"
    );
}

#[test]
fn validate_rejects_an_empty_principals_list() {
    // Issue 9 item A: `principals: []` used to pass and then match every connection.
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(
        dir.path().join("p.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  rules:\n  - from:\n    - source: {principals: []}\n",
    )
    .expect("write");
    let out = run(meshd().arg("validate").arg(dir.path()), "");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out).replace(&format!("{}/", dir.path().display()), "");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..2],
        [
            "p.yaml:7:7: AuthorizationPolicy/x/p: spec.rules[0].from[0].source: `from.source` must not be empty",
            "p.yaml:7:16: AuthorizationPolicy/x/p: spec.rules[0].from[0].source.principals: `principals: []` is an empty list, which Istio reads as unset: list the values it should match, or remove the field",
        ]
    );
}

// Exit statuses from sysexits: a usage error is 64 (EX_USAGE), whatever the command; a
// configuration meshd rejects is 78 (EX_CONFIG), for `run` and for `redirect install` (which
// fails on the file before it touches nftables); --help and --version are 0.
#[test]
fn exit_statuses_tell_usage_from_configuration() {
    for args in [
        &["run", "--bogus"][..],
        &["no-such-command"],
        &["status", "--admin", "localhost"],
        &["authz", "check", "--config-dir", "x", "--from", "a"],
        &[],
    ] {
        let out = run(meshd().args(args), "");
        assert_eq!(out.status.code(), Some(64), "meshd {args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("error: "),
            "{out:?}"
        );
    }
    let dir = TempDir::new().expect("tempdir");
    let bad = dir.path().join("meshd.yaml");
    std::fs::write(&bad, "listen: {admin: [unclosed\n").expect("write");
    for command in [&["run"][..], &["redirect", "install"], &["config", "show"]] {
        let out = run(meshd().args(command).arg("--config").arg(&bad), "");
        assert_eq!(out.status.code(), Some(78), "meshd {command:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}:1:", bad.display())),
            "{stderr}"
        );
    }
    for flag in ["--help", "--version", "-V"] {
        let out = run(meshd().arg(flag), "");
        assert_eq!(out.status.code(), Some(0), "meshd {flag}: {out:?}");
    }
}

// `meshd --version` names what was built: the version, the git revision (a 40-hex commit in a
// clone; "unknown" from a tarball, which a test cannot be here), rustc, the profile, the TLS
// provider and the features.
#[test]
fn version_names_revision_compiler_profile_and_crypto_provider() {
    let out = run(meshd().arg("--version"), "");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        concat!("meshd ", env!("CARGO_PKG_VERSION")),
        "{text}"
    );
    let field = |key: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    let revision = field("git revision");
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert_eq!(revision, head.as_deref().unwrap_or("unknown"), "{text}");
    assert!(field("rustc").starts_with("rustc 1."), "{text}");
    assert!(["debug", "release"].contains(&field("profile")), "{text}");
    assert_eq!(field("crypto provider"), "rustls with aws-lc-rs");
    assert!(!field("features").is_empty(), "{text}");
    // -V stays one line, for scripts that parse it.
    let short = run(meshd().arg("-V"), "");
    assert_eq!(
        String::from_utf8_lossy(&short.stdout).trim(),
        concat!("meshd ", env!("CARGO_PKG_VERSION"))
    );
}

// The man pages and completions scripts/package.sh ships: meshd.1 with its EXIT STATUS section
// (every status meshd uses), a page per subcommand, and the three shells' completions naming
// the subcommands.
#[test]
fn man_pages_and_completions_are_generated() {
    let dir = TempDir::new().expect("tempdir");
    let man = dir.path().join("man");
    let out = run(meshd().args(["generate", "man"]).arg(&man), "");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let page = std::fs::read_to_string(man.join("meshd.1")).expect("meshd.1");
    let exit = page
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .expect("an EXIT STATUS section");
    for code in ["0", "1", "64", "69", "70", "78"] {
        assert!(
            exit.contains(&format!("\\fB{code}\\fR")),
            "{code} in {exit}"
        );
    }
    for sub in [
        "meshd-run.1",
        "meshd-validate.1",
        "meshd-redirect-install.1",
    ] {
        assert!(man.join(sub).exists(), "no {sub}");
    }
    assert!(
        !man.join("meshd-generate.1").exists(),
        "the hidden command has no page"
    );
    let completions = dir.path().join("completions");
    let out = run(
        meshd().args(["generate", "completions"]).arg(&completions),
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for file in ["meshd.bash", "_meshd", "meshd.fish"] {
        let text = std::fs::read_to_string(completions.join(file)).expect(file);
        assert!(
            text.contains("validate") && text.contains("redirect"),
            "{file}"
        );
    }
}
