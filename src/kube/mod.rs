//! ortserve in its cluster: the only module that uses `kube` and
//! `k8s-openapi`. It records [`ServerEvent`]s as Kubernetes Events on
//! ortserve's own Pod, and, with `--configmap-selector`, reads model
//! declarations from ConfigMaps through the API (instant reloads, no wait
//! for kubelet's volume sync), feeding the same reconcile path as the
//! mounted directory.
//!
//! It is on only in a cluster: the Pod's name and namespace come from the
//! downward API (`POD_NAME`, `POD_NAMESPACE`, optionally `POD_UID`) and the
//! API connection from the service account (or `KUBECONFIG`). Elsewhere it
//! stays silent. It never touches models or requests.

use std::collections::BTreeMap;

use ::kube::api::{Api, ListParams};
use ::kube::runtime::events::{Event, EventType, Recorder, Reporter};
use ::kube::runtime::watcher::{self, Event as Watched};
use ::kube::{Client, Config};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use tokio::sync::watch;

use crate::config::DeclarationSet;
use crate::types::{EventSink, ServerEvent, prefix_within};

/// Kubernetes caps an Event's note at 1 kB.
const MAX_NOTE: usize = 1024;

/// A connection to the API server, on behalf of ortserve's Pod.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    pod: ObjectReference,
    namespace: String,
}

impl Cluster {
    /// Connects when running in a cluster; `None` (silently) outside one.
    pub async fn connect() -> Option<Cluster> {
        let downward = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let (name, namespace) = (downward("POD_NAME")?, downward("POD_NAMESPACE")?);
        let client = match Config::infer().await.map(Client::try_from) {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::warn!(
                    "POD_NAME is set but the Kubernetes client cannot be built ({e}); no Kubernetes Events"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(
                    "POD_NAME is set but no Kubernetes API configuration was found ({e}); no Kubernetes Events"
                );
                return None;
            }
        };
        let pod = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(namespace.clone()),
            uid: downward("POD_UID"),
            ..ObjectReference::default()
        };
        tracing::info!(pod = ?pod.name, namespace, "in a cluster: recording Kubernetes Events on this Pod");
        Some(Cluster {
            client,
            pod,
            namespace,
        })
    }

    /// Starts recording server events on the Pod; returns where to send them.
    pub fn record_events(&self) -> EventSink {
        let (sink, mut queue) = EventSink::channel();
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "ortserve".into(),
                instance: self.pod.name.clone(),
            },
        );
        let pod = self.pod.clone();
        tokio::spawn(async move {
            while let Some((event, _handled)) = queue.next().await {
                let event = to_kubernetes(event);
                if let Err(e) = recorder.publish(&event, &pod).await {
                    tracing::warn!(
                        reason = event.reason,
                        "cannot record a Kubernetes Event: {e}"
                    );
                }
            }
        });
        sink
    }

    /// Model declarations from the ConfigMaps matching `selector`, as of
    /// now, then as they change. A key `K` of ConfigMap `C` is file `C/K`.
    /// The error says why they cannot be listed (the API's own error type
    /// stays in this module).
    pub async fn declarations(
        &self,
        selector: &str,
    ) -> Result<watch::Receiver<DeclarationSet>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let listed = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| format!("cannot list ConfigMaps ({selector}): {e}"))?;
        let mut maps: BTreeMap<String, ConfigMap> = listed
            .items
            .into_iter()
            .map(|map| (map_name(&map), map))
            .collect();
        tracing::info!(
            selector,
            configmaps = maps.len(),
            "reading model declarations from ConfigMaps"
        );
        let (publish, receiver) = watch::channel(declarations(&maps));
        let config = watcher::Config::default().labels(selector);
        tokio::spawn(async move {
            let mut changes = std::pin::pin!(watcher::watcher(api, config));
            let mut relisted = BTreeMap::new();
            while let Some(change) = changes.next().await {
                match change {
                    Ok(Watched::Apply(map)) => {
                        maps.insert(map_name(&map), map);
                    }
                    Ok(Watched::Delete(map)) => {
                        maps.remove(&map_name(&map));
                    }
                    Ok(Watched::Init) => relisted.clear(),
                    Ok(Watched::InitApply(map)) => {
                        relisted.insert(map_name(&map), map);
                    }
                    Ok(Watched::InitDone) => maps = std::mem::take(&mut relisted),
                    Err(e) => {
                        tracing::warn!("watching ConfigMaps failed ({e}); retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                }
                let set = declarations(&maps);
                publish.send_if_modified(|latest| {
                    let changed = latest.digest != set.digest;
                    if changed {
                        *latest = set;
                    }
                    changed
                });
            }
        });
        Ok(receiver)
    }
}

fn map_name(map: &ConfigMap) -> String {
    map.metadata.name.clone().unwrap_or_default()
}

fn declarations(maps: &BTreeMap<String, ConfigMap>) -> DeclarationSet {
    DeclarationSet::from_files(maps.iter().flat_map(|(name, map)| {
        map.data
            .iter()
            .flatten()
            .map(move |(key, text)| (format!("{name}/{key}"), Ok(text.clone().into_bytes())))
    }))
}

fn to_kubernetes(event: ServerEvent) -> Event {
    let (type_, reason, action, note) = match event {
        ServerEvent::ModelLoaded { model, device } => (
            EventType::Normal,
            "ModelLoaded",
            "Load",
            format!(
                "model {} version {} is ready on {device}",
                model.name, model.version
            ),
        ),
        ServerEvent::ModelLoadFailed { model, failure } => (
            EventType::Warning,
            "ModelLoadFailed",
            "Load",
            format!(
                "model {} version {} failed to load ({}): {failure}",
                model.name,
                model.version,
                failure.kind.as_str()
            ),
        ),
        ServerEvent::ConfigRejected { file, reason } => (
            EventType::Warning,
            "ConfigRejected",
            "Reload",
            format!("{file} was rejected; the model keeps its last good configuration: {reason}"),
        ),
        ServerEvent::Draining => (
            EventType::Normal,
            "Draining",
            "Shutdown",
            "stop signal received: readiness is off; finishing in-flight requests".to_string(),
        ),
    };
    Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note)),
        action: action.into(),
        secondary: None,
    }
}

fn truncate(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        note.truncate(prefix_within(&note, MAX_NOTE - 3).len());
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LoadFailure, LoadFailureKind, ModelId};

    #[test]
    fn server_events_become_kubernetes_events() {
        let failed = to_kubernetes(ServerEvent::ModelLoadFailed {
            model: ModelId {
                name: "digits".into(),
                version: "2.0".into(),
            },
            failure: LoadFailure::new(LoadFailureKind::BadGraph, "x".repeat(5000)),
        });
        assert_eq!(
            (failed.type_, failed.reason.as_str(), failed.action.as_str()),
            (EventType::Warning, "ModelLoadFailed", "Load")
        );
        let note = failed.note.unwrap();
        assert!(note.starts_with("model digits version 2.0 failed to load (bad_graph): xxx"));
        assert_eq!(note.len(), MAX_NOTE);
        assert_eq!(to_kubernetes(ServerEvent::Draining).reason, "Draining");
    }

    #[test]
    fn configmap_keys_are_declaration_files() {
        let map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "models"},
            "data": {"linear.yaml": "source: linear\n", "config.properties": "x=1\n"},
        }))
        .unwrap();
        let set = declarations(&BTreeMap::from([("models".to_string(), map)]));
        let files: Vec<&String> = set.files.keys().collect();
        assert_eq!(files, ["models/linear.yaml"]);
        assert_eq!(
            set.files["models/linear.yaml"].as_ref().unwrap().name,
            "linear"
        );
    }
}
