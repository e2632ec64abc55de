//! Tensors named by a request → the model's inputs: each name found among
//! the model's inputs at most once, every input given, then each tensor
//! checked against its input's declared shape, with the batch axis added to
//! a single instance sent without it.

use super::ReplyShape;
use crate::types::{Error, InferRequest, ModelIo, Tensor, TensorSpec, excerpt, list_excerpt};

/// The position of `name` among `specs`, the model's inputs or outputs
/// (`kind` says which, for the error that lists them).
pub fn spec_index(specs: &[TensorSpec], name: &str, kind: &str) -> Result<usize, Error> {
    specs.iter().position(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        Error::BadInput(format!(
            "unknown {kind} '{}'; the model's {kind}s are: {}",
            excerpt(name),
            names.join(", ")
        ))
    })
}

/// Parses each `(name, value)` of a request with `parse` as the input of
/// that name, and returns one tensor per model input, in the model's order.
pub fn named_inputs<'a, T>(
    io: &ModelIo,
    named: impl IntoIterator<Item = (&'a str, T)>,
    mut parse: impl FnMut(T, &TensorSpec) -> Result<Tensor, Error>,
) -> Result<Vec<Tensor>, Error> {
    let specs = &io.inputs;
    let mut found: Vec<Option<Tensor>> = vec![None; specs.len()];
    for (name, value) in named {
        let index = spec_index(specs, name, "input")?;
        if found[index].is_some() {
            return Err(Error::BadInput(format!("input '{name}' is given twice")));
        }
        found[index] = Some(parse(value, &specs[index])?);
    }
    specs
        .iter()
        .zip(found)
        .map(|(spec, tensor)| {
            tensor.ok_or_else(|| Error::BadInput(format!("input '{}' is missing", spec.name)))
        })
        .collect()
}

/// Checks `tensors` (one per model input, in order) against the declared
/// shapes, and adds the batch axis to a single instance sent without it.
pub fn fit_to_model(
    io: &ModelIo,
    tensors: Vec<Tensor>,
) -> Result<(InferRequest, ReplyShape), Error> {
    let batchable = io.has_batch_axis();
    let mut reply = None;
    let mut inputs = Vec::with_capacity(tensors.len());
    for (spec, mut tensor) in io.inputs.iter().zip(tensors) {
        let this = if tensor.shape.len() == spec.shape.len() {
            ReplyShape::Batched
        } else if tensor.shape.len() + 1 == spec.shape.len() && (batchable || spec.shape[0] == 1) {
            tensor.shape.insert(0, 1);
            ReplyShape::Single
        } else {
            return Err(shape_error(spec, &tensor, None));
        };
        if *reply.get_or_insert(this) != this {
            return Err(Error::BadInput(
                "some inputs include the batch axis and some do not; send all with it or all without it".into(),
            ));
        }
        if let Some(axis) = spec
            .shape
            .iter()
            .zip(&tensor.shape)
            .position(|(&want, &got)| want >= 0 && want as usize != got)
        {
            return Err(shape_error(spec, &tensor, Some(axis)));
        }
        inputs.push(tensor);
    }
    if batchable && inputs.iter().any(|t| t.rows() != inputs[0].rows()) {
        let rows: Vec<String> = io
            .inputs
            .iter()
            .zip(&inputs)
            .map(|(s, t)| format!("{}: {}", s.name, t.rows()))
            .collect();
        return Err(Error::BadInput(format!(
            "all inputs must have the same number of rows along axis 0 (got {})",
            rows.join(", ")
        )));
    }
    Ok((
        InferRequest { inputs },
        reply.unwrap_or(ReplyShape::Batched),
    ))
}

fn shape_error(spec: &TensorSpec, tensor: &Tensor, axis: Option<usize>) -> Error {
    let detail = match axis {
        Some(axis) => format!("axis {axis} must be {}", spec.shape[axis]),
        None => format!(
            "rank {} (or {} without the batch axis)",
            spec.shape.len(),
            spec.shape.len().saturating_sub(1)
        ),
    };
    Error::BadInput(format!(
        "input '{}' expects shape {} (-1 = any size) but got shape {}: {detail}",
        spec.name,
        spec.shape_text(),
        list_excerpt(&tensor.shape)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DataType, TensorData};

    fn io() -> ModelIo {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            dtype: DataType::F32,
            shape: vec![-1, 2],
        };
        ModelIo {
            inputs: vec![spec("a"), spec("b")],
            outputs: vec![spec("y")],
        }
    }

    fn gather(names: &[&str]) -> Result<Vec<Tensor>, String> {
        let row = |value: f32, _: &TensorSpec| {
            Ok(Tensor::new(vec![1, 2], TensorData::F32(vec![value; 2])))
        };
        let named = names.iter().enumerate().map(|(i, n)| (*n, i as f32));
        named_inputs(&io(), named, row).map_err(|e| e.to_string())
    }

    #[test]
    fn named_tensors_come_back_in_model_order() {
        let tensors = gather(&["b", "a"]).unwrap();
        assert_eq!(tensors[0].data, TensorData::F32(vec![1.0; 2]));
        assert_eq!(tensors[1].data, TensorData::F32(vec![0.0; 2]));
    }

    #[test]
    fn unknown_repeated_and_missing_names_are_refused() {
        let cases: [(&[&str], &str); 3] = [
            (
                &["a", "z"],
                "unknown input 'z'; the model's inputs are: a, b",
            ),
            (&["a", "a"], "input 'a' is given twice"),
            (&["b"], "input 'a' is missing"),
        ];
        for (names, message) in cases {
            let error = gather(names).unwrap_err();
            assert!(error.contains(message), "{names:?}: {error}");
        }
    }

    #[test]
    fn a_single_instance_gains_the_batch_axis() {
        let instance = |v| Tensor::new(vec![2], TensorData::F32(vec![v; 2]));
        let (request, shape) = fit_to_model(&io(), vec![instance(1.0), instance(2.0)]).unwrap();
        assert_eq!(shape, ReplyShape::Single);
        assert_eq!(request.inputs[0].shape, vec![1, 2]);
        let mixed = vec![
            instance(1.0),
            Tensor::new(vec![1, 2], TensorData::F32(vec![0.0; 2])),
        ];
        let error = fit_to_model(&io(), mixed).unwrap_err().to_string();
        assert!(
            error.contains("some inputs include the batch axis"),
            "{error}"
        );
    }
}
