//! Attributions that need only forward passes, so they work for every ONNX
//! model: occlusion, feature ablation and Shapley value sampling, defined as
//! Captum defines them (see [`methods`]).
//!
//! An explanation turns one instance into perturbed copies and runs them
//! through the model's own queue in batches of its `batchSize`, one batch at
//! a time, via [`Forward`]. Its cost is counted before the first pass and
//! refused above `ortserve.explain.maxForwardPasses`.
//!
//! It must not touch sessions, queues or HTTP: the registry's `ServingModel`
//! implements [`Forward`] (and there keeps explanations from starving
//! predictions), and the protocols call the registry.

mod methods;
mod params;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::codec::write_named_tensors;
use crate::config::{ExplainMethod, ExplainOptions};
use crate::types::{Error, InferRequest, InferResponse, ModelIo, Tensor, TensorData, excerpt};
use methods::{Baseline, Instance, Totals, Windows};
pub use params::ExplainParams;

/// What an explanation needs of a model: its I/O, its batch size, and
/// forward passes through its queue.
pub trait Forward {
    fn io(&self) -> &ModelIo;
    fn batch_size(&self) -> usize;
    fn forward(
        &self,
        rows: InferRequest,
    ) -> impl Future<Output = Result<InferResponse, Error>> + Send;
}

/// The forward passes one request may still spend on explanations, shared
/// by all its instances, so many cheap instances cannot add up to a costly
/// request.
#[derive(Debug)]
pub struct PassBudget {
    limit: usize,
    remaining: AtomicUsize,
}

impl PassBudget {
    pub fn new(limit: usize) -> PassBudget {
        PassBudget {
            limit,
            remaining: AtomicUsize::new(limit),
        }
    }

    /// Takes `passes` from the budget, or refuses the request.
    fn spend(&self, passes: usize) -> Result<(), Error> {
        self.remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(passes)
            })
            .map(|_| ())
            .map_err(|_| self.refusal())
    }

    /// Refuses `instances` that could not all be explained within the
    /// budget, each needing at least one pass: checked before they are
    /// split apart, so that their count, not only their passes, is bounded.
    pub fn admits(&self, instances: usize) -> Result<(), Error> {
        match instances <= self.limit {
            true => Ok(()),
            false => Err(self.refusal()),
        }
    }

    fn refusal(&self) -> Error {
        Error::BadInput(format!(
            "this request's explanations need more than {} forward passes in all \
             (ortserve.explain.maxRequestForwardPasses); send fewer instances per request, \
             use cheaper parameters, or raise the limit",
            self.limit
        ))
    }
}

/// Explains each instance of a request, one after another: each row, or the
/// whole request for a model without a batch axis. Returns, per instance, one
/// attribution tensor per input, shaped like it with a batch axis of 1.
///
/// Every instance is planned and costed (against `budget` too) before the
/// first pass runs.
pub async fn explain_each(
    model: &(impl Forward + Sync),
    request: InferRequest,
    options: &ExplainOptions,
    params: &ExplainParams,
    budget: &PassBudget,
) -> Result<Vec<Vec<Tensor>>, Error> {
    if !model.io().has_batch_axis() {
        let mut instance = request;
        for input in &mut instance.inputs {
            input.shape.insert(0, 1);
        }
        let unbatched = Unbatched(model);
        let plan = Plan::new(&unbatched, instance, options, params, budget)?;
        return Ok(vec![explain_one(&unbatched, plan, options, params).await?]);
    }
    let rows = request.rows();
    if rows == 0 {
        return Err(Error::BadInput("there is no instance to explain".into()));
    }
    budget.admits(rows)?;
    let mut columns: Vec<_> = request
        .inputs
        .into_iter()
        .map(|input| input.split_rows(&vec![1; rows]).into_iter())
        .collect();
    let plans = (0..rows)
        .map(|_| {
            let inputs = columns
                .iter_mut()
                .map(|column| column.next().expect("one piece per row"))
                .collect();
            Plan::new(model, InferRequest { inputs }, options, params, budget)
        })
        .collect::<Result<Vec<Plan>, Error>>()?;
    let mut answers = Vec::with_capacity(rows);
    for plan in plans {
        answers.push(explain_one(model, plan, options, params).await?);
    }
    Ok(answers)
}

/// A model without a batch axis, seen through a unit axis for explanations
/// to batch along, one copy at a time.
struct Unbatched<'a, M>(&'a M);

impl<M: Forward + Sync> Forward for Unbatched<'_, M> {
    fn io(&self) -> &ModelIo {
        self.0.io()
    }

    fn batch_size(&self) -> usize {
        1
    }

    async fn forward(&self, mut rows: InferRequest) -> Result<InferResponse, Error> {
        for input in &mut rows.inputs {
            input.shape.remove(0);
        }
        let mut response = self.0.forward(rows).await?;
        for output in &mut response.outputs {
            output.shape.insert(0, 1);
        }
        Ok(response)
    }
}

/// Explains one planned instance (one row).
async fn explain_one(
    model: &impl Forward,
    plan: Plan,
    options: &ExplainOptions,
    params: &ExplainParams,
) -> Result<Vec<Tensor>, Error> {
    let original = model.forward(plan.instance_request()).await?;
    let row = plan.scores(&original, 1)?;
    let target = match params.target.or(options.target) {
        Some(target) => plan.check_target(target, row.len())?,
        None => argmax(&row),
    };
    plan.run(model, target, row[target]).await
}

/// Takes a `target` field out of an instance that is a JSON object, as in the
/// TorchServe/KServe mnist sample (`{"data": "<base64>", "target": 0}`):
/// returns the instance without it, and the target. `None` when there is
/// none to take; a model input named `target` keeps it.
pub fn take_instance_target(io: &ModelIo, body: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Error> {
    let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !is_object || io.inputs.iter().any(|spec| spec.name == "target") {
        return Ok(None);
    }
    // A malformed object is the handler's to report.
    let Ok(mut object) = serde_json::from_slice::<serde_json::Map<String, Value>>(body) else {
        return Ok(None);
    };
    let Some(target) = object.remove("target") else {
        return Ok(None);
    };
    let target = target
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            Error::BadInput(format!(
                "the instance's 'target' must be a whole number (the class to explain), got {}",
                excerpt(&target.to_string())
            ))
        })?;
    let rest = serde_json::to_vec(&object).expect("JSON values serialise");
    Ok(Some((rest, target)))
}

/// An explanation checked and costed before any pass runs.
struct Plan {
    instance: Instance,
    method: Method,
    baseline: Baseline,
    output: usize,
    output_name: String,
}

enum Method {
    FeatureAblation {
        groups: Vec<Vec<usize>>,
    },
    Occlusion {
        windows: Windows,
    },
    ShapleySampling {
        groups: Vec<Vec<usize>>,
        samples: usize,
        seed: u64,
    },
}

impl Plan {
    fn new(
        model: &impl Forward,
        request: InferRequest,
        options: &ExplainOptions,
        params: &ExplainParams,
        budget: &PassBudget,
    ) -> Result<Plan, Error> {
        let bad = |message: String| Error::BadInput(message);
        let io = model.io();
        let output_spec = io.outputs.get(options.output).ok_or_else(|| {
            bad(format!(
                "ortserve.explain.output is {} but the model has {} outputs",
                options.output,
                io.outputs.len()
            ))
        })?;
        let instance = Instance {
            inputs: request.inputs,
        };
        // Nothing to perturb: and a method's passes, counted per feature,
        // would not bound its loops.
        if instance.features() == 0 {
            return Err(bad(
                "the instance has no elements, so there is nothing to explain; \
                 send at least one value"
                    .into(),
            ));
        }
        let baseline = Baseline(params.baseline.unwrap_or(options.baseline));
        for (spec, input) in io.inputs.iter().zip(&instance.inputs) {
            baseline.check(&spec.name, input.dtype()).map_err(bad)?;
        }
        let single_grid = instance.inputs.len() == 1 && instance.inputs[0].shape.len() >= 3;
        let default_method = if single_grid {
            ExplainMethod::Occlusion
        } else {
            ExplainMethod::FeatureAblation
        };
        let mask = params
            .feature_mask
            .as_deref()
            .or(options.feature_mask.as_deref());
        let method = match params.method.or(options.method).unwrap_or(default_method) {
            ExplainMethod::FeatureAblation => Method::FeatureAblation {
                groups: methods::groups(instance.features(), mask).map_err(bad)?,
            },
            ExplainMethod::Occlusion => Method::Occlusion {
                windows: occlusion_windows(&instance, options, params)?,
            },
            ExplainMethod::ShapleySampling => Method::ShapleySampling {
                groups: methods::groups(instance.features(), mask).map_err(bad)?,
                samples: match params.samples.unwrap_or(options.samples) {
                    0 => return Err(bad("samples must be at least 1".into())),
                    n => n,
                },
                seed: params.seed.unwrap_or(options.seed),
            },
        };
        let plan = Plan {
            instance,
            method,
            baseline,
            output: options.output,
            output_name: output_spec.name.clone(),
        };
        let passes = plan.forward_passes();
        if passes > options.max_forward_passes {
            return Err(bad(format!(
                "this explanation needs {passes} forward passes, over the limit of {} (ortserve.explain.maxForwardPasses); \
                 use a larger window or stride, fewer samples, or a featureMask, or raise the limit",
                options.max_forward_passes
            )));
        }
        budget.spend(passes)?;
        Ok(plan)
    }

    /// Passes, counting the one on the original input.
    /// Saturating: `samples` comes from the request, and a wrapped count
    /// would slip under the cap.
    fn forward_passes(&self) -> usize {
        let perturbed = match &self.method {
            Method::FeatureAblation { groups } => groups.len(),
            Method::Occlusion { windows } => windows.len(),
            Method::ShapleySampling {
                groups, samples, ..
            } => samples.saturating_mul(groups.len()).saturating_add(1),
        };
        perturbed.saturating_add(1)
    }

    fn instance_request(&self) -> InferRequest {
        InferRequest {
            inputs: self.instance.inputs.clone(),
        }
    }

    /// The explained output's values, as f64, for `rows` rows.
    fn scores(&self, response: &InferResponse, rows: usize) -> Result<Vec<f64>, Error> {
        let output = &response.outputs[self.output];
        let values: Vec<f64> = match &output.data {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            other => {
                return Err(Error::BadInput(format!(
                    "output '{}' is {}, which has no scores to explain (set ortserve.explain.output)",
                    self.output_name,
                    other.dtype()
                )));
            }
        };
        if values.is_empty() || !values.len().is_multiple_of(rows) {
            return Err(Error::Inference(format!(
                "output '{}' has no values per row to explain",
                self.output_name
            )));
        }
        Ok(values)
    }

    fn check_target(&self, target: usize, per_row: usize) -> Result<usize, Error> {
        if target < per_row {
            Ok(target)
        } else {
            Err(Error::BadInput(format!(
                "target {target} is out of range: output '{}' has {per_row} values per row",
                self.output_name
            )))
        }
    }

    /// Runs the method, explaining value `target` of each output row, which
    /// is `original` for the unperturbed instance.
    async fn run(
        &self,
        model: &impl Forward,
        target: usize,
        original: f64,
    ) -> Result<Vec<Tensor>, Error> {
        let instance = &self.instance;
        let mut totals = Totals::new(instance.features());
        match &self.method {
            Method::FeatureAblation { groups } => {
                let copies = groups
                    .iter()
                    .map(|g| instance.with_baseline(g.iter().copied(), &self.baseline));
                let scores = self.evaluate(model, target, Box::new(copies)).await?;
                for (group, s) in groups.iter().zip(scores) {
                    totals.add(group, original - s);
                }
                Ok(totals.averaged(instance))
            }
            Method::Occlusion { windows } => {
                let copies = (0..windows.len())
                    .map(|n| instance.with_baseline(windows.elements(n), &self.baseline));
                let scores = self.evaluate(model, target, Box::new(copies)).await?;
                for (n, s) in scores.into_iter().enumerate() {
                    totals.add(&windows.elements(n), original - s);
                }
                Ok(totals.averaged(instance))
            }
            Method::ShapleySampling {
                groups,
                samples,
                seed,
            } => {
                let base = instance.with_baseline(0..instance.features(), &self.baseline);
                let first = Box::new(std::iter::once(base.clone()));
                let base_score = self.evaluate(model, target, first).await?[0];
                let mut state = *seed;
                for _ in 0..*samples {
                    let order = methods::permutation(groups.len(), &mut state);
                    let steps = methods::permutation_steps(instance, &base, groups, &order);
                    let scores = self.evaluate(model, target, Box::new(steps)).await?;
                    let mut previous = base_score;
                    for (&g, s) in order.iter().zip(scores) {
                        totals.add(&groups[g], s - previous);
                        previous = s;
                    }
                }
                Ok(totals.divided(*samples, instance))
            }
        }
    }
    /// Runs perturbed copies through the model in batches of its
    /// `batchSize`, one batch at a time, and returns each copy's target value.
    async fn evaluate(
        &self,
        model: &impl Forward,
        target: usize,
        copies: Copies<'_>,
    ) -> Result<Vec<f64>, Error> {
        let batch = model.batch_size().max(1);
        let mut scores = Vec::new();
        let mut copies = copies.peekable();
        while copies.peek().is_some() {
            let pending: Vec<Instance> = copies.by_ref().take(batch).collect();
            let inputs = (0..pending[0].inputs.len())
                .map(|i| {
                    Tensor::concat_rows(&pending.iter().map(|c| &c.inputs[i]).collect::<Vec<_>>())
                })
                .collect();
            let response = model.forward(InferRequest { inputs }).await?;
            let values = self.scores(&response, pending.len())?;
            let per_row = values.len() / pending.len();
            for row in values.chunks(per_row) {
                let value = row.get(target).ok_or_else(|| {
                    Error::Inference(format!(
                        "output '{}' has {per_row} values per row for a perturbed input, too few for target {target}",
                        self.output_name
                    ))
                })?;
                scores.push(*value);
            }
        }
        Ok(scores)
    }
}

/// Perturbed copies, made one batch at a time so that a long explanation
/// never holds all of them. Boxed because a generic iterator of closures held
/// across an `.await` defeats the compiler's proof that the HTTP handler's
/// future is `Send` (rust-lang/rust#100013).
type Copies<'a> = Box<dyn Iterator<Item = Instance> + Send + 'a>;

/// Default occlusion window: whole leading axes, the last two in eighths.
fn occlusion_windows(
    instance: &Instance,
    options: &ExplainOptions,
    params: &ExplainParams,
) -> Result<Windows, Error> {
    if instance.inputs.len() != 1 {
        return Err(Error::BadInput(
            "occlusion explains single-input models; use method feature_ablation or shapley_sampling".into(),
        ));
    }
    let shape: Vec<usize> = instance.inputs[0].shape[1..].to_vec();
    let rank = shape.len();
    let default_window = shape
        .iter()
        .enumerate()
        .map(|(axis, &size)| {
            if axis + 2 >= rank {
                size.div_ceil(8).max(1)
            } else {
                size
            }
        })
        .collect();
    let window = params
        .window
        .clone()
        .or(options.window.clone())
        .unwrap_or(default_window);
    let stride = params
        .stride
        .clone()
        .or(options.stride.clone())
        .unwrap_or_else(|| window.clone());
    Windows::new(shape, window, stride).map_err(Error::BadInput)
}

/// The first largest value's index, as `torch.argmax` picks among ties.
fn argmax(values: &[f64]) -> usize {
    (1..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}

/// Appends one instance's attributions as TorchServe shows them: nested arrays
/// shaped like the input (without the batch axis), or an object keyed by input
/// name for several inputs.
pub fn write_attributions(out: &mut Vec<u8>, io: &ModelIo, attributions: &[Tensor]) {
    write_named_tensors(out, &io.inputs, attributions, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DataType, TensorSpec};

    #[test]
    fn the_default_target_is_the_first_largest_value() {
        assert_eq!(argmax(&[0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax(&[3.0]), 0);
    }

    /// `x: f32[-1, -1] → y: f32[-1, 1]`, each row's sum.
    struct RowSum(ModelIo);

    impl RowSum {
        fn new() -> RowSum {
            let spec = |name: &str, shape: Vec<i64>| TensorSpec {
                name: name.into(),
                dtype: DataType::F32,
                shape,
            };
            RowSum(ModelIo {
                inputs: vec![spec("x", vec![-1, -1])],
                outputs: vec![spec("y", vec![-1, 1])],
            })
        }
    }

    impl Forward for RowSum {
        fn io(&self) -> &ModelIo {
            &self.0
        }

        fn batch_size(&self) -> usize {
            8
        }

        async fn forward(&self, rows: InferRequest) -> Result<InferResponse, Error> {
            let x = &rows.inputs[0];
            let TensorData::F32(values) = &x.data else {
                unreachable!("the fake takes f32")
            };
            let width = x.shape[1];
            let sums = (0..x.shape[0])
                .map(|r| values[r * width..(r + 1) * width].iter().sum())
                .collect();
            Ok(InferResponse {
                outputs: vec![Tensor::new(vec![x.shape[0], 1], TensorData::F32(sums))],
            })
        }
    }

    fn explain(
        x: Tensor,
        params: &ExplainParams,
        budget: usize,
    ) -> Result<Vec<Vec<Tensor>>, Error> {
        let request = InferRequest { inputs: vec![x] };
        let options = ExplainOptions::default();
        let budget = PassBudget::new(budget);
        let model = RowSum::new();
        let explained = explain_each(&model, request, &options, params, &budget);
        futures_util::FutureExt::now_or_never(explained).expect("the fake never waits")
    }

    #[test]
    fn instances_past_the_pass_budget_are_refused_before_they_are_split() {
        let rows = Tensor::new(vec![1_000_000, 0], TensorData::F32(vec![]));
        let error = explain(rows, &ExplainParams::default(), 100).unwrap_err();
        assert!(
            error.to_string().contains("maxRequestForwardPasses"),
            "{error}"
        );
    }

    #[test]
    fn an_instance_without_elements_has_nothing_to_explain() {
        // Counted per feature, a million billion samples of none would cost
        // two passes and loop for good.
        let params = ExplainParams {
            method: Some(ExplainMethod::ShapleySampling),
            samples: Some(1_000_000_000_000_000),
            ..ExplainParams::default()
        };
        let empty = Tensor::new(vec![1, 0], TensorData::F32(vec![]));
        let error = explain(empty, &params, 100).unwrap_err();
        assert!(error.to_string().contains("nothing to explain"), "{error}");
        let one = Tensor::new(vec![1, 2], TensorData::F32(vec![1.0, 2.0]));
        let explained = explain(one, &ExplainParams::default(), 100).unwrap();
        let TensorData::F32(attributions) = &explained[0][0].data else {
            panic!("f32 attributions")
        };
        // Ablating each feature to 0 takes its value off the sum.
        assert_eq!(attributions, &[1.0, 2.0]);
    }
}
