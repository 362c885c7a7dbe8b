//! The admin page in a real headless Chromium, driven through chromedriver (WebDriver) with
//! fantoccini: each view loads and shows its content, a denied connection shows in the
//! denials view within 1 s, and a screenshot of each view is written under the test's output
//! directory (`target/tmp/status-page/`).

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use super::Nodes;

/// A chromedriver process, killed on drop.
pub(super) struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver. It only listens on localhost (it has no bind option); the page it
/// loads and every request the page makes go to the meshd under test (on its loopback range).
pub(super) fn chromedriver() -> Driver {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is missing: scripts/test.sh installs chromium and chromium-driver");
    Driver {
        child,
        port,
        _profile: tempfile::TempDir::new().expect("profile dir"),
    }
}

/// A browser session: headless Chromium as root, with everything that would reach for the
/// network switched off, and a fresh profile.
async fn browser(driver: &Driver) -> Client {
    browser_with(driver, &[]).await
}

/// [`browser`] with more Chromium flags (e.g. `--host-resolver-rules=...`).
pub(super) async fn browser_with(driver: &Driver, extra: &[String]) -> Client {
    let profile = driver._profile.path().display().to_string();
    let mut args = vec![
        "--headless".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--disable-quic".to_string(),
        "--no-first-run".to_string(),
        "--disable-background-networking".to_string(),
        "--disable-component-update".to_string(),
        "--disable-sync".to_string(),
        "--disable-dev-shm-usage".to_string(),
        "--window-size=1500,900".to_string(),
        format!("--user-data-dir={profile}"),
    ];
    args.extend(extra.iter().cloned());
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "args": args }),
    );
    let url = format!("http://localhost:{}", driver.port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connected = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await;
        match connected {
            Ok(client) => return client,
            // chromedriver takes a moment to listen.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot start a browser session: {e}"),
        }
    }
}

/// The text of the view's section once it has loaded and `check` holds, polled every 20 ms
/// for up to `within`; `None` if it never does.
pub(super) async fn section_text(
    client: &Client,
    view: &str,
    within: Duration,
    check: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let loaded = format!("#view-{view}.active[data-loaded='true']");
        if let Ok(section) = client.find(Locator::Css(&loaded)).await
            && let Ok(text) = section.text().await
            && check(&text)
        {
            return Some(text);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_in_a_real_browser() {
    let mesh = Nodes::new();
    let _b = mesh.start("b");
    let _a = mesh.start("a");
    let open = tokio::task::block_in_place(|| mesh.allowed());
    let driver = chromedriver();
    let client = browser(&driver).await;
    let page = format!("http://{}:15000/", mesh.b);
    let dir = screenshots();

    // What each view must show.
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let expect: [(&str, &[&str]); 7] = [
        (
            "workloads",
            &["shop/db", "shop/deny-admin DENY", "STRICT", web],
        ),
        ("services", &["db.shop.mesh.internal", super::DB_VIP, "ok"]),
        (
            "policies",
            &[
                "shop/audit-paths",
                "dry-run",
                "shop/db-strict",
                "resources.yaml:",
            ],
        ),
        (
            "certs",
            &[
                "O=cluster.local, CN=meshd dev CA cluster.local",
                "left",
                "cluster.local",
            ],
        ),
        // A meshd without istiod says so (istiod_mesh.rs checks a joined one's view).
        ("control-plane", &["no control plane"]),
        ("connections", &["inbound", web, "h2+mTLS", "2.9 KiB"]),
        // Last: the page stays on it for the live check below.
        ("denials", &[]),
    ];
    for (view, needles) in expect {
        client.goto(&format!("{page}#{view}")).await.unwrap();
        let shown = section_text(&client, view, Duration::from_secs(10), |text| {
            needles.iter().all(|n| text.contains(n))
        })
        .await;
        let text = shown.unwrap_or_else(|| panic!("view {view} never showed {needles:?}"));
        assert!(!text.contains("PRIVATE KEY"), "{view}: {text}");
        // The header: identity and configuration generation.
        let header = client
            .find(Locator::Css("header"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            header.contains("spiffe://cluster.local/ns/shop/sa/db"),
            "{header}"
        );
        assert!(header.contains("generation 1"), "{header}");
        if view != "denials" {
            let png = client.screenshot().await.unwrap();
            std::fs::write(dir.join(format!("{view}.png")), png).unwrap();
        }
    }

    // On the denials view, a new denial shows within 1 s.
    let started = Instant::now();
    tokio::task::block_in_place(|| mesh.denied());
    let text = section_text(&client, "denials", Duration::from_secs(1), |text| {
        text.contains("shop/deny-admin") && text.contains(web)
    })
    .await;
    let took = started.elapsed();
    assert!(text.is_some(), "the denial did not show within 1 s");
    let png = client.screenshot().await.unwrap();
    std::fs::write(dir.join("denials.png"), png).unwrap();
    eprintln!(
        "denial shown after {took:?}; screenshots in {}",
        dir.display()
    );

    drop(open);
    client.close().await.unwrap();
}
