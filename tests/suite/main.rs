//! The integration suite, one binary (one link instead of one per file on a
//! 2-core CI machine). Each module runs the real `ortserve` binary over
//! loopback HTTP against real ONNX Runtime and generated models (`common`
//! is the harness); run one with `cargo test --test suite <module>::`.

mod common;

mod batching_and_workers;
mod check;
mod common_mistakes;
mod configuration;
mod docs_examples;
mod drain;
mod explanations;
mod footprint;
mod grafana_dashboard;
mod grpc;
mod hardening;
mod image_classifier;
mod inference_api;
mod kserve_runtime;
mod kserve_v1;
mod kserve_v2;
mod kube_cluster;
mod management;
mod metrics;
mod model_config_dir;
mod model_sources;
mod real_clients;
mod text_generation;
mod token_auth;
mod torchserve_grpc;
mod tracing;
mod upstream_suites;
