//! Choosing the next token from the logits: greedy, or temperature with top-k, top-p and
//! a repetition penalty, reproducible with a seed.

use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// How to pick tokens. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Above 1 makes tokens already in the text less likely (as in Hugging Face's
    /// `repetition_penalty`: positive logits divided by it, negative ones multiplied).
    pub repetition_penalty: f32,
    /// Same seed, same prompt, same parameters: same text.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.7, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: None }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Checks ranges, naming the parameter that is out of them.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && (0.0..=5.0).contains(&self.temperature)) {
            return Err(format!("temperature must be within 0..5, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be within (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(format!("repetition_penalty must be positive, got {}", self.repetition_penalty));
        }
        Ok(())
    }
}

/// A sampler for one sequence: owns its random state.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self { params, rng }
    }

    /// Picks the next token. `history` is every token so far (prompt and generated),
    /// for the repetition penalty. `logits` is used as scratch space.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in history {
                if let Some(l) = logits.get_mut(t as usize) {
                    if !std::mem::replace(&mut seen[t as usize], true) {
                        *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                    }
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        // Candidates best first, cut by top-k, then softmax at the temperature.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let keep = if p.top_k > 0 { p.top_k.min(order.len()) } else { order.len() };
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if keep < order.len() {
            order.select_nth_unstable_by(keep, by_logit);
            order.truncate(keep);
        }
        order.sort_unstable_by(by_logit);
        let max = logits[order[0] as usize];
        let mut probs: Vec<f32> = order.iter().map(|&t| ((logits[t as usize] - max) / p.temperature).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            let cut = probs
                .iter()
                .position(|x| {
                    cumulative += x;
                    cumulative >= p.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(cut);
        }
        match WeightedIndex::new(&probs) {
            Ok(dist) => order[dist.sample(&mut self.rng)],
            Err(_) => order[0], // every weight underflowed: the best token is the only sensible choice
        }
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_many(params: SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; logits.len()];
        let mut s = Sampler::new(SamplingParams { seed: Some(7), ..params });
        for _ in 0..n {
            counts[s.sample(&mut logits.to_vec(), &[]) as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_follows_hugging_face() {
        // Token 1 (logit 3.0, seen) is divided by 2 → 1.5 < 2.9, so token 2 wins.
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[1, 1]), 2);
        // A negative logit is multiplied: -1 → -2, so it does not become more likely.
        let mut logits = [0.0, -1.0];
        s.sample(&mut logits, &[1]);
        assert_eq!(logits[1], -2.0);
    }

    #[test]
    fn temperature_sampling_matches_the_softmax() {
        // ln(1), ln(2), ln(3), ln(4) at T=1: probabilities 0.1, 0.2, 0.3, 0.4.
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let n = 20_000;
        let counts = sample_many(SamplingParams { temperature: 1.0, ..Default::default() }, &logits, n);
        for (i, expected) in [0.1, 0.2, 0.3, 0.4].iter().enumerate() {
            let got = counts[i] as f64 / n as f64;
            assert!((got - expected).abs() < 0.015, "token {i}: {got} vs {expected}");
        }
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let counts = sample_many(SamplingParams { temperature: 1.0, top_k: 2, ..Default::default() }, &logits, 2000);
        assert_eq!(counts[0] + counts[1], 0);
        assert!(counts[2] > 0 && counts[3] > 0);
        // 0.4 + 0.3 reaches 0.7: only the two best remain.
        let counts = sample_many(SamplingParams { temperature: 1.0, top_p: 0.7, ..Default::default() }, &logits, 2000);
        assert_eq!(counts[0] + counts[1], 0);
    }

    #[test]
    fn a_seed_makes_it_reproducible() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = || {
            let mut s = Sampler::new(SamplingParams { temperature: 1.0, seed: Some(42), ..Default::default() });
            (0..20).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn out_of_range_parameters_are_named() {
        let bad = SamplingParams { top_p: 0.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("top_p"));
        let bad = SamplingParams { temperature: -1.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("temperature"));
    }
}
