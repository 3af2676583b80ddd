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

/// Sends `head` (a request line and headers, no body) on a fresh connection
/// to `addr` and returns everything the node answers until it closes the
/// connection; fails if nothing complete comes within 10 s, as happens when
/// the node waits for a body that never comes.
pub(crate) fn raw_answer(addr: std::net::SocketAddr, head: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(head.as_bytes()).expect("send the head");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no complete answer within 10 s ({e}); got so far: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The start of a POST announcing a `length`-byte JSON body, with
/// `authorization` (a whole header line, or nothing).
fn post_head(addr: std::net::SocketAddr, path: &str, authorization: &str, length: u64) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[test]
fn a_request_without_the_token_gets_401_before_its_body_is_read() {
    use concord_node::api::server::{ApiFile, IMPORT_PATH, RPC_PATH};
    let fed = Federation::new(&["A"], &[]);
    let a = support::process::Proc::start(fed.nodes[0].dir(), &[]).expect("A starts");
    let file = ApiFile::read(a.dir()).expect("api.json");
    // 256 MiB announced, none sent: an answer proves the body was not awaited.
    for path in [RPC_PATH, IMPORT_PATH] {
        // A proven request's MAC made with another token fails the same way.
        let wrong_mac = concord_node::api::proof::authorization(&"0".repeat(64), &[1; 32], path);
        for authorization in [
            String::new(),
            "Authorization: Bearer not-the-token\r\n".to_string(),
            format!("Authorization: {wrong_mac}\r\n"),
        ] {
            let head = post_head(file.address, path, &authorization, 256 << 20);
            let answer = raw_answer(file.address, &head);
            assert!(
                answer.starts_with("HTTP/1.1 401"),
                "{path} {authorization:?}: {answer}"
            );
            assert!(answer.contains("missing or wrong API token"), "{answer}");
        }
    }
    // The node keeps serving its own CLI.
    assert_eq!(a.api().status().envelopes, 0);
}

/// Text that does not compress: a bundle of it is as large as it looks.
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'a' + ((x >> 33) % 26) as u8)
        })
        .collect()
}

#[test]
fn a_body_over_the_limit_gets_413_and_a_large_bundle_still_imports() {
    use concord_node::api::server::{ApiFile, IMPORT_PATH, MAX_REQUEST, RPC_PATH};
    use concord_node::api::{AssessmentInput, Request, Response};
    let fed = Federation::new(&["A", "B"], &[]);
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);

    // B writes a bundle larger than any other request may be.
    let proc_b = support::process::Proc::start(b.dir(), &[]).expect("B starts");
    let api_b = proc_b.api();
    for chunk in 0..3u64 {
        let requests = (0..20u64)
            .map(|i| {
                Request::AddAssessment(AssessmentInput {
                    category: "algorithmic-bias".into(),
                    title: format!("large {chunk}-{i}"),
                    summary: noise(chunk * 100 + i, 18_000),
                    status: "open".into(),
                    ..AssessmentInput::default()
                })
            })
            .collect();
        match api_b.call(&Request::Batch { requests }) {
            Ok(Response::Batch(_)) => {}
            other => panic!("B writes: {other:?}"),
        }
    }
    let bundle = match api_b.call(&Request::Export { since: Vec::new() }) {
        Ok(Response::Exported(e)) => e.bundle,
        other => panic!("export: {other:?}"),
    };
    assert!(bundle.len() > MAX_REQUEST, "{} bytes", bundle.len());
    let path = b.dir().join("large.bundle");
    std::fs::write(&path, &bundle).expect("write the bundle");
    assert_eq!(proc_b.stop(), Some(0));

    let proc_a = support::process::Proc::start(a.dir(), &[]).expect("A starts");
    let file = ApiFile::read(a.dir()).expect("api.json");
    let authorization = format!("Authorization: Bearer {}\r\n", file.token);
    // Announced over the limit: refused at once, naming the limit.
    let answer = raw_answer(
        file.address,
        &post_head(file.address, RPC_PATH, &authorization, 2 << 20),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("over the limit of 1 MiB for POST /v1/rpc"),
        "{answer}"
    );
    let answer = raw_answer(
        file.address,
        &post_head(file.address, IMPORT_PATH, &authorization, 257 << 20),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("256 MiB"), "{answer}");

    // The CLI imports the large bundle through the running node.
    a.ok(&["import", support::path_str(&path)]);
    assert_eq!(proc_a.api().status().envelopes, 60);
}

#[test]
fn a_nested_batch_and_a_megabyte_id_are_refused_with_short_messages() {
    use concord_node::api::server::{ApiFile, RPC_PATH};
    use concord_node::api::{AssessmentInput, Request};
    let fed = Federation::new(&["A"], &[]);
    let a = support::process::Proc::start(fed.nodes[0].dir(), &[]).expect("A starts");
    let api = a.api();
    let add = Request::AddAssessment(AssessmentInput {
        category: "algorithmic-bias".into(),
        title: "inside a nested batch".into(),
        status: "open".into(),
        ..AssessmentInput::default()
    });
    let nested = Request::Batch {
        requests: vec![Request::Batch {
            requests: vec![add.clone()],
        }],
    };
    let err = api.call(&nested).expect_err("a nested batch is refused");
    assert!(err.contains("batches do not nest"), "{err}");
    assert_eq!(api.status().envelopes, 0, "nothing was written");

    // A megabyte id: refused, and the message does not carry it.
    let huge = format!("ra-{}", "x".repeat(1_000_000));
    for request in [
        Request::ShowAssessment { id: huge.clone() },
        Request::History { id: huge.clone() },
        Request::Batch {
            requests: vec![Request::Comment {
                id: huge.clone(),
                text: "hi".into(),
            }],
        },
        Request::ListAssessments {
            category: Some(huge.clone()),
            status: None,
        },
    ] {
        let err = api.call(&request).expect_err("refused");
        assert!(
            err.len() < 300,
            "{} bytes: {}",
            err.len(),
            err.chars().take(300).collect::<String>()
        );
        assert!(err.contains("1000003 bytes"), "{err}");
    }
    // Strings within the id limit but still user-provided are clipped too.
    let err = api
        .call(&Request::ListAssessments {
            category: None,
            status: Some("s".repeat(1_000_000)),
        })
        .expect_err("unknown status");
    assert!(err.len() < 300, "{} bytes", err.len());
    // So is what the JSON parser quotes back.
    let file = ApiFile::read(a.dir()).expect("api.json");
    let body = format!("{{\"op\": \"{}\"}}", "y".repeat(1_000_000));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut answer = agent
        .post(&format!("http://{}{RPC_PATH}", file.address))
        .header("Authorization", &format!("Bearer {}", file.token))
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .expect("an answer");
    assert_eq!(answer.status().as_u16(), 400);
    let text = answer.body_mut().read_to_string().expect("body");
    assert!(text.len() < 400, "{} bytes", text.len());
    assert!(text.contains("malformed request"), "{text}");
}
