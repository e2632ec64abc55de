//! `text_generation`: a decoder-only language model exported in Hugging
//! Face Optimum's signature, its `tokenizer.json` and `generation_config.json`,
//! turned into text produced piece by piece.
//!
//! It owns the decoding loop ([`DecodeLoop`], run on a worker as one
//! [`Sequence`] so a generation holds one worker, like a request holds a
//! batch), the choice of tokens and the incremental text. It must not know
//! which protocol asked or how pieces travel: it sends [`Emitted`] events
//! into a channel, and stops within one step once nobody receives them.

mod detokenize;
mod params;
mod sampling;
mod signature;

use std::sync::Arc;

use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use crate::config::TextGenerationOptions;
use crate::scheduler::{Sequence, Steps};
use crate::store::SideFiles;
use crate::types::{Error, ModelIo};
use detokenize::{Added, TextStream};
use params::ModelFiles;
pub use params::{GenerateParams, Generation, MAX_PROMPT_BYTES, ModelLimits};
pub use sampling::Sampling;
use signature::DecoderSignature;

/// The context assumed when neither the settings nor the model's files say.
const DEFAULT_CONTEXT: usize = 2048;
/// The most end-of-sequence ids a model's files may list.
const MAX_EOS_TOKENS: usize = 64;

/// A loaded text generation model's tokenizer, signature and limits.
pub struct TextGenerator {
    tokenizer: Tokenizer,
    signature: DecoderSignature,
    limits: ModelLimits,
}

/// What a generation sends as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Emitted {
    /// The next piece of text (never empty, always whole characters).
    Text(String),
    /// The end, after the last piece.
    Finished(Finished),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model chose an end-of-sequence token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// `max_new_tokens` (or the context) was reached.
    Length,
}

impl FinishReason {
    /// OpenAI's and KServe's name: `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos | FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

impl TextGenerator {
    /// Checks the graph and reads the tokenizer and generation defaults.
    pub fn new(
        io: &ModelIo,
        options: &TextGenerationOptions,
        files: &SideFiles,
    ) -> Result<TextGenerator, String> {
        let signature = DecoderSignature::detect(io)?;
        let tokenizer_file = files.tokenizer.as_ref().ok_or(
            "the text_generation handler needs the model's tokenizer.json beside the graph \
             (or among the .mar's extra files)",
        )?;
        let tokenizer = Tokenizer::from_bytes(tokenizer_file.text.as_bytes()).map_err(|e| {
            format!(
                "{} is not a tokenizer.json the tokenizers library reads: {e}",
                tokenizer_file.origin
            )
        })?;
        let generation = read_model_file(files.generation_config.as_ref())?;
        let model = read_model_file(files.model_config.as_ref())?;
        let limits = limits(&generation, &model, options)?;
        Ok(TextGenerator {
            tokenizer,
            signature,
            limits,
        })
    }

    /// Tokenizes the prompt and checks the parameters against the model,
    /// before anything is queued.
    pub fn prepare(&self, prompt: &str, params: GenerateParams) -> Result<Prepared, Error> {
        if prompt.len() > MAX_PROMPT_BYTES {
            return Err(Error::TooLarge(format!(
                "the prompt is {} bytes; send at most {MAX_PROMPT_BYTES}",
                prompt.len()
            )));
        }
        let encoding = self
            .tokenizer
            // With the model's special tokens (a BOS where its template adds
            // one), as Hugging Face's own generation does.
            .encode(prompt, true)
            .map_err(|e| Error::BadInput(format!("the prompt could not be tokenized: {e}")))?;
        let prompt_tokens = encoding.get_ids().to_vec();
        let generation = params.check(&self.limits, prompt_tokens.len())?;
        Ok(Prepared {
            prompt_tokens,
            generation,
        })
    }
}

/// The inputs of a first step on a one-token prompt, for the warm-up run;
/// `None` for a graph without the decoder signature (its load fails anyway,
/// with the reason).
pub fn warmup_inputs(io: &ModelIo) -> Option<Vec<crate::types::Tensor>> {
    let signature = DecoderSignature::detect(io).ok()?;
    let mut cache = signature.empty_cache();
    Some(signature.inputs(&[0], &mut cache))
}

/// A prompt and parameters checked for one model, ready to queue.
pub struct Prepared {
    pub prompt_tokens: Vec<u32>,
    pub generation: Generation,
}

impl Prepared {
    /// The decoding loop for `generator`, sending into `events`.
    pub fn into_loop(
        self,
        generator: Arc<TextGenerator>,
        events: mpsc::UnboundedSender<Emitted>,
    ) -> Box<dyn Sequence> {
        Box::new(DecodeLoop {
            generator,
            prepared: self,
            events,
        })
    }
}

/// One generation, run on a worker's thread.
struct DecodeLoop {
    generator: Arc<TextGenerator>,
    prepared: Prepared,
    events: mpsc::UnboundedSender<Emitted>,
}

impl Sequence for DecodeLoop {
    fn run(self: Box<Self>, steps: &mut Steps<'_>) -> Result<(), Error> {
        let DecodeLoop {
            generator,
            prepared,
            events,
        } = *self;
        let Prepared {
            prompt_tokens,
            generation,
        } = prepared;
        let signature = &generator.signature;
        let mut cache = signature.empty_cache();
        let mut sampler = sampling::Sampler::new(generation.sampling.clone());
        let mut text = TextStream::new(&generator.tokenizer, &generation.stop);
        let send = |piece: String| {
            if !piece.is_empty() {
                let _ = events.send(Emitted::Text(piece));
            }
        };
        let mut feed = prompt_tokens.clone();
        let mut new_tokens = 0;
        let reason = loop {
            if events.is_closed() {
                tracing::debug!("generation stopped: the client left");
                return Ok(());
            }
            let inputs = signature.inputs(&feed, &mut cache);
            let outputs = steps.run(&inputs)?;
            let logits = signature
                .outputs(outputs, &mut cache, feed.len())
                .map_err(Error::Inference)?;
            let token = sampler.next_token(&logits);
            if generator.limits.eos_tokens.contains(&token) {
                break FinishReason::Eos;
            }
            new_tokens += 1;
            match text.push(token).map_err(Error::Inference)? {
                Added::Text(piece) => send(piece),
                Added::Stopped(piece) => {
                    send(piece);
                    break FinishReason::Stop;
                }
            }
            if new_tokens >= generation.max_new_tokens {
                break FinishReason::Length;
            }
            feed.clear();
            feed.push(token);
        };
        if reason != FinishReason::Stop {
            send(text.finish().map_err(Error::Inference)?);
        }
        let _ = events.send(Emitted::Finished(Finished {
            reason,
            prompt_tokens: prompt_tokens.len(),
            new_tokens,
        }));
        Ok(())
    }
}

fn read_model_file(file: Option<&crate::store::ExtraFile>) -> Result<ModelFiles, String> {
    match file {
        None => Ok(ModelFiles::default()),
        Some(file) => serde_json::from_str(&file.text)
            .map_err(|e| format!("{} is not valid: {e}", file.origin)),
    }
}

/// The model's limits: the settings first, then generation_config.json,
/// then config.json.
fn limits(
    generation: &ModelFiles,
    model: &ModelFiles,
    options: &TextGenerationOptions,
) -> Result<ModelLimits, String> {
    let mut eos_tokens = [&generation.eos_token_id, &model.eos_token_id]
        .into_iter()
        .find(|ids| !ids.is_empty())
        .cloned()
        .ok_or("neither generation_config.json nor config.json gives eos_token_id; add it to generation_config.json")?;
    // Checked at every step: a file's list is held to a sane length.
    eos_tokens.truncate(MAX_EOS_TOKENS);
    let model_context = model
        .max_position_embeddings
        .or(generation.max_length)
        .map(|n| n.min(1 << 20) as usize);
    let context = options
        .max_context
        .or(model_context)
        .unwrap_or(DEFAULT_CONTEXT);
    let default_max_new_tokens = generation
        .max_new_tokens
        .map_or(options.max_new_tokens, |n| {
            // 0 would never be reached: the generation would run on to EOS.
            (n as usize).clamp(1, options.max_new_tokens.max(1))
        });
    let sample = generation.do_sample.unwrap_or(false);
    Ok(ModelLimits {
        eos_tokens,
        context,
        default_max_new_tokens,
        max_new_tokens_cap: options.max_new_tokens,
        default_sampling: Sampling {
            temperature: if sample {
                generation.temperature.unwrap_or(1.0) as f32
            } else {
                0.0
            },
            top_k: if sample {
                generation.top_k.unwrap_or(50) as usize
            } else {
                0
            },
            top_p: if sample {
                generation.top_p.unwrap_or(1.0) as f32
            } else {
                1.0
            },
            seed: 0,
        },
    })
}
