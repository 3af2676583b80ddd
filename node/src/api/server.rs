//! The HTTP side of the local API, on 127.0.0.1: `POST /v1/rpc` takes one
//! JSON request, `POST /v1/import` the bytes of a bundle. It only
//! authenticates, decodes and forwards: the node loop executes each request.
//!
//! The caller is authenticated from the headers before a byte of the body
//! is read, so one without the token costs no memory whatever length it
//! announces. Bodies are then read up to a limit per route: small for every
//! request, large only for an import.
//!
//! A caller proves it knows the token in one of two ways: the CLI sends a
//! MAC over a fresh nonce and gets every answer back with the node's own
//! MAC over it ([`super::proof`]), so it never hands the token to whatever
//! holds the port named in a stale `api.json`; a plain `Bearer` token is
//! still taken from other clients (scripts, tests), who then trust the port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Request, Response, proof};
use crate::clip;

/// File in the data dir holding the API's address and token (mode 0600).
pub const API_FILE: &str = "api.json";
/// The route of every request but an import: one JSON [`Request`].
pub const RPC_PATH: &str = "/v1/rpc";
/// The route of an import: the body is the bundle file's bytes.
pub const IMPORT_PATH: &str = "/v1/import";
/// Largest body of `POST /v1/rpc`. A request is small: its text fields are
/// capped at 20,000 bytes (`model::MAX_TEXT_LEN`), so this holds a batch of
/// dozens of the largest writes, or hundreds of ordinary ones.
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Largest body of `POST /v1/import`: one bundle, read only once the token
/// has checked.
pub const MAX_IMPORT: usize = 256 * 1024 * 1024;

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
    let state = AppState { token, calls };
    // The token is checked before any handler runs, so before any body is
    // read; the handlers take the body unread and read it under their limit.
    let app = Router::new()
        .route(RPC_PATH, post(rpc))
        .route(IMPORT_PATH, post(import))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Refuses a request without the node's token, from its headers alone: the
/// body (whatever its announced length) is never read, and the connection
/// is closed after the answer.
async fn authenticate(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: Next,
) -> HttpResponse {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let nonce =
        value.and_then(|v| proof::check_authorization(v, &state.token, request.uri().path()));
    let bearer = value
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| proof::constant_time_eq(t.as_bytes(), state.token.as_bytes()));
    match nonce {
        Some(nonce) => prove(next.run(request).await, &state.token, &nonce).await,
        None if bearer => next.run(request).await,
        None => {
            tracing::debug!(path = %request.uri().path(), "API request without the token refused");
            closing(
                StatusCode::UNAUTHORIZED,
                ApiError::plain("missing or wrong API token"),
            )
        }
    }
}

/// Adds the node's proof to an answer (built whole in memory already): an
/// HMAC keyed with the token over the request's nonce, the status and the
/// body, which the CLI checks before it believes a word of it.
async fn prove(answer: HttpResponse, token: &str, nonce: &proof::Nonce) -> HttpResponse {
    let (mut parts, body) = answer.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read back an API answer to prove it");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ApiError::plain(&format!("cannot prove the answer: {e}")),
            );
        }
    };
    let mac = proof::answer_proof(token, nonce, parts.status.as_u16(), &bytes);
    if let Ok(value) = HeaderValue::from_str(&mac) {
        parts.headers.insert(proof::PROOF_HEADER, value);
    }
    HttpResponse::from_parts(parts, Body::from(bytes))
}

/// `POST /v1/rpc`: one JSON request of at most [`MAX_REQUEST`] bytes.
async fn rpc(State(state): State<AppState>, headers: HeaderMap, body: Body) -> HttpResponse {
    let bytes = match read_body(&headers, body, MAX_REQUEST, RPC_PATH).await {
        Ok(bytes) => bytes,
        Err(refusal) => return refusal,
    };
    let request: Request = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            // serde quotes what it could not parse: clip it.
            let reason = clip::message(&e.to_string(), clip::MESSAGE_LEN);
            return error(
                StatusCode::BAD_REQUEST,
                ApiError::plain(&format!("malformed request: {reason}")),
            );
        }
    };
    if matches!(request, Request::Import { .. }) {
        return error(
            StatusCode::BAD_REQUEST,
            ApiError::plain(&format!(
                "a bundle is imported through POST {IMPORT_PATH}, with the file's bytes as the body"
            )),
        );
    }
    forward(&state, request).await
}

/// `POST /v1/import`: the bytes of a bundle file, at most [`MAX_IMPORT`].
async fn import(State(state): State<AppState>, headers: HeaderMap, body: Body) -> HttpResponse {
    match read_body(&headers, body, MAX_IMPORT, IMPORT_PATH).await {
        Ok(bundle) => {
            forward(
                &state,
                Request::Import {
                    bundle: Vec::from(bundle),
                },
            )
            .await
        }
        Err(refusal) => refusal,
    }
}

/// Reads a body of at most `limit` bytes: one announced as longer is
/// refused before a byte of it is read, one that turns out longer as soon
/// as it passes the limit.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    path: &str,
) -> Result<Bytes, HttpResponse> {
    let too_large = || {
        closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::plain(&format!(
                "the request body is over the limit of {} MiB for POST {path}{}",
                limit / (1024 * 1024),
                if path == RPC_PATH {
                    format!(" (a bundle is imported through POST {IMPORT_PATH})")
                } else {
                    String::new()
                }
            )),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(closing(
            StatusCode::BAD_REQUEST,
            ApiError::plain(&format!("cannot read the request body: {e}")),
        )),
    }
}

/// Hands a request to the node loop and returns its answer.
async fn forward(state: &AppState, request: Request) -> HttpResponse {
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
        )
            .into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiError::plain("the node is shutting down"),
        ),
    }
}

fn error(status: StatusCode, err: ApiError) -> HttpResponse {
    (status, Json(serde_json::to_value(err).unwrap_or_default())).into_response()
}

/// An error answer after which the connection is closed: the request's body
/// was not (wholly) read, so the connection cannot carry another request.
fn closing(status: StatusCode, err: ApiError) -> HttpResponse {
    let mut response = error(status, err);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
