//! Triton's model-configuration extension: `GET /v2/models/{m}/config` (and
//! `/versions/{v}/config`) answers a model's settings in the JSON shape of
//! Triton's `config.pbtxt`, as far as it applies to an ONNX model served
//! here. tritonclient's `get_model_config` returns this object as is.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::codec::oip_name;
use crate::protocol::AppState;
use crate::protocol::body::json_response;
use crate::protocol::kserve_v1::KServeError;
use crate::types::{DataType, Error, TensorSpec};

pub(super) async fn default_version(
    state: State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Response {
    answer(&state, &model, None)
}

pub(super) async fn version(
    state: State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    answer(&state, &model, Some(&version))
}

fn answer(state: &AppState, name: &str, version: Option<&str>) -> Response {
    match config(state, name, version) {
        Ok(body) => json_response(StatusCode::OK, body.to_string()),
        Err(error) => KServeError(error).into_response(),
    }
}

/// Triton's reading of the model: with a batch axis, `max_batch_size` is
/// `batchSize` and `dims` leave that axis out; without one it is 0 and
/// `dims` are the whole shape. Every version is served (`all`).
fn config(state: &AppState, name: &str, version: Option<&str>) -> Result<Value, Error> {
    let model = state.registry.resolve(name, version)?;
    let settings = model.settings();
    let io = model.io();
    let batched = io.has_batch_axis();
    let tensors = |specs: &[TensorSpec]| -> Vec<Value> {
        specs.iter().map(|spec| tensor(spec, batched)).collect()
    };
    let mut config = json!({
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"all": {}},
        "max_batch_size": if batched { settings.batch_size } else { 0 },
        "input": tensors(&io.inputs),
        "output": tensors(&io.outputs),
        "instance_group": [instance_group(state, &model.id, settings.max_workers)],
    });
    if batched && settings.batch_size > 1 {
        config["dynamic_batching"] = json!({
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": settings.max_batch_delay.as_micros() as u64,
        });
    }
    Ok(config)
}

fn tensor(spec: &TensorSpec, batched: bool) -> Value {
    let dims = if batched {
        &spec.shape[1..]
    } else {
        &spec.shape[..]
    };
    json!({"name": spec.name, "data_type": triton_type(spec.dtype), "dims": dims})
}

/// Triton's `TYPE_*` names: the OIP names, but `TYPE_STRING` for BYTES.
fn triton_type(dtype: DataType) -> String {
    match dtype {
        DataType::String => "TYPE_STRING".into(),
        other => format!("TYPE_{}", oip_name(other)),
    }
}

/// The workers as one instance group: up to `maxWorkers` sessions, on the
/// device the version's sessions run on.
fn instance_group(state: &AppState, id: &crate::types::ModelId, max_workers: usize) -> Value {
    let device = state
        .registry
        .gauges()
        .into_iter()
        .find(|gauges| &gauges.model == id)
        .and_then(|gauges| gauges.device);
    let gpu = device
        .as_deref()
        .and_then(|d| d.strip_prefix("cuda:"))
        .and_then(|n| n.parse::<u32>().ok());
    let mut group = json!({"name": id.name, "count": max_workers, "kind": "KIND_CPU"});
    if let Some(gpu) = gpu {
        group["kind"] = "KIND_GPU".into();
        group["gpus"] = json!([gpu]);
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_names_its_types_type_star_and_bytes_string() {
        assert_eq!(triton_type(DataType::F32), "TYPE_FP32");
        assert_eq!(triton_type(DataType::I64), "TYPE_INT64");
        assert_eq!(triton_type(DataType::String), "TYPE_STRING");
    }

    #[test]
    fn batched_dims_leave_out_the_batch_axis() {
        let spec = TensorSpec {
            name: "x".into(),
            dtype: DataType::F32,
            shape: vec![-1, 4],
        };
        assert_eq!(tensor(&spec, true)["dims"], json!([4]));
        assert_eq!(tensor(&spec, false)["dims"], json!([-1, 4]));
    }
}
