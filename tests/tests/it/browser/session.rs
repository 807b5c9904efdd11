//! One headless Chromium session over WebDriver, and the few things a test
//! does with a page: go to a URL, read text, fill a field, click, submit a
//! form, wait for something, read the URL and cookies, take a screenshot.
//!
//! Lookups do not wait: WebDriver's click and navigation return once the
//! page they lead to has loaded, so a missing element is an answer, not a
//! race. Whatever a page does later (a script, a redirect, a worker's
//! progress) is awaited with [`Browser::wait_until`], which names what it
//! waited for when it gives up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fantoccini::cookies::Cookie;
use fantoccini::elements::Element;
use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use idem_tests::gate::{self, Ticket};
use serde_json::{Value, json};
use uuid::Uuid;

use super::driver::{Driver, Programs};

/// The window every session gets, so screenshots and layouts are the same
/// on every machine.
pub const WINDOW: (u32, u32) = (1280, 900);
/// How long [`Browser::wait_until`] waits unless told otherwise: generous,
/// for a machine shared with other builds.
pub const WAIT: Duration = Duration::from_secs(20);
/// `IDEM_UPDATE_DOCS=1` writes screenshots into the docs instead of a temp dir.
const UPDATE_DOCS: &str = "IDEM_UPDATE_DOCS";

/// A headless Chromium, driven by a chromedriver of its own.
pub struct Browser {
    /// The WebDriver session.
    client: Client,
    /// This session's directory: Chromium's profile, the driver's log, screenshots.
    dir: PathBuf,
    /// Declared after `client`, so it is dropped (killed) after it.
    driver: Driver,
    /// A place beside the other suites (never during one that needs the machine alone).
    _ticket: Ticket,
}

impl Browser {
    /// Start chromedriver and open a session. Fails with the line that says
    /// what to install when Chromium or chromedriver is missing.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// [`Browser::start`] with more Chromium flags, e.g.
    /// `--host-resolver-rules=MAP console.test 127.0.0.1` for a host name
    /// that points at loopback (what a DNS-rebinding page uses).
    pub async fn start_with(extra_args: &[&str]) -> anyhow::Result<Self> {
        let programs = Programs::find()?;
        let ticket = gate::shared().await;
        let dir = std::env::temp_dir().join(format!("idem-browser-{}", Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("profile"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let driver = Driver::start(&programs.driver, &dir).await?;
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities(
                &programs.chromium,
                &dir.join("profile"),
                extra_args,
            ))
            .connect(&driver.url)
            .await
            .map_err(|e| {
                anyhow::anyhow!("opening a Chromium session: {e}; {}", driver.log_tail())
            })?;
        Ok(Self {
            client,
            dir,
            driver,
            _ticket: ticket,
        })
    }

    /// Load `url` and wait for it to finish loading.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("loading {url}"))
    }

    /// The current page's URL.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self.client.current_url().await?.to_string())
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let element = self.find(css).await?;
        Ok(element.text().await?)
    }

    /// The visible text of every element matching `css`, in document order.
    pub async fn texts(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let mut texts = Vec::new();
        for element in self.client.find_all(Locator::Css(css)).await? {
            texts.push(element.text().await?);
        }
        Ok(texts)
    }

    /// Replace the value of the field matching `css` by typing `value`.
    pub async fn fill(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let field = self.find(css).await?;
        field
            .clear()
            .await
            .with_context(|| format!("clearing `{css}`"))?;
        field
            .send_keys(value)
            .await
            .with_context(|| format!("typing into `{css}`"))
    }

    /// Click the element matching `css`, as a user would (it must be visible).
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        element
            .click()
            .await
            .with_context(|| format!("clicking `{css}`"))
    }

    /// Submit the form matching `css` by clicking its submit button, so the
    /// button's own name and value are sent as a user's click sends them,
    /// and wait until the browser has left the page (its document is gone):
    /// a click returns before the navigation it starts, and a loaded machine
    /// showed that gap (the post not yet made when the caller looked).
    pub async fn submit(&self, css: &str) -> anyhow::Result<()> {
        self.find(css).await?;
        let page = self.client.find(Locator::Css("html")).await?;
        let form = self.client.form(Locator::Css(css)).await?;
        form.submit()
            .await
            .with_context(|| format!("clicking the submit button of `{css}`"))?;
        self.left(page, &format!("submitting `{css}`")).await
    }

    /// Click the link or button matching `css` and wait until the browser
    /// has left the page, for a click whose next page may look like this
    /// one (a form answered with itself and an error): looking right after
    /// the click can read the old page (CI did, and found no error there).
    pub async fn click_away(&self, css: &str) -> anyhow::Result<()> {
        let page = self.client.find(Locator::Css("html")).await?;
        self.click(css).await?;
        self.left(page, &format!("clicking `{css}`")).await
    }

    /// Wait until `page` (the `html` element of the page before an action)
    /// is gone from the browser.
    async fn left(&self, page: Element, after: &str) -> anyhow::Result<()> {
        self.wait_until(
            &format!("the page to be left after {after}"),
            Duration::from_secs(20),
            async |_| match page.tag_name().await {
                Ok(_) => Ok(false),
                Err(CmdError::Standard(e)) if e.error == ErrorStatus::StaleElementReference => {
                    Ok(true)
                }
                Err(e) => Err(e.into()),
            },
        )
        .await
    }

    /// Run `script` in the page (`return ...;` gives its value).
    pub async fn script(&self, script: &str) -> anyhow::Result<Value> {
        self.client
            .execute(script, Vec::new())
            .await
            .with_context(|| format!("running `{script}`"))
    }

    /// Every cookie the browser holds for the current page, `HttpOnly` ones
    /// included (WebDriver sees what page scripts cannot).
    pub async fn cookies(&self) -> anyhow::Result<Vec<Cookie<'static>>> {
        Ok(self.client.get_all_cookies().await?)
    }

    /// Poll `ready` every 50 ms until it says `true`, for at most `timeout`.
    /// An error from `ready` counts as "not yet" (the element may not exist
    /// yet); the last one is part of the message if time runs out.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut ready: impl AsyncFnMut(&Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match ready(self).await {
                Ok(true) => return Ok(()),
                Ok(false) => "it was not yet so".to_owned(),
                Err(e) => format!("last error: {e:#}"),
            };
            if Instant::now() > deadline {
                let url = self.url().await.unwrap_or_else(|e| e.to_string());
                bail!("timed out after {timeout:?} waiting for {what} on {url} ({last})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Save a PNG of the viewport as `<name>.png`: into `docs/img/` when
    /// `IDEM_UPDATE_DOCS=1` (the docs' screenshots, regenerated on demand),
    /// else into this session's temporary directory. Returns where it went.
    #[allow(
        dead_code,
        reason = "the console's browser tests take the docs' screenshots"
    )]
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = screenshot_dir(std::env::var_os(UPDATE_DOCS), &self.dir);
        self.screenshot_into(&dir, name).await
    }

    /// [`Browser::screenshot`] into `dir`, whatever `IDEM_UPDATE_DOCS` says.
    pub async fn screenshot_into(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let path = dir.join(screenshot_file(name)?);
        let png = self
            .client
            .screenshot()
            .await
            .context("taking a screenshot")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// End the session (Chromium quits cleanly), then the driver.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client
            .clone()
            .close()
            .await
            .map_err(|e| anyhow::anyhow!("ending the session: {e}; {}", self.driver.log_tail()))
    }

    /// The first element matching `css`, or an error naming it and the page.
    async fn find(&self, css: &str) -> anyhow::Result<Element> {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => Ok(element),
            Err(CmdError::Standard(e)) if e.error == ErrorStatus::NoSuchElement => {
                let url = self.url().await.unwrap_or_else(|e| e.to_string());
                bail!("no element matches `{css}` on {url}")
            }
            Err(e) => Err(e).with_context(|| format!("looking for `{css}`")),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Kept after a failure: the screenshots and the driver's log are the evidence.
        if std::thread::panicking() {
            eprintln!("browser session files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Headless Chromium with a fixed window and a profile of its own. As root
/// (CI) Chromium refuses to start without `--no-sandbox`; `/dev/shm` is
/// small in containers, hence `--disable-dev-shm-usage`.
fn capabilities(chromium: &Path, profile: &Path, extra_args: &[&str]) -> Capabilities {
    let (width, height) = WINDOW;
    let mut options = json!({
        "binary": chromium.to_string_lossy(),
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    if let Some(args) = options["args"].as_array_mut() {
        args.extend(extra_args.iter().map(|a| json!(a)));
    }
    let mut caps = Capabilities::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), options);
    caps
}

/// Where [`Browser::screenshot`] writes, given `IDEM_UPDATE_DOCS` and the
/// session's directory: the docs only when it is exactly `1`.
pub fn screenshot_dir(update_docs: Option<OsString>, session: &Path) -> PathBuf {
    if update_docs.is_some_and(|v| v == "1") {
        docs_img()
    } else {
        session.join("screenshots")
    }
}

/// Where the docs' screenshots live.
pub fn docs_img() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img")
}

/// `<name>.png`, for a name that cannot leave its directory or surprise a
/// reader of `docs/img/`: lowercase ASCII letters, digits and `-`.
pub fn screenshot_file(name: &str) -> anyhow::Result<String> {
    let fine = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if name.is_empty() || name.len() > 64 || !name.chars().all(fine) {
        bail!("screenshot name {name:?}: use 1 to 64 of a-z, 0-9 and '-'");
    }
    Ok(format!("{name}.png"))
}
