//! TorchServe's gRPC management API (`org.pytorch.serve.grpc.management.
//! ManagementAPIsService`), on its own listener (`grpc_management_address`,
//! port 7071). Each call is the REST management call it names, sent to the
//! management routes in-process: the same rules, checks, token and answers.
//! `msg` carries, as in TorchServe, a description's or a list's JSON, or a
//! change's status text; an error is the gRPC status for its HTTP status,
//! with the REST error's `message`. Like the REST listener, it
//! serves until the process exits, so a draining server can be looked at.
//! Calls are logged and counted as the REST calls they become.

use std::fmt::Write;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use crate::types::ModelId;

use super::proto::org::pytorch::serve::grpc::management::management_ap_is_service_server::ManagementApIsService;
use super::proto::org::pytorch::serve::grpc::management::{
    DescribeModelRequest, ListModelsRequest, ManagementResponse, RegisterModelRequest,
    ScaleWorkerRequest, SetDefaultRequest, UnregisterModelRequest,
};

/// The largest REST answer read back (a page of 1000 described models fits).
const MAX_ANSWER: usize = 16 << 20;

pub struct TorchServeManagement {
    /// The management listener's routes, token gate included.
    pub(super) routes: Router,
}

type Answer = Result<Response<ManagementResponse>, Status>;

#[tonic::async_trait]
impl ManagementApIsService for TorchServeManagement {
    async fn describe_model(&self, request: Request<DescribeModelRequest>) -> Answer {
        let (metadata, _, request) = request.into_parts();
        let mut uri = model_path(&request.model_name, &request.model_version)?;
        Query::new(&mut uri).flag("customized", request.customized);
        self.call(&metadata, Method::GET, uri).await
    }

    async fn list_models(&self, request: Request<ListModelsRequest>) -> Answer {
        let (metadata, _, request) = request.into_parts();
        let mut uri = String::from("/models");
        Query::new(&mut uri)
            .number("limit", request.limit)
            .number("next_page_token", request.next_page_token);
        self.call(&metadata, Method::GET, uri).await
    }

    async fn register_model(&self, request: Request<RegisterModelRequest>) -> Answer {
        let (metadata, _, r) = request.into_parts();
        let mut uri = String::from("/models");
        Query::new(&mut uri)
            .text("url", &r.url)
            .text("model_name", &r.model_name)
            .text("handler", &r.handler)
            .text("runtime", &r.runtime)
            .number("batch_size", r.batch_size)
            .number("initial_workers", r.initial_workers)
            .number("max_batch_delay", r.max_batch_delay)
            .number("response_timeout", r.response_timeout)
            .number("startup_timeout", r.startup_timeout)
            // proto3's false is TorchServe's gRPC default: asynchronous.
            .value("synchronous", r.synchronous);
        self.call(&metadata, Method::POST, uri).await
    }

    async fn scale_worker(&self, request: Request<ScaleWorkerRequest>) -> Answer {
        let (metadata, _, r) = request.into_parts();
        let mut uri = model_path(&r.model_name, &r.model_version)?;
        Query::new(&mut uri)
            .number("min_worker", r.min_worker)
            .number("max_worker", r.max_worker)
            .number("number_gpu", r.number_gpu)
            .number("timeout", r.timeout)
            .value("synchronous", r.synchronous);
        self.call(&metadata, Method::PUT, uri).await
    }

    async fn set_default(&self, request: Request<SetDefaultRequest>) -> Answer {
        let (metadata, _, r) = request.into_parts();
        if r.model_version.is_empty() {
            return Err(Status::invalid_argument("model_version is required"));
        }
        let uri = model_path(&r.model_name, &r.model_version)? + "/set-default";
        self.call(&metadata, Method::PUT, uri).await
    }

    async fn unregister_model(&self, request: Request<UnregisterModelRequest>) -> Answer {
        let (metadata, _, r) = request.into_parts();
        let uri = model_path(&r.model_name, &r.model_version)?;
        self.call(&metadata, Method::DELETE, uri).await
    }
}

impl TorchServeManagement {
    /// Sends the REST call, with the call's token, and translates its answer.
    async fn call(&self, metadata: &MetadataMap, method: Method, uri: String) -> Answer {
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        if let Some(token) = metadata.get("authorization") {
            request = request.header(header::AUTHORIZATION, token.as_bytes());
        }
        let request = request
            .body(Body::empty())
            .map_err(|e| Status::invalid_argument(format!("a field is not valid in a URL: {e}")))?;
        // A Router is always ready, so it is called without `poll_ready`.
        let mut routes = self.routes.clone();
        let answer = tower_service::Service::call(&mut routes, request)
            .await
            .unwrap_or_else(|never| match never {});
        let code = answer.status();
        let body = axum::body::to_bytes(answer.into_body(), MAX_ANSWER)
            .await
            .map_err(|e| Status::internal(format!("the management answer was not read: {e}")))?;
        let text = String::from_utf8_lossy(&body).into_owned();
        match code.is_success() {
            true => Ok(Response::new(ManagementResponse { msg: message(text) })),
            false => Err(refusal(code, &text)),
        }
    }
}

/// A change's REST answer (`{"status": "..."}`) becomes its text, as
/// TorchServe's gRPC answers it; a description or list stays JSON.
fn message(body: String) -> String {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StatusOnly {
        status: String,
    }
    match serde_json::from_str::<StatusOnly>(&body) {
        Ok(answer) => answer.status,
        Err(_) => body,
    }
}

/// `/models/{name}[/{version}]`, each segment encoded.
fn model_path(name: &str, version: &str) -> Result<String, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("model_name is required"));
    }
    // Past these lengths no model can have the name or version; a longer
    // one would only make a long path to log.
    if name.len() > ModelId::MAX_NAME_LEN {
        let most = ModelId::MAX_NAME_LEN;
        return Err(Status::invalid_argument(format!(
            "model_name is {} bytes; a model name has at most {most}",
            name.len()
        )));
    }
    if version.len() > ModelId::MAX_VERSION_LEN {
        let most = ModelId::MAX_VERSION_LEN;
        return Err(Status::invalid_argument(format!(
            "model_version is {} bytes; a model version has at most {most}",
            version.len()
        )));
    }
    let mut path = format!("/models/{}", utf8_percent_encode(name, NON_ALPHANUMERIC));
    if !version.is_empty() {
        write!(path, "/{}", utf8_percent_encode(version, NON_ALPHANUMERIC)).expect("to a String");
    }
    Ok(path)
}

/// A query string built from a message's fields; proto3's empty values
/// (`""`, `0`) mean the field was not given and leave the REST default.
struct Query<'a> {
    uri: &'a mut String,
}

impl<'a> Query<'a> {
    fn new(uri: &'a mut String) -> Query<'a> {
        Query { uri }
    }

    fn value(self, key: &str, value: impl std::fmt::Display) -> Query<'a> {
        let separator = if self.uri.contains('?') { '&' } else { '?' };
        let value = value.to_string();
        let value = utf8_percent_encode(&value, NON_ALPHANUMERIC);
        write!(self.uri, "{separator}{key}={value}").expect("to a String");
        self
    }

    fn text(self, key: &str, value: &str) -> Query<'a> {
        match value.is_empty() {
            true => self,
            false => self.value(key, value),
        }
    }

    fn number(self, key: &str, value: i32) -> Query<'a> {
        match value {
            0 => self,
            _ => self.value(key, value),
        }
    }

    fn flag(self, key: &str, value: bool) -> Query<'a> {
        match value {
            true => self.value(key, true),
            false => self,
        }
    }
}

/// The gRPC status for a REST refusal, with its `message`.
fn refusal(code: StatusCode, body: &str) -> Status {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.trim().to_string());
    let message = crate::types::bounded_message(message);
    let code = match code.as_u16() {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 => {
            return Status::failed_precondition(
                "registering and unregistering models is disabled; start ortserve with \
                 enable_model_api=true (or --enable-model-api)",
            );
        }
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::AlreadyExists,
        413 | 429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        500..=599 => Code::Internal,
        _ => Code::Unknown,
    };
    Status::new(code, message)
}
