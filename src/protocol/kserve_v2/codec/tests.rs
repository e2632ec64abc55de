use super::*;
use crate::types::{TensorData, TensorSpec};

/// Two inputs (a float matrix, strings) and two outputs; the property
/// tests use it too.
pub(super) fn io() -> ModelIo {
    let spec = |name: &str, dtype, shape: Vec<i64>| TensorSpec {
        name: name.into(),
        dtype,
        shape,
    };
    ModelIo {
        inputs: vec![
            spec("x", DataType::F32, vec![-1, 2]),
            spec("s", DataType::String, vec![-1]),
        ],
        outputs: vec![
            spec("y", DataType::F32, vec![-1, 2]),
            spec("n", DataType::I64, vec![-1]),
        ],
    }
}

fn request(json: &str, binary: &[u8]) -> Vec<u8> {
    [json.as_bytes(), binary].concat()
}

#[test]
fn json_data_nested_or_flat_and_binary_agree() {
    let flat = r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]},{"name":"s","shape":[2],"datatype":"BYTES","data":["a","bc"]}]}"#;
    let nested = flat.replace("[1,2,3,4]", "[[1,2],[3,4]]");
    let header = r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}},{"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}]}"#;
    let mut binary: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    binary.extend_from_slice(&[1, 0, 0, 0, b'a', 2, 0, 0, 0, b'b', b'c']);
    let body = request(header, &binary);
    let decoded = [
        decode(&io(), flat.as_bytes(), None, 100),
        decode(&io(), nested.as_bytes(), None, 100),
        decode(&io(), &body, Some(header.len()), 100),
    ];
    for d in decoded {
        let d = d.unwrap();
        assert_eq!(
            d.request.inputs[0],
            Tensor::new(vec![2, 2], TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]))
        );
        assert_eq!(
            d.request.inputs[1],
            Tensor::new(vec![2], TensorData::String(vec!["a".into(), "bc".into()]))
        );
    }
}

#[test]
fn sizes_that_do_not_add_up_are_refused_before_allocating() {
    let header = r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}},{"name":"s","shape":[1],"datatype":"BYTES","data":["a"]}]}"#;
    let cases: [(Vec<u8>, Option<usize>, &str); 5] = [
        (
            request(header, &[0; 16]),
            Some(10_000),
            "Inference-Header-Content-Length is 10000 but the body has only",
        ),
        (
            request(header, &[0; 8]),
            Some(header.len()),
            "binary_data_size is 16 but only 8 bytes of binary data remain",
        ),
        (
            request(header, &[0; 20]),
            Some(header.len()),
            "4 bytes of binary data follow the JSON but no input claims them",
        ),
        (
            request(
                &header.replace("[2,2]", "[4294967296,4294967296]"),
                &[0; 16],
            ),
            Some(header.len() + 18),
            "has more than 100 elements, the limit set by ortserve.maxTensorElements",
        ),
        (
            request(
                &header.replace("\"binary_data_size\":16", "\"binary_data_size\":12"),
                &[0; 12],
            ),
            Some(header.len()),
            "the binary data is 12 bytes but the shape needs 4 × 4 = 16 bytes",
        ),
    ];
    for (body, length, message) in cases {
        let error = decode(&io(), &body, length, 100)
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(message), "{error}");
    }
}

#[test]
fn bad_inputs_name_the_input() {
    let cases = [
        (
            r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP64","data":[1,2]},{"name":"s","shape":[1],"datatype":"BYTES","data":["a"]}]}"#,
            "input 'x': datatype is FP64 but the model takes FP32",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FLOAT","data":[1,2]}]}"#,
            "unknown datatype \"FLOAT\"",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2]}]}"#,
            "input 'x': shape [1, 3] has 3 elements but 'data' has 2",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
            "input 's' is missing",
        ),
        (
            r#"{"inputs":[{"name":"z","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            "unknown input 'z'; the model's inputs are: x, s",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":50,"datatype":"FP32","data":[1]}]}"#,
            "input 'x': shape [50] has 50 elements but 'data' has 1",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":"1,2","datatype":"FP32","data":[1]}]}"#,
            "an input's 'shape' must be a list of whole numbers",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1.5,2],"datatype":"FP32","data":[1]}]}"#,
            "an input's 'shape' must be a list of whole numbers",
        ),
        (
            r#"{"inputs":[{"name":5,"shape":[1],"datatype":"FP32","data":[1]}]}"#,
            "'name': expected a string at byte 19, found '5'",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":null,"data":[1]}]}"#,
            "'datatype': expected a string at byte 46, found 'n'",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"#,
            "'datatype': the string at byte 46 is not closed",
        ),
        // Escaped, and past ASCII: the long way, unescaped (and quoted
        // as an excerpt, which escapes the quote again).
        (
            r#"{"inputs":[{"name":"\u0078\"","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            "unknown input 'x\\\"'",
        ),
        (
            r#"{"inputs":[{"name":"é","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            "unknown input 'é'",
        ),
    ];
    for (json, message) in cases {
        let error = decode(&io(), json.as_bytes(), None, 100)
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(message), "{json}: {error}");
    }
}

#[test]
fn responses_mix_json_and_binary_outputs() {
    let response = InferResponse {
        outputs: vec![
            Tensor::new(vec![1, 2], TensorData::F32(vec![0.5, 1.0])),
            Tensor::new(vec![1], TensorData::I64(vec![7])),
        ],
    };
    let id = ModelId {
        name: "m".into(),
        version: "2.0".into(),
    };
    let choices = [
        OutputChoice {
            index: 1,
            binary: true,
        },
        OutputChoice {
            index: 0,
            binary: false,
        },
    ];
    let io = io();
    let outputs = chosen_outputs(&io, &response, &choices);
    let encoded = encode(&id, Some("req-1"), &outputs, ReplyShape::Batched);
    let (json, binary) = encoded.body.split_at(encoded.json_length);
    assert_eq!(
        std::str::from_utf8(json).unwrap(),
        r#"{"model_name":"m","model_version":"2.0","id":"req-1","outputs":[{"name":"n","datatype":"INT64","shape":[1],"parameters":{"binary_data_size":8}},{"name":"y","datatype":"FP32","shape":[1,2],"data":[0.5,1.0]}]}"#
    );
    assert_eq!(binary, 7i64.to_le_bytes());
}

#[test]
fn a_binary_response_is_written_into_one_buffer_sized_up_front() {
    let strings = vec!["ab".to_string(), String::new()];
    let response = InferResponse {
        outputs: vec![
            Tensor::new(vec![32, 2], TensorData::F32(vec![0.25; 64])),
            Tensor::new(vec![2], TensorData::String(strings)),
        ],
    };
    let named = |index, name| NamedOutput {
        name,
        tensor: &response.outputs[index],
        binary: true,
    };
    let outputs = [named(0, "y"), named(1, "s")];
    let id = ModelId {
        name: "m".into(),
        version: "1".into(),
    };
    let encoded = encode(&id, None, &outputs, ReplyShape::Batched);
    let binary_length = 64 * 4 + (4 + 2) + 4;
    assert_eq!(encoded.body.len(), encoded.json_length + binary_length);
    assert_eq!(
        encoded.body.capacity(),
        header_estimate(&outputs) + binary_length,
        "the buffer never had to grow"
    );
    assert_eq!(
        &encoded.body[encoded.json_length + 256..],
        [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]
    );
    let header: Value = serde_json::from_slice(&encoded.body[..encoded.json_length]).unwrap();
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 256);
    assert_eq!(header["outputs"][1]["parameters"]["binary_data_size"], 10);
}

#[test]
fn parameters_are_read_by_name_and_the_rest_kept_for_explain() {
    let x = r#"{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}"#;
    let s = r#"{"name":"s","shape":[1],"datatype":"BYTES","data":["a"]}"#;
    let body = format!(
        r#"{{"inputs":[{x},{s}],"parameters":{{"binary_data_output":true,"method":"occlusion","target":2}},
            "outputs":[{{"name":"n","parameters":{{"binary_data":false}}}},{{"name":"y","parameters":{{"binary_data":"yes"}}}}]}}"#
    );
    let decoded = decode(&io(), body.as_bytes(), None, 100).unwrap();
    assert!(decoded.binary_output);
    let mut others: Vec<_> = decoded.parameters.keys().cloned().collect();
    others.sort();
    assert_eq!(others, ["method", "target"]);
    // `false` is kept; a value that is not a boolean leaves the default.
    assert_eq!(
        decoded.outputs,
        [
            OutputChoice {
                index: 1,
                binary: false
            },
            OutputChoice {
                index: 0,
                binary: true
            },
        ]
    );
}

#[test]
fn bad_parameters_are_refused_by_name() {
    let with_size = |size: &str| {
        format!(
            r#"{{"inputs":[{{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{{"binary_data_size":{size}}}}},{{"name":"s","shape":[1],"datatype":"BYTES","data":["a"]}}]}}"#
        )
    };
    let cases = [
        (with_size("null"), "binary_data_size must be a whole number of bytes, got null"),
        (with_size("\"8\""), "binary_data_size must be a whole number of bytes, got \"8\""),
        (with_size("8,\"binary_data_size\":8"), "duplicate field `binary_data_size`"),
        (
            r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":5,"data":[1,2]}]}"#.into(),
            "an input's 'parameters': expected an object",
        ),
        (with_size("08"), "'binary_data_size': invalid number"),
        (with_size("8.0"), "binary_data_size must be a whole number of bytes, got 8.0"),
        (
            with_size("8,\"other\":[1,"),
            "'other': expected value",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}],"parameters":[true]}"#.into(),
            "'parameters': expected an object",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}],"outputs":[{"name":"y","parameters":"binary"}]}"#.into(),
            "expected an object of parameters",
        ),
    ];
    for (json, message) in cases {
        let body = request(&json, &[0; 8]);
        let error = decode(&io(), &body, Some(json.len()), 100)
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(message), "{json}: {error}");
    }
}

/// The short reader for plain shapes answers only where `serde_json`'s
/// reader gives the same shape, and leaves everything else to it.
#[test]
fn plain_shapes_read_as_the_full_reader_reads_them() {
    let full = |value: &str| {
        let mut deserializer = serde_json::Deserializer::from_str(value);
        shape_or_dimension(&mut deserializer).map_err(|e| e.to_string())
    };
    for (value, plain) in [
        ("[1,4]", true),
        ("[ 1 , 4 ]", true),
        ("[-1,3]", true),
        ("[0]", true),
        ("[999999999999999999]", true),
        ("[-999999999999999999, 20]", true),
        ("[-0]", false),
        ("[1,2,3,4,5,6,7,8]", true),
        ("[1,2,3,4,5,6,7,8,9]", false),
        ("[9999999999999999999]", false),
        ("[01]", false),
        ("[+1]", false),
        ("[-]", false),
        ("[1.0]", false),
        ("[1e3]", false),
        ("[]", false),
        ("[1,]", false),
        ("[,1]", false),
        ("-1", false),
        ("[\"1\"]", false),
    ] {
        let read = plain_shape(value.as_bytes());
        assert_eq!(read.is_some(), plain, "{value}");
        if let Some(shape) = read {
            assert_eq!(Ok(shape), full(value), "{value}");
        }
        assert_eq!(read_shape(value.as_bytes()), full(value), "{value}");
    }
}

/// The short reader for plain sizes answers only where `serde_json` reads
/// a whole number of bytes, and leaves everything else to it.
#[test]
fn plain_sizes_read_as_serde_json_reads_them() {
    for (value, plain) in [
        ("0", true),
        ("16", true),
        ("9999999999999999999", true),
        ("18446744073709551615", false),
        ("18446744073709551616", false),
        ("01", false),
        ("-1", false),
        ("+1", false),
        ("1.0", false),
        ("1e3", false),
        ("", false),
        ("\"8\"", false),
        ("null", false),
    ] {
        let read = plain_size(value.as_bytes());
        assert_eq!(read.is_some(), plain, "{value}");
        if let Some(size) = read {
            assert_eq!(
                serde_json::from_str::<u64>(value).ok(),
                Some(size),
                "{value}"
            );
        }
    }
}

/// Sizes come out the same however the parameters are spaced, and other
/// parameters beside them are skipped.
#[test]
fn binary_data_size_is_read_among_other_parameters() {
    for parameters in [
        r#"{"binary_data_size":8}"#,
        r#"{ "binary_data_size" : 8 }"#,
        r#"{"content_type":"x","binary_data_size":8,"other":{"a":[1]}}"#,
    ] {
        let json = format!(
            r#"{{"inputs":[{{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{parameters}}},{{"name":"s","shape":[1],"datatype":"BYTES","data":["a"]}}]}}"#
        );
        let body = request(&json, &[0, 0, 128, 63, 0, 0, 0, 64]);
        let decoded = decode(&io(), &body, Some(json.len()), 100).expect("decoded");
        assert_eq!(
            decoded.request.inputs[0].data,
            TensorData::F32(vec![1.0, 2.0]),
            "{parameters}"
        );
    }
}

#[test]
fn binary_data_output_is_read_from_its_literal_or_its_value() {
    let body = |parameters: &str| {
        format!(
            r#"{{"inputs":[{{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}},{{"name":"s","shape":[1],"datatype":"BYTES","data":["a"]}}],"parameters":{{{parameters}}}}}"#
        )
    };
    for (parameters, binary) in [
        (r#""binary_data_output":true"#, Some(true)),
        (r#""binary_data_output": false"#, Some(false)),
        (r#""binary_data_output":"yes""#, Some(false)),
        (
            r#""binary_data_output":true,"binary_data_output":false"#,
            Some(false),
        ),
        (r#""binary_data_output":tru"#, None),
    ] {
        let decoded = decode(&io(), body(parameters).as_bytes(), None, 100);
        assert_eq!(
            decoded.ok().map(|d| d.binary_output),
            binary,
            "{parameters}"
        );
    }
}
