//! How fast JSON tensors parse: ortserve's own scanner (`codec::parse_tensor`)
//! against `serde_json` and `sonic-rs` (a SIMD JSON parser) on the bodies the
//! servers see most: nested arrays of `f32`, as clients write them (shortest
//! round-trip decimals). Reports MB/s of JSON per core and ns per number.
//!
//! `cargo bench --bench json_floats` (`make bench` runs it too).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ortserve::codec::{object_members, parse_tensor};
use ortserve::types::DataType;

/// Rows of a 1×28×28 image, as MNIST clients send them.
const ROWS: usize = 256;
const ROW: usize = 784;
/// Each parser's best of this many passes over the body.
const PASSES: usize = 15;

type Images = Vec<Vec<Vec<Vec<f32>>>>;

fn main() {
    // `cargo test --all-targets` runs benches without `--bench`: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("JSON float tensors, {ROWS}×1×28×28 f32, best of {PASSES} passes, one core\n");
    for (name, values) in [
        ("pixels (i % 17 / 17)", pixels()),
        ("uniform in [-1, 1)", uniform()),
    ] {
        let body = serde_json::to_vec(&nest(&values)).expect("JSON");
        println!(
            "{name}: {} numbers, {:.1} MB",
            values.len(),
            body.len() as f64 / 1e6
        );
        let ortserve = best(|| {
            let tensor = parse_tensor(&body, "input", DataType::F32, usize::MAX).expect("parses");
            black_box(tensor);
        });
        let serde = best(|| {
            let images: Images = serde_json::from_slice(&body).expect("parses");
            black_box(images);
        });
        let sonic = best(|| {
            let images: Images = sonic_rs::from_slice(&body).expect("parses");
            black_box(images);
        });
        for (parser, time) in [
            ("ortserve", ortserve),
            ("serde_json", serde),
            ("sonic-rs", sonic),
        ] {
            print_rate(&format!("  {parser:<12}"), body.len(), values.len(), time);
        }
        check_same(&body, &values);
        envelope_skip(&body, &values);
    }
}

/// KServe's v1 and v2 bodies wrap the numbers in an envelope; the envelope's
/// parser must find where the numbers end before ortserve's scanner parses
/// them: `serde_json`'s `RawValue` walks every number to do so, `sonic-rs`'s
/// `LazyValue` skips the array with SIMD, and ortserve's envelope reader
/// (`codec::object_members`) jumps between brackets with `memchr`.
fn envelope_skip(body: &[u8], values: &[f32]) {
    #[derive(serde::Deserialize)]
    struct WithRaw<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    #[derive(serde::Deserialize)]
    struct WithLazy<'a> {
        #[serde(borrow)]
        data: sonic_rs::LazyValue<'a>,
    }
    let envelope = [b"{\"data\": ", body, b"}"].concat();
    let serde = best(|| {
        let found: WithRaw = serde_json::from_slice(&envelope).expect("parses");
        black_box(found.data.get().len());
    });
    let sonic = best(|| {
        let found: WithLazy = sonic_rs::from_slice(&envelope).expect("parses");
        black_box(found.data.as_raw_str().len());
    });
    let ortserve = best(|| {
        for member in object_members(&envelope) {
            let (key, data) = member.expect("parses");
            black_box((key, data.len()));
        }
    });
    let found: WithLazy = sonic_rs::from_slice(&envelope).expect("parses");
    assert_eq!(found.data.as_raw_str().as_bytes(), body);
    let members: Vec<_> = object_members(&envelope)
        .collect::<Result<_, _>>()
        .expect("parses");
    assert_eq!(members, [("data".into(), body)]);
    println!("  finding the end of {{\"data\": […]}} before parsing it:");
    for (parser, time) in [
        ("serde_json RawValue", serde),
        ("sonic-rs LazyValue", sonic),
        ("ortserve members", ortserve),
    ] {
        print_rate(&format!("    {parser:<20}"), body.len(), values.len(), time);
    }
}

/// The same numbers from every parser, as `f32`s equal to what was written.
fn check_same(body: &[u8], values: &[f32]) {
    let tensor = parse_tensor(body, "input", DataType::F32, usize::MAX).expect("parses");
    let ours = match tensor.data {
        ortserve::types::TensorData::F32(v) => v,
        _ => unreachable!("asked for f32"),
    };
    let flatten =
        |images: Images| -> Vec<f32> { images.into_iter().flatten().flatten().flatten().collect() };
    assert_eq!(ours, values);
    assert_eq!(flatten(serde_json::from_slice(body).unwrap()), values);
    assert_eq!(flatten(sonic_rs::from_slice(body).unwrap()), values);
}

/// One parser's figure: JSON bytes per second and time per number.
fn print_rate(label: &str, bytes: usize, numbers: usize, time: Duration) {
    println!(
        "{label} {:>7.0} MB/s   {:>5.1} ns/number",
        bytes as f64 / time.as_secs_f64() / 1e6,
        time.as_secs_f64() * 1e9 / numbers as f64
    );
}

fn best(mut pass: impl FnMut()) -> Duration {
    (0..PASSES)
        .map(|_| {
            let start = Instant::now();
            pass();
            start.elapsed()
        })
        .min()
        .expect("passes")
}

fn pixels() -> Vec<f32> {
    (0..ROWS * ROW).map(|i| (i % 17) as f32 / 17.0).collect()
}

/// A fixed xorshift sequence: the same numbers every run.
fn uniform() -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..ROWS * ROW)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn nest(values: &[f32]) -> Images {
    values
        .chunks(ROW)
        .map(|image| vec![image.chunks(28).map(<[f32]>::to_vec).collect()])
        .collect()
}
