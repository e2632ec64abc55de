//! A generation request's parameters, as every protocol sends them, checked
//! and bounded before any compute; and the model's own defaults from
//! `generation_config.json` and `config.json`.

use serde::Deserialize;

use super::sampling::Sampling;
use crate::types::Error;

/// The most stop strings, and the longest one, a request may give.
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 256;
/// The longest prompt accepted, in bytes, before it is tokenized.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;

/// The parameters a request may set. Field names are TorchServe's and
/// Hugging Face's; `max_tokens` (OpenAI's and KServe's) is accepted too.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    #[serde(alias = "max_tokens")]
    pub max_new_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_k: Option<u64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    /// False forces greedy decoding whatever the temperature.
    pub do_sample: Option<bool>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub stop: Vec<String>,
}

/// The model's defaults and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLimits {
    pub eos_tokens: Vec<u32>,
    /// Prompt plus new tokens, at most: the model's context.
    pub context: usize,
    pub default_max_new_tokens: usize,
    /// The cap on `max_new_tokens` (ortserve.textGeneration.maxNewTokens).
    pub max_new_tokens_cap: usize,
    pub default_sampling: Sampling,
}

/// Checked parameters for one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub stop: Vec<String>,
}

impl GenerateParams {
    /// Checks every parameter and the prompt's length against the model,
    /// naming the field to fix.
    pub fn check(self, limits: &ModelLimits, prompt_tokens: usize) -> Result<Generation, Error> {
        let bad = |message: String| Err(Error::BadInput(message));
        let cap = limits.max_new_tokens_cap;
        let max_new_tokens = match self.max_new_tokens {
            Some(0) => return bad("max_new_tokens (max_tokens) must be at least 1".into()),
            Some(n) if n > cap as u64 => {
                return bad(format!(
                    "max_new_tokens (max_tokens) is {n} but this model generates at most {cap} tokens \
                     per request (ortserve.textGeneration.maxNewTokens)"
                ));
            }
            Some(n) => n as usize,
            None => limits.default_max_new_tokens.min(cap),
        };
        if prompt_tokens == 0 {
            return bad("the prompt is empty; send some text to continue".into());
        }
        let room = limits.context.saturating_sub(prompt_tokens);
        if room == 0 {
            return bad(format!(
                "the prompt is {prompt_tokens} tokens but the model's context is {} tokens; shorten the prompt",
                limits.context
            ));
        }
        let max_new_tokens = match self.max_new_tokens {
            Some(n) if n as usize > room => {
                return bad(format!(
                    "the prompt ({prompt_tokens} tokens) plus max_new_tokens (max_tokens) {n} is more than \
                     the model's context of {} tokens; ask for at most {room} new tokens",
                    limits.context
                ));
            }
            _ => max_new_tokens.min(room),
        };
        Ok(Generation {
            max_new_tokens,
            sampling: self.sampling(&limits.default_sampling)?,
            stop: checked_stops(self.stop)?,
        })
    }

    fn sampling(&self, defaults: &Sampling) -> Result<Sampling, Error> {
        let bad = |message: &str| Err(Error::BadInput(message.into()));
        let temperature = match self.temperature {
            Some(t) if !(0.0..=100.0).contains(&t) => {
                return bad("temperature must be between 0 and 100 (0 chooses greedily)");
            }
            Some(t) => t as f32,
            None => defaults.temperature,
        };
        let top_k = match self.top_k {
            Some(k) if k > 1_000_000 => {
                return bad("top_k must be at most 1000000 (0 keeps every token)");
            }
            Some(k) => k as usize,
            None => defaults.top_k,
        };
        let top_p = match self.top_p {
            Some(p) if !(p > 0.0 && p <= 1.0) => return bad("top_p must be above 0 and at most 1"),
            Some(p) => p as f32,
            None => defaults.top_p,
        };
        let greedy = self.do_sample == Some(false);
        Ok(Sampling {
            temperature: if greedy { 0.0 } else { temperature },
            top_k,
            top_p,
            seed: self
                .seed
                .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0),
        })
    }
}

fn checked_stops(stops: Vec<String>) -> Result<Vec<String>, Error> {
    if stops.len() > MAX_STOPS {
        return Err(Error::BadInput(format!(
            "stop has {} strings; send at most {MAX_STOPS}",
            stops.len()
        )));
    }
    if let Some(stop) = stops
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(Error::BadInput(format!(
            "stop strings must be 1 to {MAX_STOP_BYTES} bytes; one is {} bytes",
            stop.len()
        )));
    }
    Ok(stops)
}

/// One value or a list of them (or null): `"stop": "x"` or `["x", "y"]`,
/// `"eos_token_id": 2` or `[2, 32000]`.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match Option::<OneOrMany<T>>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(value)) => vec![value],
        Some(OneOrMany::Many(values)) => values,
    })
}

/// What `generation_config.json` and `config.json` say, read leniently: a
/// file from a model export may carry many fields ortserve does not use.
#[derive(Debug, Default, Deserialize)]
pub struct ModelFiles {
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    pub max_length: Option<u64>,
    pub max_new_tokens: Option<u64>,
    pub max_position_embeddings: Option<u64>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<u64>,
    pub top_p: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ModelLimits {
        ModelLimits {
            eos_tokens: vec![9],
            context: 20,
            default_max_new_tokens: 8,
            max_new_tokens_cap: 12,
            default_sampling: Sampling {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                seed: 0,
            },
        }
    }

    fn params(json: &str) -> GenerateParams {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn limits_are_enforced_naming_the_field() {
        let error = |json: &str, prompt: usize| {
            params(json)
                .check(&limits(), prompt)
                .unwrap_err()
                .to_string()
        };
        assert!(
            error(r#"{"max_new_tokens": 13}"#, 2)
                .contains("at most 12 tokens per request (ortserve.textGeneration.maxNewTokens)")
        );
        assert!(
            error(r#"{"max_tokens": 0}"#, 2)
                .starts_with("max_new_tokens (max_tokens) must be at least 1")
        );
        assert!(error(r#"{"max_new_tokens": 10}"#, 15).contains("ask for at most 5 new tokens"));
        assert!(error("{}", 20).contains("the model's context is 20 tokens"));
        assert!(error(r#"{"temperature": -1}"#, 2).starts_with("temperature must be"));
        assert!(error(r#"{"top_p": 0}"#, 2).starts_with("top_p must be"));
        assert!(error(r#"{"stop": [""]}"#, 2).starts_with("stop strings must be"));
        let unknown = serde_json::from_str::<GenerateParams>(r#"{"beams": 4}"#)
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `beams`"), "{unknown}");
    }

    #[test]
    fn defaults_fill_what_the_request_leaves_out() {
        let checked = params(r#"{"stop": "END", "seed": 5}"#)
            .check(&limits(), 15)
            .unwrap();
        assert_eq!(checked.max_new_tokens, 5, "the context leaves room for 5");
        assert_eq!(checked.stop, vec!["END".to_string()]);
        assert_eq!(checked.sampling.seed, 5);
        let greedy = params(r#"{"temperature": 0.7, "do_sample": false}"#)
            .check(&limits(), 2)
            .unwrap();
        assert_eq!(greedy.sampling.temperature, 0.0);
    }
}
