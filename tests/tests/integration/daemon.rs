//! The CLI against running nodes: `concord run` as a real process, every
//! command through its local API, and a clean stop on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Federation, Node, concord_bin, path_str};

/// A `concord run` process, stopped with SIGTERM (or killed) when dropped.
pub(crate) struct Daemon {
    child: Child,
}

impl Daemon {
    pub(crate) fn start(node: &Node, extra: &[&str]) -> Self {
        Self::start_with_env(node, extra, &[])
    }

    /// Starts it with `env` set (e.g. injected faults).
    pub(crate) fn start_with_env(node: &Node, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let child = Command::new(concord_bin())
            .arg("--data-dir")
            .arg(node.dir())
            .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn concord run");
        let daemon = Self { child };
        wait_for(&format!("{} to serve its API", node.name), || {
            let run = node.run(&["status", "--json"]);
            run.code == Some(0)
                && serde_json::from_str::<Value>(&run.stdout).is_ok_and(|s| s["running"] == true)
        });
        daemon
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub(crate) fn stop(mut self) -> Option<i32> {
        support::process::sigterm_and_wait(&mut self.child, Duration::from_secs(20))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_cli_works_against_a_running_node_and_sigterm_stops_it_cleanly() {
    let fed = Federation::new(&["A", "B"], &[]);
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
    let daemon_a = Daemon::start(a, &[]);
    assert!(a.dir().join("api.json").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.dir().join("api.json"))
            .expect("api.json")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Writes and reads go through the API while the store is locked.
    let id = support::add_assessment(a, "malicious-use", "Written through the API");
    let list = a.json(&["assess", "list"]);
    assert_eq!(list[0]["id"], id.as_str());
    let note = a.json(&[
        "note",
        "add",
        "--topic",
        "t",
        "--body",
        "b",
        "--assessment",
        &id,
    ])["id"]
        .as_str()
        .expect("id")
        .to_string();
    a.ok(&["note", "position", &note, "agree"]);
    let status = a.json(&["status"]);
    assert_eq!(status["running"], true);
    assert_eq!(status["envelopes"], 3);
    let listen = status["listen"][0]
        .as_str()
        .expect("a listen address")
        .to_string();
    let peers = a.json(&["peers"]);
    let entry_b = peers
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["name"] == "B")
        .expect("B")
        .clone();
    assert_eq!(entry_b["connected"], false);

    // B starts, bootstraps from A and catches up; both see the connection.
    let bootstrap = format!("{listen}/p2p/{}", a.node_id());
    let daemon_b = Daemon::start(b, &["--bootstrap", &bootstrap]);
    wait_for("B to catch up", || b.json(&["status"])["envelopes"] == 3);
    wait_for("A to see B connected with nothing lacking", || {
        let peers = a.json(&["peers"]);
        peers.as_array().expect("peers").iter().any(|p| {
            p["name"] == "B" && p["connected"] == true && p["they_lack"] == 0 && p["we_lack"] == 0
        })
    });
    let shown = b.json(&["note", "show", &note]);
    let of_a = shown["positions"]
        .as_array()
        .expect("positions")
        .iter()
        .find(|p| p["institution"]["name"] == "A")
        .expect("A's position")
        .clone();
    assert_eq!(of_a["position"], "agree");
    let text = a.ok(&["status"]);
    assert!(text.contains("connected:  B"), "{text}");

    // A clean stop: exit 0, API file gone, the store readable without it.
    assert_eq!(daemon_a.stop(), Some(0));
    assert!(!a.dir().join("api.json").exists());
    let status = a.json(&["status"]);
    assert_eq!(status["running"], false);
    assert_eq!(status["envelopes"], 3);
    assert_eq!(
        a.json(&["assess", "show", &id])["title"],
        "Written through the API"
    );
    let audit = a.json(&["verify"]);
    assert_eq!(audit["ok"], true);
    assert_eq!(daemon_b.stop(), Some(0));
}

#[test]
fn run_refuses_bad_flags_and_a_second_instance() {
    let fed = Federation::new(&["A"], &[]);
    let a = &fed.nodes[0];
    a.refuses(
        &["run", "--listen", "not-an-address"],
        "is not a libp2p multiaddr",
    );
    a.refuses(
        &[
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/1",
        ],
        "must end in /p2p/",
    );
    a.refuses(
        &[
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "0.0.0.0:0",
        ],
        "loopback only",
    );
    let daemon = Daemon::start(a, &[]);
    a.refuses(
        &["run", "--listen", "/ip4/127.0.0.1/tcp/0"],
        "already running",
    );
    // Network changes need the node stopped.
    a.refuses(&["network", "join", path_str(&fed.genesis)], "stop it");
    assert_eq!(daemon.stop(), Some(0));
    let lonely = Node::init("Lonely");
    lonely.refuses(
        &["run", "--listen", "/ip4/127.0.0.1/tcp/0"],
        "has not joined a network",
    );
}

/// A panic while answering one request fails that request alone. (A signed
/// year-10000 time once panicked the node loop on the first read, closing
/// its peer, API and web listeners for good.) The panic is injected right
/// after each `AddAssessment` has been stored, so the node must also reload
/// its replica from the store before it serves again.
#[test]
fn a_panic_in_one_request_fails_it_alone_and_the_node_serves_on() {
    let fed = Federation::new(&["A", "B"], &[]);
    let a = &fed.nodes[0];
    let daemon = Daemon::start_with_env(
        a,
        &["--web", "127.0.0.1:0"],
        &[("CONCORD_FAULTS", "panic=AddAssessment")],
    );
    let add = |title: &str| {
        a.refuses(
            &[
                "assess",
                "add",
                "--category",
                "malicious-use",
                "--title",
                title,
            ],
            "the node failed while answering this request",
        )
    };
    add("Stored, then the node panicked");
    // The node still answers, and shows what the store holds.
    let status = a.json(&["status"]);
    assert_eq!(status["running"], true);
    let list = a.json(&["assess", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["title"], "Stored, then the node panicked");
    // Again: every panic is contained, not only the first.
    add("A second one");
    assert_eq!(
        a.json(&["assess", "list"]).as_array().map(Vec::len),
        Some(2)
    );
    // Other writes and the web view are untouched.
    let note = a.json(&["note", "add", "--topic", "Still writing", "--body", "b"]);
    assert!(note["id"].as_str().is_some(), "{note}");
    let url = status["web"].as_str().expect("the web view's address");
    let mut page = ureq::get(url).call().expect("GET /");
    assert_eq!(page.status().as_u16(), 200);
    let body = page.body_mut().read_to_string().expect("the page");
    assert!(body.contains("A second one"), "{body}");
    assert_eq!(daemon.stop(), Some(0));
}
