//! The read-only web view over HTTP: every page, the register's filters, an
//! item's history, the network page, server-sent events, the attestation
//! banner, and no route that writes. Live nodes in this process on
//! 127.0.0.1 with OS-chosen ports; `concord run` as a real process for the
//! flags.

use std::time::Duration;

use concord_node::api::{AssessmentInput, NoteInput, Request, Response};
use support::live::{LiveNode, federation, wait_converged, wait_until};

use super::daemon::{Daemon, wait_for};

/// The two members and the observer of the scenario below.
pub(crate) const BEIJING: &str = "Beijing Institute for AI Governance";
pub(crate) const WASHINGTON: &str = "Washington Center for AI Policy";
pub(crate) const OBSERVER: &str = "UN Observer Mission";

/// What the scenario wrote.
pub(crate) struct Scenario {
    pub nodes: Vec<LiveNode>,
    pub nuclear: String,
    pub jailbreaks: String,
    pub chips: String,
}

/// Two members and an observer, all running; the members write two
/// assessments and a note on which they diverge; all hold the 5 changes.
pub(crate) async fn scenario() -> Scenario {
    let (mut nodes, _) = federation(&[BEIJING, WASHINGTON], &[OBSERVER]);
    let mut seen = Vec::new();
    for node in &mut nodes {
        node.start(seen.clone()).await;
        seen.extend(node.addresses());
    }
    let written = |r: Response| match r {
        Response::Written(w) => w.id,
        other => panic!("unexpected {other:?}"),
    };
    let nuclear = written(
        nodes[0]
            .call(Request::AddAssessment(AssessmentInput {
                category: "international-interaction".into(),
                title: "Autonomy in nuclear command and control".into(),
                summary: "AI in early warning compresses decision time.".into(),
                likelihood: Some(3),
                severity: Some(5),
                mitigations: vec!["Keep a human decision on every launch".into()],
                status: "open".into(),
            }))
            .await,
    );
    let jailbreaks = written(
        nodes[1]
            .call(Request::AddAssessment(AssessmentInput {
                category: "model-vulnerabilities".into(),
                title: "Jailbreaks of frontier models".into(),
                summary: "Safety training can be bypassed.".into(),
                likelihood: Some(4),
                severity: Some(3),
                mitigations: Vec::new(),
                status: "draft".into(),
            }))
            .await,
    );
    let all: Vec<&LiveNode> = nodes.iter().collect();
    wait_converged(&all, 2).await;
    let chips = written(
        nodes[0]
            .call(Request::AddNote(NoteInput {
                topic: "Export controls on advanced chips".into(),
                body: "Whether export controls belong on the agenda of AI risk talks.".into(),
                kind: "divergence".into(),
                round: Some("intergovernmental".into()),
                assessments: vec![jailbreaks.clone()],
            }))
            .await,
    );
    wait_converged(&all, 3).await;
    for (node, position, comment) in [
        (0, "disagree", "A trade matter, not AI safety."),
        (1, "agree", "Compute is the main lever on frontier risk."),
    ] {
        nodes[node]
            .call(Request::Position {
                id: chips.clone(),
                position: position.into(),
                comment: comment.into(),
            })
            .await;
    }
    wait_converged(&all, 5).await;
    Scenario {
        nodes,
        nuclear,
        jailbreaks,
        chips,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// `METHOD url` → (status, body), off the async runtime.
async fn fetch(method: &'static str, url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent = agent();
        let answer = match method {
            "GET" => agent.get(&url).call(),
            "HEAD" => agent.head(&url).call(),
            "DELETE" => agent.delete(&url).call(),
            "POST" => agent.post(&url).send("x=1"),
            "PUT" => agent.put(&url).send("x=1"),
            "PATCH" => agent.patch(&url).send("x=1"),
            other => panic!("no such method {other}"),
        };
        let mut answer = answer.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = answer.status().as_u16();
        let body = answer.body_mut().read_to_string().unwrap_or_default();
        (status, body)
    })
    .await
    .expect("request thread")
}

async fn page(url: String) -> String {
    let (status, body) = fetch("GET", url.clone()).await;
    assert_eq!(status, 200, "GET {url}:\n{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_network_and_the_filters_narrow_the_register() {
    let s = scenario().await;
    let web = s.nodes[2].web_url();
    let washington_id = s.nodes[1].status().await.node_id;

    let register = page(format!("{web}/")).await;
    for text in [
        "Autonomy in nuclear command and control",
        "Jailbreaks of frontier models",
        "Likelihood × severity",
        "Points of divergence",
        "Export controls on advanced chips",
        "Not yet attested",
    ] {
        assert!(register.contains(text), "register lacks {text:?}");
    }
    let only = |body: &str, yes: &str, no: &str| {
        assert!(body.contains(yes), "filtered register lacks {yes:?}");
        assert!(!body.contains(no), "filtered register still shows {no:?}");
    };
    let nuclear = "Autonomy in nuclear command and control";
    let jailbreaks = "Jailbreaks of frontier models";
    only(
        &page(format!("{web}/?category=international-interaction")).await,
        nuclear,
        jailbreaks,
    );
    only(
        &page(format!("{web}/?status=draft")).await,
        jailbreaks,
        nuclear,
    );
    only(
        &page(format!("{web}/?institution={washington_id}")).await,
        jailbreaks,
        nuclear,
    );
    only(
        &page(format!("{web}/?category=&status=open&institution=")).await,
        nuclear,
        jailbreaks,
    );
    for (query, expected) in [
        ("status=maybe", "unknown status \"maybe\""),
        ("category=astrology", "unknown category \"astrology\""),
        ("institution=12D3KooWnobody", "unknown institution"),
    ] {
        let (status, body) = fetch("GET", format!("{web}/?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            body.contains(&expected.replace('"', "&quot;")),
            "{query}: {body}"
        );
    }

    let dialogue = page(format!("{web}/dialogue")).await;
    for text in [
        "Export controls on advanced chips",
        "divergence",
        BEIJING,
        WASHINGTON,
        "pos-disagree",
        "pos-agree",
        "A trade matter, not AI safety.",
        "Compute is the main lever on frontier risk.",
    ] {
        assert!(dialogue.contains(text), "dialogue lacks {text:?}");
    }
    let (_, other_round) = fetch("GET", format!("{web}/dialogue?round=track-ii")).await;
    assert!(!other_round.contains("Export controls"), "the round filter");

    let item = page(format!("{web}/item/{}", s.jailbreaks)).await;
    assert!(item.contains("History") && item.contains("✓ verified"));
    assert!(item.contains(WASHINGTON) && item.contains("add assessment"));
    let note = page(format!("{web}/item/{}", s.chips)).await;
    // Created by Beijing, then each member's position: three changes.
    assert_eq!(note.matches("✓ verified").count(), 3, "{note}");
    assert!(note.contains("positions/"));
    let (status, body) = fetch("GET", format!("{web}/item/ra-nothere0")).await;
    assert_eq!(status, 404);
    assert!(body.contains("no item with id"), "{body}");

    let network = page(format!("{web}/network")).await;
    let status = s.nodes[2].status().await;
    for text in [
        BEIJING,
        WASHINGTON,
        OBSERVER,
        "observer",
        "member",
        "connected",
    ] {
        assert!(network.contains(text), "network page lacks {text:?}");
    }
    for head in &status.heads {
        assert!(
            network.contains(head.as_str()),
            "network page lacks head {head}"
        );
    }
    assert_eq!(status.web.as_deref(), Some(format!("{web}/").as_str()));

    let (status, body) = fetch("HEAD", format!("{web}/")).await;
    assert_eq!((status, body.as_str()), (200, ""));
    let (status, _) = fetch("GET", format!("{web}/no/such/page")).await;
    assert_eq!(status, 404);
    let _ = s.nuclear;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_writes_every_other_method_answers_405() {
    let s = scenario().await;
    let web = s.nodes[2].web_url();
    let before = s.nodes[2].status().await;
    let routes = [
        "/".to_string(),
        "/dialogue".into(),
        format!("/item/{}", s.nuclear),
        "/network".into(),
        "/events".into(),
        "/live.js".into(),
        "/v1/rpc".into(),
        "/anything/else".into(),
    ];
    for route in &routes {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let (status, _) = fetch(method, format!("{web}{route}")).await;
            assert_eq!(status, 405, "{method} {route}");
        }
    }
    let after = s.nodes[2].status().await;
    assert_eq!(after.envelopes, before.envelopes);
    assert_eq!(after.heads, before.heads);
}

/// Reads server-sent events from `url` until one has a `version` above
/// `above`; returns it.
fn next_version(reader: &mut impl std::io::BufRead, above: u64) -> u64 {
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read the event stream");
        assert!(n > 0, "the event stream ended");
        if let Some(v) = line.trim().strip_prefix("data:") {
            let v: u64 = v.trim().parse().expect("a version number");
            if v > above {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_announce_new_changes_and_the_banner_names_the_attested_checkpoint() {
    let s = scenario().await;
    let web = s.nodes[2].web_url();
    // Subscribe on a thread that reports each new version it sees.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(16);
    let events = format!("{web}/events");
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut answer = agent.get(&events).call().expect("events");
        assert_eq!(
            answer.headers().get("content-type").map(|v| v.as_bytes()),
            Some(b"text/event-stream".as_slice())
        );
        let mut reader = std::io::BufReader::new(answer.body_mut().as_reader());
        let mut seen = 0;
        loop {
            seen = next_version(&mut reader, seen);
            if tx.blocking_send(seen).is_err() {
                return;
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the current version at once")
        .expect("a version");
    let page_version = page(format!("{web}/")).await;
    assert!(page_version.contains("name=\"concord-version\""));

    // A member writes; the observer's stream announces a newer version.
    s.nodes[0].write("Written while the page is open").await;
    let next = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a new version after a change")
        .expect("a version");
    assert!(next > first);
    wait_until("the observer shows the new assessment", || async {
        page(format!("{web}/"))
            .await
            .contains("Written while the page is open")
    })
    .await;

    // One signature is not a quorum of two; the second one is.
    let sign = Request::SignCheckpoint { checkpoint: None };
    let id = match s.nodes[0].call(sign.clone()).await {
        Response::Written(w) => w.id,
        other => panic!("unexpected {other:?}"),
    };
    let all: Vec<&LiveNode> = s.nodes.iter().collect();
    wait_converged(&all, 7).await;
    let register = page(format!("{web}/")).await;
    assert!(register.contains("Not yet attested"), "one of two signed");
    match s.nodes[1].call(sign).await {
        Response::Written(w) => assert_eq!(w.id, id, "the second member co-signs"),
        other => panic!("unexpected {other:?}"),
    }
    wait_converged(&all, 8).await;
    let register = page(format!("{web}/")).await;
    assert!(register.contains("Attested state"), "{register}");
    assert!(register.contains(&id));
    let network = page(format!("{web}/network")).await;
    assert!(network.contains(&id) && network.contains("attested"));
}

#[test]
fn concord_run_serves_the_web_view_where_told_and_not_with_no_web() {
    let fed = support::Federation::new(&["A"], &["O"]);
    let (a, o) = (&fed.nodes[0], &fed.nodes[1]);
    support::add_assessment(a, "malicious-use", "Seen through the web");
    o.import(&a.export("a.bundle"));
    let daemon = Daemon::start(o, &["--web", "127.0.0.1:0"]);
    let status = o.json(&["status"]);
    let url = status["web"]
        .as_str()
        .expect("status names the web view")
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(o.ok(&["status"]).contains(&format!("web view:   {url}")));
    let agent = agent();
    let mut answer = agent.get(&url).call().expect("GET /");
    assert_eq!(answer.status().as_u16(), 200);
    let body = answer.body_mut().read_to_string().expect("body");
    assert!(body.contains("Seen through the web"));
    assert_eq!(daemon.stop(), Some(0));

    let daemon = Daemon::start(a, &["--no-web"]);
    assert_eq!(a.json(&["status"])["web"], serde_json::Value::Null);
    assert_eq!(daemon.stop(), Some(0));
    wait_for("the store to be released", || {
        a.run(&["status", "--json"]).code == Some(0)
    });
}

#[test]
fn demo_keep_running_prints_the_observers_web_view_and_stops_on_ctrl_c() {
    use std::io::BufRead;
    use std::process::{Child, Command, Stdio};
    /// Kills the demo if the test fails before it stops it.
    struct Demo(Child);
    impl Drop for Demo {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut demo = Demo(
        Command::new(support::concord_bin())
            .args(["demo", "--keep-running"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the demo"),
    );
    let child = &mut demo.0;
    // Read stdout on a thread until the URL after the observer's heading.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut heading = false;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line.contains("Open the observer's web view") {
                heading = true;
            } else if heading && line.trim().starts_with("http://") {
                let _ = tx.send(line.trim().to_string());
                heading = false;
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("the demo printed no web view URL: {e}"));
    let mut answer = agent().get(&url).call().expect("GET the observer's page");
    let body = answer.body_mut().read_to_string().expect("body");
    for text in [
        "US-China-ASEAN Track II on AI risk",
        "UN Observer Mission",
        "Autonomy in nuclear command and control",
        "Export controls on advanced chips",
        "Attested state",
    ] {
        assert!(body.contains(text), "the demo's page lacks {text:?}");
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    wait_for("the demo to stop on Ctrl-C", || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    assert_eq!(child.wait().expect("exit").code(), Some(0));
}

#[test]
fn a_taken_web_port_fails_the_start_and_names_the_address() {
    let fed = support::Federation::new(&["A"], &[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let a = &fed.nodes[0];
    a.refuses(
        &["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--web", &addr],
        &format!("cannot serve the web view on {addr}"),
    );
    assert!(!a.dir().join("api.json").exists(), "nothing was published");
    a.fails(2, &["run", "--web", &addr, "--no-web"]);
}

/// `GET /` with `Host: host` on a raw connection; (status, whole answer).
fn get_with_host(addr: &str, host: &str) -> (u16, String) {
    let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = super::daemon::raw_answer(addr.parse().expect("address"), &head);
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer}"));
    (status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_answers_only_to_its_own_host_names() {
    let (mut nodes, _) = federation(&[BEIJING], &[]);
    nodes[0].start(Vec::new()).await;
    nodes[0].write("Seen only under the right name").await;
    let addr = nodes[0].web_url().trim_start_matches("http://").to_string();
    let port = addr.rsplit(':').next().expect("a port").to_string();
    let long = format!("{}.example", "a".repeat(10_000));
    let results = tokio::task::spawn_blocking(move || {
        let served: Vec<_> = [
            addr.clone(),
            "127.0.0.1".to_string(),
            "localhost".into(),
            format!("localhost:{port}"),
            format!("LOCALHOST:{port}"),
            format!("[::1]:{port}"),
        ]
        .into_iter()
        .map(|host| (host.clone(), get_with_host(&addr, &host)))
        .collect();
        let refused: Vec<_> = [
            "evil.example".to_string(),
            format!("evil.example:{port}"),
            format!("user@127.0.0.1:{port}"),
            long,
        ]
        .into_iter()
        .map(|host| (host.clone(), get_with_host(&addr, &host)))
        .collect();
        (served, refused)
    })
    .await
    .expect("requests");
    let (served, refused) = results;
    for (host, (status, answer)) in served {
        assert_eq!(status, 200, "Host: {host}");
        assert!(answer.contains("Seen only under the right name"), "{host}");
    }
    for (host, (status, answer)) in refused {
        assert_eq!(status, 421, "Host: {host}: {answer}");
        assert!(
            !answer.contains("Seen only under"),
            "{host}: the register leaked"
        );
        assert!(answer.len() < 1_000, "{} bytes", answer.len());
        let shown = host.chars().take(30).collect::<String>();
        assert!(
            answer.contains(&shown),
            "the refusal names the host: {answer}"
        );
    }

    // An id of 60,000 bytes in a page's path: refused, and not echoed whole.
    let long_id = format!("ra-{}", "z".repeat(60_000));
    let (status, body) = fetch("GET", format!("{}/item/{long_id}", nodes[0].web_url())).await;
    let start = &body[..body.len().min(500)];
    assert_eq!(status, 404, "{start}");
    assert!(body.contains("is too long"), "{start}");
    assert!(!body.contains(&long_id), "the page echoes the whole id");
}

#[test]
fn concord_run_serves_the_web_view_under_the_configured_host_names() {
    let fed = support::Federation::new(&["A"], &[]);
    let a = &fed.nodes[0];
    let config = a.dir().join("concord.toml");
    let text = std::fs::read_to_string(&config).expect("concord.toml");
    let text = text.replacen(
        "[web]\n",
        "[web]\nhosts = [\"Concord.Test\", \"10.1.2.3\"]\n",
        1,
    );
    std::fs::write(&config, text).expect("write concord.toml");
    let daemon = Daemon::start(a, &["--web", "127.0.0.1:0"]);
    let url = a.json(&["status"])["web"]
        .as_str()
        .expect("status names the web view")
        .to_string();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    for host in ["concord.test", "concord.test:443", "10.1.2.3", &addr] {
        assert_eq!(get_with_host(&addr, host).0, 200, "Host: {host}");
    }
    let (status, answer) = get_with_host(&addr, "other.test");
    assert_eq!(status, 421, "{answer}");
    assert!(answer.contains("other.test") && answer.contains("[web] hosts"));
    assert_eq!(daemon.stop(), Some(0));
}
