//! The typed options of `model-config.yaml`: the handler's name and the
//! `ortserve:` section (image classifier, explanations, sessions), with
//! serde's unknown-field errors and their defaults. The section is split by
//! what a change needs: [`OrtservePoolOptions`] a running pool takes in
//! place, [`OrtserveOptions`] needs new sessions. Clamping is
//! `model_config`'s job.

use std::sync::LazyLock;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_yaml_ng::{Mapping, Value as Yaml};

/// Which built-in pre/post-processing a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerName {
    Tensor,
    ImageClassifier,
    TextGeneration,
}

impl HandlerName {
    pub const ALL: &[&str] = &["tensor", "image_classifier", "text_generation"];

    /// The name `model-config.yaml` and a MANIFEST use.
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerName::Tensor => "tensor",
            HandlerName::ImageClassifier => "image_classifier",
            HandlerName::TextGeneration => "text_generation",
        }
    }

    /// Maps a TorchServe handler name (as in a MANIFEST) to a built-in one.
    pub fn from_torchserve(name: &str) -> Option<HandlerName> {
        match name {
            "tensor" | "base_handler" => Some(HandlerName::Tensor),
            "image_classifier" => Some(HandlerName::ImageClassifier),
            "text_generation" => Some(HandlerName::TextGeneration),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

/// The shape of an `image_classifier` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassifierAnswer {
    /// `{"class","probability"}` (a list of them above top-1): the inference
    /// API doc's shape.
    Class,
    /// TorchServe 0.12's `image_classifier`: `{"label": probability, ...}`,
    /// best first, top 5 unless `topK` says otherwise.
    Torchserve,
    /// The best class only — its label, or its index without labels — as
    /// TorchServe's MNIST example answers.
    Argmax,
}

impl ImageClassifierOptions {
    /// `topK`, or the default of the chosen answer shape.
    pub fn top_k(&self) -> usize {
        let default = match self.answer {
            ClassifierAnswer::Torchserve => 5,
            ClassifierAnswer::Class | ClassifierAnswer::Argmax => 1,
        };
        self.top_k.unwrap_or(default)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// `ortserve.imageClassifier`: how images become the model's input tensor and
/// how its scores become an answer. Unset sizes come from the model's input.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ImageClassifierOptions {
    /// Shorter side after resizing; default `crop × 8/7` (256 for 224).
    pub resize: Option<u32>,
    /// Side of the centre crop; default the model's input height/width.
    pub crop: Option<u32>,
    /// Per-channel mean on the 0..1 scale; default ImageNet's (or 0 for gray).
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation; default ImageNet's (or 1 for gray).
    pub std: Option<Vec<f32>>,
    pub channel_order: ChannelOrder,
    /// Default: from the input shape (channels of 1 or 3 at axis 1 → NCHW).
    pub layout: Option<Layout>,
    /// Apply softmax to the scores (set false if the model outputs probabilities).
    pub softmax: bool,
    /// How many classes an answer lists; default 1, or 5 with `answer: torchserve`.
    pub top_k: Option<usize>,
    pub answer: ClassifierAnswer,
    /// Largest width × height accepted, checked before decoding (PIL's default).
    pub max_image_pixels: u64,
}

impl Default for ImageClassifierOptions {
    fn default() -> Self {
        ImageClassifierOptions {
            resize: None,
            crop: None,
            mean: None,
            std: None,
            channel_order: ChannelOrder::Rgb,
            layout: None,
            softmax: true,
            top_k: None,
            answer: ClassifierAnswer::Class,
            max_image_pixels: 89_478_485,
        }
    }
}

/// `ortserve.textGeneration`: the limits of one generation, beside what the
/// model's `generation_config.json` and `config.json` say.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TextGenerationOptions {
    /// The most new tokens one request may ask for (`max_new_tokens`).
    pub max_new_tokens: usize,
    /// The prompt plus new tokens, at most; default the model's context
    /// (`max_position_embeddings`, else `max_length`), else 2048.
    pub max_context: Option<usize>,
}

impl Default for TextGenerationOptions {
    fn default() -> Self {
        TextGenerationOptions {
            max_new_tokens: 512,
            max_context: None,
        }
    }
}

/// An attribution method (Captum's names, in snake case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExplainMethod {
    Occlusion,
    FeatureAblation,
    ShapleySampling,
}

impl ExplainMethod {
    pub const ALL: &str = "occlusion, feature_ablation, shapley_sampling";

    pub fn parse(name: &str) -> Option<ExplainMethod> {
        match name {
            "occlusion" => Some(ExplainMethod::Occlusion),
            "feature_ablation" => Some(ExplainMethod::FeatureAblation),
            "shapley_sampling" => Some(ExplainMethod::ShapleySampling),
            _ => None,
        }
    }
}

/// `ortserve.explain`: defaults for explanations, which a request may
/// override (except the output and the cap).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ExplainOptions {
    /// Default: occlusion for one grid input (rank ≥ 2 per instance, images),
    /// feature_ablation otherwise.
    pub method: Option<ExplainMethod>,
    /// The value a perturbed element takes.
    pub baseline: f64,
    /// Occlusion window per instance axis; default: whole leading axes, the
    /// last two split in eight.
    pub window: Option<Vec<usize>>,
    /// Occlusion stride; default: the window.
    pub stride: Option<Vec<usize>>,
    /// Feature groups for feature_ablation and shapley_sampling: the group of
    /// each element (Captum's feature_mask); default: one element each.
    pub feature_mask: Option<Vec<usize>>,
    /// Shapley permutations (Captum's n_samples).
    pub samples: usize,
    pub seed: u64,
    /// Which model output holds the scores to explain.
    pub output: usize,
    /// Which element of that output's row to explain; default: the request's
    /// `target`, else the predicted (largest) one.
    pub target: Option<usize>,
    /// An instance needing more forward passes is refused with a 400.
    pub max_forward_passes: usize,
    /// A request (all its instances together) needing more is refused too.
    pub max_request_forward_passes: usize,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        ExplainOptions {
            method: None,
            baseline: 0.0,
            window: None,
            stride: None,
            feature_mask: None,
            samples: 25,
            seed: 0,
            output: 0,
            target: None,
            max_forward_passes: 4096,
            max_request_forward_passes: 16_384,
        }
    }
}

/// ONNX Runtime's graph optimisation levels, by the names
/// `graphOptimizationLevel` takes; the engine maps them to ORT's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationLevel {
    Disable,
    Basic,
    Extended,
    All,
}

/// The `ortserve:` section of `model-config.yaml`, split by what a change
/// to a key needs. Its unknown keys are refused, as serde would, naming
/// every key of both halves.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(try_from = "SectionKeys")]
pub(super) struct OrtserveSection {
    pub pool: OrtservePoolOptions,
    pub session: OrtserveOptions,
}

/// The section as written. serde cannot refuse unknown fields beside
/// `flatten`, so what neither half declares is collected in `unknown`.
#[derive(Deserialize)]
// What a section of the wrong type is told, as before the split.
#[serde(expecting = "struct OrtserveOptions")]
struct SectionKeys {
    #[serde(flatten)]
    pool: OrtservePoolOptions,
    #[serde(flatten)]
    session: OrtserveOptions,
    #[serde(flatten)]
    unknown: Mapping,
}

/// Every key of the section, pool half first: what an unknown key is told.
static SECTION_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    [
        keys_of::<OrtservePoolOptions>(),
        keys_of::<OrtserveOptions>(),
    ]
    .concat()
});

impl TryFrom<SectionKeys> for OrtserveSection {
    type Error = String;

    fn try_from(keys: SectionKeys) -> Result<Self, String> {
        if let Some((key, _)) = keys.unknown.into_iter().next() {
            let key = key
                .as_str()
                .map_or_else(|| format!("{key:?}"), str::to_string);
            let expected: Vec<String> = SECTION_KEYS.iter().map(|k| format!("`{k}`")).collect();
            // serde's own wording for an unknown field.
            return Err(format!(
                "unknown field `{key}`, expected one of {}",
                expected.join(", ")
            ));
        }
        Ok(OrtserveSection {
            pool: keys.pool,
            session: keys.session,
        })
    }
}

/// The `ortserve:` keys a running pool takes in place; `None` where the file
/// is silent (their defaults are `model_config`'s, beside their ranges).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct OrtservePoolOptions {
    /// This version is the model's default (over any `models=` entry's).
    pub default_version: Option<bool>,
    /// Run one inference at the declared shape before a worker takes traffic.
    pub warmup: Option<bool>,
    /// Workers above minWorkers stop after this long without work.
    pub worker_idle_timeout_sec: Option<u64>,
    /// Batches of a size whose recent runs took at most this long run on the
    /// request's own thread; 0 hands every batch to a worker thread.
    pub inline_run_micros: Option<u64>,
}

/// The `ortserve:` keys that need new sessions (unknown keys are refused by
/// [`OrtserveSection`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OrtserveOptions {
    /// Version of a plain model directory (a `.mar` takes its MANIFEST's).
    #[serde(deserialize_with = "version_string")]
    pub version: Option<String>,
    pub handler: Option<HandlerName>,
    pub image_classifier: ImageClassifierOptions,
    pub text_generation: TextGenerationOptions,
    pub explain: ExplainOptions,
    /// Default: max(1, cores / maxWorkers), so busy workers do not oversubscribe.
    pub intra_op_threads: Option<usize>,
    pub inter_op_threads: usize,
    pub intra_op_spinning: bool,
    #[serde(rename = "graphOptimizationLevel")]
    graph_optimization: OptimizationLevel,
    /// With `deviceType: gpu`, serve on CPU (with one warning) if CUDA fails.
    pub cpu_fallback: Option<bool>,
    /// Largest element count of any one input tensor of a request.
    pub max_tensor_elements: usize,
    /// A failure to load this model is reported (in `/ping` and Events) but
    /// does not make the server unready; by default it does.
    pub optional: bool,
}

impl Default for OrtserveOptions {
    fn default() -> Self {
        OrtserveOptions {
            version: None,
            handler: None,
            image_classifier: ImageClassifierOptions::default(),
            text_generation: TextGenerationOptions::default(),
            explain: ExplainOptions::default(),
            intra_op_threads: None,
            inter_op_threads: 1,
            intra_op_spinning: false,
            graph_optimization: OptimizationLevel::All,
            cpu_fallback: None,
            max_tensor_elements: 16 * 1024 * 1024,
            optional: false,
        }
    }
}

impl OrtserveOptions {
    pub fn optimization_level(&self) -> OptimizationLevel {
        self.graph_optimization
    }
}

fn version_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Yaml::deserialize(d)? {
        Yaml::Null => Ok(None),
        Yaml::String(s) => Ok(Some(s)),
        Yaml::Number(n) if n.is_u64() => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "version must be a string, e.g. version: \"2.0\" (got {other:?})"
        ))),
    }
}

/// The keys `T`'s derived `Deserialize` reads, in field order and as
/// written in the file (after `rename_all`): serde hands them to
/// `deserialize_struct`, which [`KeyRecorder`] keeps before giving up. So a
/// key is declared once, by its field, and lists of keys follow from it.
pub(super) fn keys_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    // Always an error: the recorder never produces a value.
    let _ = T::deserialize(KeyRecorder(&mut keys));
    keys
}

/// A deserializer that only records the field names it is asked for.
struct KeyRecorder<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for KeyRecorder<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only the field names were wanted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        enum identifier ignored_any
    }
}
