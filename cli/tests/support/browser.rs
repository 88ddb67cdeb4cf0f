//! Driving Debian's Chromium from tests: one `chromedriver` on a free loopback port (killed on
//! drop), and headless browser sessions over WebDriver with fantoccini. Never downloads a
//! browser: without `/usr/bin/chromedriver` a test fails, naming `scripts/services.sh`, which
//! installs Debian's `chromium` and `chromium-driver`.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use countersign_ledger::testing::{ChildGuard, eventually, eventually_blocking, within};
use fantoccini::{Client, ClientBuilder, Locator};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long a page may take to show what a test waits for (generous: the whole workspace's
/// tests may share the machine's cores with the browser).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running chromedriver.
pub struct Driver {
    _child: ChildGuard,
    /// chromedriver's process group: it and the browsers it started.
    group: u32,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: browsers a failed test left open end with their driver.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.group)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

impl Driver {
    /// Starts chromedriver; fails (never skips) when it is not installed.
    pub fn start() -> Self {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's `{package}`; run scripts/services.sh \
                 (it installs chromium and chromium-driver with apt-get)"
            );
        }
        let port = free_port();
        // Its own process group, so the browsers it starts go with it even when a test fails
        // before closing its sessions.
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let group = child.id();
        let child: ChildGuard = child.into();
        eventually_blocking(within(PATIENCE).every(Duration::from_millis(50)), || {
            TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|err| format!("chromedriver is not listening on {port}: {err}"))
        });
        Self {
            _child: child,
            group,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A new headless browser session (its own profile: its own cookies).
    pub async fn session(&self) -> Client {
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

/// Where screenshots go: `target/ui/<name>.png`.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("ui")
}

/// Saves a screenshot of the page as `target/ui/<name>.png`.
pub async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).expect("target/ui");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot written");
}

/// Waits for an element matching `css`.
pub async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("no element `{css}` appeared: {err}"))
}

/// Waits until the text of the element matching `css` satisfies `test`; answers the text.
pub async fn wait_for_text(client: &Client, css: &str, test: impl Fn(&str) -> bool) -> String {
    eventually(
        within(PATIENCE).every(Duration::from_millis(100)),
        async || {
            let element = client
                .find(Locator::Css(css))
                .await
                .map_err(|err| format!("no `{css}`: {err}"))?;
            let text = element
                .text()
                .await
                .map_err(|err| format!("`{css}` has no text: {err}"))?;
            if test(&text) {
                Ok(text)
            } else {
                Err(format!("`{css}` says {text:?}"))
            }
        },
    )
    .await
}

/// Signs in through the sign-in form with `credential`; waits for the inbox.
pub async fn sign_in(client: &Client, base: &str, credential: &str) {
    client
        .goto(&format!("{base}/sign-in"))
        .await
        .expect("the sign-in page");
    wait_for(client, "#credential")
        .await
        .send_keys(credential)
        .await
        .expect("typed");
    wait_for(client, "#sign-in")
        .await
        .click()
        .await
        .expect("clicked");
    wait_for(client, "#sections").await;
}
