//! Web pages against the admin endpoint, in a real headless Chromium: a page served from
//! another origin (another loopback address, served by this test) submits a form to
//! `POST /quitquitquit` and one to `POST /logging?level=off`, loads
//! `<img src=".../logging?level=off">`, and a DNS-rebinding page (`evil.test` mapped to
//! meshd's address with `--host-resolver-rules`) reads `/config_dump` as its own origin. Each
//! request reaches meshd and is refused: meshd keeps running, the log level stays, the read
//! gets nothing. The control: the page itself works through an `ssh -L`-style forward, as
//! `http://localhost:PORT/`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use fantoccini::Client;
use meshd_integration::{Meshd, http};

use super::Nodes;
use super::status_page::{browser_with, chromedriver, section_text};

/// The attacker's pages, by path; `{admin}` stands for meshd's admin address.
const PAGES: [(&str, &str); 3] = [
    (
        "/form-quit",
        r#"<form id=f method=POST action="http://{admin}/quitquitquit"></form>
<script>document.getElementById('f').submit()</script>"#,
    ),
    (
        "/form-logging",
        r#"<form id=f method=POST action="http://{admin}/logging?level=off"></form>
<script>document.getElementById('f').submit()</script>"#,
    ),
    (
        "/img",
        r#"<img id=i src="http://{admin}/logging?level=off"
  onload="document.title='loaded'" onerror="document.title='failed'">"#,
    ),
];

/// Serves [`PAGES`] on `ip` (a loopback address of its own: another origin, another site)
/// from a thread; its address.
fn attacker(ip: IpAddr, admin: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let body = PAGES
                .iter()
                .find(|(p, _)| *p == path)
                .map_or(String::new(), |(_, html)| {
                    html.replace("{admin}", &admin.to_string())
                });
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// `ssh -L PORT:meshd:15000` in miniature: a forward from 127.0.0.1:PORT to `to`.
fn forward(to: SocketAddr) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(upstream) = TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    port
}

/// The log filter meshd reports.
fn log_level(admin: SocketAddr) -> String {
    let (status, body) = http(admin, "GET", "/logging").unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The visible text of the page once `check` holds (polled for up to 10 s).
async fn page_text(client: &Client, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = client.find(fantoccini::Locator::Css("body")).await.ok();
        let text = match text {
            Some(body) => body.text().await.unwrap_or_default(),
            None => String::new(),
        };
        if check(&text) || Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Still running, same log level.
fn unharmed(meshd: &mut Meshd, admin: SocketAddr, level: &str) {
    assert_eq!(
        meshd.wait_exit(Duration::from_millis(300)),
        None,
        "meshd exited"
    );
    assert_eq!(log_level(admin), level);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_from_other_origins_cannot_stop_meshd_change_its_log_or_read_it() {
    let mesh = Nodes::new();
    let mut meshd = mesh.start("b");
    let admin = SocketAddr::new(mesh.b, 15000);
    let level = log_level(admin);
    let evil = attacker(IpAddr::V4(Ipv4Addr::new(127, 10, 53, 9)), admin);
    let driver = chromedriver();
    let client = browser_with(
        &driver,
        &[
            format!("--host-resolver-rules=MAP evil.test {}", mesh.b),
            "--disable-features=HttpsUpgrades".to_string(),
        ],
    )
    .await;

    // (a) Forms posted from another origin: they reach meshd and are refused for their origin.
    for page in ["/form-quit", "/form-logging"] {
        client.goto(&format!("http://{evil}{page}")).await.unwrap();
        let text = page_text(&client, |t| t.contains("refused")).await;
        assert!(
            text.contains(&format!(
                "cross-origin request from \"http://{evil}\" refused"
            )),
            "{page}: {text}"
        );
        unharmed(&mut meshd, admin, &level);
    }

    // (b) An image from another site: refused by its fetch metadata, nothing changes.
    client.goto(&format!("http://{evil}/img")).await.unwrap();
    meshd.wait_for_log("cross-site request (Sec-Fetch-Site: cross-site) refused");
    unharmed(&mut meshd, admin, &level);

    // (c) DNS rebinding: evil.test now resolves to meshd; the page reads "its own" origin.
    client.goto("http://evil.test:15000/").await.unwrap();
    let read = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/config_dump').then(r => r.text().then(t => done([r.status, t])))
               .catch(e => done([0, String(e)]));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(read[0], 421, "{read}");
    let body = read[1].as_str().unwrap_or_default();
    assert!(!body.contains("generation"), "{body}");
    assert!(
        body.contains("\"evil.test:15000\" is not this admin endpoint"),
        "{body}"
    );
    unharmed(&mut meshd, admin, &level);

    // The control: the page through a local forward, as http://localhost:PORT/, works.
    let port = forward(admin);
    client
        .goto(&format!("http://localhost:{port}/#workloads"))
        .await
        .unwrap();
    let shown = section_text(&client, "workloads", Duration::from_secs(10), |t| {
        t.contains("shop/db")
    })
    .await;
    assert!(shown.is_some(), "the page did not load through the forward");
    client.close().await.unwrap();
}
