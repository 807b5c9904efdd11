//! The browser suite: pages driven in a real headless Chromium through
//! WebDriver (Debian's `chromium` and `chromium-driver`; `scripts/test` installs
//! them). Each test starts its own `chromedriver` on a free 127.0.0.1 port
//! and one session with a fixed window; a machine without the two programs
//! fails here with the line that says what to install, never skips.
//!
//! ## Layout
//! - `driver`: the chromedriver process — found, started, its log, killed.
//! - `session`: [`Browser`], one session and the helpers tests use.
//! - `fixture`: the self-test's own small axum page.
//!
//! The tests here prove the harness itself against a real page, so a test
//! of the console that fails is a failure of the console.

mod driver;
mod fixture;
mod session;

pub use session::{Browser, WAIT, WINDOW};

use std::ffi::OsString;
use std::time::Duration;

use driver::{INSTALL, Programs};
use fixture::{Fixture, SESSION};
use session::{screenshot_dir, screenshot_file};

/// What the form is filled with: markup and non-ASCII, so the round trip
/// through typing, posting and rendering is checked byte for byte.
const TYPED: &str = "idem <b>&amp; ünï";

#[tokio::test]
async fn harness_drives_a_real_page() -> anyhow::Result<()> {
    let page = Fixture::start().await?;
    let browser = Browser::start().await?;

    browser.goto(&format!("{}/form", page.base)).await?;
    browser.fill("#value", TYPED).await?;
    assert_eq!(page.posts(), 0, "nothing is posted before the click");
    browser.submit("#send").await?;

    // The click really posted the form, and the browser followed to its answer.
    assert_eq!(page.posts(), 1);
    assert_eq!(browser.url().await?, format!("{}/posted", page.base));
    assert_eq!(browser.text("#posted").await?, TYPED);
    assert_eq!(browser.text("#button").await?, "send");

    // The HttpOnly cookie went back with the POST, yet no script can read
    // it; the other cookie proves scripts read cookies at all.
    assert_eq!(browser.text("#session").await?, SESSION);
    let script_sees = browser.script("return document.cookie;").await?;
    assert_eq!(script_sees, "visible=yes");
    let cookies = browser.cookies().await?;
    let session = cookies
        .iter()
        .find(|c| c.name() == "session")
        .expect("WebDriver sees the HttpOnly cookie");
    assert_eq!(session.value(), SESSION);
    assert_eq!(session.http_only(), Some(true));
    // `SameSite` is not re-exported by fantoccini: compare its rendering.
    let same_site = session.same_site().map(|s| s.to_string());
    assert_eq!(same_site.as_deref(), Some("Strict"));

    // What a script adds later is waited for; what never comes is named.
    browser
        .wait_until("the script's #later", WAIT, async |b| {
            Ok(b.text("#later").await? == "ready")
        })
        .await?;
    let never = browser
        .wait_until("#never to appear", Duration::from_millis(300), async |b| {
            Ok(!b.texts("#never").await?.is_empty())
        })
        .await
        .expect_err("#never never appears");
    let message = never.to_string();
    assert!(
        message.contains("waiting for #never to appear on"),
        "{message}"
    );

    screenshot_is_the_window(&browser).await?;

    // A click on a link follows it.
    browser.click("#again").await?;
    assert_eq!(browser.url().await?, format!("{}/form", page.base));
    browser.close().await
}

/// A screenshot is a PNG of the page's viewport in the fixed window size.
async fn screenshot_is_the_window(browser: &Browser) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("idem-browser-shot-{}", uuid::Uuid::new_v4()));
    let path = browser.screenshot_into(&dir, "self-test").await?;
    let png = std::fs::read(&path)?;
    std::fs::remove_dir_all(&dir)?;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG at {}",
        path.display()
    );
    let dimension =
        |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    let viewport = browser
        .script("return [window.innerWidth, window.innerHeight];")
        .await?;
    assert_eq!(viewport[0], WINDOW.0, "the window is {WINDOW:?} wide");
    assert_eq!(viewport[0], dimension(16));
    assert_eq!(viewport[1], dimension(20));
    Ok(())
}

#[test]
fn missing_programs_fail_with_the_install_line() {
    let empty_path = |var: &str| (var == "PATH").then(|| OsString::from("/nonexistent"));
    let err = Programs::find_with(empty_path)
        .err()
        .expect("nothing to find");
    assert_eq!(
        err.to_string(),
        format!("chromedriver not found; {INSTALL}")
    );
    assert!(!err.to_string().contains('\n'), "one line");
    assert!(INSTALL.contains("install chromium chromium-driver"));

    // A driver given by path, and no Chromium anywhere.
    let only_driver = |var: &str| match var {
        "IDEM_CHROMEDRIVER" => Some(OsString::from("/bin/sh")),
        "PATH" => Some(OsString::from("/nonexistent")),
        _ => None,
    };
    let err = Programs::find_with(only_driver).err().expect("no chromium");
    assert_eq!(err.to_string(), format!("chromium not found; {INSTALL}"));
}

#[test]
fn screenshot_names_stay_in_their_directory() {
    assert_eq!(
        screenshot_file("overview-dead-row").unwrap(),
        "overview-dead-row.png"
    );
    for hostile in [
        "",
        "../etc",
        "a/b",
        "Overview",
        "x.png",
        "a\0b",
        &"a".repeat(65),
    ] {
        let err = screenshot_file(hostile).expect_err(hostile);
        assert!(err.to_string().contains("use 1 to 64 of a-z"), "{err}");
    }
}

#[test]
fn screenshots_go_to_the_docs_only_on_demand() {
    let session = std::path::Path::new("/tmp/idem-browser-x");
    assert_eq!(
        screenshot_dir(Some("1".into()), session),
        session::docs_img()
    );
    assert!(session::docs_img().ends_with("docs/img"));
    for other in [None, Some(OsString::from("0")), Some(OsString::from("yes"))] {
        assert_eq!(screenshot_dir(other, session), session.join("screenshots"));
    }
}
