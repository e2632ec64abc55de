//! Where gRPC listens. TorchServe's keys: `grpc_inference_address` and
//! `grpc_management_address` (hosts, default `127.0.0.1`), with
//! `grpc_inference_port` (7070) and `grpc_management_port` (7071); KServe's
//! `--grpc_port`; ortserve's `--grpc-address` and
//! `--grpc-management-address`. `enable_grpc_ssl=true` is refused, as
//! `https://` addresses are: TLS ends in front of ortserve.

use std::net::SocketAddr;

use super::values::{parse_address, parse_bool};
use super::{ConfigError, Properties};

/// One gRPC listener's keys.
struct GrpcKeys {
    /// ortserve's `http://HOST:PORT` override (from the command line).
    address_override: (&'static str, &'static str),
    host: &'static str,
    port: &'static str,
    default_port: &'static str,
}

pub(super) fn inference_address(props: &Properties) -> Result<SocketAddr, ConfigError> {
    refuse_tls(props)?;
    let keys = GrpcKeys {
        address_override: ("ortserve_grpc_address", "--grpc-address"),
        host: "grpc_inference_address",
        port: "grpc_inference_port",
        default_port: "7070",
    };
    address(props, &keys)
}

pub(super) fn management_address(props: &Properties) -> Result<SocketAddr, ConfigError> {
    let keys = GrpcKeys {
        address_override: (
            "ortserve_grpc_management_address",
            "--grpc-management-address",
        ),
        host: "grpc_management_address",
        port: "grpc_management_port",
        default_port: "7071",
    };
    address(props, &keys)
}

fn refuse_tls(props: &Properties) -> Result<(), ConfigError> {
    match parse_bool(props, "enable_grpc_ssl", false)? {
        false => Ok(()),
        true => Err(ConfigError::Invalid(
            "enable_grpc_ssl=true: gRPC over TLS is not supported; terminate TLS in front of \
             ortserve (Ingress, service mesh) and serve plaintext HTTP/2 (h2c)"
                .into(),
        )),
    }
}

fn address(props: &Properties, keys: &GrpcKeys) -> Result<SocketAddr, ConfigError> {
    let (override_key, flag) = keys.address_override;
    if let Some(address) = props.get(override_key) {
        return parse_address(flag, address);
    }
    let host = props.get(keys.host).unwrap_or("127.0.0.1");
    let port = props.get(keys.port).unwrap_or(keys.default_port);
    let port: u16 = port.trim().parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "{}={port}: expected a port number (0 to 65535)",
            keys.port
        ))
    })?;
    parse_address(keys.host, &format!("{}:{port}", host.trim()))
}
