//! TorchServe's management API, on the management listener: list and
//! describe models, scale their workers, choose the default version, and —
//! when `enable_model_api` allows — register and unregister them (405
//! otherwise, as in TorchServe). Bodies and errors are TorchServe's
//! (Gson-pretty JSON, `{"code","type","message"}`).
//!
//! It only parses parameters and writes answers; what a change means (which
//! versions, which sources may change, how a model is built) is the
//! registry's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, options, put};
use serde_json::{Value, json};

use super::body::json_response;
use super::torchserve::TorchServeError;
use crate::config::ServerConfig;
use crate::registry::{ModelRegistry, Registration, VersionReport, VersionScope, WorkerRange};
use crate::types::Error;

/// TorchServe's page size for `GET /models`, and its largest.
const PAGE_SIZE: usize = 100;

/// What the management routes reach: the registry, and the settings a
/// registration is read with.
pub struct ManagementState {
    pub(super) registry: Arc<ModelRegistry>,
    pub(super) server: Arc<ServerConfig>,
    /// `OPTIONS /`'s body, rendered once.
    description: String,
}

impl ManagementState {
    pub fn new(registry: Arc<ModelRegistry>, server: Arc<ServerConfig>) -> Arc<ManagementState> {
        let description =
            include_str!("management_openapi.json").replace("%VERSION%", env!("CARGO_PKG_VERSION"));
        Arc::new(ManagementState {
            registry,
            server,
            description,
        })
    }
}

/// The management API's model routes, for any router state.
pub(super) fn routes<S: Clone + Send + Sync + 'static>(state: Arc<ManagementState>) -> Router<S> {
    Router::new()
        .route(
            "/models",
            get(list).post(register).fallback(method_not_allowed),
        )
        .route(
            "/models/{model}",
            get(describe)
                .put(scale)
                .delete(unregister)
                .fallback(method_not_allowed),
        )
        .route(
            "/models/{model}/{version}",
            get(describe)
                .put(scale)
                .delete(unregister)
                .fallback(method_not_allowed),
        )
        .route(
            "/models/{model}/{version}/set-default",
            put(set_default).fallback(method_not_allowed),
        )
        .with_state(state)
}

/// `OPTIONS /` and `GET /api-description` on a listener of its own (a
/// listener shared with the inference API describes that one instead).
pub(super) fn description_routes<S: Clone + Send + Sync + 'static>(
    state: Arc<ManagementState>,
) -> Router<S> {
    Router::new()
        .route("/", options(api_description).fallback(method_not_allowed))
        .route(
            "/api-description",
            get(api_description).fallback(method_not_allowed),
        )
        .with_state(state)
}

type Shared = State<Arc<ManagementState>>;
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;
type Segments = Result<Path<HashMap<String, String>>, PathRejection>;
type Answer = Result<Response, TorchServeError>;

async fn api_description(State(state): Shared) -> Response {
    json_response(StatusCode::OK, state.description.clone())
}

async fn method_not_allowed() -> TorchServeError {
    TorchServeError(Error::MethodNotAllowed)
}

/// Gson's pretty printing: two-space indent and a final newline.
fn pretty(status: StatusCode, body: &Value) -> Response {
    let text = serde_json::to_string_pretty(body).expect("JSON values serialise") + "\n";
    json_response(status, text)
}

fn status(code: StatusCode, message: String) -> Response {
    pretty(code, &json!({ "status": message }))
}

/// `GET /models?limit=&next_page_token=`: default versions by name, a page
/// at a time; `nextPageToken` (a string) only while more remain.
async fn list(State(state): Shared, params: Params) -> Answer {
    let params = query(params)?;
    // TorchServe's leniency: a limit outside [0, 100] is 100, and a
    // negative token is 0; only what is not a number is refused.
    let limit = match optional_int(&params, "limit", i64::MIN, i64::MAX)? {
        Some(n) if (0..=PAGE_SIZE as i64).contains(&n) => n as usize,
        _ => PAGE_SIZE,
    };
    let start = optional_int(&params, "next_page_token", i64::MIN, i64::MAX)?
        .unwrap_or(0)
        .max(0) as usize;
    let models = state.registry.list_models();
    let page: Vec<Value> = models
        .iter()
        .skip(start)
        .take(limit)
        .map(|m| json!({ "modelName": m.name, "modelUrl": m.url }))
        .collect();
    let mut body = serde_json::Map::new();
    if start.saturating_add(limit) < models.len() {
        body.insert("nextPageToken".into(), (start + limit).to_string().into());
    }
    body.insert("models".into(), page.into());
    Ok(pretty(StatusCode::OK, &body.into()))
}

/// `GET /models/{m}[/{v}|/all]`: an array of version descriptions.
async fn describe(State(state): Shared, path: Segments) -> Answer {
    let (name, version) = model_path(path)?;
    let scope = match version.as_deref() {
        None => VersionScope::Default,
        Some("all") => VersionScope::All,
        Some(version) => VersionScope::One(version),
    };
    let reports = state.registry.describe(&name, scope).await?;
    let body: Vec<Value> = reports.iter().map(description).collect();
    Ok(pretty(StatusCode::OK, &body.into()))
}

/// TorchServe's `DescribeModelResponse` fields, in its order, then
/// ortserve's own facts under `ortserve`. A version whose configuration
/// failed has no settings: those fields are left out, as Gson leaves out
/// nulls.
fn description(report: &VersionReport) -> Value {
    let gpu = report.device.starts_with("cuda");
    let workers: Vec<Value> = report
        .workers
        .iter()
        .map(|w| {
            json!({
                "id": w.id.to_string(),
                "startTime": iso_time(w.started),
                "status": if w.ready { "READY" } else { "UNLOADING" },
                // Workers are threads of one process: no memory of their own.
                "memoryUsage": 0,
                "pid": std::process::id(),
                "gpu": gpu,
                "gpuUsage": "N/A",
            })
        })
        .collect();
    let mut body = json!({
        "modelName": report.id.name,
        "modelVersion": report.id.version,
        "modelUrl": report.url,
        "runtime": "onnxruntime",
    });
    if let Some(settings) = &report.settings {
        let fields = json!({
            "minWorkers": settings.min_workers,
            "maxWorkers": settings.max_workers,
            "batchSize": settings.batch_size,
            "maxBatchDelay": settings.max_batch_delay.as_millis() as u64,
            "responseTimeout": settings.response_timeout.as_secs(),
            "startupTimeout": settings.startup_timeout.as_secs(),
            "maxRetryTimeoutInSec": settings.max_retry_timeout.as_secs(),
        });
        extend(&mut body, fields);
    }
    let queue_rows = report.settings.as_ref().map_or(0, |s| s.queue_rows);
    extend(
        &mut body,
        json!({
            "deviceType": if gpu { "gpu" } else { "cpu" },
            "loadedAtStartup": report.loaded_at_startup,
            "workers": workers,
            "jobQueueStatus": {
                "remainingCapacity": queue_rows.saturating_sub(report.queued_rows),
                "pendingRequests": report.queued_rows,
            },
            "ortserve": {
                "state": report.state,
                "device": report.device,
                "default": report.is_default,
            },
        }),
    );
    body
}

/// Appends an object's fields to another, in order.
fn extend(body: &mut Value, fields: Value) {
    if let (Value::Object(body), Value::Object(fields)) = (body, fields) {
        body.extend(fields);
    }
}

/// `PUT /models/{m}[/{v}]?min_worker=&max_worker=&synchronous=`.
async fn scale(State(state): Shared, path: Segments, params: Params) -> Answer {
    let (name, version) = model_path(path)?;
    let params = query(params)?;
    let version = version.or_else(|| params.get("model_version").cloned());
    let min = optional_int(&params, "min_worker", 1, WorkerRange::MAX as i64)?.unwrap_or(1);
    let max = optional_int(&params, "max_worker", 1, WorkerRange::MAX as i64)?.unwrap_or(min);
    if max < min {
        return Err(bad("max_worker cannot be less than min_worker.".into()));
    }
    let synchronous = flag(&params, "synchronous", false)?;
    let range = WorkerRange {
        min: min as usize,
        max: max as usize,
    };
    let scaled = state.registry.scale(&name, version.as_deref(), range)?;
    if !synchronous {
        return Ok(status(
            StatusCode::ACCEPTED,
            "Processing worker updates...".into(),
        ));
    }
    if !scaled.wait(SCALE_WAIT).await {
        return Ok(status(
            StatusCode::PARTIAL_CONTENT,
            "Workers scaling in progress...".into(),
        ));
    }
    let mut message = format!("Workers scaled to {min} for model: {name}");
    if let Some(version) = &version {
        message.push_str(&format!(", version: {version}"));
    }
    Ok(status(StatusCode::OK, message))
}

/// How long a synchronous scale waits for its workers before answering 206.
const SCALE_WAIT: Duration = Duration::from_secs(120);

/// `PUT /models/{m}/{v}/set-default`.
async fn set_default(State(state): Shared, path: Segments) -> Answer {
    let (name, version) = model_path(path)?;
    let version = version.expect("the route has a version");
    state.registry.set_default(&name, &version)?;
    Ok(status(
        StatusCode::OK,
        format!("Default version successfully updated for model \"{name}\" to \"{version}\""),
    ))
}

/// `POST /models?url=...`: only with `enable_model_api`.
async fn register(State(state): Shared, params: Params) -> Answer {
    if !state.server.model_api.enabled {
        return Err(TorchServeError(Error::ModelApiOff));
    }
    let params = query(params)?;
    let url = params
        .get("url")
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| bad("Parameter url is required.".into()))?;
    let millis = |name, max| -> Result<Option<Duration>, TorchServeError> {
        Ok(optional_int(&params, name, 0, max)?.map(|ms| Duration::from_millis(ms as u64)))
    };
    let seconds = |name| -> Result<Option<Duration>, TorchServeError> {
        Ok(optional_int(&params, name, 1, MAX_SECONDS)?.map(|s| Duration::from_secs(s as u64)))
    };
    let registration = Registration {
        url: url.trim().to_string(),
        model_name: params.get("model_name").cloned(),
        initial_workers: optional_int(&params, "initial_workers", 1, WorkerRange::MAX as i64)?
            .map(|n| n as usize),
        batch_size: optional_int(&params, "batch_size", 1, MAX_BATCH)?.map(|n| n as usize),
        max_batch_delay: millis("max_batch_delay", MAX_SECONDS * 1000)?,
        response_timeout: seconds("response_timeout")?,
        startup_timeout: seconds("startup_timeout")?,
    };
    runtime(&params)?;
    let synchronous = flag(&params, "synchronous", true)?;
    let registered = state
        .registry
        .register_model(&state.server, registration, synchronous)
        .await?;
    if !synchronous {
        return Ok(status(
            StatusCode::ACCEPTED,
            "Processing worker updates...".into(),
        ));
    }
    let message = registered
        .iter()
        .map(|(id, workers)| {
            format!(
                "Model \"{}\" Version: {} registered with {workers} initial workers",
                id.name, id.version
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Ok(status(StatusCode::OK, message))
}

/// `runtime`, which TorchServe checks against its runtime types: one of
/// them is accepted (ortserve runs ONNX Runtime whichever it names), any
/// other is TorchServe's 400.
fn runtime(params: &HashMap<String, String>) -> Result<(), TorchServeError> {
    match params.get("runtime").map(String::as_str) {
        None | Some("python" | "python3" | "LSP") => Ok(()),
        Some(other) => Err(bad(format!(
            "Invalid RuntimeType value: {}",
            crate::types::excerpt(other)
        ))),
    }
}

/// The longest timeout or delay a registration may ask for, in seconds.
const MAX_SECONDS: i64 = 86_400;
/// The largest `batch_size` a registration may ask for.
const MAX_BATCH: i64 = 1 << 16;

/// `DELETE /models/{m}[/{v}]`: only with `enable_model_api`.
async fn unregister(State(state): Shared, path: Segments) -> Answer {
    if !state.server.model_api.enabled {
        return Err(TorchServeError(Error::ModelApiOff));
    }
    let (name, version) = model_path(path)?;
    state
        .registry
        .unregister_model(&name, version.as_deref())
        .await?;
    Ok(status(
        StatusCode::OK,
        format!("Model \"{name}\" unregistered"),
    ))
}

fn bad(message: String) -> TorchServeError {
    TorchServeError(Error::BadInput(message))
}

fn query(params: Params) -> Result<HashMap<String, String>, TorchServeError> {
    params
        .map(|Query(params)| params)
        .map_err(|rejection| bad(rejection.body_text()))
}

fn model_path(path: Segments) -> Result<(String, Option<String>), TorchServeError> {
    let Path(mut segments) = path.map_err(|rejection| bad(rejection.body_text()))?;
    let name = segments.remove("model").unwrap_or_default();
    Ok((name, segments.remove("version")))
}

/// A whole-number parameter within `[min, max]`, or a 400 naming it.
fn optional_int(
    params: &HashMap<String, String>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, TorchServeError> {
    let Some(text) = params.get(name) else {
        return Ok(None);
    };
    let range = match (min, max) {
        (i64::MIN, i64::MAX) => String::new(),
        _ => format!(" from {min} to {max}"),
    };
    match text.trim().parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(bad(format!(
            "{name} must be a whole number{range}; got '{}'",
            crate::types::excerpt(text)
        ))),
    }
}

/// A `true`/`false` parameter, or a 400 naming it.
fn flag(
    params: &HashMap<String, String>,
    name: &str,
    default: bool,
) -> Result<bool, TorchServeError> {
    match params.get(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(bad(format!(
            "{name} must be true or false; got '{}'",
            crate::types::excerpt(&v)
        ))),
    }
}

/// A time as TorchServe writes it: ISO 8601 in UTC with milliseconds.
fn iso_time(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (days, seconds) = (since.as_secs() / 86_400, since.as_secs() % 86_400);
    let (year, month, day) = civil_date(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_torchserve_writes_them() {
        let at = |secs: u64, millis: u64| {
            iso_time(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // TorchServe's documented example, 2022-02-08T11:03:20.974Z.
        assert_eq!(at(1_644_318_200, 974), "2022-02-08T11:03:20.974Z");
        // A leap day, and the last second of a year.
        assert_eq!(at(1_709_164_800, 1), "2024-02-29T00:00:00.001Z");
        assert_eq!(at(1_798_761_599, 0), "2026-12-31T23:59:59.000Z");
    }
}
