//! The directory loader on real files: what is read, what is ignored, and how every kind of bad
//! input is reported (file, line, column, resource, field).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use meshd_manifests::{LoadOptions, Snapshot, load_dir};
use tempfile::TempDir;

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: web
  namespace: foo
spec:
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/a/sa/b]
";

fn dir_with(files: &[(&str, &[u8])]) -> TempDir {
    let dir = TempDir::new().expect("tempdir");
    for (name, content) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(path, content).expect("write");
    }
    dir
}

fn load(dir: &Path) -> Result<Snapshot, Vec<String>> {
    load_dir(dir, &LoadOptions::default()).map_err(|e| {
        e.problems
            .iter()
            .map(|p| p.to_string().replace(&format!("{}/", dir.display()), ""))
            .collect()
    })
}

fn errors(dir: &TempDir) -> Vec<String> {
    match load(dir.path()) {
        Ok(s) => panic!("expected errors, loaded {}", s.summary()),
        Err(problems) => problems,
    }
}

#[test]
fn example_configuration_loads_cleanly() {
    // The package directory as cargo gives it when the test runs: a build shared by clones at
    // other paths keeps the compile-time one.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../config/mesh");
    let snapshot = load(&dir).expect("example config loads");
    assert_eq!(snapshot.authorization_policies.len(), 3);
    assert_eq!(snapshot.peer_authentications.len(), 1);
    assert_eq!(snapshot.workload_entries.len(), 2);
    assert_eq!(snapshot.service_entries.len(), 2);
    assert!(snapshot.warnings.is_empty(), "{:?}", snapshot.warnings);
}

#[test]
fn typo_is_reported_with_file_line_column_field_and_suggestion() {
    let text = POLICY.replace("principals:", "principal:");
    let dir = dir_with(&[("policies/web.yaml", text.as_bytes())]);
    assert_eq!(
        errors(&dir),
        [
            "policies/web.yaml:10:9: AuthorizationPolicy/foo/web: spec.rules[0].from[0].source.principal: unknown field, did you mean principals?"
        ]
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let dir = dir_with(&[
        (
            "a.yaml",
            POLICY
                .replace("namespace: foo", "namespace: a")
                .replace("rules:", "rulez:")
                .as_bytes(),
        ),
        (
            "b.yaml",
            POLICY
                .replace("namespace: foo", "namespace: b")
                .replace("cluster.local/ns/a/sa/b", "''")
                .as_bytes(),
        ),
        (
            "c.yaml",
            POLICY
                .replace("namespace: foo", "namespace: c")
                .replace(
                    "principals: [cluster.local/ns/a/sa/b]",
                    "ipBlocks: [10.0.0.0/33, 1.2.3]",
                )
                .as_bytes(),
        ),
    ]);
    assert_eq!(
        errors(&dir),
        [
            "a.yaml:7:3: AuthorizationPolicy/a/web: spec.rulez: unknown field, did you mean rules?",
            "b.yaml:10:22: AuthorizationPolicy/b/web: spec.rules[0].from[0].source.principals[0]: empty value not allowed",
            "c.yaml:10:20: AuthorizationPolicy/c/web: spec.rules[0].from[0].source.ipBlocks[0]: bad CIDR range \"10.0.0.0/33\"",
            "c.yaml:10:33: AuthorizationPolicy/c/web: spec.rules[0].from[0].source.ipBlocks[1]: bad IP address \"1.2.3\"",
        ]
    );
}

#[test]
fn unknown_kind_and_api_version_are_errors_not_skips() {
    let dir = dir_with(&[
        (
            "kind.yaml",
            POLICY
                .replace("kind: AuthorizationPolicy", "kind: AuthorisationPolicy")
                .as_bytes(),
        ),
        (
            "other.yaml",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        ),
        (
            "version.yaml",
            POLICY
                .replace("security.istio.io/v1", "security.istio.io/v2")
                .replace("name: web", "name: v")
                .as_bytes(),
        ),
        (
            "nokind.yaml",
            b"apiVersion: security.istio.io/v1\nmetadata: {name: x}\n",
        ),
    ]);
    assert_eq!(
        errors(&dir),
        [
            "kind.yaml:2:7: kind: unknown kind \"AuthorisationPolicy\": did you mean AuthorizationPolicy?",
            "nokind.yaml:1:1: missing `kind`",
            "other.yaml:2:7: kind: unknown kind \"ConfigMap\": meshd reads AuthorizationPolicy, PeerAuthentication, WorkloadEntry, ServiceEntry",
            "version.yaml:1:13: AuthorizationPolicy/foo/v: apiVersion: AuthorizationPolicy is not served as \"security.istio.io/v2\": want one of security.istio.io/v1, security.istio.io/v1beta1",
        ]
    );
}

#[test]
fn duplicates_across_files_name_both_files() {
    let dir = dir_with(&[("a.yaml", POLICY.as_bytes()), ("b.yaml", POLICY.as_bytes())]);
    let errors = errors(&dir);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("b.yaml:1:1: AuthorizationPolicy/foo/web: duplicate AuthorizationPolicy/foo/web: already defined at "), "{errors:?}");
    assert!(errors[0].ends_with("a.yaml:1:1"), "{errors:?}");
}

#[test]
fn a_file_that_is_not_yaml_is_a_syntax_error_with_position() {
    let dir = dir_with(&[("junk.yaml", b"key: [unclosed\n  other: {\n\x01\x02")]);
    let errors = errors(&dir);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("junk.yaml:"), "{errors:?}");
    assert!(errors[0].contains("YAML syntax error"), "{errors:?}");
}

#[test]
fn prose_is_not_a_resource() {
    let dir = dir_with(&[("notes.yaml", b"Remember to rotate the certificates.\n")]);
    assert_eq!(
        errors(&dir),
        [
            "notes.yaml:1:1: a document must be a Kubernetes-style resource (a mapping with apiVersion, kind, metadata, spec), found a string"
        ]
    );
}

#[test]
fn empty_files_and_empty_documents_load_as_nothing() {
    let dir = dir_with(&[
        ("empty.yaml", b""),
        ("comments.yml", b"# nothing yet\n---\n---\n"),
        ("one.yaml", format!("---\n{POLICY}---\n").as_bytes()),
    ]);
    let snapshot = load(dir.path()).expect("loads");
    assert_eq!(snapshot.files, 3);
    assert_eq!(snapshot.authorization_policies.len(), 1);
}

#[test]
fn invalid_utf8_names_the_line_and_column() {
    let dir = dir_with(&[("latin1.yaml", b"apiVersion: v1\nkind: caf\xe9\n")]);
    assert_eq!(
        errors(&dir),
        ["latin1.yaml:2:10: not valid UTF-8: YAML files must be UTF-8 text"]
    );
}

#[test]
fn a_ten_megabyte_file_loads() {
    let mut text = String::with_capacity(11 << 20);
    let mut count = 0;
    while text.len() < 10 << 20 {
        text.push_str(&POLICY.replace("name: web", &format!("name: p{count}")));
        text.push_str("---\n");
        count += 1;
    }
    let dir = dir_with(&[("big.yaml", text.as_bytes())]);
    let snapshot = load(dir.path()).expect("loads");
    assert_eq!(snapshot.authorization_policies.len(), count);
}

#[test]
fn only_yaml_files_are_read_and_droppings_are_ignored() {
    let junk: &[u8] = b"{{{ not yaml";
    let dir = dir_with(&[
        ("ok.yaml", POLICY.as_bytes()),
        (".hidden.yaml", junk),
        (".#ok.yaml", junk),
        ("ok.yaml~", junk),
        ("ok.yaml.swp", junk),
        ("ok.yaml.tmp", junk),
        ("ok.yaml.dpkg-new", junk),
        ("README.md", junk),
        ("ok.json", junk),
        (".git/config.yaml", junk),
    ]);
    let snapshot = load(dir.path()).expect("loads");
    assert_eq!(snapshot.files, 1);
    assert_eq!(snapshot.authorization_policies.len(), 1);
}

#[test]
fn symlinks_are_followed_including_kubernetes_data_links() {
    let real = dir_with(&[("..2026_11_22/policy.yaml", POLICY.as_bytes())]);
    let root = real.path();
    std::os::unix::fs::symlink("..2026_11_22", root.join("..data")).expect("link");
    std::os::unix::fs::symlink("..data/policy.yaml", root.join("policy.yaml")).expect("link");
    let snapshot = load(root).expect("loads");
    assert_eq!(snapshot.authorization_policies.len(), 1);
    // A loop of directory links is read once, not forever.
    std::os::unix::fs::symlink(".", root.join("loop")).expect("link");
    assert_eq!(load(root).expect("loads").authorization_policies.len(), 1);
}

#[test]
fn a_missing_directory_is_an_error() {
    let dir = TempDir::new().expect("tempdir");
    let problems = load(&dir.path().join("nope")).expect_err("missing");
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].contains("cannot read directory"),
        "{problems:?}"
    );
}

#[test]
fn conflicting_peer_authentications_name_both_files() {
    let pa = |name: &str, selector: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{selector}  mtls: {{mode: STRICT}}\n"
        )
    };
    let dir = dir_with(&[
        ("a.yaml", pa("one", "").as_bytes()),
        ("b.yaml", pa("two", "").as_bytes()),
    ]);
    let found = errors(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("b.yaml:1:1: PeerAuthentication/shop/two: conflicting PeerAuthentication at namespace level in namespace \"shop\": shop/one at "), "{found:?}");

    // Different selectors that select the same registered workload conflict too.
    let workload = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w, namespace: shop}\nspec: {address: 10.0.0.1, labels: {app: web, tier: front}}\n";
    let dir = dir_with(&[
        (
            "a.yaml",
            pa("by-app", "  selector: {matchLabels: {app: web}}\n").as_bytes(),
        ),
        (
            "b.yaml",
            pa("by-tier", "  selector: {matchLabels: {tier: front}}\n").as_bytes(),
        ),
        ("w.yaml", workload.as_bytes()),
    ]);
    let errors = errors(&dir);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .contains("conflicting PeerAuthentication at workload level for WorkloadEntry shop/w"),
        "{errors:?}"
    );
}

#[test]
fn warnings_do_not_reject() {
    let text = POLICY.replace("    - source:\n        principals: [cluster.local/ns/a/sa/b]\n", "    - source:\n        principals: [cluster.local/ns/a/sa/b]\n    to:\n    - operation:\n        methods: [GET]\n");
    let dir = dir_with(&[("l7.yaml", text.as_bytes())]);
    let snapshot = load(dir.path()).expect("loads");
    let warnings: Vec<String> = snapshot.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("l7.yaml:7:3: warning: AuthorizationPolicy/foo/web: spec.rules: no rule of this ALLOW policy is enforceable"), "{warnings:?}");
    assert!(warnings[1].contains("l7.yaml:8:5: warning: AuthorizationPolicy/foo/web: spec.rules[0]: rule ignored: it uses L7 attributes (methods)"), "{warnings:?}");
}
