use super::tests::io;
use super::*;
use proptest::collection::vec;
use proptest::prelude::*;

/// A plausible JSON part: right names, arbitrary shapes, datatypes,
/// declared binary sizes and data.
fn header() -> impl Strategy<Value = String> {
    let input = (
        prop::sample::select(vec!["x", "s", "z"]),
        vec(-3i64..5, 0..4),
        prop::sample::select(vec!["FP32", "BYTES", "INT64", "FP16", "bogus"]),
        prop::option::of(0u64..64),
        prop::option::of(vec(-2i32..3, 0..6)),
    )
        .prop_map(|(name, shape, datatype, size, data)| {
            let mut input = serde_json::json!({"name": name, "shape": shape, "datatype": datatype});
            if let Some(size) = size {
                input["parameters"] = serde_json::json!({"binary_data_size": size});
            }
            if let Some(data) = data {
                input["data"] = serde_json::json!(data);
            }
            input
        });
    (vec(input, 0..3), any::<bool>()).prop_map(|(inputs, binary_out)| {
        serde_json::json!({"inputs": inputs, "parameters": {"binary_data_output": binary_out}})
            .to_string()
    })
}

fn check(outcome: Result<Decoded, Error>) -> Result<(), TestCaseError> {
    if let Err(error) = outcome {
        prop_assert_eq!(error.status() / 100, 4, "{}", error);
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_body_and_header_length_give_a_request_or_a_4xx(
        body in vec(any::<u8>(), 0..200),
        length in prop::option::of(0usize..260),
    ) {
        check(decode(&io(), &body, length, 1024))?;
    }

    #[test]
    fn plausible_requests_give_a_request_or_a_4xx(
        json in header(),
        binary in vec(any::<u8>(), 0..80),
        with_length in any::<bool>(),
    ) {
        let length = with_length.then_some(json.len());
        let body = [json.as_bytes(), &binary].concat();
        check(decode(&io(), &body, length, 1024))?;
    }
}
