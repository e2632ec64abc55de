//! Where gRPC listens: TorchServe's `grpc_inference_address` (a host,
//! default `127.0.0.1`) and `grpc_inference_port` (7070), KServe's
//! `--grpc_port`, and ortserve's `--grpc-address`. `enable_grpc_ssl=true` is
//! refused, as `https://` addresses are: TLS ends in front of ortserve.

use std::net::SocketAddr;

use super::values::{parse_address, parse_bool};
use super::{ConfigError, Properties};

pub(super) fn inference_address(props: &Properties) -> Result<SocketAddr, ConfigError> {
    if parse_bool(props, "enable_grpc_ssl", false)? {
        return Err(ConfigError::Invalid(
            "enable_grpc_ssl=true: gRPC over TLS is not supported; terminate TLS in front of \
             ortserve (Ingress, service mesh) and serve plaintext HTTP/2 (h2c)"
                .into(),
        ));
    }
    if let Some(address) = props.get("ortserve_grpc_address") {
        return parse_address("--grpc-address", address);
    }
    let host = props.get("grpc_inference_address").unwrap_or("127.0.0.1");
    let port = props.get("grpc_inference_port").unwrap_or("7070");
    let port: u16 = port.trim().parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "grpc_inference_port={port}: expected a port number (0 to 65535)"
        ))
    })?;
    parse_address("grpc_inference_address", &format!("{}:{port}", host.trim()))
}
