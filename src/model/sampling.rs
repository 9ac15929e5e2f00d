//! Choosing the next token from the logits: greedy, or temperature with top-k, top-p,
//! reproducible with a seed; the logits first adjusted by a bias per token, a repetition
//! penalty (Hugging Face's) and frequency and presence penalties (OpenAI's). Also the
//! log-probabilities of the model's own distribution, for callers that report them.

use std::collections::HashMap;

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
    /// OpenAI's penalties, on tokens this sampler already chose (not the prompt's): a
    /// token chosen `count` times loses `count × frequency_penalty` from its logit, plus
    /// `presence_penalty` once it was chosen at all. Negative values encourage repeats.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Added to the logits of these token ids before anything else (OpenAI's
    /// `logit_bias`: -100 all but bans a token, 100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: None,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Checks ranges, naming the parameter that is out of them.
    pub fn validate(&self) -> Result<(), InvalidParam> {
        let invalid = |param: &'static str, message: String| Err(InvalidParam { param, message });
        if !(self.temperature.is_finite() && (0.0..=5.0).contains(&self.temperature)) {
            return invalid("temperature", format!("must be within 0..5, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid("top_p", format!("must be within (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return invalid("repetition_penalty", format!("must be positive, got {}", self.repetition_penalty));
        }
        for (param, value) in
            [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)]
        {
            if !(value.is_finite() && (-2.0..=2.0).contains(&value)) {
                return invalid(param, format!("must be within -2..2, got {value}"));
            }
        }
        if let Some((id, bias)) = self.logit_bias.iter().find(|(_, b)| !(b.is_finite() && (-100.0..=100.0).contains(b)))
        {
            return invalid("logit_bias", format!("the bias of token {id} must be within -100..100, got {bias}"));
        }
        Ok(())
    }
}

/// A sampling parameter out of its range: which one, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidParam {
    pub param: &'static str,
    pub message: String,
}

impl std::fmt::Display for InvalidParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.param, self.message)
    }
}

/// A sampler for one sequence: owns its random state and counts the tokens it chose.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// How often each token was chosen so far, for the frequency and presence penalties.
    chosen: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self { params, rng, chosen: HashMap::new() }
    }

    /// Picks the next token. `history` is every token so far (prompt and generated),
    /// for the repetition penalty. `logits` is used as scratch space: it is left holding
    /// the adjusted logits the choice was made from.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.adjust(logits, history);
        let token = self.pick(logits);
        *self.chosen.entry(token).or_default() += 1;
        token
    }

    /// Applies the bias, the repetition penalty and the frequency and presence penalties.
    fn adjust(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
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
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&id, &count) in &self.chosen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
    }

    /// Greedy, or a draw from the tempered, top-k and top-p cut distribution.
    fn pick(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
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

/// The model's log-probability of `chosen`, and the `top` most likely tokens with theirs
/// (best first): the log-softmax of the raw logits, before any sampling adjustment.
pub fn log_probs(logits: &[f32], chosen: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Summed in f64: 50k terms in f32 lose digits the small probabilities need.
    let log_total = max as f64 + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln();
    let log_prob = |id: u32| (logits[id as usize] as f64 - log_total) as f32;
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(ids.len());
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if top < ids.len() {
        ids.select_nth_unstable_by(top, by_logit);
    }
    ids.truncate(top);
    ids.sort_by(by_logit);
    (log_prob(chosen), ids.into_iter().map(|id| (id, log_prob(id))).collect())
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

    /// A greedy sampler that has already chosen `tokens`, in order.
    fn greedy_after(params: SamplingParams, tokens: &[u32]) -> Sampler {
        let mut s = Sampler::new(params);
        for &t in tokens {
            let mut forced = vec![0.0; 4];
            forced[t as usize] = 1000.0;
            assert_eq!(s.sample(&mut forced, &[]), t);
        }
        s
    }

    #[test]
    fn frequency_and_presence_penalties_follow_openai() {
        // Chosen so far: token 2 twice, token 0 once; token 1 and 3 never.
        let params = SamplingParams { frequency_penalty: 0.5, presence_penalty: 0.25, ..SamplingParams::greedy() };
        let mut s = greedy_after(params, &[2, 0, 2]);
        let mut logits = [1.0, 2.0, 3.0, 0.5];
        // 3 - (2 × 0.5 + 0.25) = 1.75 < 2.0: token 1 wins now.
        assert_eq!(s.sample(&mut logits, &[]), 1);
        assert_eq!(logits, [1.0 - (0.5 + 0.25), 2.0, 1.75, 0.5]);
        // Token 1 is now counted too: 2 - 0.75 = 1.25, below token 2's 1.75.
        let mut logits = [1.0, 2.0, 3.0, 0.5];
        assert_eq!(s.sample(&mut logits, &[]), 2);
        assert_eq!(logits, [0.25, 1.25, 1.75, 0.5]);
        // The prompt (history) does not count for these penalties.
        let mut fresh = greedy_after(
            SamplingParams { frequency_penalty: 2.0, presence_penalty: 2.0, ..SamplingParams::greedy() },
            &[],
        );
        let mut logits = [1.0, 2.0, 3.0, 0.5];
        assert_eq!(fresh.sample(&mut logits, &[2, 2, 2]), 2);
        assert_eq!(logits, [1.0, 2.0, 3.0, 0.5]);
    }

    #[test]
    fn negative_penalties_favour_repeats() {
        let params = SamplingParams { frequency_penalty: -1.0, presence_penalty: -0.5, ..SamplingParams::greedy() };
        let mut s = greedy_after(params, &[3]);
        let mut logits = [1.0, 2.0, 3.0, 0.5];
        // 0.5 + 1 + 0.5 = 2.0 ties token 1 but not token 2 (3.0): token 2 still wins.
        assert_eq!(s.sample(&mut logits, &[]), 2);
        assert_eq!(logits[3], 2.0);
    }

    #[test]
    fn logit_bias_is_added_before_the_choice() {
        let params = SamplingParams { logit_bias: vec![(0, 5.0), (2, -100.0), (9, 3.0)], ..SamplingParams::greedy() };
        let mut s = Sampler::new(params);
        let mut logits = [0.5, 1.0, 2.0];
        assert_eq!(s.sample(&mut logits, &[]), 0, "an id past the logits is ignored");
        assert_eq!(logits, [5.5, 1.0, -98.0]);
        // -100 bans a token under sampling too.
        let params =
            SamplingParams { temperature: 1.0, seed: Some(3), logit_bias: vec![(1, -100.0)], ..Default::default() };
        let mut s = Sampler::new(params);
        assert!((0..500).all(|_| s.sample(&mut [1.0, 5.0, 1.0], &[]) != 1));
    }

    #[test]
    fn log_probs_are_the_log_softmax_of_the_raw_logits() {
        // ln(1), ln(2), ln(3), ln(4): probabilities 0.1, 0.2, 0.3, 0.4.
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let (chosen, top) = log_probs(&logits, 1, 2);
        assert!((chosen - 0.2f32.ln()).abs() < 1e-6, "{chosen}");
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![3, 2]);
        assert!((top[0].1 - 0.4f32.ln()).abs() < 1e-6 && (top[1].1 - 0.3f32.ln()).abs() < 1e-6, "{top:?}");
        // Shifting every logit changes nothing; asking for more than there are gives all.
        let shifted: Vec<f32> = logits.iter().map(|l| l + 100.0).collect();
        let (again, all) = log_probs(&shifted, 1, 10);
        assert!((again - chosen).abs() < 1e-5);
        assert_eq!(all.len(), 4);
        assert_eq!(log_probs(&logits, 0, 0).1, vec![]);
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
        let param = |p: SamplingParams| p.validate().unwrap_err().param;
        assert_eq!(param(SamplingParams { top_p: 0.0, ..Default::default() }), "top_p");
        assert_eq!(param(SamplingParams { temperature: -1.0, ..Default::default() }), "temperature");
        assert_eq!(param(SamplingParams { presence_penalty: 2.5, ..Default::default() }), "presence_penalty");
        assert_eq!(param(SamplingParams { frequency_penalty: f32::NAN, ..Default::default() }), "frequency_penalty");
        assert_eq!(param(SamplingParams { logit_bias: vec![(4, 101.0)], ..Default::default() }), "logit_bias");
        let err = SamplingParams { top_p: 0.0, ..Default::default() }.validate().unwrap_err();
        assert!(err.to_string().starts_with("top_p must be"), "{err}");
    }
}
