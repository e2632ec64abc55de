use super::*;

fn parse(text: &str, dtype: DataType) -> Result<Tensor, String> {
    parse_tensor(text.as_bytes(), "x", dtype, 8)
}

#[test]
fn nested_arrays_become_shaped_buffers() {
    let t = parse(" [[1, 2.5],\n [3, -4e0]] ", DataType::F32).unwrap();
    assert_eq!(t.shape, vec![2, 2]);
    assert_eq!(t.data, TensorData::F32(vec![1.0, 2.5, 3.0, -4.0]));
    let t = parse("[[true, 0], [1, false]]", DataType::Bool).unwrap();
    assert_eq!(t.data, TensorData::Bool(vec![true, false, true, false]));
    let t = parse(r#"[["a\"b"], ["\u00e9"]]"#, DataType::String).unwrap();
    assert_eq!(
        (t.shape, t.data),
        (
            vec![2, 1],
            TensorData::String(vec!["a\"b".into(), "é".into()])
        )
    );
    assert_eq!(parse("[[], []]", DataType::I64).unwrap().shape, vec![2, 0]);
    assert_eq!(parse("[]", DataType::I64).unwrap().shape, vec![0]);
    let scalar = parse("7", DataType::I64).unwrap();
    assert_eq!(
        (scalar.shape, scalar.data),
        (vec![], TensorData::I64(vec![7]))
    );
}

#[test]
fn numbers_convert_exactly_or_not_at_all() {
    let t = parse("[18446744073709551615, 0]", DataType::U64).unwrap();
    assert_eq!(t.data, TensorData::U64(vec![u64::MAX, 0]));
    let t = parse("[-9223372036854775808, 2e3]", DataType::I64).unwrap();
    assert_eq!(t.data, TensorData::I64(vec![i64::MIN, 2000]));
    // Correctly rounded to f32 (not via f64): 0.1 is 0.1f32.
    assert_eq!(
        parse("[0.1]", DataType::F32).unwrap().data,
        TensorData::F32(vec![0.1])
    );
    assert_eq!(
        parse("[0.1]", DataType::F64).unwrap().data,
        TensorData::F64(vec![0.1])
    );
    assert_eq!(
        parse("[65504]", DataType::F16).unwrap().data,
        TensorData::F16(vec![f16::MAX])
    );
}

#[test]
fn bad_elements_name_the_input_type_and_token() {
    let cases = [
        (
            "[1.5]",
            DataType::I64,
            "input 'x' is int64: not a whole number in range (got 1.5)",
        ),
        (
            "[300]",
            DataType::U8,
            "input 'x' is uint8: out of range (got 300)",
        ),
        (
            "[-1]",
            DataType::U32,
            "input 'x' is uint32: out of range (got -1)",
        ),
        (
            "[18446744073709551616]",
            DataType::U64,
            "input 'x' is uint64: out of range",
        ),
        (
            r#"["a"]"#,
            DataType::F32,
            "input 'x' is float32: not a number (got \"a\")",
        ),
        (
            "[2]",
            DataType::Bool,
            "input 'x' is bool: use true/false (or 0/1) (got 2)",
        ),
        (
            "[1]",
            DataType::String,
            "input 'x' is string: expected a string (got 1)",
        ),
        ("[[1, 2], [3]]", DataType::F32, "input 'x' is ragged"),
        (
            "[[1], 2]",
            DataType::F32,
            "input 'x' mixes numbers and arrays",
        ),
        (
            "[1, 2",
            DataType::F32,
            "invalid JSON for input 'x': the value ends early (expected ',' or ']')",
        ),
        (
            "[1,]",
            DataType::F32,
            "invalid JSON for input 'x' at byte 3: expected a value after ','",
        ),
        (
            "[,1]",
            DataType::F32,
            "invalid JSON for input 'x' at byte 1: expected a value",
        ),
        (
            "[1 2]",
            DataType::F32,
            "invalid JSON for input 'x' at byte 3: expected ',' or ']', found '2'",
        ),
        (
            "[1]]",
            DataType::F32,
            "invalid JSON for input 'x' at byte 3: expected the end of the value",
        ),
        (
            "{}",
            DataType::F32,
            "input 'x' is float32: not a number (got {})",
        ),
    ];
    for (text, dtype, message) in cases {
        let e = parse(text, dtype).unwrap_err();
        assert!(e.starts_with(message), "{text}: {e}");
    }
}

#[test]
fn nesting_is_capped() {
    let deep = "[".repeat(33) + &"]".repeat(33);
    assert!(
        parse(&deep, DataType::F32)
            .unwrap_err()
            .contains("nested more than 32 levels deep")
    );
}

#[test]
fn nesting_to_the_cap_is_read() {
    let deepest = "[".repeat(32) + &"]".repeat(32);
    let t = parse(&deepest, DataType::F32).unwrap();
    assert_eq!(t.shape, [vec![1; 31], vec![0]].concat());
}

#[test]
fn elements_alone_are_read_flat_or_nested_and_checked() {
    let elements =
        |text: &str, count| parse_elements(text.as_bytes(), "x", DataType::F32, 8, count);
    let flat = TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(elements("[1,2,3,4]", 4).unwrap(), flat);
    assert_eq!(elements("[[1,2],[3,4]]", 4).unwrap(), flat);
    assert_eq!(elements("5", 1).unwrap(), TensorData::F32(vec![5.0]));
    let e = elements("[[1,2],[3]]", 3).unwrap_err();
    assert!(e.starts_with("input 'x' is ragged"), "{e}");
    let e = elements("[1,2,3,4,5,6,7,8,9]", 9).unwrap_err();
    assert!(e.contains("more than 8 elements"), "{e}");
}

#[test]
fn a_declared_count_reserves_no_more_than_the_value_could_hold() {
    let TensorData::F32(few) =
        parse_elements(b"[1,2]", "x", DataType::F32, usize::MAX, 1 << 40).unwrap()
    else {
        panic!("float32 elements");
    };
    assert_eq!(few, [1.0, 2.0]);
    assert!(few.capacity() <= 3, "reserved {}", few.capacity());
    let TensorData::F32(exact) = parse_elements(b"[1,2,3,4,5]", "x", DataType::F32, 8, 5).unwrap()
    else {
        panic!("float32 elements");
    };
    assert_eq!(exact.capacity(), 5);
}

#[test]
fn element_cap_stops_parsing_early() {
    let e = parse("[1,2,3,4,5,6,7,8,9]", DataType::F32).unwrap_err();
    assert!(
        e.contains("more than 8 elements, the limit set by ortserve.maxTensorElements"),
        "{e}"
    );
}

/// Floats are written shortest, as Python's `json` writes a large one
/// (`1e+16`: TorchServe's handlers answer through it), and read back the same.
#[test]
fn floats_are_written_shortest_and_read_back_exactly() {
    let f32s = [
        0.1f32,
        1.0,
        -2.5,
        1e-7,
        3.4028235e38,
        1.0000529e13,
        1e-45,
        -0.0,
    ];
    let written = f32s.map(|f| {
        let mut out = Vec::new();
        f.write_json(&mut out);
        String::from_utf8(out).unwrap()
    });
    let expected = [
        "0.1",
        "1.0",
        "-2.5",
        "1e-7",
        "3.4028235e+38",
        "1.0000529e+13",
        "1e-45",
        "-0.0",
    ];
    assert_eq!(written, expected);
    for (f, text) in f32s.iter().zip(&written) {
        assert_eq!(
            text.parse::<f32>().unwrap().to_bits(),
            f.to_bits(),
            "{text}"
        );
    }
    let mut out = Vec::new();
    1e16f64.write_json(&mut out);
    f64::INFINITY.write_json(&mut out);
    assert_eq!(out, b"1e+16null");
}

#[test]
fn writes_nested_json() {
    let t = Tensor::new(
        vec![1, 2, 2],
        TensorData::F32(vec![1.0, 0.5, f32::NAN, -2.0]),
    );
    let mut out = Vec::new();
    write_tensor(&mut out, &t, false);
    assert_eq!(String::from_utf8(out).unwrap(), "[[[1.0,0.5],[null,-2.0]]]");
    let mut out = Vec::new();
    write_tensor(&mut out, &t, true);
    assert_eq!(String::from_utf8(out).unwrap(), "[[1.0,0.5],[null,-2.0]]");
    // Without a batch axis in the request, an answer of no rows or of
    // several keeps its outer array.
    let none = Tensor::new(vec![0, 2], TensorData::F32(vec![]));
    let two = Tensor::new(vec![2, 2], t.data.clone());
    for (t, json) in [(none, "[]"), (two, "[[1.0,0.5],[null,-2.0]]")] {
        let mut out = Vec::new();
        write_tensor(&mut out, &t, true);
        assert_eq!(String::from_utf8(out).unwrap(), json);
    }
    let s = Tensor::new(vec![2], TensorData::String(vec!["a\"b".into(), "c".into()]));
    let mut out = Vec::new();
    write_tensor(&mut out, &s, false);
    assert_eq!(String::from_utf8(out).unwrap(), r#"["a\"b","c"]"#);
}
