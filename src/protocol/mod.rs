//! HTTP adapters: each protocol decodes its wire format into the core types,
//! calls the registry and the model's handler and pool, and encodes the
//! answer or error in its own shape.
//!
//! * [`torchserve`]: TorchServe's inference API (`/ping`, `/predictions`,
//!   `/explanations`, `OPTIONS /`).
//! * [`kserve_v1`]: KServe's v1 protocol (`/v1/models/{m}:predict`, `:explain`).
//! * [`kserve_v2`]: the Open Inference Protocol (`/v2/...`), JSON and binary tensors.
//!
//! Adapters never reach into the scheduler's queue or the engine; they only
//! use [`ServingModel`](crate::registry::ServingModel)'s handler and pool.

mod body;
mod kserve_v1;
mod kserve_v2;
mod torchserve;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Router, middleware};

use crate::registry::ModelRegistry;

/// Byte limits on request and response bodies (TorchServe's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub max_request_size: usize,
    pub max_response_size: usize,
}

impl BodyLimits {
    fn check_response(&self, size: usize) -> Result<(), crate::types::Error> {
        if size > self.max_response_size {
            return Err(crate::types::Error::ResponseTooLarge(format!(
                "the answer is {size} bytes, over max_response_size={}; send fewer rows or raise max_response_size",
                self.max_response_size
            )));
        }
        Ok(())
    }
}

/// What a request asks of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Predict,
    /// Attributions: how much each input element drove the prediction.
    Explain,
}

/// What every request handler can reach.
pub struct AppState {
    pub registry: Arc<ModelRegistry>,
    pub limits: BodyLimits,
    /// `OPTIONS /`'s body, rendered once.
    api_description: String,
}

impl AppState {
    pub fn new(registry: Arc<ModelRegistry>, limits: BodyLimits) -> Arc<AppState> {
        let api_description =
            include_str!("inference_openapi.json").replace("%VERSION%", env!("CARGO_PKG_VERSION"));
        Arc::new(AppState {
            registry,
            limits,
            api_description,
        })
    }
}

/// The inference listener's routes: all three protocols on one port.
pub fn inference_router(state: Arc<AppState>) -> Router {
    torchserve::routes()
        .merge(kserve_v1::routes())
        .merge(kserve_v2::routes())
        .with_state(state)
        .layer(middleware::from_fn(stamp_response))
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every response an `x-request-id` (the caller's, if it sent a sane
/// one, so traces join up; else a new UUID) and TorchServe's no-cache headers.
async fn stamp_response(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .cloned()
        .unwrap_or_else(new_request_id);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(X_REQUEST_ID.clone(), id);
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache; no-store, must-revalidate, private"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::EXPIRES,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 UTC"),
    );
    response
}

fn new_request_id() -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}
