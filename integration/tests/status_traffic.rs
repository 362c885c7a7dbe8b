//! The admin page's traffic view in a real headless Chromium (as `status_page.rs`): after an
//! allowed connection the graph shows an allowed edge from web to db and the chart no denial;
//! after a denied one the graph shows a denied edge between the same workloads and the chart's
//! denial count rises. Screenshots before and after the denial are written under the test's
//! output directory (`target/tmp/status-page/traffic-{before,after}-denial.png`), printed;
//! `meshd status traffic` prints the same edges.

use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};

use super::Nodes;
use super::status_page::{chromedriver, screenshots};

/// How long the page may take to show a change: it polls every 500 ms.
const SHOWN_WITHIN: Duration = Duration::from_secs(5);

/// True once an element matching `css` exists, polled every 20 ms for up to `within`.
async fn appears(client: &Client, css: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if client.find(Locator::Css(css)).await.is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The chart's denial count over the window, as the page shows it.
async fn denials_shown(client: &Client) -> u64 {
    let text = client
        .find(Locator::Css("#traffic-denials"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("denial count {text:?}"))
}

/// The graph's edges as (from, to, verdict, class) and the text of its labels, read from the
/// SVG the page drew in one script run: the page redraws every 500 ms, so elements found in one
/// WebDriver call may be gone by the next.
async fn graph(client: &Client) -> (Vec<(String, String, String, String)>, String) {
    let read = client
        .execute(
            "const svg = document.querySelector('#view-traffic svg.graph');
             if (!svg) return [[], ''];
             return [Array.from(svg.querySelectorAll('path.edge')).map(p =>
                       [p.dataset.from, p.dataset.to, p.dataset.verdict, p.getAttribute('class')]),
                     Array.from(svg.querySelectorAll('text.edge-label')).map(t => t.textContent).join('\\n')];",
            vec![],
        )
        .await
        .unwrap();
    let (edges, labels): (Vec<(String, String, String, String)>, String) =
        serde_json::from_value(read).unwrap();
    (edges, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traffic_picture_shows_a_denial_appearing() {
    let mesh = Nodes::new();
    let _b = mesh.start("b");
    let _a = mesh.start("a");
    let driver = chromedriver();
    let client = super::status_page::browser_with(&driver, &[]).await;
    let dir = screenshots();
    // The traffic view is the page's first view: no fragment needed.
    client
        .goto(&format!("http://{}:15000/", mesh.b))
        .await
        .unwrap();
    assert!(
        appears(
            &client,
            "#view-traffic.active[data-loaded='true'] .node.local[data-id='shop/db']",
            SHOWN_WITHIN
        )
        .await,
        "the traffic view never showed the local workload shop/db"
    );

    // An allowed connection, left open: an allowed edge into db with its bytes, no denial.
    let open = tokio::task::block_in_place(|| mesh.allowed());
    let allowed = "#view-traffic svg.graph path.edge.allowed[data-to='shop/db']";
    assert!(
        appears(&client, allowed, SHOWN_WITHIN).await,
        "no allowed edge into shop/db"
    );
    let (before, labels) = graph(&client).await;
    assert!(before.iter().all(|e| e.2 == "allowed"), "{before:?}");
    let peer = before[0].0.clone();
    assert_eq!(peer, "shop/web", "{before:?}");
    // 3000 bytes each way, counted as they flow.
    assert!(labels.contains("1 conn · 5.9 KiB"), "{labels}");
    assert_eq!(denials_shown(&client).await, 0);
    assert!(
        client
            .find(Locator::Css("#view-traffic svg.chart rect.bar.connections"))
            .await
            .is_ok(),
        "the chart shows no connection"
    );
    let shot = dir.join("traffic-before-denial.png");
    std::fs::write(&shot, client.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot before the denial: {}", shot.display());

    // A denied one between the same workloads: a denied edge appears beside the allowed one,
    // and the chart counts the denial.
    tokio::task::block_in_place(|| mesh.denied());
    let denied =
        "#view-traffic svg.graph path.edge.denied[data-from='shop/web'][data-to='shop/db']";
    assert!(
        appears(&client, denied, SHOWN_WITHIN).await,
        "no denied edge from shop/web to shop/db: {:?}",
        graph(&client).await
    );
    let deadline = Instant::now() + SHOWN_WITHIN;
    while denials_shown(&client).await < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(denials_shown(&client).await, 1);
    assert!(
        appears(
            &client,
            "#view-traffic svg.chart rect.bar.denials",
            SHOWN_WITHIN
        )
        .await,
        "the chart shows no denial bar"
    );
    let (after, labels) = graph(&client).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(labels.contains("1 denial · shop/deny-admin"), "{labels}");
    let shot = dir.join("traffic-after-denial.png");
    std::fs::write(&shot, client.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot after the denial: {}", shot.display());

    // `meshd status traffic` reads the same view: both edges, the denial's policy.
    let text = tokio::task::block_in_place(|| super::view(&mesh, &["traffic"]));
    assert!(text.contains("1 refused or denied"), "{text}");
    assert!(text.contains("shop/web  shop/db  denied"), "{text}");
    assert!(text.contains("shop/deny-admin"), "{text}");

    drop(open);
    client.close().await.unwrap();
}
