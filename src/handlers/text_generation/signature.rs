//! Which graph inputs and outputs play which part in a decoder exported in
//! Hugging Face Optimum's signature, checked once at load.
//!
//! ```text
//! input_ids, attention_mask, [position_ids], [use_cache_branch],
//! past_key_values.N.key/value   ──►   logits, present.N.key/value
//! ```

use crate::types::{DataType, ModelIo, Tensor, TensorData, TensorSpec};

/// What one graph input carries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Feed {
    InputIds,
    AttentionMask,
    PositionIds,
    CacheBranch,
    Past { layer: usize, value: bool },
}

/// The decoder's inputs in graph order, and where its outputs are.
#[derive(Debug, Clone)]
pub(super) struct DecoderSignature {
    feeds: Vec<Feed>,
    logits: usize,
    /// For each layer, the output index of its present key and value.
    presents: Vec<[usize; 2]>,
    /// The past tensors' element type and `[heads, head_dim]`.
    cache_type: DataType,
    cache_dims: [usize; 2],
}

/// The cache from one step, in the order the next step feeds it.
pub(super) struct KvCache {
    /// Per layer, key then value: `[1, heads, length, head_dim]`.
    layers: Vec<[Tensor; 2]>,
    pub length: usize,
}

impl DecoderSignature {
    /// Reads the signature off the graph, or says what does not fit.
    pub fn detect(io: &ModelIo) -> Result<DecoderSignature, String> {
        let feeds = io
            .inputs
            .iter()
            .map(feed)
            .collect::<Result<Vec<_>, String>>()?;
        for (needed, name) in [
            (Feed::InputIds, "input_ids"),
            (Feed::AttentionMask, "attention_mask"),
        ] {
            if !feeds.contains(&needed) {
                return Err(format!(
                    "the graph has no '{name}' input; the text_generation handler needs a decoder \
                     exported in Optimum's signature (input_ids, attention_mask, past_key_values.N.key/value)"
                ));
            }
        }
        let layers = feeds
            .iter()
            .filter(|f| matches!(f, Feed::Past { .. }))
            .count()
            / 2;
        if layers == 0 {
            return Err(
                "the graph has no past_key_values.N.key/value inputs; export the decoder \
                        with its KV cache (Optimum's `--task text-generation-with-past`)"
                    .into(),
            );
        }
        let presents = (0..layers)
            .map(|layer| {
                let find = |kind: &str| {
                    let name = format!("present.{layer}.{kind}");
                    let index = io.outputs.iter().position(|o| o.name == name);
                    index.ok_or_else(|| {
                        format!("the graph has past_key_values.{layer}.{kind} but no '{name}' output to feed it back")
                    })
                };
                Ok([find("key")?, find("value")?])
            })
            .collect::<Result<Vec<_>, String>>()?;
        for layer in 0..layers {
            for value in [false, true] {
                if !feeds.contains(&Feed::Past { layer, value }) {
                    let kind = if value { "value" } else { "key" };
                    return Err(format!(
                        "the graph has no 'past_key_values.{layer}.{kind}' input, but has other layers' caches"
                    ));
                }
            }
        }
        let logits = io.outputs.iter().position(|o| o.name == "logits").ok_or(
            "the graph has no 'logits' output ([batch, sequence, vocabulary]) to choose tokens from",
        )?;
        check_logits(&io.outputs[logits])?;
        let (cache_type, cache_dims) = cache_layout(io)?;
        Ok(DecoderSignature {
            feeds,
            logits,
            presents,
            cache_type,
            cache_dims,
        })
    }

    /// The cache before the first step: every layer empty.
    pub fn empty_cache(&self) -> KvCache {
        let [heads, dim] = self.cache_dims;
        let empty = || {
            Tensor::new(
                vec![1, heads, 0, dim],
                TensorData::zeros(self.cache_type, 0),
            )
        };
        KvCache {
            layers: self.presents.iter().map(|_| [empty(), empty()]).collect(),
            length: 0,
        }
    }

    /// The inputs for one step: `tokens` after `cache.length` earlier ones.
    pub fn inputs(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<Tensor> {
        let start = cache.length;
        let total = start + tokens.len();
        let row = |values: Vec<i64>| Tensor::new(vec![1, values.len()], TensorData::I64(values));
        self.feeds
            .iter()
            .map(|feed| match *feed {
                Feed::InputIds => row(tokens.iter().map(|&t| i64::from(t)).collect()),
                Feed::AttentionMask => row(vec![1; total]),
                Feed::PositionIds => row((start as i64..total as i64).collect()),
                Feed::CacheBranch => Tensor::new(vec![1], TensorData::Bool(vec![start > 0])),
                Feed::Past { layer, value } => {
                    let slot = &mut cache.layers[layer][usize::from(value)];
                    std::mem::replace(
                        slot,
                        Tensor::new(vec![0], TensorData::zeros(self.cache_type, 0)),
                    )
                }
            })
            .collect()
    }

    /// Takes the step's outputs: the last position's logits (as f32) and
    /// the grown cache.
    pub fn outputs(
        &self,
        mut outputs: Vec<Tensor>,
        cache: &mut KvCache,
        fed: usize,
    ) -> Result<Vec<f32>, String> {
        for (layer, [key, value]) in self.presents.iter().enumerate() {
            for (kind, &index) in [*key, *value].iter().enumerate() {
                let present = std::mem::replace(
                    &mut outputs[index],
                    Tensor::new(vec![0], TensorData::F32(Vec::new())),
                );
                if present.shape.get(2) != Some(&(cache.length + fed)) {
                    return Err(format!(
                        "output 'present.{layer}.{}' has shape {:?}; expected {} positions on axis 2",
                        ["key", "value"][kind],
                        present.shape,
                        cache.length + fed
                    ));
                }
                cache.layers[layer][kind] = present;
            }
        }
        cache.length += fed;
        last_row(&outputs[self.logits])
    }
}

fn feed(spec: &TensorSpec) -> Result<Feed, String> {
    let name = spec.name.as_str();
    let (feed, dtype) = match name {
        "input_ids" => (Feed::InputIds, Some(DataType::I64)),
        "attention_mask" => (Feed::AttentionMask, Some(DataType::I64)),
        "position_ids" => (Feed::PositionIds, Some(DataType::I64)),
        "use_cache_branch" => (Feed::CacheBranch, Some(DataType::Bool)),
        _ => match past(name) {
            Some(feed) => (feed, None),
            None => {
                return Err(format!(
                    "the graph's input '{name}' is not one a decoder in Optimum's signature has \
                     (input_ids, attention_mask, position_ids, use_cache_branch, past_key_values.N.key/value)"
                ));
            }
        },
    };
    match dtype {
        Some(expected) if spec.dtype != expected => Err(format!(
            "input '{name}' is {} but the text_generation handler feeds it {}",
            spec.dtype.name(),
            expected.name()
        )),
        _ => Ok(feed),
    }
}

/// `past_key_values.N.key` / `.value`.
fn past(name: &str) -> Option<Feed> {
    let rest = name.strip_prefix("past_key_values.")?;
    let (layer, kind) = rest.split_once('.')?;
    let layer = layer.parse().ok().filter(|&l: &usize| l < 1024)?;
    match kind {
        "key" => Some(Feed::Past {
            layer,
            value: false,
        }),
        "value" => Some(Feed::Past { layer, value: true }),
        _ => None,
    }
}

fn check_logits(spec: &TensorSpec) -> Result<(), String> {
    if !matches!(spec.dtype, DataType::F32 | DataType::F16) || spec.shape.len() != 3 {
        return Err(format!(
            "output 'logits' is {} {}; the text_generation handler needs float or float16 \
             [batch, sequence, vocabulary]",
            spec.dtype.name(),
            spec.shape_text()
        ));
    }
    Ok(())
}

/// The past tensors' type and fixed `[heads, head_dim]`, the same for all.
fn cache_layout(io: &ModelIo) -> Result<(DataType, [usize; 2]), String> {
    let mut layout = None;
    for spec in io.inputs.iter().filter(|s| past(&s.name).is_some()) {
        let dims = match spec.shape.as_slice() {
            &[_, heads, _, dim] if heads > 0 && dim > 0 => [heads as usize, dim as usize],
            _ => {
                return Err(format!(
                    "input '{}' has shape {}; the text_generation handler needs \
                     [batch, heads, past_sequence, head_dim] with fixed heads and head_dim",
                    spec.name,
                    spec.shape_text()
                ));
            }
        };
        if !matches!(spec.dtype, DataType::F32 | DataType::F16) {
            return Err(format!(
                "input '{}' is {}; caches must be float or float16",
                spec.name,
                spec.dtype.name()
            ));
        }
        match layout {
            None => layout = Some((spec.dtype, dims)),
            Some(first) if first != (spec.dtype, dims) => {
                return Err(format!(
                    "input '{}' differs in type or shape from the other caches",
                    spec.name
                ));
            }
            Some(_) => {}
        }
    }
    Ok(layout.expect("checked: at least one layer"))
}

/// The logits of the last position of a `[1, sequence, vocabulary]` tensor.
fn last_row(logits: &Tensor) -> Result<Vec<f32>, String> {
    let &[1, positions, vocabulary] = logits.shape.as_slice() else {
        return Err(format!(
            "output 'logits' has shape {:?}; expected [1, sequence, vocabulary]",
            logits.shape
        ));
    };
    let Some(start) = positions.checked_sub(1).map(|last| last * vocabulary) else {
        return Err("output 'logits' has no positions".into());
    };
    match &logits.data {
        TensorData::F32(v) => Ok(v[start..start + vocabulary].to_vec()),
        TensorData::F16(v) => Ok(v[start..start + vocabulary]
            .iter()
            .map(|x| x.to_f32())
            .collect()),
        other => Err(format!("output 'logits' is {}", other.dtype().name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    /// One layer, merged export, position ids: `[1, 2, past, 4]` caches.
    fn decoder() -> ModelIo {
        ModelIo {
            inputs: vec![
                spec("input_ids", DataType::I64, &[-1, -1]),
                spec("attention_mask", DataType::I64, &[-1, -1]),
                spec("position_ids", DataType::I64, &[-1, -1]),
                spec("past_key_values.0.key", DataType::F32, &[-1, 2, -1, 4]),
                spec("past_key_values.0.value", DataType::F32, &[-1, 2, -1, 4]),
                spec("use_cache_branch", DataType::Bool, &[1]),
            ],
            outputs: vec![
                spec("logits", DataType::F32, &[-1, -1, 5]),
                spec("present.0.key", DataType::F32, &[-1, 2, -1, 4]),
                spec("present.0.value", DataType::F32, &[-1, 2, -1, 4]),
            ],
        }
    }

    #[test]
    fn each_step_feeds_positions_masks_and_the_grown_cache() {
        let signature = DecoderSignature::detect(&decoder()).unwrap();
        let mut cache = signature.empty_cache();
        let first = signature.inputs(&[7, 8], &mut cache);
        let shapes: Vec<&[usize]> = first.iter().map(|t| t.shape.as_slice()).collect();
        assert_eq!(
            shapes,
            [
                &[1, 2][..],
                &[1, 2],
                &[1, 2],
                &[1, 2, 0, 4],
                &[1, 2, 0, 4],
                &[1]
            ]
        );
        assert_eq!(first[2].data, TensorData::I64(vec![0, 1]));
        assert_eq!(first[5].data, TensorData::Bool(vec![false]), "no cache yet");
        let present = || Tensor::new(vec![1, 2, 2, 4], TensorData::F32(vec![0.5; 16]));
        let mut logits = vec![0.0; 10];
        logits[5 + 3] = 1.0;
        let outputs = vec![
            Tensor::new(vec![1, 2, 5], TensorData::F32(logits)),
            present(),
            present(),
        ];
        assert_eq!(
            signature.outputs(outputs, &mut cache, 2).unwrap(),
            [0.0, 0.0, 0.0, 1.0, 0.0],
            "the last position's row"
        );
        let next = signature.inputs(&[9], &mut cache);
        assert_eq!(next[1].data, TensorData::I64(vec![1; 3]));
        assert_eq!(next[2].data, TensorData::I64(vec![2]));
        assert_eq!(next[3].shape, [1, 2, 2, 4], "present becomes past");
        assert_eq!(next[5].data, TensorData::Bool(vec![true]));
    }

    #[test]
    fn graphs_that_do_not_fit_are_named() {
        let error = |change: fn(&mut ModelIo)| {
            let mut io = decoder();
            change(&mut io);
            DecoderSignature::detect(&io).unwrap_err()
        };
        assert!(
            error(|io| io.inputs[0].dtype = DataType::I32)
                .starts_with("input 'input_ids' is int32")
        );
        assert!(
            error(|io| io
                .inputs
                .push(spec("token_type_ids", DataType::I64, &[-1, -1])))
            .starts_with("the graph's input 'token_type_ids' is not one")
        );
        assert!(error(|io| io.outputs.truncate(2)).contains("no 'present.0.value' output"));
        assert!(
            error(|io| io.inputs[3].shape = vec![-1, -1, -1, 4])
                .contains("with fixed heads and head_dim")
        );
        assert!(
            error(|io| io.outputs[0].name = "scores".into())
                .starts_with("the graph has no 'logits' output")
        );
        assert!(error(|io| io.inputs.truncate(3)).starts_with("the graph has no past_key_values"));
    }
}
