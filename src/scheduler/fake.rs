//! A scriptable [`Runner`] for the scheduler's tests and, through the
//! registry's test helpers, the protocols' in-process tests. It echoes its first
//! input; a [`Script`] makes it slow, fail to start, fail or crash on a run,
//! sleep through a cancellation or answer with a row too many. It records
//! every start and every run, so a test can see what reached the model.
//!
//! Test-only: it stands in for the ORT session and must not grow logic the
//! scheduler would come to depend on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Canceller, RunError, Runner, RunnerDevice, RunnerFactory, StartedRunner};
use crate::types::{
    DataType, LoadFailure, LoadFailureKind, ModelIo, Tensor, TensorData, TensorSpec,
};

/// How the fake behaves from its next start or run on; a test may change it
/// while the pool runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Script {
    pub start_latency: Duration,
    /// Starts that fail, one after another, before starts succeed again.
    pub failing_starts: usize,
    pub run_latency: Duration,
    pub fail_runs: bool,
    /// Panics in the next run (once), as a crashing runtime would.
    pub crash_next_run: bool,
    /// Sleeps through a cancellation, as one long ORT kernel does.
    pub ignore_cancel: bool,
    /// Answers a batch of n rows with n + 1 rows.
    pub extra_output_row: bool,
    /// Runs only on its worker's thread, as a GPU session does.
    pub worker_thread_only: bool,
}

/// What reached the fake.
#[derive(Debug, Default)]
struct Record {
    starts: Vec<Instant>,
    /// The first input's values, one entry per run, in order.
    runs: Vec<Vec<f32>>,
    /// The name of the thread each run ran on, in order.
    run_threads: Vec<String>,
    cancelled_runs: usize,
}

/// The fake model every runner of one pool shares: its script and record.
#[derive(Debug)]
pub(crate) struct FakeModel {
    script: Mutex<Script>,
    record: Mutex<Record>,
    io: ModelIo,
}

/// The fake's default inputs and outputs: `x` `[-1, 1]` f32 in, `y` the same out.
pub(crate) fn io() -> ModelIo {
    let spec = |name: &str| TensorSpec {
        name: name.into(),
        dtype: DataType::F32,
        shape: vec![-1, 1],
    };
    ModelIo {
        inputs: vec![spec("x")],
        outputs: vec![spec("y")],
    }
}

impl FakeModel {
    pub fn new(script: Script) -> Arc<FakeModel> {
        FakeModel::with_io(script, io())
    }

    /// A fake that reports `io` (its first input must be f32); it still
    /// echoes its first input, shape and all, as its first output.
    pub fn with_io(script: Script, io: ModelIo) -> Arc<FakeModel> {
        Arc::new(FakeModel {
            script: Mutex::new(script),
            record: Mutex::default(),
            io,
        })
    }

    pub fn script(&self, change: impl FnOnce(&mut Script)) {
        change(&mut lock(&self.script));
    }

    pub fn factory(self: &Arc<Self>) -> RunnerFactory {
        let model = self.clone();
        Arc::new(move |_placement| model.start())
    }

    /// When each start began, in order.
    pub fn starts(&self) -> Vec<Instant> {
        lock(&self.record).starts.clone()
    }

    pub fn runs(&self) -> Vec<Vec<f32>> {
        lock(&self.record).runs.clone()
    }

    /// Which thread each run ran on: a worker's is named `{model}-w{id}`.
    pub fn run_threads(&self) -> Vec<String> {
        lock(&self.record).run_threads.clone()
    }

    /// Runs that stopped early because they were cancelled.
    pub fn cancelled_runs(&self) -> usize {
        lock(&self.record).cancelled_runs
    }

    fn start(self: &Arc<Self>) -> Result<StartedRunner, LoadFailure> {
        let script = {
            let mut script = lock(&self.script);
            let now = script.clone();
            script.failing_starts = script.failing_starts.saturating_sub(1);
            now
        };
        lock(&self.record).starts.push(Instant::now());
        std::thread::sleep(script.start_latency);
        if script.failing_starts > 0 {
            return Err(LoadFailure::new(
                LoadFailureKind::BadGraph,
                "the fake runner failed to start, as scripted",
            ));
        }
        let runner = FakeRunner {
            model: self.clone(),
            io: self.io.clone(),
            next_run: None,
        };
        Ok(StartedRunner {
            runner: Box::new(runner),
            device: RunnerDevice {
                name: "fake".into(),
                fallback_reason: None,
            },
        })
    }

    /// The script for one run; a scripted crash happens once.
    fn script_for_run(&self) -> Script {
        let mut script = lock(&self.script);
        let now = script.clone();
        script.crash_next_run = false;
        now
    }
}

/// A panicking worker must not take the test's view of the fake with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct FakeRunner {
    model: Arc<FakeModel>,
    io: ModelIo,
    /// The cancel flag [`Runner::canceller`] readied for the next run.
    next_run: Option<Arc<AtomicBool>>,
}

impl Runner for FakeRunner {
    fn io(&self) -> &ModelIo {
        &self.io
    }

    fn any_thread(&self) -> bool {
        !lock(&self.model.script).worker_thread_only
    }

    fn canceller(&mut self) -> Result<Canceller, RunError> {
        let cancelled = Arc::new(AtomicBool::new(false));
        self.next_run = Some(cancelled.clone());
        Ok(Canceller::new(move || {
            cancelled.store(true, Ordering::Release)
        }))
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
        let cancelled = self.next_run.take().unwrap_or_default();
        let script = self.model.script_for_run();
        let TensorData::F32(values) = &inputs[0].data else {
            panic!("the fake model takes f32 inputs");
        };
        let mut record = lock(&self.model.record);
        record.runs.push(values.clone());
        let thread = std::thread::current();
        record
            .run_threads
            .push(thread.name().unwrap_or("unnamed").to_string());
        drop(record);
        if script.crash_next_run {
            panic!("the fake runner crashed, as scripted");
        }
        if !sleep_unless_cancelled(script.run_latency, &cancelled, script.ignore_cancel) {
            lock(&self.model.record).cancelled_runs += 1;
            return Err(RunError::Cancelled);
        }
        if script.fail_runs {
            return Err(RunError::Failed(
                "the fake runner failed, as scripted".into(),
            ));
        }
        let mut shape = inputs[0].shape.clone();
        let mut echoed = values.clone();
        if script.extra_output_row {
            let row: usize = shape[1..].iter().product();
            echoed.extend(std::iter::repeat_n(0.0, row));
            shape[0] += 1;
        }
        Ok(vec![Tensor::new(shape, TensorData::F32(echoed))])
    }
}

/// Sleeps `latency`; false if cancelled first (unless told to ignore it).
fn sleep_unless_cancelled(latency: Duration, cancelled: &AtomicBool, ignore_cancel: bool) -> bool {
    let until = Instant::now() + latency;
    while Instant::now() < until {
        if !ignore_cancel && cancelled.load(Ordering::Acquire) {
            return false;
        }
        std::thread::sleep(
            Duration::from_millis(1).min(until.saturating_duration_since(Instant::now())),
        );
    }
    true
}
