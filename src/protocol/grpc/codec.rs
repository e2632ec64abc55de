//! The protobuf codec of every generated service and client: prost's, with
//! buffers sized to the message. tonic's own codec starts each call with two
//! 8 KiB buffers, one to read the request into and one to write the answer
//! into, both past glibc's per-thread cache, for messages that are mostly a
//! few dozen bytes; and it writes a larger answer into its buffer by
//! doubling it. Here each buffer starts at [`FIRST_BUFFER`], the reader
//! grows it once to a message's announced length (as tonic does), and the
//! writer reserves the answer's encoded length before writing it.
//!
//! It owns no message: `build.rs` names it as the generated code's codec.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// What each call's read and write buffers start at: a tiny model's
/// messages fit, and it stays within glibc's per-thread cache.
pub const FIRST_BUFFER: usize = 512;
/// How much a streaming answer gathers before it is sent: tonic's default.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffers() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD)
}

/// prost's messages, in buffers sized to them.
#[derive(Debug, Clone, Copy)]
pub struct SizedProstCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SizedProstCodec<T, U> {
    fn default() -> Self {
        SizedProstCodec(PhantomData)
    }
}

impl<T, U> Codec for SizedProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> SizedEncoder<T> {
        SizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> ProstDecoder<U> {
        ProstDecoder::new(buffers())
    }
}

/// Writes a message into room reserved for all of it at once.
#[derive(Debug, Clone, Copy)]
pub struct SizedEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding the answer: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffers()
    }
}
