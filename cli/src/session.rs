//! Where a command runs: on the store directly when the node is stopped, or
//! through the running node's local API. Either way the same
//! `concord_node::api::execute` carries the request out, so a command does
//! the same thing in both cases, and sled's single-process lock never
//! reaches the user.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use concord_node::ReplicaError;
use concord_node::api::server::{ApiError, ApiFile, IMPORT_PATH, RPC_PATH};
use concord_node::api::{self, Request, Response, proof};
use concord_node::config::DataDir;
use concord_node::replica::Replica;
use concord_node::store::StoreError;

/// How long to wait for a node that holds the store lock to publish its API
/// (it is starting) or release the lock (it is stopping).
const LOCK_WAIT: Duration = Duration::from_secs(10);
const LOCK_POLL: Duration = Duration::from_millis(100);
/// How long one API call may take (an import of a large bundle included).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest API answer read (an export of a large store included).
const MAX_ANSWER: u64 = 1 << 30;

/// An open session with a node.
pub enum Session {
    Local(Box<Replica>),
    Remote(Remote),
}

impl Session {
    /// Connects to the running node, or opens the store if none runs.
    ///
    /// A running node holds the store's lock, so the lock, not `api.json`,
    /// says whether a node runs. If the store opens, none does: any
    /// `api.json` is stale (its node was killed or crashed) and is removed
    /// without contacting whatever now holds its port. If the store is
    /// locked, the address in `api.json` is asked, and believed only if it
    /// proves it holds the token (see [`Remote::call`]).
    pub fn open(dir: &DataDir) -> anyhow::Result<Self> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            let opened = Replica::open(dir);
            let failed = match opened {
                Ok(replica) => {
                    remove_stale(dir);
                    return Ok(Session::Local(Box::new(replica)));
                }
                Err(ReplicaError::Store(StoreError::Locked(_))) => None,
                Err(e) => Some(e),
            };
            let refused = match ApiFile::read(dir.root()) {
                Some(file) => match Remote::connect_to(dir, file) {
                    Ok(remote) => return Ok(Session::Remote(remote)),
                    Err(e) => Some(e),
                },
                None => None,
            };
            if let Some(e) = failed {
                // Not a lock: the store itself cannot be opened, and no
                // node answers for it either.
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot open the node in {}", dir.root().display())));
            }
            if std::time::Instant::now() < deadline {
                std::thread::sleep(LOCK_POLL);
                continue;
            }
            let running = format!("a concord node is running on {}", dir.root().display());
            return Err(match refused {
                Some(e) if e.downcast_ref::<Unproven>().is_some() => e.context(format!(
                    "{running} but does not answer at the address in its api.json"
                )),
                _ => anyhow!(
                    "{running} but its local API does not answer; it may be starting \
                     or stopping: try again in a moment"
                ),
            });
        }
    }

    /// Carries out one request.
    pub fn call(&mut self, request: Request) -> anyhow::Result<Response> {
        match self {
            Session::Local(replica) => Ok(api::execute(replica, request)?),
            Session::Remote(remote) => remote.call(&request),
        }
    }

    /// The local replica, for commands that need the store itself.
    pub fn local(&mut self) -> Option<&mut Replica> {
        match self {
            Session::Local(replica) => Some(replica),
            Session::Remote(_) => None,
        }
    }
}

/// Removes `api.json` once the store has opened: no node holds the lock, so
/// the node that wrote the file is gone (killed, or crashed), and whatever
/// now listens at its address, if anything, is not it and is not asked.
fn remove_stale(dir: &DataDir) {
    let path = ApiFile::path(dir.root());
    if !path.exists() {
        return;
    }
    let left = ApiFile::read(dir.root())
        .map(|f| format!(" (pid {}, API at {})", f.pid, f.address))
        .unwrap_or_default();
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::warn!(
            "removed the stale {}: the node that wrote it{left} no longer runs \
             (the store is not locked); its address was not contacted",
            path.display()
        ),
        Err(e) => tracing::warn!(
            "cannot remove the stale {}: {e}; the node that wrote it{left} no longer runs \
             (the store is not locked); its address was not contacted",
            path.display()
        ),
    }
}

/// Something answered at the API's address without the node's proof: not
/// this node (or a tampered answer). It was sent nothing it could use.
#[derive(Debug)]
pub struct Unproven {
    address: SocketAddr,
    file: PathBuf,
}

impl std::fmt::Display for Unproven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the process answering at {} (named in {}) did not prove that it is this node, \
             so its answer was ignored; the API token was not sent to it",
            self.address,
            self.file.display()
        )
    }
}

impl std::error::Error for Unproven {}

/// The running node's API.
pub struct Remote {
    agent: ureq::Agent,
    address: SocketAddr,
    /// `http://ADDRESS`, to which the route is appended.
    base: String,
    token: String,
    /// The `api.json` the address and token came from.
    file: PathBuf,
}

impl Remote {
    /// The node's API if `api.json` names one that answers with the node's
    /// proof.
    pub fn connect(dir: &DataDir) -> Option<Self> {
        Self::connect_to(dir, ApiFile::read(dir.root())?).ok()
    }

    /// The node's API named in `file`, if it answers with the node's proof.
    pub fn connect_to(dir: &DataDir, file: ApiFile) -> anyhow::Result<Self> {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(2)))
            .timeout_global(Some(CALL_TIMEOUT))
            .build();
        let remote = Self {
            agent: config.into(),
            address: file.address,
            base: format!("http://{}", file.address),
            token: file.token,
            file: ApiFile::path(dir.root()),
        };
        remote.call(&Request::Status)?;
        Ok(remote)
    }

    /// Sends one request: an import as the bundle's bytes on its own route
    /// (the only one that takes a large body), any other as JSON. The token
    /// itself never leaves: the request carries a MAC over a fresh nonce,
    /// and the answer counts only if it carries the node's MAC over that
    /// nonce and the answer itself.
    pub fn call(&self, request: &Request) -> anyhow::Result<Response> {
        let nonce = proof::new_nonce().context("cannot draw a nonce for the API request")?;
        let path = match request {
            Request::Import { .. } => IMPORT_PATH,
            _ => RPC_PATH,
        };
        let post = self.agent.post(&format!("{}{path}", self.base)).header(
            "Authorization",
            &proof::authorization(&self.token, &nonce, path),
        );
        let sent = match request {
            Request::Import { bundle } => post
                .header("Content-Type", "application/octet-stream")
                .send(&bundle[..]),
            other => post.send_json(other),
        };
        let mut answer = sent.with_context(|| {
            format!(
                "the node's API at {} (named in {}) did not answer",
                self.address,
                self.file.display()
            )
        })?;
        let status = answer.status();
        let proven = answer
            .headers()
            .get(proof::PROOF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .context("cannot read the node's answer")?;
        if !proof::check_answer(
            &self.token,
            &nonce,
            status.as_u16(),
            &body,
            proven.as_deref(),
        ) {
            return Err(anyhow::Error::new(Unproven {
                address: self.address,
                file: self.file.clone(),
            }));
        }
        if status.is_success() {
            return serde_json::from_slice(&body).context("the node's answer is malformed");
        }
        let error: ApiError = serde_json::from_slice(&body).unwrap_or_else(|_| ApiError {
            error: format!("the node answered HTTP {status}"),
            causes: Vec::new(),
        });
        // Rebuild the chain so `main` prints it like a local error.
        let mut chain: Vec<String> = std::iter::once(error.error).chain(error.causes).collect();
        let mut err = anyhow!(chain.pop().unwrap_or_default());
        while let Some(outer) = chain.pop() {
            err = err.context(outer);
        }
        Err(err)
    }
}
