//! Tensors as raw bytes, the Open Inference Protocol's way: the element
//! type names, and typed buffers ⇄ little-endian bytes (BYTES elements
//! each a 4-byte length then the bytes). The REST binary tensor extension
//! and gRPC's `raw_input_contents`/`raw_output_contents` share it. Every
//! size is checked against the bytes before a buffer of that size exists.

use half::{bf16, f16};

use crate::types::{DataType, MAX_RANK, TensorData, excerpt, list_excerpt};

#[cfg(target_endian = "big")]
compile_error!(
    "the binary tensor extension is little-endian; ortserve copies tensors as they are in memory"
);

/// The OIP name of an element type.
pub fn oip_name(dtype: DataType) -> &'static str {
    match dtype {
        DataType::Bool => "BOOL",
        DataType::U8 => "UINT8",
        DataType::U16 => "UINT16",
        DataType::U32 => "UINT32",
        DataType::U64 => "UINT64",
        DataType::I8 => "INT8",
        DataType::I16 => "INT16",
        DataType::I32 => "INT32",
        DataType::I64 => "INT64",
        DataType::F16 => "FP16",
        DataType::BF16 => "BF16",
        DataType::F32 => "FP32",
        DataType::F64 => "FP64",
        DataType::String => "BYTES",
    }
}

/// Every OIP element type name, for the error that lists them.
pub const ALL_TYPES: &str =
    "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BF16, BYTES";

/// The bytes of one element; `None` for BYTES, whose elements vary.
pub fn element_size(dtype: DataType) -> Option<usize> {
    Some(match dtype {
        DataType::Bool | DataType::U8 | DataType::I8 => 1,
        DataType::U16 | DataType::I16 | DataType::F16 | DataType::BF16 => 2,
        DataType::U32 | DataType::I32 | DataType::F32 => 4,
        DataType::U64 | DataType::I64 | DataType::F64 => 8,
        DataType::String => return None,
    })
}

/// Checks a request's OIP datatype against the model's element type.
pub fn check_datatype(given: &str, expected: DataType) -> Result<(), String> {
    if given == oip_name(expected) {
        return Ok(());
    }
    Err(match ALL_TYPES.split(", ").any(|t| t == given) {
        true => format!(
            "datatype is {given} but the model takes {}",
            oip_name(expected)
        ),
        false => format!(
            "unknown datatype \"{}\"; use one of {ALL_TYPES}",
            excerpt(given)
        ),
    })
}

/// A request's shape as sizes, and its element count, refused when it has
/// more than [`MAX_RANK`] axes, an axis is negative, or the count passes
/// `max_elements` (before any allocation). An empty axis counts as 1 for
/// the bound: a shape of zero elements must not declare a trillion rows
/// that code after this check would count, split or explain one by one.
pub fn request_shape(shape: &[i64], max_elements: usize) -> Result<(Vec<usize>, usize), String> {
    if shape.len() > MAX_RANK {
        return Err(format!(
            "shape {} has {} axes, more than {MAX_RANK}",
            list_excerpt(shape),
            shape.len()
        ));
    }
    let sizes: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            format!(
                "shape {shape:?} has a negative dimension; a request's shape gives each axis's actual size"
            )
        })?;
    fn within(mut sizes: impl Iterator<Item = usize>, max: usize) -> Option<usize> {
        sizes
            .try_fold(1usize, |n, d| n.checked_mul(d))
            .filter(|&n| n <= max)
    }
    let count = within(sizes.iter().copied(), max_elements).ok_or_else(|| {
        format!(
            "shape {sizes:?} has more than {max_elements} elements, the limit set by ortserve.maxTensorElements"
        )
    })?;
    if count == 0 && within(sizes.iter().map(|&d| d.max(1)), max_elements).is_none() {
        return Err(format!(
            "shape {sizes:?} is empty, but its other axes span more than {max_elements} elements, \
             the limit set by ortserve.maxTensorElements"
        ));
    }
    Ok((sizes, count))
}

/// One copy from the body into a typed buffer, after checking the size.
pub fn decode_binary(bytes: &[u8], dtype: DataType, count: usize) -> Result<TensorData, String> {
    let Some(size) = element_size(dtype) else {
        return decode_bytes_elements(bytes, count).map(TensorData::String);
    };
    if bytes.len() != count * size {
        return Err(format!(
            "the binary data is {} bytes but the shape needs {count} × {size} = {} bytes",
            bytes.len(),
            count * size
        ));
    }
    Ok(match dtype {
        DataType::Bool => TensorData::Bool(
            bytes
                .iter()
                .map(|&b| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    other => Err(format!("BOOL bytes must be 0 or 1, found {other}")),
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::U8 => TensorData::U8(bytes.to_vec()),
        DataType::I8 => TensorData::I8(bytemuck::pod_collect_to_vec(bytes)),
        DataType::U16 => TensorData::U16(bytemuck::pod_collect_to_vec(bytes)),
        DataType::I16 => TensorData::I16(bytemuck::pod_collect_to_vec(bytes)),
        DataType::F16 => TensorData::F16(bytemuck::pod_collect_to_vec::<u8, f16>(bytes)),
        DataType::BF16 => TensorData::BF16(bytemuck::pod_collect_to_vec::<u8, bf16>(bytes)),
        DataType::U32 => TensorData::U32(bytemuck::pod_collect_to_vec(bytes)),
        DataType::I32 => TensorData::I32(bytemuck::pod_collect_to_vec(bytes)),
        DataType::F32 => TensorData::F32(bytemuck::pod_collect_to_vec(bytes)),
        DataType::U64 => TensorData::U64(bytemuck::pod_collect_to_vec(bytes)),
        DataType::I64 => TensorData::I64(bytemuck::pod_collect_to_vec(bytes)),
        DataType::F64 => TensorData::F64(bytemuck::pod_collect_to_vec(bytes)),
        DataType::String => unreachable!("handled above"),
    })
}

/// BYTES: each element a 4-byte little-endian length, then that many bytes.
fn decode_bytes_elements(bytes: &[u8], count: usize) -> Result<Vec<String>, String> {
    let elements = split_bytes_elements(bytes)?;
    if elements.len() != count {
        return Err(format!(
            "the shape has {count} elements but the BYTES data holds {}",
            elements.len()
        ));
    }
    elements
        .into_iter()
        .map(|element| {
            std::str::from_utf8(element)
                .map(str::to_string)
                .map_err(|_| {
                    "BYTES elements must be UTF-8 text (they become ONNX string tensors)"
                        .to_string()
                })
        })
        .collect()
}

/// The elements of binary BYTES data, each a slice of it.
pub fn split_bytes_elements(mut bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut elements = Vec::new();
    while !bytes.is_empty() {
        let (length, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or("BYTES data ends inside an element's 4-byte length")?;
        let length = u32::from_le_bytes(*length) as usize;
        if length > rest.len() {
            return Err(format!(
                "a BYTES element claims {length} bytes but only {} remain",
                rest.len()
            ));
        }
        let (element, rest) = rest.split_at(length);
        elements.push(element);
        bytes = rest;
    }
    Ok(elements)
}

/// How many bytes [`append_binary`] writes for `data`.
pub fn binary_size(data: &TensorData) -> usize {
    match data {
        TensorData::String(v) => v.iter().map(|s| 4 + s.len()).sum(),
        _ => data.len() * element_size(data.dtype()).expect("only strings vary in size"),
    }
}

/// Appends `data` as the binary tensor extension lays it out.
pub fn append_binary(out: &mut Vec<u8>, data: &TensorData) {
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        TensorData::String(v) => {
            for s in v {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        TensorData::U8(v) => out.extend_from_slice(v),
        TensorData::I8(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::U16(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::I16(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::F16(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::BF16(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::U32(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::I32(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::F32(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::U64(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::I64(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::F64(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_shape_is_bounded_on_every_axis_and_in_rank() {
        assert_eq!(request_shape(&[2, 3], 100), Ok((vec![2, 3], 6)));
        // An empty tensor is fine while its other axes are within the limit.
        assert_eq!(request_shape(&[0, 4], 100), Ok((vec![0, 4], 0)));
        let rows = request_shape(&[1_000_000_000_000, 0], 100).unwrap_err();
        assert!(
            rows.contains("is empty, but its other axes span more than 100"),
            "{rows}"
        );
        let rank = request_shape(&[1; 1_000_000], 100).unwrap_err();
        assert!(rank.contains("has 1000000 axes, more than 64"), "{rank}");
        assert!(rank.len() < 200, "quotes {} bytes", rank.len());
        let negative = request_shape(&[-1, 2], 100).unwrap_err();
        assert!(negative.contains("negative dimension"), "{negative}");
    }

    #[test]
    fn an_unknown_datatype_is_quoted_in_part() {
        let error = check_datatype(&"F".repeat(1_000_000), DataType::F32).unwrap_err();
        assert!(error.starts_with("unknown datatype \"FFFF"), "{error}");
        assert!(error.len() < 300, "quotes {} bytes", error.len());
    }
}
