//! The tensor wire codec every front end shares: JSON ⇄ typed tensors
//! ([`parse_tensor`], [`write_tensor`], [`write_named_tensors`]), the JSON
//! envelopes around them read as slices of the body ([`object_members`],
//! [`array_items`]) so each tensor is parsed once, raw bytes
//! ⇄ typed tensors for the binary extension and gRPC ([`decode_binary`],
//! [`append_binary`]), and fitting
//! tensors named by the request to the model's inputs ([`named_inputs`],
//! [`fit_to_model`]). Handlers, protocols and explanations all read and write
//! tensors through it, so a body means the same and an error reads the same
//! whichever way it came in.
//!
//! It must not touch HTTP, handlers, queues or sessions: it knows a model
//! only by its [`ModelIo`](crate::types::ModelIo).

mod binary;
mod fit;
mod json;

pub use binary::{
    ALL_TYPES, append_binary, binary_size, check_datatype, decode_binary, element_size, oip_name,
    request_shape, split_bytes_elements,
};
pub use fit::{fit_to_model, named_inputs, spec_index};
pub use json::{
    UnreadValue, WriteJson, array_items, check_member, object_members, once, parse_elements,
    parse_member, parse_once, parse_tensor, read_string, visit_members, write_named_tensors,
    write_string, write_tensor,
};

/// Bodies larger than this are parsed on the blocking pool, so big JSON
/// does not stall the async workers; small ones are cheaper to parse in place.
pub const INLINE_PARSE_LIMIT: usize = 64 * 1024;

/// Whether the answer keeps the batch axis the request had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    Batched,
    /// The request was one instance without a batch axis.
    Single,
}
