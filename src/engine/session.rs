//! Building one ORT session under ortserve's execution-provider policy, and
//! running batches through it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ort::ep::CUDA;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session, SessionInputValue};

use super::convert::{input_value, output_rows, tensor_spec};
use super::{EngineError, environment};
use crate::config::OptimizationLevel;
use crate::types::{ModelIo, Tensor};

/// Where the ONNX graph comes from.
#[derive(Debug, Clone, Copy)]
pub enum OnnxSource<'a> {
    /// A file on disk; external-data files next to it are found by ORT.
    File(&'a Path),
    /// The whole graph in memory (e.g. read out of a `.mar` archive).
    Bytes(&'a [u8]),
}

/// What the model configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Cpu,
    /// `deviceType: gpu`: CUDA, or a load failure unless `cpu_fallback`.
    Cuda {
        device_id: i32,
        cpu_fallback: bool,
    },
    /// `deviceType` unset: CUDA when it works here, else CPU without fuss.
    Auto {
        device_id: i32,
    },
}

/// Where a session actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

/// Everything that shapes one session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionOptions {
    pub device: DeviceRequest,
    pub intra_op_threads: usize,
    pub inter_op_threads: usize,
    pub intra_op_spinning: bool,
    pub optimization: OptimizationLevel,
}

/// A live ORT session plus what ortserve learned about it.
pub struct EngineSession {
    session: Session,
    io: ModelIo,
    device: Device,
    fallback_reason: Option<String>,
}

impl EngineSession {
    /// Builds a session for `source`. With CUDA requested, a failure either
    /// fails the build or (fallback allowed, or device unset) yields a CPU
    /// session that records why in [`EngineSession::fallback_reason`].
    pub fn build(
        source: OnnxSource<'_>,
        options: &SessionOptions,
    ) -> Result<EngineSession, EngineError> {
        let (session, device, fallback_reason) = match options.device {
            DeviceRequest::Cpu => (commit(cpu_builder(options)?, source)?, Device::Cpu, None),
            DeviceRequest::Cuda {
                device_id,
                cpu_fallback,
            } => match commit_cuda(source, options, device_id) {
                Ok(session) => (session, Device::Cuda(device_id), None),
                Err(reason) if cpu_fallback => (
                    commit(cpu_builder(options)?, source)?,
                    Device::Cpu,
                    Some(reason),
                ),
                Err(reason) => return Err(EngineError::Cuda(reason)),
            },
            DeviceRequest::Auto { device_id } if gpu_present() => {
                match commit_cuda(source, options, device_id) {
                    Ok(session) => (session, Device::Cuda(device_id), None),
                    Err(reason) => (
                        commit(cpu_builder(options)?, source)?,
                        Device::Cpu,
                        Some(reason),
                    ),
                }
            }
            DeviceRequest::Auto { .. } => {
                (commit(cpu_builder(options)?, source)?, Device::Cpu, None)
            }
        };
        let io = describe(&session)?;
        Ok(EngineSession {
            session,
            io,
            device,
            fallback_reason,
        })
    }

    pub fn io(&self) -> &ModelIo {
        &self.io
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Why CUDA was not used although it was asked for or could have been.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Runs one batch made of requests of `requests[i]` rows each, stacked
    /// in order on axis 0. `inputs` are in graph order; each request gets its
    /// outputs in graph order, its rows copied once out of ORT's buffers. A
    /// lone request gets every output whole. `control` lets another thread
    /// cancel the run.
    pub fn run(
        &mut self,
        inputs: &[Tensor],
        requests: &[usize],
        control: &RunControl,
    ) -> Result<Vec<Vec<Tensor>>, EngineError> {
        let values = inputs
            .iter()
            .map(input_value)
            .collect::<Result<Vec<SessionInputValue<'_>>, _>>()?;
        let result = self
            .session
            .run_with_options(values.as_slice(), &control.options);
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(_) if control.was_terminated() => return Err(EngineError::Terminated),
            Err(e) => return Err(EngineError::Run(e.to_string())),
        };
        let mut per_request: Vec<Vec<Tensor>> = requests
            .iter()
            .map(|_| Vec::with_capacity(outputs.len()))
            .collect();
        for (name, value) in outputs.iter() {
            let pieces = output_rows(name, &value, requests)?;
            for (outputs, piece) in per_request.iter_mut().zip(pieces) {
                outputs.push(piece);
            }
        }
        Ok(per_request)
    }
}

/// A handle that cancels one run from another thread.
#[derive(Clone)]
pub struct RunControl {
    options: Arc<RunOptions>,
    terminated: Arc<AtomicBool>,
}

impl RunControl {
    pub fn new() -> Result<RunControl, EngineError> {
        let options = RunOptions::new().map_err(|e| EngineError::Run(e.to_string()))?;
        Ok(RunControl {
            options: Arc::new(options),
            terminated: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Asks ORT to stop the run at its next node boundary.
    pub fn terminate(&self) {
        self.terminated.store(true, Ordering::Release);
        // Failure here only means the flag could not be set; the caller treats
        // a run that does not stop as wedged either way.
        let _ = self.options.terminate();
    }

    fn was_terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }

    /// Whether this control can serve another run: it was never told to
    /// stop, and no clone is left (the last run's canceller is gone), so
    /// nothing can stop the next run through it. Reusing one saves ORT's
    /// run options and two shared allocations a run (about 1,000
    /// instructions, a tenth of a tiny model's `run()`).
    pub fn is_idle(&mut self) -> bool {
        Arc::get_mut(&mut self.terminated).is_some()
            && Arc::get_mut(&mut self.options).is_some()
            && !self.was_terminated()
    }
}

/// Whether this machine (or container) has an NVIDIA device node at all;
/// without one, trying CUDA for an unset `deviceType` is pointless.
fn gpu_present() -> bool {
    Path::new("/dev/nvidiactl").exists()
}

fn cpu_builder(options: &SessionOptions) -> Result<SessionBuilder, EngineError> {
    let level = match options.optimization {
        OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
        OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
        OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
        OptimizationLevel::All => GraphOptimizationLevel::All,
    };
    let session_error = |e: ort::Error<SessionBuilder>| EngineError::Session(e.to_string());
    Session::builder(environment()?)
        .map_err(|e| EngineError::Session(e.to_string()))?
        .with_optimization_level(level)
        .map_err(session_error)?
        .with_intra_threads(options.intra_op_threads)
        .map_err(session_error)?
        .with_inter_threads(options.inter_op_threads)
        .map_err(session_error)?
        .with_intra_op_spinning(options.intra_op_spinning)
        .map_err(session_error)
}

/// Tries CUDA strictly: registration and commit both have to succeed, since
/// ORT would otherwise quietly put the session on the CPU.
fn commit_cuda(
    source: OnnxSource<'_>,
    options: &SessionOptions,
    device_id: i32,
) -> Result<Session, String> {
    let builder = cpu_builder(options).map_err(|e| e.to_string())?;
    let provider = CUDA::default()
        .with_device_id(device_id)
        .build()
        .error_on_failure();
    let builder = builder
        .with_execution_providers([provider])
        .map_err(|e| e.to_string())?;
    commit(builder, source).map_err(|e| e.to_string())
}

fn commit(mut builder: SessionBuilder, source: OnnxSource<'_>) -> Result<Session, EngineError> {
    let result = match source {
        OnnxSource::File(path) => builder.commit_from_file(path),
        OnnxSource::Bytes(bytes) => builder.commit_from_memory(bytes),
    };
    result.map_err(|e| EngineError::Session(e.to_string()))
}

fn describe(session: &Session) -> Result<ModelIo, EngineError> {
    let inputs = session
        .inputs()
        .iter()
        .map(|o| tensor_spec("input", o.name(), o.dtype()))
        .collect::<Result<_, _>>()?;
    let outputs = session
        .outputs()
        .iter()
        .map(|o| tensor_spec("output", o.name(), o.dtype()))
        .collect::<Result<_, _>>()?;
    Ok(ModelIo { inputs, outputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_control_is_idle_only_when_nothing_else_can_stop_it() {
        let mut control = RunControl::new().expect("run options");
        assert!(control.is_idle());
        let canceller = control.clone();
        assert!(!control.is_idle(), "the canceller could still fire");
        drop(canceller);
        assert!(control.is_idle());
        control.clone().terminate();
        assert!(!control.is_idle(), "a stopped control stops its next run");
    }
}
