//! The HTTP side of the local API: one route, `POST /v1/rpc`, on 127.0.0.1,
//! refusing any request without the node's bearer token. It only decodes,
//! authenticates and forwards: the node loop executes each request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Request, Response};

/// File in the data dir holding the API's address and token (mode 0600).
pub const API_FILE: &str = "api.json";
/// Largest request body: an imported bundle travels in one request.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// An error answer: the message and its chain of causes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub causes: Vec<String>,
}

impl ApiError {
    pub fn from_error(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut causes = Vec::new();
        let mut source = err.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        Self {
            error: err.to_string(),
            causes,
        }
    }

    fn plain(message: &str) -> Self {
        Self {
            error: message.to_string(),
            causes: Vec::new(),
        }
    }
}

/// One request on its way to the node loop, with the channel for its answer.
#[derive(Debug)]
pub struct ApiCall {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Response, ApiError>>,
}

/// What `concord run` writes to `api.json` for the CLI.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiFile {
    pub address: SocketAddr,
    pub token: String,
    pub pid: u32,
}

impl ApiFile {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(API_FILE)
    }

    /// Writes the file with mode 0600 (replacing a stale one).
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let path = Self::path(data_dir);
        let tmp = path.with_extension("json.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self).unwrap_or_default())?;
        file.sync_all()?;
        std::fs::rename(tmp, path)
    }

    pub fn read(data_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(Self::path(data_dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove(data_dir: &Path) {
        let _ = std::fs::remove_file(Self::path(data_dir));
    }
}

/// A fresh random token: 32 bytes in hex.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex::encode(bytes))
}

#[derive(Clone)]
struct AppState {
    token: String,
    calls: mpsc::Sender<ApiCall>,
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    calls: mpsc::Sender<ApiCall>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/rpc", post(rpc))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(AppState { token, calls });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn rpc(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    let authorised = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.as_bytes()));
    if !authorised {
        return error(
            StatusCode::UNAUTHORIZED,
            ApiError::plain("missing or wrong API token"),
        );
    }
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ApiError::plain(&format!("malformed request: {e}")),
            );
        }
    };
    let (reply, answer) = oneshot::channel();
    if state.calls.send(ApiCall { request, reply }).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiError::plain("the node is shutting down"),
        );
    }
    match answer.await {
        Ok(Ok(response)) => (
            StatusCode::OK,
            Json(serde_json::to_value(response).unwrap_or_default()),
        ),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiError::plain("the node is shutting down"),
        ),
    }
}

fn error(status: StatusCode, err: ApiError) -> (StatusCode, Json<serde_json::Value>) {
    (status, Json(serde_json::to_value(err).unwrap_or_default()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
