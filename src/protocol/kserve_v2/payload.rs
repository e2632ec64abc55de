//! `BYTES` inputs as payloads: for a model whose handler reads files (the
//! image classifier), a request whose one input is `BYTES` carries one file
//! per element, whatever the input's name — base64 text in JSON, the file's
//! own bytes in the binary extension — as TorchServe's KServe v2 samples send
//! images. Each element goes through the handler as one instance, and the
//! handler's answers come back as one output named after the input.

use bytes::Bytes;

use super::codec::{self, InputHeader};
use crate::codec::array_items;
use crate::handlers::BodyForm;
use crate::types::{Error, Tensor, TensorData};

/// A request's payloads, in order.
pub struct Payloads {
    pub id: Option<String>,
    /// The input's name, which the answer's one output takes.
    pub name: String,
    pub binary_output: bool,
    pub parameters: std::collections::HashMap<String, serde_json::Value>,
    /// Each payload, a slice of the body, with the form the handler reads it in.
    pub elements: Vec<(Bytes, BodyForm)>,
}

/// The payloads of `body`, or `None` when it is not one `BYTES` input (a
/// tensor request, decoded as such).
pub fn decode(body: &Bytes, header_length: Option<usize>) -> Result<Option<Payloads>, Error> {
    let (header, binary) = codec::decode_header(body, header_length)?;
    let [input] = header.inputs.as_slice() else {
        return Ok(None);
    };
    if input.datatype != "BYTES" {
        return Ok(None);
    }
    let bad = |message: String| Error::BadInput(format!("input '{}': {message}", input.name));
    let elements = match (input.data, &input.parameters.binary_data_size) {
        (Some(_), Some(_)) => {
            return Err(bad("has both 'data' and binary_data_size; send one".into()));
        }
        (Some(data), None) => {
            let mut strings = Vec::new();
            json_strings(data, &mut strings, 0).map_err(bad)?;
            strings
                .into_iter()
                .map(|raw| (body.slice_ref(raw), BodyForm::Instance))
                .collect()
        }
        (None, Some(size)) => binary_elements(body, binary, size).map_err(bad)?,
        (None, None) => {
            return Err(bad(
                "'data' is missing (or binary_data_size for binary data)".into(),
            ));
        }
    };
    check_count(input, &elements).map_err(bad)?;
    Ok(Some(Payloads {
        id: header.id.clone(),
        name: input.name.to_string(),
        binary_output: header.parameters.binary_data_output,
        parameters: header.parameters.others.clone(),
        elements,
    }))
}

/// Deeper lists than any tensor rank are refused before they can exhaust
/// the stack.
const MAX_DEPTH: usize = 32;

/// The strings of `data`: one string, or (nested) lists of them.
fn json_strings<'a>(data: &'a [u8], found: &mut Vec<&'a [u8]>, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "'data' is nested more than {MAX_DEPTH} levels deep"
        ));
    }
    match data.first() {
        Some(b'"') => found.push(data),
        Some(b'[') => {
            for item in array_items(data) {
                let item =
                    item.map_err(|_| "'data' must be a string or a list of strings".to_string())?;
                json_strings(item, found, depth + 1)?;
            }
        }
        _ => {
            return Err(
                "a BYTES payload is a string (the file in base64) or a list of them".into(),
            );
        }
    }
    Ok(())
}

/// Binary BYTES: each element a 4-byte length and the file's own bytes.
fn binary_elements(
    body: &Bytes,
    binary: &[u8],
    size: &serde_json::Value,
) -> Result<Vec<(Bytes, BodyForm)>, String> {
    if size.as_u64() != Some(binary.len() as u64) {
        return Err(format!(
            "binary_data_size is {size} but {} bytes of binary data follow the JSON",
            binary.len()
        ));
    }
    Ok(crate::codec::split_bytes_elements(binary)?
        .into_iter()
        .map(|element| (body.slice_ref(element), BodyForm::Raw))
        .collect())
}

/// A shape with no wildcard (`-1`) must count the elements sent.
fn check_count(input: &InputHeader<'_>, elements: &[(Bytes, BodyForm)]) -> Result<(), String> {
    if elements.is_empty() {
        return Err("holds no payloads".into());
    }
    if input.shape.iter().any(|&d| d < 0) {
        return Ok(());
    }
    let declared = input.shape.iter().map(|&d| d as u128).product::<u128>();
    if declared != elements.len() as u128 {
        return Err(format!(
            "shape {:?} has {declared} elements but {} payloads were sent",
            input.shape,
            elements.len()
        ));
    }
    Ok(())
}

/// The handler's answers as one tensor of `[answers]`: INT64 when every
/// answer is a whole number (the `argmax` index), BYTES of the text when
/// every answer is a string (a label), else BYTES holding each answer's JSON.
pub fn answers_tensor(answers: &[Vec<u8>]) -> Tensor {
    let shape = vec![answers.len()];
    let parsed: Vec<serde_json::Value> = answers
        .iter()
        .map(|a| serde_json::from_slice(a).unwrap_or(serde_json::Value::Null))
        .collect();
    if let Some(numbers) = parsed.iter().map(serde_json::Value::as_i64).collect() {
        return Tensor::new(shape, TensorData::I64(numbers));
    }
    let texts = parsed
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()
        .unwrap_or_else(|| {
            answers
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        });
    Tensor::new(shape, TensorData::String(texts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(texts: &[&str]) -> Vec<Vec<u8>> {
        texts.iter().map(|t| t.as_bytes().to_vec()).collect()
    }

    #[test]
    fn answers_become_int64_bytes_or_json_text() {
        let indices = answers_tensor(&strings(&["2", "7"]));
        assert_eq!(indices.shape, [2]);
        assert_eq!(indices.data, TensorData::I64(vec![2, 7]));
        let labels = answers_tensor(&strings(&[r#""tabby""#]));
        assert_eq!(labels.data, TensorData::String(vec!["tabby".into()]));
        let maps = answers_tensor(&strings(&[r#"{"tabby":0.5}"#, "3"]));
        assert_eq!(
            maps.data,
            TensorData::String(vec![r#"{"tabby":0.5}"#.into(), "3".into()])
        );
    }

    #[test]
    fn json_and_binary_payloads_are_slices_of_the_body() {
        let body = Bytes::from_static(
            br#"{"id":"a","inputs":[{"name":"img","shape":-1,"datatype":"BYTES","data":[["aGk="],"aGk="]}]}"#,
        );
        let payloads = decode(&body, None).unwrap().unwrap();
        assert_eq!(
            (payloads.id.as_deref(), payloads.name.as_str()),
            (Some("a"), "img")
        );
        let parts: Vec<_> = payloads
            .elements
            .iter()
            .map(|(b, f)| (&b[..], *f))
            .collect();
        assert_eq!(
            parts,
            [
                (&b"\"aGk=\""[..], BodyForm::Instance),
                (&b"\"aGk=\""[..], BodyForm::Instance)
            ]
        );

        let header = br#"{"inputs":[{"name":"img","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#;
        let body = Bytes::from([&header[..], &[2, 0, 0, 0], b"hi"].concat());
        let payloads = decode(&body, Some(header.len())).unwrap().unwrap();
        assert_eq!(&payloads.elements[0].0[..], b"hi");
        assert_eq!(payloads.elements[0].1, BodyForm::Raw);

        let tensor = Bytes::from_static(
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
        );
        assert!(decode(&tensor, None).unwrap().is_none());
    }

    #[test]
    fn deeply_nested_payload_lists_are_refused_not_recursed_into() {
        let depth = 100_000;
        let data = format!("{}\"aGk=\"{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!(
            r#"{{"inputs":[{{"name":"img","shape":-1,"datatype":"BYTES","data":{data}}}]}}"#
        );
        let Err(Error::BadInput(message)) = decode(&Bytes::from(body), None) else {
            panic!("a list nested {depth} deep was accepted");
        };
        assert_eq!(
            message,
            "input 'img': 'data' is nested more than 32 levels deep"
        );
    }
}
