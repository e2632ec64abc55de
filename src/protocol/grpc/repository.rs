//! The model repository extension over gRPC, as Triton declares it
//! (`RepositoryIndex`, `RepositoryModelLoad`, `RepositoryModelUnload`): the
//! REST routes' rules and code (`protocol::repository`), in gRPC's messages
//! and statuses.

use tonic::Status;

use super::proto::inference::repository_index_response::ModelIndex;
use super::proto::inference::{
    RepositoryIndexRequest, RepositoryIndexResponse, RepositoryModelLoadRequest,
    RepositoryModelUnloadRequest,
};
use super::status;
use crate::protocol::management::ManagementState;
use crate::protocol::repository::{
    RepositoryError, index_entries, load, refuse_parameter_names, unload,
};

pub(super) fn index(
    state: &ManagementState,
    request: RepositoryIndexRequest,
) -> RepositoryIndexResponse {
    let models = index_entries(state, request.ready)
        .into_iter()
        .map(|entry| ModelIndex {
            name: entry.id.name,
            version: entry.id.version,
            state: entry.state.into(),
            reason: entry.reason.unwrap_or_default(),
        })
        .collect();
    RepositoryIndexResponse { models }
}

pub(super) async fn load_model(
    state: &ManagementState,
    request: RepositoryModelLoadRequest,
) -> Result<(), Status> {
    refuse_parameter_names(request.parameters.keys().map(String::as_str)).map_err(status)?;
    load(state, &request.model_name)
        .await
        .map_err(repository_status)
}

pub(super) async fn unload_model(
    state: &ManagementState,
    request: RepositoryModelUnloadRequest,
) -> Result<(), Status> {
    refuse_parameter_names(request.parameters.keys().map(String::as_str)).map_err(status)?;
    unload(state, &request.model_name)
        .await
        .map_err(repository_status)
}

fn repository_status(error: RepositoryError) -> Status {
    match error {
        RepositoryError::Refused(error) => status(error),
        RepositoryError::Disabled => Status::failed_precondition(
            "loading and unloading models is disabled; start ortserve with enable_model_api=true (or --enable-model-api)",
        ),
    }
}
