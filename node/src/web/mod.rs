//! The read-only web view: server-rendered HTML on its own listener, for
//! observers and staff who look rather than type.
//!
//! Routes (GET and HEAD only; every other method on every route answers
//! 405): `/` the register, `/dialogue` the notes and positions, `/item/{id}`
//! one item and its history, `/network` the roster, peers and checkpoints,
//! `/events` server-sent events announcing a new version, `/live.js` the
//! optional script that reloads the page on such an event. Pages work with
//! JavaScript off (a `<noscript>` refresh stands in for the script).
//!
//! It answers only to the host names it is configured for (127.0.0.1,
//! localhost, [::1], its listen address and `[web] hosts`), so a page on
//! another site whose name was rebound to this address (DNS rebinding)
//! cannot read it through the operator's browser: any other `Host` gets 421.
//!
//! The web view never touches the replica: every datum comes from the node
//! loop through a [`NodeHandle`] call, exactly as the CLI's. It never writes:
//! it sends only read requests. The version counter it watches is bumped by
//! the node loop after every local write, ingest and peer (dis)connection.

pub(crate) mod pages;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::uri::Authority;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use futures::Stream;
use tokio::sync::watch;

use crate::api::{Request, Response};
use crate::node::NodeHandle;

pub use pages::{DialogueFilter, RegisterFilter};

/// Where the web view listens unless configured: loopback, a port the OS
/// picks (printed by `concord run` and `concord status`).
pub const DEFAULT_WEB: &str = "127.0.0.1:0";

/// Headers on every page: no script but our own, no framing, no sniffing.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// The reload script: when the node announces a version other than the one
/// the page was rendered at, reload.
const LIVE_JS: &str = r#"// Concord web view: reload when the node announces a new version.
(function () {
  var meta = document.querySelector('meta[name="concord-version"]');
  if (!meta || !window.EventSource) { return; }
  var shown = meta.getAttribute('content');
  var events = new EventSource('/events');
  events.addEventListener('version', function (e) {
    if (e.data !== shown) { events.close(); window.location.reload(); }
  });
})();
"#;

/// The host names the web view answers to, lowercase, without a port (the
/// port is not checked: a rebinding page differs in its name).
#[derive(Clone, Debug)]
pub struct AllowedHosts(Arc<BTreeSet<String>>);

impl AllowedHosts {
    /// 127.0.0.1, localhost, [::1], the address the view listens on (unless
    /// it is 0.0.0.0 or ::) and the `extra` names (`[web] hosts`).
    pub fn new(listen: SocketAddr, extra: &[String]) -> Self {
        let mut hosts: BTreeSet<String> = ["127.0.0.1", "localhost", "[::1]"]
            .into_iter()
            .map(String::from)
            .collect();
        if !listen.ip().is_unspecified() {
            hosts.insert(host_of_ip(listen.ip()));
        }
        hosts.extend(extra.iter().filter_map(|h| normalise_host(h)));
        Self(Arc::new(hosts))
    }

    /// Whether a request's authority (`Host` header) names one of them.
    fn allows(&self, authority: &str) -> bool {
        authority_host(authority).is_some_and(|host| self.0.contains(&host))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// An address as a `Host` header writes it (IPv6 in brackets).
fn host_of_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The host of an authority (`name`, `name:port`, `[v6]:port`), lowercase;
/// `None` if it does not parse or carries user information.
fn authority_host(authority: &str) -> Option<String> {
    let parsed: Authority = authority.parse().ok()?;
    if parsed.as_str().contains('@') {
        return None;
    }
    Some(parsed.host().to_ascii_lowercase())
}

/// A host name as configured: a name or an address, without a port,
/// lowercase; `None` if it is not one.
pub fn normalise_host(text: &str) -> Option<String> {
    let text = text.trim();
    let host = authority_host(text)?;
    // A port given in the config would be ignored: refuse it as a mistake.
    (host.len() == text.len()).then_some(host)
}

#[derive(Clone)]
struct WebState {
    node: NodeHandle,
    version: watch::Receiver<u64>,
}

/// The web view's router, for [`serve`] and for tests.
pub fn router(node: NodeHandle, version: watch::Receiver<u64>, hosts: AllowedHosts) -> Router {
    Router::new()
        .route("/", get(register))
        .route("/dialogue", get(dialogue))
        .route("/item/{id}", get(item))
        .route("/network", get(network))
        .route("/events", get(events))
        .route("/live.js", get(live_js))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(hosts, check_host))
        .with_state(WebState { node, version })
}

/// Answers 421 to a request whose `Host` (or absolute URI) names a host the
/// view is not configured for, before any route sees it.
async fn check_host(
    State(hosts): State<AllowedHosts>,
    request: axum::extract::Request,
    next: Next,
) -> HttpResponse {
    let authority = match request.uri().authority() {
        Some(a) => Some(a.as_str().to_string()),
        None => request
            .headers()
            .get(header::HOST)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    };
    match authority {
        Some(a) if hosts.allows(&a) => next.run(request).await,
        Some(a) => {
            let host = crate::clip::quote(&a);
            tracing::info!(host = %host, "web request for another host refused");
            refuse_host(format!(
                "this web view does not answer to the host {host}; it answers to {}. \
                 An operator who serves it under another name adds it to [web] hosts in \
                 concord.toml\n",
                hosts.iter().collect::<Vec<_>>().join(", ")
            ))
        }
        None => {
            refuse_host("a request to this web view must name its host (no Host header)\n".into())
        }
    }
}

fn refuse_host(message: String) -> HttpResponse {
    let mut response = (StatusCode::MISDIRECTED_REQUEST, message).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Serves the web view on `listener` until `shutdown` resolves. Streams of
/// events end when the node loop drops its version sender, so a stopping
/// node is not held up by open pages.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: NodeHandle,
    version: watch::Receiver<u64>,
    extra_hosts: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let hosts = AllowedHosts::new(addr, &extra_hosts);
    tracing::info!(%addr, hosts = ?hosts.0, "web view listening");
    axum::serve(listener, router(node, version, hosts))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A failure to show a page, with the status it answers.
struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> HttpResponse {
        let body = pages::error(self.status, &self.message);
        html(self.status, body.into_string())
    }
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

impl WebState {
    /// One request to the node loop; `status` is what a refusal answers.
    async fn ask(&self, request: Request, status: StatusCode) -> Result<Response, PageError> {
        self.node.call(request).await.map_err(|e| {
            let mut message = e.error;
            for cause in e.causes {
                message.push_str(": ");
                message.push_str(&cause);
            }
            PageError::new(status, message)
        })
    }

    /// What every page shows around its content.
    async fn frame(&self) -> Result<pages::Frame, PageError> {
        // Read the version first: a change landing while the page renders
        // then makes the page reload once more, never show stale data.
        let version = *self.version.borrow();
        let status = match self
            .ask(Request::Status, StatusCode::INTERNAL_SERVER_ERROR)
            .await?
        {
            Response::Status(s) => *s,
            other => return Err(unexpected(&other)),
        };
        let checkpoints = match self
            .ask(Request::Checkpoints, StatusCode::INTERNAL_SERVER_ERROR)
            .await?
        {
            Response::Checkpoints(c) => *c,
            other => return Err(unexpected(&other)),
        };
        Ok(pages::Frame {
            version,
            status,
            checkpoints,
        })
    }
}

fn unexpected(response: &Response) -> PageError {
    PageError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("unexpected answer from the node: {response:?}"),
    )
}

/// Treats empty form fields (a select left at "all") as absent.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

async fn register(
    State(state): State<WebState>,
    Query(filter): Query<RegisterFilter>,
) -> Result<HttpResponse, PageError> {
    let filter = RegisterFilter {
        category: non_empty(filter.category),
        status: non_empty(filter.status),
        institution: non_empty(filter.institution),
    };
    let frame = state.frame().await?;
    let assessments = match state
        .ask(
            Request::ListAssessments {
                category: filter.category.clone(),
                status: filter.status.clone(),
            },
            StatusCode::BAD_REQUEST,
        )
        .await?
    {
        Response::Assessments(a) => a,
        other => return Err(unexpected(&other)),
    };
    let categories = match state
        .ask(Request::Categories, StatusCode::INTERNAL_SERVER_ERROR)
        .await?
    {
        Response::Categories(c) => c,
        other => return Err(unexpected(&other)),
    };
    let network = network_view(&state).await?;
    if let Some(wanted) = &filter.institution
        && !network.roster.iter().any(|e| &e.node_id == wanted)
    {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown institution {}: pick one of the roster's node ids",
                crate::clip::quote(wanted)
            ),
        ));
    }
    let assessments: Vec<_> = assessments
        .into_iter()
        .filter(|a| {
            filter
                .institution
                .as_ref()
                .is_none_or(|i| &a.author.node_id == i)
        })
        .collect();
    let notes = match state
        .ask(Request::ListNotes, StatusCode::INTERNAL_SERVER_ERROR)
        .await?
    {
        Response::Notes(n) => n,
        other => return Err(unexpected(&other)),
    };
    let body = pages::register(&frame, &network, &categories, &assessments, &notes, &filter);
    Ok(html(StatusCode::OK, body.into_string()))
}

async fn network_view(state: &WebState) -> Result<crate::api::NetworkView, PageError> {
    match state
        .ask(Request::NetworkShow, StatusCode::INTERNAL_SERVER_ERROR)
        .await?
    {
        Response::Network(n) => Ok(n),
        other => Err(unexpected(&other)),
    }
}

async fn dialogue(
    State(state): State<WebState>,
    Query(filter): Query<DialogueFilter>,
) -> Result<HttpResponse, PageError> {
    let filter = DialogueFilter {
        round: non_empty(filter.round),
    };
    if let Some(round) = &filter.round {
        round
            .parse::<crate::model::Round>()
            .map_err(|e| PageError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    }
    let frame = state.frame().await?;
    let notes = match state
        .ask(Request::ListNotes, StatusCode::INTERNAL_SERVER_ERROR)
        .await?
    {
        Response::Notes(n) => n,
        other => return Err(unexpected(&other)),
    };
    let notes: Vec<_> = notes
        .into_iter()
        .filter(|n| {
            filter
                .round
                .as_ref()
                .is_none_or(|r| n.round.as_ref() == Some(r))
        })
        .collect();
    let body = pages::dialogue(&frame, &notes, &filter);
    Ok(html(StatusCode::OK, body.into_string()))
}

async fn item(
    State(state): State<WebState>,
    Path(id): Path<String>,
) -> Result<HttpResponse, PageError> {
    let frame = state.frame().await?;
    let history = match state
        .ask(Request::History { id: id.clone() }, StatusCode::NOT_FOUND)
        .await?
    {
        Response::History(h) => *h,
        other => return Err(unexpected(&other)),
    };
    let detail = match history.kind.as_str() {
        "assessment" => match state
            .ask(Request::ShowAssessment { id }, StatusCode::NOT_FOUND)
            .await?
        {
            Response::Assessment(a) => pages::Detail::Assessment(a),
            other => return Err(unexpected(&other)),
        },
        "note" => match state
            .ask(Request::ShowNote { id }, StatusCode::NOT_FOUND)
            .await?
        {
            Response::Note(n) => pages::Detail::Note(n),
            other => return Err(unexpected(&other)),
        },
        _ => pages::Detail::Other,
    };
    let body = pages::item(&frame, &history, &detail);
    Ok(html(StatusCode::OK, body.into_string()))
}

async fn network(State(state): State<WebState>) -> Result<HttpResponse, PageError> {
    let frame = state.frame().await?;
    let network = network_view(&state).await?;
    let peers = match state
        .ask(Request::Peers, StatusCode::INTERNAL_SERVER_ERROR)
        .await?
    {
        Response::Peers(p) => p,
        other => return Err(unexpected(&other)),
    };
    let body = pages::network(&frame, &network, &peers);
    Ok(html(StatusCode::OK, body.into_string()))
}

/// Server-sent events: the current version at once, then every new one.
async fn events(
    State(state): State<WebState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((state.version, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            // The node loop stopped: end the stream so shutdown is not held up.
            return None;
        }
        let version = *rx.borrow_and_update();
        let event = Event::default().event("version").data(version.to_string());
        Some((Ok(event), (rx, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn live_js() -> HttpResponse {
    let mut response = LIVE_JS.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    response
}

/// Unknown paths: 404 for a read, 405 for anything else (no route writes).
async fn fallback(method: Method) -> HttpResponse {
    if method == Method::GET || method == Method::HEAD {
        PageError::new(StatusCode::NOT_FOUND, "no such page").into_response()
    } else {
        let mut response = PageError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "this web view is read-only: only GET and HEAD are served",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        response
    }
}
