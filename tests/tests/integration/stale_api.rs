//! A stale `api.json` after a crash: another local user binds the port it
//! names and answers the CLI. The CLI must not hand it the token nor believe
//! its answers, and must remove the stale file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use concord_node::api::server::ApiFile;
use concord_node::api::{Request, Response};
use serde_json::Value;
use support::Federation;
use support::process::Proc;

/// Envelope count no real store here holds: printed, it is the forgery.
const FORGED_COUNT: u64 = 424_242;

/// A fake API on a port: records the head of every request it gets and
/// answers each one HTTP 200 with a forged answer to its `op`.
struct Squatter {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Squatter {
    /// Binds `addr`; answers `status` with `status` and anything else with
    /// `other`.
    fn bind(addr: SocketAddr, status: Value, other: Value) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (heads, stop) = (heads.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    answer(stream, &heads, &status, &other);
                }
            })
        };
        Self {
            addr,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request, records its head and answers with a forgery.
fn answer(stream: TcpStream, heads: &Mutex<Vec<String>>, status: &Value, other: &Value) {
    let mut reader = BufReader::new(&stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    heads.lock().expect("heads").push(head);
    let op = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["op"].as_str().map(str::to_owned));
    let forged = if op.as_deref() == Some("status") {
        status
    } else {
        other
    };
    let forged = forged.to_string();
    let _ = (&stream).write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{forged}",
            forged.len()
        )
        .as_bytes(),
    );
}

/// The node's real answer to `request`, as JSON, with its envelope count
/// replaced by [`FORGED_COUNT`].
fn forged(node: &Proc, request: &Request) -> Value {
    let answer: Response = node.api().call(request).expect("answer");
    let mut json = serde_json::to_value(answer).expect("json");
    json["value"]["envelopes"] = FORGED_COUNT.into();
    json
}

#[test]
fn after_a_crash_the_cli_neither_sends_the_token_to_the_old_port_nor_believes_it() {
    let fed = Federation::new(&["A"], &[]);
    let a = &fed.nodes[0];
    support::add_assessment(a, "malicious-use", "Before the crash");
    let node = Proc::start(a.dir(), &[]).expect("A starts");
    let forged_status = forged(&node, &Request::Status);
    let forged_audit = forged(&node, &Request::Verify);
    assert_eq!(forged_audit["value"]["ok"], true);
    let file = ApiFile::read(a.dir()).expect("api.json");
    node.kill();
    assert!(ApiFile::path(a.dir()).exists(), "SIGKILL leaves api.json");

    // Another user takes the port and answers everything with "all is well".
    let squatter = Squatter::bind(file.address, forged_status, forged_audit);
    let verify = a.run(&["verify", "--json"]);
    assert_eq!(verify.code, Some(0), "{verify:?}");
    let audit: Value = serde_json::from_str(&verify.stdout).expect("audit");
    assert_eq!(audit["envelopes"], 1, "the store's own audit: {audit}");
    assert!(
        verify.stderr.contains("removed the stale")
            && verify.stderr.contains("did not prove that it is this node"),
        "{}",
        verify.stderr
    );
    assert!(
        !ApiFile::path(a.dir()).exists(),
        "the stale api.json is removed"
    );

    // The same with `status`, the file put back as the crash left it.
    file.write(a.dir()).expect("put api.json back");
    let status = a.json(&["status"]);
    assert_eq!(status["running"], false, "{status}");
    assert_eq!(status["envelopes"], 1, "{status}");
    assert!(!ApiFile::path(a.dir()).exists());

    // The CLI did talk to the squatter, and never gave it the token.
    let heads = squatter.heads();
    assert!(heads.len() >= 2, "the CLI asked the squatter: {heads:?}");
    for head in &heads {
        assert!(!head.contains(&file.token), "the token leaked: {head}");
        assert!(!head.contains("Bearer"), "{head}");
    }
    drop(squatter);

    // A restarted node writes a fresh file, and the CLI uses its API.
    let node = Proc::start(a.dir(), &[]).expect("A restarts");
    let status = a.json(&["status"]);
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["envelopes"], 1, "{status}");
    let verify = a.run(&["verify", "--json"]);
    assert_eq!(verify.code, Some(0), "{verify:?}");
    assert!(verify.stderr.is_empty(), "{}", verify.stderr);
    assert_eq!(node.stop(), Some(0));
}
