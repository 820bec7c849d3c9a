//! The control API and web panel (`aion serve`): start, cancel and inspect training, read and
//! edit the gate's thresholds, metric series, triggers, training history and the entity heatmap
//! (answered from the Parquet tables through DataFusion), Prometheus `/metrics` and `/healthz`.
//!
//! Access ([`access`]): with tokens configured, every route but `/healthz` and the panel's files
//! needs a bearer token whose role (read / operate / admin) and tenant scope cover it. Without
//! tokens the server only starts on a loopback address with an explicit opt-in, answers only
//! requests naming that loopback host, and mutating routes need the panel page's CSRF secret.
//! Every read is scoped to one tenant, validated like tenant ids on the wire. Responses carry a
//! strict CSP, `no-referrer` and `DENY` framing; request bodies are capped at [`MAX_BODY`].

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod access;
pub mod board;
pub mod tables;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use access::{Denied, Principal, Role, Tokens};

use aion_events::{topics, ControlAction, TrainControl, TrainStatus};
use aion_gate::{GateConfig, GateOptions, Settings};
use aion_kafka::{KafkaConfig, Sink};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use datafusion::arrow::array::RecordBatch;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::board::Board;

/// Renders the process's Prometheus metrics.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// How the server runs.
#[derive(Clone)]
pub struct ApiOptions {
    pub addr: SocketAddr,
    /// Accepted bearer tokens; empty for loopback development mode.
    pub tokens: Tokens,
    /// Serve without tokens (only honoured on a loopback address).
    pub insecure_loopback: bool,
    /// Serve `/metrics` without a token (for a scraper on a trusted network).
    pub public_metrics: bool,
    /// Where the stages' Parquet tables are (the state dir).
    pub data_dir: PathBuf,
    pub kafka: KafkaConfig,
    /// The gate's pipeline (the recipe of started jobs) and options (settings store, shards).
    pub gate: GateConfig,
    pub gate_options: GateOptions,
    pub metrics: Option<MetricsRender>,
}

impl std::fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiOptions")
            .field("addr", &self.addr)
            .field("tokens", &(!self.tokens.is_empty()))
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("refusing to serve {0} without a token: set AION_API_TOKEN (or --token, or --tokens-file), or bind to 127.0.0.1 and pass --insecure-loopback")]
    NoToken(SocketAddr),
    #[error("no randomness for the CSRF secret: {0}")]
    Random(std::io::Error),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kafka(#[from] aion_kafka::Error),
}

/// Largest request body accepted (settings and training requests are a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;

/// The header carrying the loopback panel's CSRF secret.
pub const CSRF_HEADER: &str = "x-aion-csrf";

struct App {
    options: ApiOptions,
    board: Arc<RwLock<Board>>,
    sink: Sink,
    /// The address actually bound (its port is what `Host` must name in loopback mode).
    bound: SocketAddr,
    /// Loopback mode's CSRF secret, in the panel page.
    csrf: String,
    index: String,
    tables: tables::Cached,
}

type Shared = Arc<App>;

/// A 4xx/5xx answer: `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(message: impl ToString) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.to_string())
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthenticated(m) => ApiError(StatusCode::UNAUTHORIZED, m),
            Denied::Forbidden(m) => ApiError(StatusCode::FORBIDDEN, m),
        }
    }
}

fn internal(message: impl ToString) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
}

type ApiResult<T> = Result<T, ApiError>;

/// Serves until `stop`.
pub async fn serve(options: ApiOptions, stop: CancellationToken) -> Result<(), Error> {
    if options.tokens.is_empty() && !(options.insecure_loopback && options.addr.ip().is_loopback())
    {
        return Err(Error::NoToken(options.addr));
    }
    let csrf = access::random_secret().map_err(Error::Random)?;
    let board = Arc::new(RwLock::new(Board::default()));
    board::follow(&options.kafka, board.clone(), stop.child_token())?;
    let sink = Sink::new(&options.kafka, "api")?;
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| Error::Bind {
            addr: options.addr,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(options.addr);
    info!(%addr, "control API and panel at http://{addr}/");
    let index = include_str!("../assets/index.html").replace(
        "{{csrf}}",
        if options.tokens.is_empty() { &csrf } else { "" },
    );
    let tables = tables::Cached::new(options.data_dir.clone());
    let app = router(Arc::new(App {
        options,
        board,
        sink,
        bound: addr,
        csrf,
        index,
        tables,
    }));
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .map_err(|source| Error::Bind { addr, source })
}

fn router(app: Shared) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(app): State<Shared>| async move { Html(app.index.clone()) }),
        )
        .route(
            "/panel.js",
            get(|| asset("text/javascript", include_str!("../assets/panel.js"))),
        )
        .route(
            "/panel.css",
            get(|| asset("text/css", include_str!("../assets/panel.css"))),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(prometheus))
        .route("/api/ai/tenants", get(tenants))
        .route("/api/ai/settings", get(get_settings).put(put_settings))
        .route("/api/ai/metrics", get(metric_series))
        .route("/api/ai/triggers", get(triggers))
        .route("/api/ai/heatmap", get(heatmap))
        .route("/api/ai/train/lora/status", get(train_status))
        .route("/api/ai/train/lora/start", post(train_start))
        .route("/api/ai/train/lora/cancel", post(train_cancel))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            loopback_guard,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

/// Loopback mode: a request that names another host (a DNS-rebinding page) or comes from another
/// origin gets nothing, not even the panel page with its CSRF secret.
async fn loopback_guard(State(app): State<Shared>, request: Request, next: Next) -> Response {
    if app.options.tokens.is_empty() {
        let header = |name| {
            request
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        if let Err(denied) =
            access::check_loopback_host(app.bound, header(header::HOST), header(header::ORIGIN))
        {
            return ApiError::from(denied).into_response();
        }
    }
    next.run(request).await
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type)], body)
}

async fn prometheus(State(app): State<Shared>, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
    if !app.options.public_metrics {
        authorize(&app, &headers, Role::Read, None)?;
    }
    let body = app
        .options
        .metrics
        .as_ref()
        .map_or_else(String::new, |render| render());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}

/// Who the request is, if its role allows `need` (and, for a tenant, [`Principal::allow`] with
/// it; `None`: no tenant's data, or all tenants' for admin changes). Loopback mode allows
/// everything, but a mutating request must carry the panel's CSRF secret.
fn authorize(
    app: &App,
    headers: &HeaderMap,
    need: Role,
    tenant: Option<&str>,
) -> ApiResult<Principal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if app.options.tokens.is_empty() {
        if need > Role::Read {
            access::check_csrf(&app.csrf, header(CSRF_HEADER))?;
        }
        return Ok(Principal::local());
    }
    let principal = app
        .options
        .tokens
        .authenticate(header(header::AUTHORIZATION.as_str()))?;
    principal.allow(need, tenant)?;
    Ok(principal)
}

#[derive(Debug, Deserialize)]
struct TenantQuery {
    tenant: Option<String>,
    window: Option<String>,
}

/// The request's tenant, validated like tenant ids on the wire (so it is safe in SQL literals).
fn tenant_of(tenant: Option<&str>) -> ApiResult<String> {
    let tenant = tenant.ok_or_else(|| bad_request("the tenant query parameter is required"))?;
    aion_events::validate_tenant_id(tenant).map_err(|r| bad_request(r.message))?;
    Ok(tenant.to_owned())
}

/// Rows of a query as JSON objects.
async fn query(app: &App, sql: &str) -> ApiResult<Vec<Map<String, Value>>> {
    let ctx = app.tables.session().await.map_err(internal)?;
    let batches: Vec<RecordBatch> = match ctx.sql(sql).await {
        Ok(frame) => frame.collect().await.map_err(internal)?,
        // A table without data yet is not registered: no rows.
        Err(e) if e.to_string().contains("not found") => return Ok(Vec::new()),
        Err(e) => return Err(internal(e)),
    };
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        writer.write(b).map_err(internal)?;
    }
    writer.finish().map_err(internal)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(internal)
}

async fn tenants(State(app): State<Shared>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let principal = authorize(&app, &headers, Role::Read, None)?;
    let rows = query(
        &app,
        "SELECT DISTINCT tenant_id FROM metrics ORDER BY tenant_id",
    )
    .await?;
    let tenants: Vec<Value> = rows
        .into_iter()
        .filter_map(|mut r| r.remove("tenant_id"))
        .filter(|t| t.as_str().is_some_and(|t| principal.may_see(t)))
        .collect();
    Ok(Json(json!({ "tenants": tenants })))
}

fn current_settings(app: &App) -> ApiResult<Settings> {
    app.options
        .gate_options
        .current_settings()
        .map_err(internal)
}

async fn get_settings(State(app): State<Shared>, headers: HeaderMap) -> ApiResult<Json<Settings>> {
    authorize(&app, &headers, Role::Read, None)?;
    Ok(Json(current_settings(&app)?))
}

/// Any subset of the settings; the gate picks the saved file up within a second.
async fn put_settings(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<Map<String, Value>>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Settings>> {
    let principal = authorize(&app, &headers, Role::Admin, None)?;
    let Json(changes) = body.map_err(rejected)?;
    let (store, initial) = (
        app.options.gate_options.settings.clone(),
        app.options.gate_options.initial.clone(),
    );
    // Read, merge and write under the settings lock (file I/O: off the async workers).
    let settings = tokio::task::spawn_blocking(move || {
        store.update(&initial, |current| {
            let mut merged = serde_json::to_value(&*current).map_err(|e| e.to_string())?;
            for (key, value) in changes {
                match merged.get_mut(&key) {
                    Some(slot) => *slot = value,
                    None => return Err(format!("unknown setting {key:?}")),
                }
            }
            *current = serde_json::from_value(merged).map_err(|e| e.to_string())?;
            current.validate()
        })
    })
    .await
    .map_err(internal)?
    .map_err(|e| match e {
        aion_gate::Error::Config { message, .. } => bad_request(message),
        other => internal(other),
    })?;
    info!(?settings, by = %principal.name, "settings changed through the API");
    Ok(Json(settings))
}

const WINDOWS: [&str; 3] = ["tumbling_1h", "tumbling_1d", "hopping_24h"];

async fn metric_series(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<Value>> {
    let principal = authorize(&app, &headers, Role::Read, None)?;
    let tenant = tenant_of(q.tenant.as_deref())?;
    principal.allow(Role::Read, Some(&tenant))?;
    let window = q.window.unwrap_or_else(|| WINDOWS[0].to_owned());
    if !WINDOWS.contains(&window.as_str()) {
        return Err(bad_request(format!("window must be one of {WINDOWS:?}")));
    }
    let points = query(
        &app,
        &format!(
            "SELECT window_start, window_end, ndcg_mean, fallback_rate, retrieval_events AS retrievals, answers \
             FROM metrics WHERE tenant_id = '{tenant}' AND \"window\" = '{window}' ORDER BY window_start"
        ),
    )
    .await?;
    Ok(Json(
        json!({ "tenant": tenant, "window": window, "points": points }),
    ))
}

async fn triggers(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<Value>> {
    let principal = authorize(&app, &headers, Role::Read, None)?;
    let tenant = tenant_of(q.tenant.as_deref())?;
    principal.allow(Role::Read, Some(&tenant))?;
    let board = app.board.read().map_err(internal)?;
    Ok(Json(json!({ "triggers": board.triggers(&tenant) })))
}

/// Mentions per entity × hour over the tenant's last 48 hours of data, the 20 most mentioned.
async fn heatmap(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<Value>> {
    let principal = authorize(&app, &headers, Role::Read, None)?;
    let tenant = tenant_of(q.tenant.as_deref())?;
    principal.allow(Role::Read, Some(&tenant))?;
    let rows = query(
        &app,
        &format!(
            "WITH m AS (SELECT entity, \"type\", date_trunc('hour', ts) AS hour FROM entities \
                        WHERE tenant_id = '{tenant}'), \
                  recent AS (SELECT * FROM m WHERE hour > (SELECT max(hour) FROM m) - INTERVAL '48 hours'), \
                  top AS (SELECT entity, count(*) AS n FROM recent GROUP BY entity ORDER BY n DESC, entity LIMIT 20) \
             SELECT r.entity, max(r.\"type\") AS \"type\", r.hour, count(*) AS mentions, max(top.n) AS total \
             FROM recent r JOIN top ON r.entity = top.entity \
             GROUP BY r.entity, r.hour ORDER BY total DESC, r.entity, r.hour"
        ),
    )
    .await?;
    let text = |r: &Map<String, Value>, k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut hours: Vec<String> = rows.iter().map(|r| text(r, "hour")).collect();
    hours.sort();
    hours.dedup();
    let mut entities: Vec<(String, String, Vec<i64>)> = Vec::new();
    for r in &rows {
        let entity = text(r, "entity");
        if entities.last().is_none_or(|(e, _, _)| *e != entity) {
            entities.push((entity, text(r, "type"), vec![0; hours.len()]));
        }
        if let (Some((_, _, counts)), Ok(i)) =
            (entities.last_mut(), hours.binary_search(&text(r, "hour")))
        {
            counts[i] = r.get("mentions").and_then(Value::as_i64).unwrap_or(0);
        }
    }
    let entities: Vec<Value> = entities
        .into_iter()
        .map(|(entity, kind, counts)| json!({ "entity": entity, "type": kind, "counts": counts }))
        .collect();
    Ok(Json(json!({ "hours": hours, "entities": entities })))
}

async fn train_status(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<Value>> {
    let principal = authorize(&app, &headers, Role::Read, None)?;
    let tenant = tenant_of(q.tenant.as_deref())?;
    principal.allow(Role::Read, Some(&tenant))?;
    let board = app.board.read().map_err(internal)?;
    Ok(Json(json!({
        "running": board.running(&tenant),
        "last": board.last(&tenant),
        "history": board.history(&tenant),
    })))
}

#[derive(Debug, Deserialize)]
struct StartRequest {
    tenant_id: String,
    note: Option<String>,
}

/// A body that did not parse: its own status (400, 413 over [`MAX_BODY`], 415) and why.
fn rejected(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError(e.status(), e.body_text())
}

fn body<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> ApiResult<T> {
    body.map(|Json(b)| b).map_err(rejected)
}

/// Publishes a manual trigger for the tenant, as `aion train trigger` does; 409 while one of its
/// jobs is queued or running.
async fn train_start(
    State(app): State<Shared>,
    headers: HeaderMap,
    request: Result<Json<StartRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let principal = authorize(&app, &headers, Role::Operate, None)?;
    let request = body(request)?;
    let tenant = tenant_of(Some(&request.tenant_id))?;
    principal.allow(Role::Operate, Some(&tenant))?;
    if let Some(job) = app.board.read().map_err(internal)?.running(&tenant) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("job {} of {tenant} is {:?}", job.job_id, job.state).to_lowercase(),
        ));
    }
    let settings = current_settings(&app)?;
    let mut trigger = aion_gate::manual_trigger(
        &app.options.gate,
        &settings,
        &tenant,
        request.note,
        chrono::Utc::now(),
    );
    trigger.manifest_lines =
        aion_gate::shard_snapshot(&app.options.gate_options).map_err(internal)?;
    let payload = serde_json::to_vec(&trigger).map_err(internal)?;
    app.sink
        .send_confirmed(
            topics::TRAIN_TRIGGER,
            None,
            Some(tenant.as_bytes()),
            &payload,
        )
        .await
        .map_err(internal)?
        .wait(topics::TRAIN_TRIGGER)
        .await
        .map_err(internal)?;
    let job_id = trigger.trigger_id.clone();
    app.board.write().map_err(internal)?.trigger(trigger);
    info!(job = %job_id, by = %principal.name, "training started through the API");
    Ok((StatusCode::ACCEPTED, Json(json!({ "job_id": job_id }))))
}

#[derive(Debug, Deserialize)]
struct CancelRequest {
    tenant_id: String,
}

/// Asks the trainer to stop the tenant's running job; 409 when none runs.
async fn train_cancel(
    State(app): State<Shared>,
    headers: HeaderMap,
    request: Result<Json<CancelRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let principal = authorize(&app, &headers, Role::Operate, None)?;
    let tenant = tenant_of(Some(&body(request)?.tenant_id))?;
    principal.allow(Role::Operate, Some(&tenant))?;
    let running: Option<TrainStatus> = app.board.read().map_err(internal)?.running(&tenant);
    let Some(job) = running else {
        return Err(ApiError(StatusCode::CONFLICT, "no job is running".into()));
    };
    let control = TrainControl {
        job_id: job.job_id.clone(),
        action: ControlAction::Cancel,
        at: chrono::Utc::now(),
    };
    let payload = serde_json::to_vec(&control).map_err(internal)?;
    app.sink
        .send_confirmed(
            topics::TRAIN_CONTROL,
            None,
            Some(job.job_id.as_bytes()),
            &payload,
        )
        .await
        .map_err(internal)?
        .wait(topics::TRAIN_CONTROL)
        .await
        .map_err(internal)?;
    info!(job = %job.job_id, by = %principal.name, "cancel requested through the API");
    Ok((StatusCode::ACCEPTED, Json(json!({ "job_id": job.job_id }))))
}
