//! Triton's statistics extension: `GET /v2/models/stats` (every model),
//! `/v2/models/{m}/stats` (every version of one) and
//! `/v2/models/{m}/versions/{v}/stats`, in Triton's JSON shape, which
//! tritonclient's `get_inference_statistics` returns as is. The numbers are
//! read from the counters the metrics keep (see
//! [`ModelMetrics::statistics`](crate::telemetry::ModelMetrics::statistics)),
//! so serving pays nothing for them; with `enable_metrics_api=false` they
//! stay zero.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::protocol::AppState;
use crate::protocol::body::json_response;
use crate::protocol::kserve_v1::KServeError;
use crate::telemetry::Timed;
use crate::types::{Error, ModelId};

pub(super) async fn all(State(state): State<Arc<AppState>>) -> Response {
    let ids = state
        .registry
        .model_names()
        .into_iter()
        .map(|name| versions(&state, &name, None))
        .collect::<Result<Vec<_>, Error>>()
        .map(|ids| ids.concat());
    answer(&state, ids)
}

pub(super) async fn model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Response {
    let ids = versions(&state, &model, None);
    answer(&state, ids)
}

pub(super) async fn version(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    let ids = versions(&state, &model, Some(&version));
    answer(&state, ids)
}

/// The versions asked for: all of the model's, or the one named.
fn versions(state: &AppState, name: &str, version: Option<&str>) -> Result<Vec<ModelId>, Error> {
    let known = state.registry.versions(name)?;
    let chosen = match version {
        None => known,
        Some(v) if known.iter().any(|k| k == v) => vec![v.to_string()],
        Some(v) => {
            return Err(Error::VersionNotFound {
                model: name.to_string(),
                version: v.to_string(),
            });
        }
    };
    Ok(chosen
        .into_iter()
        .map(|version| ModelId {
            name: name.to_string(),
            version,
        })
        .collect())
}

fn answer(state: &AppState, ids: Result<Vec<ModelId>, Error>) -> Response {
    match ids {
        Ok(ids) => {
            let stats: Vec<Value> = ids.iter().map(|id| model_stats(state, id)).collect();
            json_response(StatusCode::OK, json!({ "model_stats": stats }).to_string())
        }
        Err(error) => KServeError(error).into_response(),
    }
}

/// One version in Triton's shape. `batch_stats` stays empty: the compute
/// histogram is not kept per batch size.
fn model_stats(state: &AppState, id: &ModelId) -> Value {
    let s = state.metrics.model(id).statistics();
    let timed = |t: Timed| json!({"count": t.count, "ns": t.ns});
    json!({
        "name": id.name,
        "version": id.version,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": timed(s.success),
            "fail": timed(s.fail),
            "queue": timed(s.queue),
            "compute_input": timed(s.compute_input),
            "compute_infer": timed(s.compute_infer),
            "compute_output": timed(s.compute_output),
        },
        "batch_stats": [],
    })
}
