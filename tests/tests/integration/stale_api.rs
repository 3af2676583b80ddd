//! A stale `api.json` after a crash: another local user binds the port it
//! names and answers the CLI. The CLI must not hand it the token nor believe
//! its answers, and must remove the stale file. Whether a node runs is the
//! store's lock to say; while one does, the address must prove itself.

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
    /// Binds `addr` (port 0: one the OS picks); answers `status` with `status` and anything else with
    /// `other`.
    fn bind(addr: SocketAddr, status: Value, other: Value) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("bound address");
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
            && verify.stderr.contains(&format!("pid {}", file.pid))
            && verify.stderr.contains("no longer runs"),
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

    // The store was not locked, so no node ran: the CLI asked the squatter
    // nothing at all (let alone with the token).
    assert_eq!(squatter.heads(), Vec::<String>::new());
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

#[test]
fn while_its_node_runs_the_cli_refuses_an_address_that_does_not_prove_itself() {
    let fed = Federation::new(&["A"], &[]);
    let a = &fed.nodes[0];
    let node = Proc::start(a.dir(), &[]).expect("A starts");
    let forged_status = forged(&node, &Request::Status);
    let real = ApiFile::read(a.dir()).expect("api.json");
    // api.json names a port some other process holds (the node is fine).
    let squatter = Squatter::bind(
        "127.0.0.1:0".parse().expect("addr"),
        forged_status.clone(),
        forged_status,
    );
    ApiFile {
        address: squatter.addr,
        ..real.clone()
    }
    .write(a.dir())
    .expect("write api.json");

    // The store is locked, so the file is not stale: nothing is removed,
    // nothing believed, the token not sent.
    let stderr = a.fails(1, &["status"]);
    assert!(
        stderr.contains("a concord node is running")
            && stderr.contains(&format!("answering at {}", squatter.addr))
            && stderr.contains("did not prove that it is this node"),
        "{stderr}"
    );
    assert!(!stderr.contains(&FORGED_COUNT.to_string()), "{stderr}");
    assert!(ApiFile::path(a.dir()).exists());
    let heads = squatter.heads();
    assert!(!heads.is_empty(), "the CLI asked the squatter");
    assert!(heads.iter().all(|h| !h.contains(&real.token)), "{heads:?}");

    // With the node's own file back, the CLI reaches it.
    real.write(a.dir()).expect("restore api.json");
    assert_eq!(a.json(&["status"])["running"], true);
    assert_eq!(node.stop(), Some(0));
}
