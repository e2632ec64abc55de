//! One JSON number → `f32`/`f64`, the inner loop of every float tensor.
//!
//! Clients write floats as short decimals (`0.05882353`, `-0.8343224`): a
//! mantissa below 2^53 and a small exponent. Those are converted by
//! Clinger's exact path: the mantissa and the power of ten are both exact in
//! `f64`, so one multiplication or division rounds correctly. The digits are
//! read in one of two ways:
//!
//! - `-?d+.d+` within 16 bytes (`short_fraction`), on x86-64: all sixteen
//!   bytes at once with SSE2 (part of every x86-64 CPU), so that no branch
//!   depends on how many digits a number has. Random-looking data
//!   (`-0.8343224, 0.41792345, …`) made the digit-at-a-time reader mispredict
//!   about once a number.
//! - Everything else (`clinger`): eight digits at a time (SWAR: one 64-bit
//!   load, three multiplications), with an exponent if there is one.
//!
//! What neither takes — longer mantissas, large exponents, `nan`, `inf`,
//! forms JSON does not allow — goes to `fast-float2`, which is correct for
//! all input but slower on these (its general path scans digits with more
//! checks and converts 8-digit mantissas by Eisel–Lemire).
//!
//! An `f32` goes through `f64` and so is rounded twice. That gives the
//! correctly rounded `f32` unless the `f64` lies exactly halfway between two
//! `f32`s (then the first rounding may have made the tie); such values, and
//! those outside `f32`'s normal range, go to `fast-float2` too. A short
//! fraction read as `f32` is multiplied by the power's reciprocal instead
//! of divided, which is as good unless the result lies within two `f64`
//! steps of an `f32` midpoint; only then is it divided.
//!
//! It knows nothing of arrays, shapes or tensors.

/// The number at the start of `bytes` and its length in bytes, or `None`
/// if `bytes` does not start with a number.
///
/// Written as `match`es rather than `Option::or_else`: the bench showed the
/// compiler keeping an `or_else` with a large closure out of line, a call
/// and a trip through memory for every number.
#[inline(always)]
pub(super) fn parse<F: Decimal>(bytes: &[u8]) -> Option<(F, usize)> {
    match F::exact(bytes) {
        Some(read) => Some(read),
        None => fast_float2::parse_partial::<F, _>(bytes).ok(),
    }
}

/// A float type with an exact fast path from a short decimal.
pub(super) trait Decimal: fast_float2::FastFloat {
    fn exact(bytes: &[u8]) -> Option<(Self, usize)>;
}

// Both `exact`s are inlined into the row loop: out of line, each number's
// value came back through memory.
impl Decimal for f64 {
    #[inline(always)]
    fn exact(bytes: &[u8]) -> Option<(f64, usize)> {
        match short_fraction(bytes) {
            Some(fraction) => Some((fraction.exact(), fraction.length)),
            None => clinger(bytes),
        }
    }
}

impl Decimal for f32 {
    #[inline(always)]
    fn exact(bytes: &[u8]) -> Option<(f32, usize)> {
        match short_fraction(bytes) {
            Some(fraction) => Some((fraction.nearest_f32()?, fraction.length)),
            None => {
                let (wide, length) = clinger(bytes)?;
                Some((narrow(wide)?, length))
            }
        }
    }
}

/// The 29 bits an `f64` has beyond an `f32`'s 24, and their value at
/// exactly one half of an `f32` step: an `f32` midpoint's low bits.
const LOW_BITS: u64 = (1 << 29) - 1;
const HALF: u64 = 1 << 28;

/// A correctly rounded `f64` as the correctly rounded `f32`, unless it lies
/// exactly halfway between two `f32`s (the first rounding may have made the
/// tie) or outside `f32`'s normal range.
#[inline]
fn narrow(wide: f64) -> Option<f32> {
    let narrow = wide as f32;
    let tie = wide.to_bits() & LOW_BITS == HALF;
    let normal = wide == 0.0 || (wide.abs() >= f64::from(f32::MIN_POSITIVE) && narrow.is_finite());
    (normal && !tie).then_some(narrow)
}

/// `-?d+.d+` read by `short_fraction`: at most 14 digits, so the mantissa
/// is exact in `f64`, and the value lies well inside `f32`'s normal range.
struct ShortFraction {
    mantissa: u64,
    /// Digits after the point.
    scale: usize,
    negative: bool,
    /// Bytes read.
    length: usize,
}

impl ShortFraction {
    /// The correctly rounded `f64`: Clinger's one exact division.
    #[inline]
    fn exact(&self) -> f64 {
        // Through `i64`: one instruction, where `u64 as f64` takes several.
        self.signed(self.mantissa as i64 as f64 / POWERS[self.scale])
    }

    /// The correctly rounded `f32`, by a multiplication where `exact`
    /// divides: `perf` found each number's chain waiting on the division.
    /// The reciprocal and the product are each rounded, so the product is
    /// within two `f64` steps of the exact value, and narrowing it gives
    /// the same `f32` unless an `f32` midpoint lies within those two steps
    /// (its low bits within 2 of `HALF`, about one number in 10^8); those
    /// take the exact path.
    #[inline(always)]
    fn nearest_f32(&self) -> Option<f32> {
        let near = self.mantissa as i64 as f64 * RECIPROCALS[self.scale];
        let off_midpoint = (near.to_bits() & LOW_BITS).wrapping_sub(HALF - 2) > 4;
        match off_midpoint {
            true => Some(self.signed(near) as f32),
            false => narrow(self.exact()),
        }
    }

    /// `magnitude` with this number's sign, without a branch.
    #[inline]
    fn signed(&self, magnitude: f64) -> f64 {
        f64::from_bits(magnitude.to_bits() | u64::from(self.negative) << 63)
    }
}

/// Exact powers of ten in `f64` (10^22 is the last).
const POWERS: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The powers of ten `short_fraction` divides by, as the nearest `f64`s
/// of their reciprocals.
const RECIPROCALS: [f64; 15] = [
    1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13, 1e-14,
];

/// Digits a `u64` mantissa holds without overflow, and their scales.
const MAX_DIGITS: usize = 19;
const SCALES: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// `-?digits(.digits)?([eE][+-]?digits)?` with a mantissa below 2^53 and a
/// decimal exponent within ±22, as the correctly rounded `f64`.
#[inline]
fn clinger(bytes: &[u8]) -> Option<(f64, usize)> {
    let negative = bytes.first() == Some(&b'-');
    let mut pos = usize::from(negative);
    // The integer part is short (`0.`, `-3.`): one digit at a time. Past
    // MAX_DIGITS the mantissa wraps, and is refused below.
    let mut mantissa = 0u64;
    while let Some(digit) = bytes
        .get(pos)
        .map(|b| b.wrapping_sub(b'0'))
        .filter(|&d| d < 10)
    {
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
        pos += 1;
    }
    let mut digits = pos - usize::from(negative);
    if digits == 0 || digits > MAX_DIGITS {
        return None;
    }
    let mut exponent = 0i64;
    if bytes.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        loop {
            let chunk = eight(bytes, pos);
            let run = leading_digits(chunk);
            if run == 0 {
                break;
            }
            digits += run;
            if digits > MAX_DIGITS {
                return None;
            }
            mantissa = mantissa * SCALES[run] + value_of(chunk, run);
            pos += run;
            if run < 8 {
                break;
            }
        }
        if pos == start {
            return None;
        }
        exponent = -((pos - start) as i64);
    }
    if let Some(b'e' | b'E') = bytes.get(pos) {
        let (written, length) = small_exponent(&bytes[pos + 1..])?;
        exponent += written;
        pos += 1 + length;
    }
    if mantissa >= 1 << 53 || exponent.unsigned_abs() >= POWERS.len() as u64 {
        return None;
    }
    let power = POWERS[exponent.unsigned_abs() as usize];
    let magnitude = match exponent >= 0 {
        true => mantissa as f64 * power,
        false => mantissa as f64 / power,
    };
    Some((if negative { -magnitude } else { magnitude }, pos))
}

/// `-?d+.d+` in the first 15 of at least 16 bytes, not followed by an
/// exponent (its at most 14 digits are always an exact mantissa).
///
/// The sixteen bytes are read as digits at once: non-digits (the sign, the
/// point, what follows the number) become 0, the integer digits move one lane
/// right over the point, and the lanes are summed with their weights. The
/// result is the mantissa followed by zeros up to lane 15, so the power of
/// ten to divide by depends only on where the point was.
#[cfg(target_arch = "x86_64")]
#[inline]
fn short_fraction(bytes: &[u8]) -> Option<ShortFraction> {
    let window: &[u8; 16] = bytes.get(..16)?.try_into().expect("sixteen bytes");
    // SAFETY: SSE2 is part of the x86-64 baseline; every x86-64 CPU has it.
    unsafe { sse2::short_fraction(window) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn short_fraction(_: &[u8]) -> Option<ShortFraction> {
    None
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    use super::ShortFraction;

    #[target_feature(enable = "sse2")]
    #[inline]
    pub(super) fn short_fraction(window: &[u8; 16]) -> Option<ShortFraction> {
        let low = u64::from_le_bytes(window[..8].try_into().expect("eight bytes"));
        let high = u64::from_le_bytes(window[8..].try_into().expect("eight bytes"));
        let values = _mm_sub_epi8(
            _mm_set_epi64x(high as i64, low as i64),
            _mm_set1_epi8(b'0' as i8),
        );
        // Unsigned: below '0' wraps above 9.
        let nine = _mm_set1_epi8(9);
        let is_digit = _mm_cmpeq_epi8(_mm_max_epu8(values, nine), nine);
        // Bits 16 and up, past the window, count as non-digits.
        let not_digit = !(_mm_movemask_epi8(is_digit) as u32);
        let negative = window[0] == b'-';
        let sign = u32::from(negative);
        // The sign is no break in the number: the point is the first break,
        // the end the second. Each number's end is the next one's start, so
        // this chain is kept short (no shift by a computed amount).
        let breaks = not_digit & !sign;
        let point = breaks.trailing_zeros();
        let end = (breaks & (breaks - 1)).trailing_zeros();
        // The byte after the number must be in the window, to be checked.
        if end >= 16 || point == sign || end == point + 1 {
            return None;
        }
        if window[point as usize] != b'.' || matches!(window[end as usize], b'e' | b'E') {
            return None;
        }
        // A table load where comparing with a broadcast lane number took five
        // instructions (SSE2 has no one-instruction broadcast of a byte).
        let before = |lane: u32| {
            // SAFETY: `lane` is at most 16 here (`end < 16`, `point < end`), and
            // every entry of `BEFORE` is sixteen bytes.
            unsafe { _mm_loadu_si128(BEFORE.0[lane as usize].as_ptr().cast()) }
        };
        let digits = _mm_and_si128(values, _mm_and_si128(is_digit, before(end)));
        let whole = before(point + 1);
        let joined = _mm_or_si128(
            _mm_and_si128(whole, _mm_slli_si128::<1>(digits)),
            _mm_andnot_si128(whole, digits),
        );
        // At most 14 digits fit before the window's last byte, so the
        // mantissa is below 10^14 and exact in `f64`.
        Some(ShortFraction {
            mantissa: sixteen_digits(joined),
            scale: 15 - point as usize,
            negative,
            length: end as usize,
        })
    }

    /// `BEFORE.0[n]`: all ones in the lanes below `n`, zeros from lane `n` on.
    #[repr(align(16))]
    struct Prefixes([[u8; 16]; 17]);
    static BEFORE: Prefixes = {
        let mut table = [[0u8; 16]; 17];
        let mut n = 0;
        while n <= 16 {
            let mut lane = 0;
            while lane < n {
                table[n][lane] = 0xFF;
                lane += 1;
            }
            n += 1;
        }
        Prefixes(table)
    };

    /// Sixteen digit values, lane 0 the most significant, as one number:
    /// pairs, then fours, then eights, each step one multiply-add.
    #[target_feature(enable = "sse2")]
    #[inline]
    fn sixteen_digits(digits: __m128i) -> u64 {
        let zero = _mm_setzero_si128();
        let tens = _mm_set_epi16(1, 10, 1, 10, 1, 10, 1, 10);
        let pairs = _mm_packs_epi32(
            _mm_madd_epi16(_mm_unpacklo_epi8(digits, zero), tens),
            _mm_madd_epi16(_mm_unpackhi_epi8(digits, zero), tens),
        );
        let fours = _mm_madd_epi16(pairs, _mm_set_epi16(1, 100, 1, 100, 1, 100, 1, 100));
        let fours = _mm_packs_epi32(fours, fours);
        let eights = _mm_madd_epi16(
            fours,
            _mm_set_epi16(1, 10_000, 1, 10_000, 1, 10_000, 1, 10_000),
        );
        let first = _mm_cvtsi128_si32(eights) as u64;
        let second = _mm_cvtsi128_si32(_mm_srli_si128::<4>(eights)) as u64;
        first * 100_000_000 + second
    }
}

/// An exponent's optional sign and one to four digits, and their length.
fn small_exponent(bytes: &[u8]) -> Option<(i64, usize)> {
    let sign = match bytes.first() {
        Some(b'-') => -1,
        Some(b'+') => 1,
        _ => 0,
    };
    let skip = usize::from(sign != 0);
    let run = leading_digits(eight(bytes, skip));
    if run == 0 || run > 4 {
        return None;
    }
    let magnitude = bytes[skip..skip + run]
        .iter()
        .fold(0i64, |m, &b| m * 10 + i64::from(b - b'0'));
    Some((if sign < 0 { -magnitude } else { magnitude }, skip + run))
}

/// The eight bytes from `pos` as a little-endian word, zero-padded past the end.
fn eight(bytes: &[u8], pos: usize) -> u64 {
    match bytes.get(pos..pos + 8) {
        Some(chunk) => u64::from_le_bytes(chunk.try_into().expect("eight bytes")),
        None => {
            let rest = bytes.get(pos..).unwrap_or_default();
            let mut padded = [0u8; 8];
            padded[..rest.len()].copy_from_slice(rest);
            u64::from_le_bytes(padded)
        }
    }
}

/// One in every byte of a word: `0x30 * ONES` is `'0'` in every byte.
const ONES: u64 = 0x0101_0101_0101_0101;

/// How many of `chunk`'s bytes, from the first, are ASCII digits.
fn leading_digits(chunk: u64) -> usize {
    // Per byte: below '0' borrows into the high bit, above '9' carries into it.
    let below = chunk.wrapping_sub(0x30 * ONES);
    let above = chunk.wrapping_add(0x46 * ONES);
    let not_digit = (below | above | chunk) & (0x80 * ONES);
    (not_digit.trailing_zeros() / 8) as usize
}

/// The value of `chunk`'s first `digits` bytes (all ASCII digits), as a number.
fn value_of(chunk: u64, digits: usize) -> u64 {
    // Digit values, the first `digits` of them moved to the top: the rest
    // become leading zeros of an eight-digit number.
    let values = chunk.wrapping_sub(0x30 * ONES) << (8 * (8 - digits));
    // Lemire's: pairs of digits, then pairs of pairs, then the halves.
    let pairs = values.wrapping_mul(10).wrapping_add(values >> 8);
    let low = (pairs & 0x0000_00FF_0000_00FF).wrapping_mul(100 + (1_000_000 << 32));
    let high = ((pairs >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(1 + (10_000 << 32));
    low.wrapping_add(high) >> 32
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What follows a number in a tensor, long enough for `short_fraction`.
    const MORE: &str = ", 0.25, 0.5, 0.75]";

    /// `text` read on its own (too short for `short_fraction`) and with more
    /// numbers after it (long enough): both readers must agree.
    fn read<F: Decimal>(text: &str) -> Option<(F, usize)> {
        let alone = parse::<F>(text.as_bytes());
        let followed = parse::<F>(format!("{text}{MORE}").as_bytes());
        assert_eq!(format!("{alone:?}"), format!("{followed:?}"), "{text}");
        alone
    }

    #[test]
    fn sixteen_bytes_at_a_time() {
        let fraction = |text: &str| {
            short_fraction(format!("{text}{MORE}").as_bytes())
                .map(|read| (read.exact(), read.length))
        };
        for text in ["-0.8343224", "0.05882353", "12345678.875", "-1.5", "0.0"] {
            let expected = text.parse::<f64>().unwrap();
            assert_eq!(fraction(text), Some((expected, text.len())), "{text}");
        }
        assert_eq!(
            fraction("-9999999.999999"),
            Some((-9999999.999999, 15)),
            "the longest that fits"
        );
        // Not taken: no point, an exponent, too long, or not a number.
        for text in [
            "25",
            "1.5e-7",
            "2.5E3",
            "0.123456789012345",
            "-.5",
            "1.",
            "-",
            "x",
        ] {
            assert_eq!(fraction(text), None, "{text}");
        }
        assert!(short_fraction(b"0.5, 0.25, 1.0]").is_none(), "15 bytes");
    }

    #[test]
    fn eight_digits_at_a_time() {
        let word = |s: &[u8; 8]| u64::from_le_bytes(*s);
        assert_eq!(leading_digits(word(b"12345678")), 8);
        assert_eq!(leading_digits(word(b"123,5678")), 3);
        assert_eq!(leading_digits(word(b"/:123456")), 0);
        assert_eq!(value_of(word(b"12345678"), 8), 12_345_678);
        assert_eq!(value_of(word(b"0588]xyz"), 4), 588);
        assert_eq!(value_of(word(b"9,......"), 1), 9);
    }

    #[test]
    fn short_decimals_take_the_exact_path() {
        assert_eq!(f32::exact(b"0.05882353,"), Some((0.05882353, 10)));
        assert_eq!(f32::exact(b"-0.8343224]"), Some((-0.8343224, 10)));
        assert_eq!(
            f64::exact(b"12345678901234.5"),
            Some((12345678901234.5, 16))
        );
        assert_eq!(f64::exact(b"1.5e-7"), Some((1.5e-7, 6)));
        assert_eq!(f64::exact(b"25E+2"), Some((2500.0, 5)));
        assert_eq!(f64::exact(b"0"), Some((0.0, 1)));
    }

    #[test]
    fn the_rest_goes_to_fast_float2() {
        for text in [
            "nan",
            "inf",
            "-Infinity",
            ".5",
            "1.",
            "1e400",
            "1e-30",
            "1.2345678901234567890",
        ] {
            assert_eq!(f64::exact(text.as_bytes()), None, "{text}");
        }
        assert!(read::<f64>("nan").unwrap().0.is_nan());
        assert_eq!(read::<f64>("1."), Some((1.0, 2)));
        assert_eq!(read::<f64>("-"), None);
        assert_eq!(read::<f32>("1e39"), Some((f32::INFINITY, 4)));
        // 2^24 + 1 is exactly halfway between two f32s: ties to even.
        assert_eq!(f32::exact(b"16777217"), None);
        assert_eq!(read::<f32>("16777217"), Some((16_777_216.0, 8)));
        // Below f32's normal range the spacing changes: not taken here.
        assert_eq!(f32::exact(b"1e-40"), None);
    }

    fn reference<F: fast_float2::FastFloat>(text: &str) -> Option<(F, usize)> {
        fast_float2::parse_partial::<F, _>(text.as_bytes()).ok()
    }

    /// Decimals near `f32` midpoints: 16 significant digits of a value an
    /// `f64` ulp or two from halfway between two `f32`s.
    fn near_midpoint() -> impl Strategy<Value = String> {
        ((1u32 << 23)..(1 << 24), -20i32..20, -3i64..=3).prop_map(|(m, e, nudge)| {
            let mid = (f64::from(2 * m + 1) * 2f64.powi(e - 24)).to_bits();
            let value = f64::from_bits(mid.wrapping_add_signed(nudge));
            format!("{value:.15e}")
        })
    }

    /// Short fractions at and beside `f32` midpoints, which `short_fraction`
    /// reads: a 25-bit odd numerator over 2 to 64 is a midpoint between two
    /// `f32`s, written exactly in at most 8 + 6 digits ending in 5; `49`
    /// and `51` in its place lie just below and just above it.
    fn short_midpoint() -> impl Strategy<Value = String> {
        ((1u32 << 23)..(1 << 24), 1usize..=6, 0..3usize).prop_map(|(m, places, side)| {
            let midpoint = f64::from(2 * m + 1) / f64::from(1u32 << places);
            let exact = format!("{midpoint:.places$}");
            let stem = &exact[..exact.len() - 1];
            [exact.clone(), format!("{stem}49"), format!("{stem}51")][side].clone()
        })
    }

    proptest! {
        #[test]
        fn short_fractions_round_as_fast_float2_beside_midpoints(text in short_midpoint()) {
            let ours = read::<f32>(&text).map(|(v, n)| (v.to_bits(), n));
            let theirs = reference::<f32>(&text).map(|(v, n)| (v.to_bits(), n));
            prop_assert_eq!(ours, theirs, "{}", text);
        }

        #[test]
        fn every_f32_written_shortest_reads_back(bits in any::<u32>()) {
            let value = f32::from_bits(bits);
            prop_assume!(value.is_finite());
            let text = format!("{value}");
            prop_assert_eq!(read::<f32>(&text).map(|(v, n)| (v.to_bits(), n)), Some((bits, text.len())));
        }

        #[test]
        fn agrees_with_fast_float2(
            int in "-?(0|[1-9][0-9]{0,12})",
            frac in proptest::option::of("[0-9]{1,12}"),
            exp in proptest::option::of("[eE][+-]?[0-9]{1,3}"),
        ) {
            let text = format!("{int}{}{},", frac.map(|f| format!(".{f}")).unwrap_or_default(), exp.unwrap_or_default());
            let f32s = (read::<f32>(&text), reference::<f32>(&text));
            prop_assert_eq!(f32s.0.map(|(v, n)| (v.to_bits(), n)), f32s.1.map(|(v, n)| (v.to_bits(), n)), "{}", text);
            let f64s = (read::<f64>(&text), reference::<f64>(&text));
            prop_assert_eq!(f64s.0.map(|(v, n)| (v.to_bits(), n)), f64s.1.map(|(v, n)| (v.to_bits(), n)), "{}", text);
        }

        #[test]
        fn near_f32_midpoints_rounds_as_fast_float2(text in near_midpoint()) {
            let ours = read::<f32>(&text).map(|(v, n)| (v.to_bits(), n));
            let theirs = reference::<f32>(&text).map(|(v, n)| (v.to_bits(), n));
            prop_assert_eq!(ours, theirs, "{}", text);
        }
    }
}
