//! Headless Chromium, the browser an administrator opens the status page and the report in:
//! the DOM after the page's scripts ran, what the page logged to its console, a screenshot.

use std::path::Path;
use std::process::Stdio;

/// What Chromium made of a page.
pub struct Rendered {
    /// The DOM once the page's scripts ran (`--dump-dom`).
    pub dom: String,
    /// Every console message and uncaught error, Content-Security-Policy refusals included.
    pub console: Vec<String>,
}

/// Loads `url` with `lang` as the browser's language; waits for the page to settle in
/// virtual time (timers fire, fetches complete) and bounds the whole run in real time.
pub async fn render(url: &str, lang: &str) -> Rendered {
    render_at(url, lang, 1280).await
}

/// [`render`] in a window `width` pixels wide.
pub async fn render_at(url: &str, lang: &str, width: u32) -> Rendered {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = chromium(profile.path(), lang)
        .arg(format!("--window-size={width},900"))
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom", url])
        .output()
        .await
        .expect("chromium runs (scripts/install-test-deps installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    Rendered {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
    }
}

/// Loads the page at `page` (a `file://` URL whose images name the URLs to try) with the proxy
/// configuration of the PAC file at `pac_url`, names resolved only as `resolver_rules` say
/// (`--host-resolver-rules`), and Chromium's net log written to `net_log`: the browser's own PAC
/// engine decides each request, the log names every host it resolved.
pub async fn load_with_pac(page: &str, pac_url: &str, resolver_rules: &str, net_log: &Path) {
    let profile = tempfile::tempdir().expect("profile dir");
    let status = chromium_with(profile.path(), "en", false)
        .arg(format!("--proxy-pac-url={pac_url}"))
        .arg(format!("--host-resolver-rules={resolver_rules}"))
        .arg(format!("--log-net-log={}", net_log.display()))
        .arg("--dump-dom")
        .arg(page)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("chromium runs");
    assert!(status.success(), "chromium failed: {status}");
}

/// Loads `url` through the HTTP proxy `proxy` (`http://127.0.0.1:3128`): the page Chromium
/// shows, its own error page when the proxy refused.
pub async fn load_through(url: &str, proxy: &str) -> Rendered {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = chromium_with(profile.path(), "en", false)
        .arg(format!("--proxy-server={proxy}"))
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom", url])
        .output()
        .await
        .expect("chromium runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    Rendered {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console: stderr.lines().map(str::to_string).collect(),
    }
}

/// Saves a PNG of `url` at 1280×900 to `png`.
pub async fn screenshot(url: &str, lang: &str, png: &Path) {
    let profile = tempfile::tempdir().expect("profile dir");
    let status = chromium(profile.path(), lang)
        .arg("--window-size=1280,900")
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .status()
        .await
        .expect("chromium runs");
    assert!(status.success(), "chromium --screenshot failed: {status}");
}

fn chromium(profile: &Path, lang: &str) -> tokio::process::Command {
    chromium_with(profile, lang, true)
}

/// Headless Chromium, bounded to a minute; `no_proxy`: no proxy at all (else the caller says).
fn chromium_with(profile: &Path, lang: &str, no_proxy: bool) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("timeout");
    command
        .args([
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .args([
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
        ])
        .args(no_proxy.then_some("--no-proxy-server"))
        .arg(format!("--lang={lang}"))
        .arg(format!("--accept-lang={lang}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}
