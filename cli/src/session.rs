//! Where a command runs: on the store directly when the node is stopped, or
//! through the running node's local API. Either way the same
//! `concord_node::api::execute` carries the request out, so a command does
//! the same thing in both cases, and sled's single-process lock never
//! reaches the user.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use concord_node::ReplicaError;
use concord_node::api::server::{ApiError, ApiFile, IMPORT_PATH, RPC_PATH};
use concord_node::api::{self, Request, Response};
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
    pub fn open(dir: &DataDir) -> anyhow::Result<Self> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            if let Some(remote) = Remote::connect(dir) {
                return Ok(Session::Remote(remote));
            }
            match Replica::open(dir) {
                Ok(replica) => return Ok(Session::Local(Box::new(replica))),
                Err(ReplicaError::Store(StoreError::Locked(_)))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(LOCK_POLL);
                }
                Err(ReplicaError::Store(StoreError::Locked(_))) => {
                    return Err(anyhow!(
                        "a concord node is running on {} but its local API does not answer; \
                         it may be starting or stopping: try again in a moment",
                        dir.root().display()
                    ));
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("cannot open the node in {}", dir.root().display())));
                }
            }
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

/// The running node's API.
pub struct Remote {
    agent: ureq::Agent,
    /// `http://ADDRESS`, to which the route is appended.
    base: String,
    token: String,
}

impl Remote {
    /// The node's API if `api.json` names one that answers with our token.
    pub fn connect(dir: &DataDir) -> Option<Self> {
        let file = ApiFile::read(dir.root())?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(2)))
            .timeout_global(Some(CALL_TIMEOUT))
            .build();
        let remote = Self {
            agent: config.into(),
            base: format!("http://{}", file.address),
            token: file.token,
        };
        // A stale file (the node died) points at nothing: fall back to the store.
        remote.call(&Request::Status).ok().map(|_| remote)
    }

    /// Sends one request: an import as the bundle's bytes on its own route
    /// (the only one that takes a large body), any other as JSON.
    pub fn call(&self, request: &Request) -> anyhow::Result<Response> {
        let authorization = format!("Bearer {}", self.token);
        let sent = match request {
            Request::Import { bundle } => self
                .agent
                .post(&format!("{}{IMPORT_PATH}", self.base))
                .header("Authorization", &authorization)
                .header("Content-Type", "application/octet-stream")
                .send(&bundle[..]),
            other => self
                .agent
                .post(&format!("{}{RPC_PATH}", self.base))
                .header("Authorization", &authorization)
                .send_json(other),
        };
        let mut answer = sent.context("the running node's API did not answer")?;
        let status = answer.status();
        let body = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .context("cannot read the node's answer")?;
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
