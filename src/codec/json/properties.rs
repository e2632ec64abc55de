use super::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn dtype() -> impl Strategy<Value = DataType> {
    prop::sample::select(vec![
        DataType::Bool,
        DataType::U8,
        DataType::I16,
        DataType::I64,
        DataType::U64,
        DataType::F16,
        DataType::BF16,
        DataType::F32,
        DataType::F64,
        DataType::String,
    ])
}

/// Text built from JSON's pieces, to get deep into the scanner.
fn json_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(" ".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just("\"a\\u0000\\\"\"".to_string()),
        Just("{".to_string()),
        "[-+0-9.eE]{1,8}",
        "\"[^\"\\\\]{0,4}\"",
    ];
    vec(token, 0..48).prop_map(|tokens| tokens.concat())
}

proptest! {
    #[test]
    fn any_bytes_give_a_tensor_or_a_message(bytes in vec(any::<u8>(), 0..200), dtype in dtype()) {
        if let Ok(t) = parse_tensor(&bytes, "x", dtype, 64) {
            prop_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        }
    }

    #[test]
    fn json_like_text_gives_a_bounded_tensor_or_a_message(text in json_like(), dtype in dtype()) {
        match parse_tensor(text.as_bytes(), "x", dtype, 16) {
            Ok(t) => {
                prop_assert!(t.data.len() <= 16);
                prop_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
            }
            Err(message) => prop_assert!(message.contains("'x'"), "names the input: {}", message),
        }
    }

    #[test]
    fn float_rows_come_back_exactly(rows in vec(vec(-1e30f32..1e30, 3), 1..6)) {
        let text = serde_json::to_string(&rows).unwrap();
        let t = parse_tensor(text.as_bytes(), "x", DataType::F32, 1000).unwrap();
        prop_assert_eq!(&t.shape, &vec![rows.len(), 3]);
        let flat: Vec<f32> = rows.concat();
        prop_assert_eq!(t.data, TensorData::F32(flat));
    }
}
