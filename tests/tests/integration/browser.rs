//! The web view in a real browser: headless Chromium loads the observer's
//! pages of a three-node network and must show the assessments and the
//! divergence of a note with each member's position. It also takes the
//! screenshot the README shows (written to docs/web-view.png when
//! `CONCORD_UPDATE_DOCS=1`).
//!
//! Chromium is driven directly (`--dump-dom`, `--screenshot`), no driver.
//! `.ci/run` installs Debian's `chromium`; elsewhere this test fails and
//! says how to install it, rather than passing without a browser.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::web::{BEIJING, WASHINGTON, scenario};

/// How long one Chromium run may take.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(90);

/// The Chromium binary: `$CHROMIUM`, else the first of the usual names on
/// the `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the browser test needs headless Chromium, and none was found on the PATH: install \
         Debian's package (`apt-get install chromium`, as root; `.ci/run` does this) or set \
         CHROMIUM=/path/to/chromium"
    );
}

/// Runs Chromium headless on `url` with `args`; returns its stdout.
fn run_chromium(args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            // The test may run as root, where Chromium's sandbox refuses to start.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium().display()));
    let deadline = Instant::now() + CHROMIUM_DEADLINE;
    loop {
        if child.try_wait().expect("wait for chromium").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish {url} within {CHROMIUM_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("chromium output");
    assert!(
        output.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 10_000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_sees_the_assessments_and_the_divergence_in_chromium() {
    // Fail early and clearly if there is no browser.
    let browser = chromium();
    let s = scenario().await;
    let web = s.nodes[2].web_url();
    let (register, dialogue, shot) = tokio::task::spawn_blocking(move || {
        let register = run_chromium(&["--dump-dom"], &format!("{web}/"));
        let dialogue = run_chromium(&["--dump-dom"], &format!("{web}/dialogue"));
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let shot = dir.join("web-view.png");
        let _ = std::fs::remove_file(&shot);
        run_chromium(
            &[&format!("--screenshot={}", shot.display())],
            &format!("{web}/"),
        );
        (register, dialogue, shot)
    })
    .await
    .expect("chromium thread");
    let _ = browser;

    // The register, as the browser built it: both assessments, the matrix,
    // and the diverging note with each member's position beside it.
    for text in [
        "Autonomy in nuclear command and control",
        "Jailbreaks of frontier models",
        "Likelihood × severity",
        "Points of divergence",
        "Export controls on advanced chips",
    ] {
        assert!(register.contains(text), "the register lacks {text:?}");
    }
    let aside = &register[register.find("Points of divergence").expect("aside")..];
    for text in [BEIJING, "disagree", WASHINGTON, "agree"] {
        assert!(aside.contains(text), "the divergence lacks {text:?}");
    }
    // The dialogue: the note, its standing, and each member's position and
    // comment side by side.
    for text in [
        "Export controls on advanced chips",
        "divergence",
        BEIJING,
        WASHINGTON,
        "A trade matter, not AI safety.",
        "Compute is the main lever on frontier risk.",
    ] {
        assert!(dialogue.contains(text), "the dialogue lacks {text:?}");
    }
    assert!(
        is_png(&shot),
        "no screenshot at {}: chromium wrote nothing usable",
        shot.display()
    );
    if std::env::var_os("CONCORD_UPDATE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/web-view.png");
        std::fs::copy(&shot, &docs).expect("copy the screenshot into docs/");
    }
}
