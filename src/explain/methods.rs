//! The three attribution methods, as Captum defines them. Each one turns an
//! instance into a stream of perturbed copies, and the score of each copy into
//! per-element attributions.
//!
//! * Feature ablation: attribution of a feature = f(x) − f(x with the feature
//!   set to the baseline) (Captum's `FeatureAblation`).
//! * Occlusion: the same difference for each position of a sliding window,
//!   averaged over the windows that cover each element; the last window along
//!   an axis is cut off at the edge (Captum's `Occlusion`).
//! * Shapley value sampling: start from the baseline, set features to their
//!   input values one by one in a random order, credit each with the change of
//!   f; average over the permutations (Captum's `ShapleyValueSampling`).

use crate::types::{DataType, Tensor, TensorData, list_excerpt};

/// One instance's inputs (batch axis of 1), flattened into features: feature
/// `k` is element `k` counted across the inputs in order.
#[derive(Debug, Clone)]
pub(super) struct Instance {
    pub inputs: Vec<Tensor>,
}

impl Instance {
    pub fn features(&self) -> usize {
        self.inputs.iter().map(|t| t.data.len()).sum()
    }

    /// (input index, element index) of feature `k`.
    fn locate(&self, mut k: usize) -> (usize, usize) {
        for (i, input) in self.inputs.iter().enumerate() {
            if k < input.data.len() {
                return (i, k);
            }
            k -= input.data.len();
        }
        unreachable!("feature index within the instance")
    }

    /// A copy with the given features replaced by `baseline`.
    pub fn with_baseline(
        &self,
        features: impl IntoIterator<Item = usize>,
        baseline: &Baseline,
    ) -> Instance {
        let mut copy = self.clone();
        for k in features {
            let (i, e) = self.locate(k);
            baseline.write(&mut copy.inputs[i].data, e);
        }
        copy
    }

    /// Copies feature `k` from `source` into this instance.
    fn take_feature(&mut self, source: &Instance, k: usize) {
        let (i, e) = self.locate(k);
        copy_element(&mut self.inputs[i].data, &source.inputs[i].data, e);
    }
}

/// The reference value a perturbed element takes, already checked to be
/// representable in every input's element type.
#[derive(Debug, Clone, Copy)]
pub(super) struct Baseline(pub f64);

impl Baseline {
    /// Checks the baseline fits `dtype` (an integer input needs an integer
    /// baseline in range; strings cannot be perturbed).
    pub fn check(&self, name: &str, dtype: DataType) -> Result<(), String> {
        let v = self.0;
        let fits = match dtype {
            DataType::String => {
                return Err(format!(
                    "input '{name}' is a string tensor, which cannot be perturbed"
                ));
            }
            DataType::F16 | DataType::BF16 | DataType::F32 | DataType::F64 => true,
            DataType::Bool => v == 0.0 || v == 1.0,
            DataType::U8 => v.fract() == 0.0 && (0.0..=u8::MAX as f64).contains(&v),
            DataType::U16 => v.fract() == 0.0 && (0.0..=u16::MAX as f64).contains(&v),
            DataType::U32 => v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v),
            DataType::U64 => v.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&v),
            DataType::I8 => v.fract() == 0.0 && (i8::MIN as f64..=i8::MAX as f64).contains(&v),
            DataType::I16 => v.fract() == 0.0 && (i16::MIN as f64..=i16::MAX as f64).contains(&v),
            DataType::I32 => v.fract() == 0.0 && (i32::MIN as f64..=i32::MAX as f64).contains(&v),
            DataType::I64 => v.fract() == 0.0 && (i64::MIN as f64..=i64::MAX as f64).contains(&v),
        };
        if fits {
            Ok(())
        } else {
            Err(format!(
                "baseline {v} is not a {dtype} value, the type of input '{name}'"
            ))
        }
    }

    fn write(&self, data: &mut TensorData, index: usize) {
        let v = self.0;
        match data {
            TensorData::Bool(d) => d[index] = v != 0.0,
            TensorData::U8(d) => d[index] = v as u8,
            TensorData::U16(d) => d[index] = v as u16,
            TensorData::U32(d) => d[index] = v as u32,
            TensorData::U64(d) => d[index] = v as u64,
            TensorData::I8(d) => d[index] = v as i8,
            TensorData::I16(d) => d[index] = v as i16,
            TensorData::I32(d) => d[index] = v as i32,
            TensorData::I64(d) => d[index] = v as i64,
            TensorData::F16(d) => d[index] = half::f16::from_f64(v),
            TensorData::BF16(d) => d[index] = half::bf16::from_f64(v),
            TensorData::F32(d) => d[index] = v as f32,
            TensorData::F64(d) => d[index] = v,
            TensorData::String(_) => unreachable!("checked by Baseline::check"),
        }
    }
}

fn copy_element(to: &mut TensorData, from: &TensorData, index: usize) {
    macro_rules! copy {
        ($($variant:ident),*) => {
            match (to, from) {
                $((TensorData::$variant(a), TensorData::$variant(b)) => a[index] = b[index].clone(),)*
                _ => unreachable!("an instance and its copy have the same types"),
            }
        };
    }
    copy!(
        Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, BF16, F32, F64, String
    )
}

/// Sliding-window positions over one instance's shape (batch axis excluded).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Windows {
    pub shape: Vec<usize>,
    pub window: Vec<usize>,
    pub stride: Vec<usize>,
}

impl Windows {
    /// Checks Captum's rules: the window fits the input, and where it does not
    /// span an axis the stride is at most the window (so every element is covered).
    pub fn new(
        shape: Vec<usize>,
        window: Vec<usize>,
        stride: Vec<usize>,
    ) -> Result<Windows, String> {
        if window.len() != shape.len() || stride.len() != shape.len() {
            return Err(format!(
                "window {} and stride {} need one value per axis of the instance shape {}",
                list_excerpt(&window),
                list_excerpt(&stride),
                list_excerpt(&shape)
            ));
        }
        for axis in 0..shape.len() {
            let (size, w, s) = (shape[axis], window[axis], stride[axis]);
            if w == 0 || w > size {
                return Err(format!(
                    "window {window:?} does not fit the instance shape {shape:?} (axis {axis})"
                ));
            }
            if s == 0 || (w < size && s > w) {
                return Err(format!(
                    "stride {stride:?} must be between 1 and the window {window:?} on axis {axis}, or every element would not be covered"
                ));
            }
        }
        Ok(Windows {
            shape,
            window,
            stride,
        })
    }

    /// Positions per axis: ⌈(size − window) / stride⌉ + 1.
    fn counts(&self) -> Vec<usize> {
        (0..self.shape.len())
            .map(|a| (self.shape[a] - self.window[a]).div_ceil(self.stride[a]) + 1)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.counts().iter().product()
    }

    /// The flat element indices covered by window number `n`.
    pub fn elements(&self, n: usize) -> Vec<usize> {
        let counts = self.counts();
        let mut rest = n;
        let ranges: Vec<(usize, usize)> = (0..self.shape.len())
            .map(|a| {
                let start = (rest % counts[a]) * self.stride[a];
                rest /= counts[a];
                (start, (start + self.window[a]).min(self.shape[a]))
            })
            .collect();
        let mut covered = vec![0usize];
        for (axis, &(start, end)) in ranges.iter().enumerate() {
            let inner: usize = self.shape[axis + 1..].iter().product();
            covered = covered
                .into_iter()
                .flat_map(|base| (start..end).map(move |i| base + i * inner))
                .collect();
        }
        covered
    }
}

/// Attributions accumulated per feature, then averaged by their weights.
pub(super) struct Totals {
    sums: Vec<f64>,
    weights: Vec<f64>,
}

impl Totals {
    pub fn new(features: usize) -> Totals {
        Totals {
            sums: vec![0.0; features],
            weights: vec![0.0; features],
        }
    }

    pub fn add(&mut self, features: &[usize], value: f64) {
        for &k in features {
            self.sums[k] += value;
            self.weights[k] += 1.0;
        }
    }

    /// Sum ÷ weight per feature (0 for a feature nothing touched), shaped
    /// like the instance's inputs.
    pub fn averaged(self, instance: &Instance) -> Vec<Tensor> {
        let mut values = self
            .sums
            .iter()
            .zip(&self.weights)
            .map(|(s, w)| if *w > 0.0 { (s / w) as f32 } else { 0.0 });
        instance
            .inputs
            .iter()
            .map(|input| {
                Tensor::new(
                    input.shape.clone(),
                    TensorData::F32(values.by_ref().take(input.data.len()).collect()),
                )
            })
            .collect()
    }

    /// Sum ÷ `n` per feature (Shapley sampling averages over permutations).
    pub fn divided(self, n: usize, instance: &Instance) -> Vec<Tensor> {
        let weights = vec![n as f64; self.sums.len()];
        Totals {
            sums: self.sums,
            weights,
        }
        .averaged(instance)
    }
}

/// Feature groups: `mask[k]` is the group of feature `k` (Captum's feature
/// mask); without one, every feature is its own group.
pub(super) fn groups(features: usize, mask: Option<&[usize]>) -> Result<Vec<Vec<usize>>, String> {
    let Some(mask) = mask else {
        return Ok((0..features).map(|k| vec![k]).collect());
    };
    if mask.len() != features {
        return Err(format!(
            "featureMask has {} entries but the instance has {features} features",
            mask.len()
        ));
    }
    // Ids may be sparse and large: group by id rather than index by it.
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (k, &g) in mask.iter().enumerate() {
        groups.entry(g).or_default().push(k);
    }
    Ok(groups.into_values().collect())
}

/// The cumulative instances of one Shapley permutation: after step `i`, the
/// groups `order[..=i]` hold their input values, the rest the baseline.
pub(super) fn permutation_steps<'a>(
    input: &'a Instance,
    baseline_instance: &'a Instance,
    groups: &'a [Vec<usize>],
    order: &'a [usize],
) -> impl Iterator<Item = Instance> + 'a {
    let mut current = baseline_instance.clone();
    order.iter().map(move |&g| {
        for &k in &groups[g] {
            current.take_feature(input, k);
        }
        current.clone()
    })
}

/// A seeded permutation (SplitMix64 + Fisher–Yates): reproducible for a seed,
/// though not the sequence torch's RNG would draw.
pub(super) fn permutation(len: usize, state: &mut u64) -> Vec<usize> {
    let mut next = || {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_captum_including_cut_off_edges() {
        // 5 wide, window 2, stride 2: starts 0, 2, 4; the last covers one element.
        let w = Windows::new(vec![1, 5], vec![1, 2], vec![1, 2]).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(
            (w.elements(0), w.elements(1), w.elements(2)),
            (vec![0, 1], vec![2, 3], vec![4])
        );
        let w = Windows::new(vec![4, 4], vec![2, 2], vec![2, 2]).unwrap();
        assert_eq!(w.len(), 4);
        // Window 1 starts at row 2, column 0: the first axis varies fastest, as in Captum.
        assert_eq!(w.elements(1), vec![8, 9, 12, 13]);
        assert!(
            Windows::new(vec![4, 4], vec![5, 1], vec![1, 1])
                .unwrap_err()
                .contains("does not fit")
        );
        assert!(
            Windows::new(vec![4, 4], vec![2, 2], vec![3, 1])
                .unwrap_err()
                .contains("stride")
        );
    }

    #[test]
    fn feature_groups_follow_the_mask_in_id_order() {
        assert_eq!(groups(3, None).unwrap(), vec![vec![0], vec![1], vec![2]]);
        let sparse = groups(4, Some(&[usize::MAX, 7, 7, 0])).unwrap();
        assert_eq!(sparse, vec![vec![3], vec![1, 2], vec![0]]);
        assert!(groups(4, Some(&[0, 1])).unwrap_err().contains("2 entries"));
    }

    #[test]
    fn permutations_are_reproducible_and_complete() {
        let (mut a, mut b) = (7u64, 7u64);
        let p = permutation(10, &mut a);
        assert_eq!(p, permutation(10, &mut b));
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn baselines_must_fit_the_input_type() {
        assert!(
            Baseline(0.5)
                .check("ids", DataType::I64)
                .unwrap_err()
                .contains("not a int64 value")
        );
        assert!(Baseline(0.0).check("ids", DataType::I64).is_ok());
        assert!(
            Baseline(0.0)
                .check("s", DataType::String)
                .unwrap_err()
                .contains("cannot be perturbed")
        );
    }
}
