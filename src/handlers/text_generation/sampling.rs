//! Choosing the next token from the logits: greedy, or sampled after
//! temperature, top-k and top-p, from a seeded generator so that the same
//! seed and prompt give the same tokens.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Temperatures below this choose greedily: dividing logits by less can
/// overflow to infinity, and the weights to NaN, which picked the least
/// likely token kept; and this little heat already puts all the weight on
/// the most likely one.
const MIN_TEMPERATURE: f32 = 1e-6;

/// How tokens are chosen for one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 (or anything below [`MIN_TEMPERATURE`]) chooses greedily.
    pub temperature: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    /// 1 keeps every token.
    pub top_p: f32,
    pub seed: u64,
}

/// Chooses tokens for one generation.
pub(super) struct Sampler {
    sampling: Sampling,
    rng: ChaCha8Rng,
    /// Reused between steps: (token, weight) candidates.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Sampler {
        Sampler {
            rng: ChaCha8Rng::seed_from_u64(sampling.seed),
            sampling,
            candidates: Vec::new(),
        }
    }

    pub fn next_token(&mut self, logits: &[f32]) -> u32 {
        if self.sampling.temperature < MIN_TEMPERATURE {
            return argmax(logits);
        }
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l / self.sampling.temperature)),
        );
        // Highest first; ties keep the lower token id first, so the order is reproducible.
        self.candidates
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.sampling.top_k > 0 {
            self.candidates.truncate(self.sampling.top_k);
        }
        let top = self.candidates[0].1;
        let mut total = 0.0;
        for candidate in &mut self.candidates {
            candidate.1 = (candidate.1 - top).exp();
            total += candidate.1;
        }
        self.keep_top_p(total);
        let total: f32 = self.candidates.iter().map(|c| c.1).sum();
        let mut target = self.uniform() * total;
        for &(token, weight) in &self.candidates {
            if target < weight {
                return token;
            }
            target -= weight;
        }
        self.candidates.last().expect("at least one candidate").0
    }

    /// Keeps the smallest set of most likely tokens whose mass reaches top_p.
    fn keep_top_p(&mut self, total: f32) {
        if self.sampling.top_p >= 1.0 {
            return;
        }
        let needed = self.sampling.top_p * total;
        let mut mass = 0.0;
        let keep = self
            .candidates
            .iter()
            .position(|c| {
                mass += c.1;
                mass >= needed
            })
            .map_or(self.candidates.len(), |i| i + 1);
        self.candidates.truncate(keep);
    }

    /// Uniform in [0, 1), from 24 random bits (an f32's precision).
    fn uniform(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }
}

/// The highest logit's token; the lowest id among equals.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    #[test]
    fn temperature_zero_is_greedy() {
        let mut sampler = Sampler::new(sampling(0.0, 0, 1.0, 1));
        assert_eq!(sampler.next_token(&[0.1, 3.0, 2.9, 3.0]), 1);
        // So small that a logit divided by it overflows: greedy too.
        let mut sampler = Sampler::new(sampling(1e-39, 3, 1.0, 1));
        assert_eq!(sampler.next_token(&[0.1, 3.0, 2.9, 3.0]), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_others_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 / 3.0).collect();
        let draw = |seed| {
            let mut sampler = Sampler::new(sampling(1.0, 0, 1.0, seed));
            (0..40)
                .map(|_| sampler.next_token(&logits))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_most_likely() {
        let logits = [0.0, 5.0, 4.0, 1.0, 4.5];
        let mut top2 = Sampler::new(sampling(1.0, 2, 1.0, 3));
        let mut top_p = Sampler::new(sampling(1.0, 0, 0.45, 3));
        for _ in 0..200 {
            assert!([1, 4].contains(&top2.next_token(&logits)));
            // Token 1 alone holds 50% of the mass.
            assert_eq!(top_p.next_token(&logits), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // ln 3 apart: token 1 three times as likely as token 0.
        let logits = [0.0, 3f32.ln()];
        let mut sampler = Sampler::new(sampling(1.0, 0, 1.0, 11));
        let ones = (0..4000)
            .filter(|_| sampler.next_token(&logits) == 1)
            .count();
        assert!((2850..3150).contains(&ones), "{ones} of 4000");
    }
}
