//! A discriminative second opinion on the same tokens: L2-regularised logistic regression over
//! hashed binary token features, trained by stochastic gradient descent.
//!
//! Naive Bayes treats tokens as independent evidence, so a message that repeats one theme in
//! many words is over-counted and padding words ("word salad") can outvote the real clues.
//! Logistic regression weighs tokens jointly: a token that only co-occurs with stronger clues
//! gets little weight. The two models err on different messages, which is why the filter
//! combines them.
//!
//! Features are the message's distinct tokens, hashed into [`DIM`] slots, each with value
//! `1/sqrt(n)` (n = number of tokens) so that long messages do not get extreme scores just by
//! being long. SGD updates are naturally incremental, so "release = ham, report = spam" learns
//! one message at a time like the Bayes counts do; [`Linear::fit`] makes several shuffled passes
//! over a whole corpus for the initial training, which one in-order pass cannot replace.

use crate::bayes::Reader;
use crate::FilterError;

/// Hash slots (a power of two). 2^20 keeps collisions rare for a few hundred thousand tokens.
pub const DIM_BITS: u32 = 20;
pub const DIM: usize = 1 << DIM_BITS;

// Hyper-parameters chosen by 5-fold cross-validation on the training corpus (three fold
// shuffles), maximising spam caught at 0.1-0.3% false positives.
/// L2 strength, per update (applied lazily to the weights a message touches).
const LAMBDA: f64 = 1e-4;
/// Learning rate of the first epoch; it decays as 1/(1 + epoch/2).
const ETA0: f64 = 8.0;
/// Passes over the corpus in [`Linear::fit`].
const EPOCHS: usize = 12;
/// Learning rate of an incremental update (one message learned after deployment): about the
/// rate of the last epoch of [`Linear::fit`].
const ONLINE_ETA: f64 = 1.0;
/// A ham's loss counts this many times a spam's. Losing a wanted message costs far more than
/// letting a spam through, and the hams that look most like spam (newsletters, offers the
/// recipient asked for) are few: without the weight they are outvoted and end up quarantined.
/// Worth +7 points of spam caught at 0.1% false positives in cross-validation.
const HAM_WEIGHT: f64 = 8.0;

/// The weights of the linear model. Serialised sparsely (only non-zero slots).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    weights: Vec<f32>,
    bias: f32,
    /// Updates applied so far.
    updates: u64,
    /// Whether [`Linear::fit`] has run. Online steps alone, taken in whatever order mail is
    /// learned (all spam first, say), give a badly biased model; until a corpus fit, the
    /// model's opinion is not used and Bayes decides alone.
    fitted: bool,
}

impl Default for Linear {
    fn default() -> Self {
        Linear { weights: vec![0.0; DIM], bias: 0.0, updates: 0, fitted: false }
    }
}

/// The feature slots of a token list: distinct slots, sorted.
pub fn features(tokens: &[String]) -> Vec<u32> {
    let mut idx: Vec<u32> = tokens.iter().map(|t| slot(t.as_bytes())).collect();
    idx.sort_unstable();
    idx.dedup();
    idx
}

fn slot(token: &[u8]) -> u32 {
    // FNV-1a, then a final mix so the low bits depend on every byte.
    let mut h = token
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3));
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 32;
    (h & (DIM as u64 - 1)) as u32
}

fn value(n: usize) -> f64 {
    1.0 / (n.max(1) as f64).sqrt()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Linear {
    /// Whether the model has an opinion worth using: it was fitted on a corpus.
    pub fn is_trained(&self) -> bool {
        self.fitted
    }

    /// The margin (log-odds of spam) of a message given its feature slots.
    pub fn margin(&self, features: &[u32]) -> f64 {
        let v = value(features.len());
        let dot: f64 = features.iter().map(|&i| f64::from(self.weights[i as usize])).sum();
        f64::from(self.bias) + v * dot
    }

    /// One SGD step on the logistic loss of one labelled message.
    fn step(&mut self, features: &[u32], spam: bool, eta: f64) {
        let y = if spam { 1.0 } else { 0.0 };
        let g = sigmoid(self.margin(features)) - y;
        let g = if spam { g } else { g * HAM_WEIGHT };
        let v = value(features.len());
        for &i in features {
            let w = &mut self.weights[i as usize];
            let wf = f64::from(*w);
            *w = (wf - eta * (g * v + LAMBDA * wf)) as f32;
        }
        self.bias = (f64::from(self.bias) - eta * g * 0.1) as f32;
        self.updates += 1;
    }

    /// Learns one message after deployment.
    pub fn learn(&mut self, features: &[u32], spam: bool) {
        self.step(features, spam, ONLINE_ETA);
    }

    /// Trains on a whole corpus: several passes in a shuffled (deterministic) order.
    pub fn fit(&mut self, corpus: &[(Vec<u32>, bool)]) {
        let mut order: Vec<usize> = (0..corpus.len()).collect();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for epoch in 0..EPOCHS {
            // Fisher-Yates with xorshift: reproducible without a dependency.
            for i in (1..order.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                order.swap(i, (rng % (i as u64 + 1)) as usize);
            }
            let eta = ETA0 / (1.0 + epoch as f64 / 2.0);
            for &k in &order {
                let (f, spam) = &corpus[k];
                self.step(f, *spam, eta);
            }
        }
        self.fitted |= !corpus.is_empty();
    }

    /// Appends the sparse encoding: updates, fitted, bias, count, then (slot, weight) pairs.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.updates.to_le_bytes());
        out.push(u8::from(self.fitted));
        out.extend_from_slice(&self.bias.to_le_bytes());
        let nz: Vec<(usize, f32)> =
            self.weights.iter().copied().enumerate().filter(|(_, w)| *w != 0.0).collect();
        out.extend_from_slice(&(nz.len() as u32).to_le_bytes());
        for (i, w) in nz {
            out.extend_from_slice(&(i as u32).to_le_bytes());
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// Decodes what [`Linear::encode`] wrote.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, FilterError> {
        let corrupt = |why: &str| FilterError::CorruptModel(why.to_owned());
        let updates = r.u64()?;
        let fitted = match r.take(1)?[0] {
            0 => false,
            1 => true,
            _ => return Err(corrupt("bad fitted flag")),
        };
        let bias = f32::from_bits(r.u32()?);
        let n = r.u32()? as usize;
        if n > DIM {
            return Err(corrupt("too many weights"));
        }
        let mut weights = vec![0.0f32; DIM];
        let mut last: Option<usize> = None;
        for _ in 0..n {
            let i = r.u32()? as usize;
            let w = f32::from_bits(r.u32()?);
            if i >= DIM || last.is_some_and(|l| i <= l) {
                return Err(corrupt("weight slots out of order"));
            }
            if !w.is_finite() || w == 0.0 {
                return Err(corrupt("bad weight"));
            }
            weights[i] = w;
            last = Some(i);
        }
        if !bias.is_finite() {
            return Err(corrupt("bad bias"));
        }
        Ok(Linear { weights, bias, updates, fitted })
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded online step (safe learning, `crate::votes`): kept apart so it merges cleanly.

impl Linear {
    /// One online step scaled so that this message's own margin moves by at most `max_shift`
    /// (log-odds) whatever its class weight: a vote is a nudge, never an order. The step moves
    /// the margin by about `eta * |g|` (the features add `v^2 * n = 1`) plus the bias' tenth.
    pub fn learn_bounded(&mut self, features: &[u32], spam: bool, max_shift: f64) {
        let y = if spam { 1.0 } else { 0.0 };
        let g = sigmoid(self.margin(features)) - y;
        let g = if spam { g } else { g * HAM_WEIGHT };
        if g.abs() < 1e-12 || max_shift <= 0.0 {
            return;
        }
        self.step(features, spam, (max_shift / (1.1 * g.abs())).min(ONLINE_ETA));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Vec<u32> {
        features(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn features_are_distinct_and_in_range() {
        let x = f("a b a c");
        assert_eq!(x.len(), 3);
        assert!(x.windows(2).all(|w| w[0] < w[1]));
        assert!(x.iter().all(|&i| (i as usize) < DIM));
    }

    #[test]
    fn fit_separates_and_learning_moves_the_margin() {
        let corpus: Vec<(Vec<u32>, bool)> = (0..200)
            .flat_map(|i| {
                [
                    (f(&format!("cheap pills winner n{i}")), true),
                    (f(&format!("meeting agenda radio n{i}")), false),
                ]
            })
            .collect();
        let mut m = Linear::default();
        assert!(!m.is_trained());
        m.learn(&f("cheap"), true);
        assert!(!m.is_trained(), "online steps alone are not a fit");
        m.fit(&corpus);
        assert!(m.is_trained());
        assert!(m.margin(&f("cheap winner")) > 2.0);
        assert!(m.margin(&f("meeting radio")) < -2.0);
        let before = m.margin(&f("zebra meeting"));
        for _ in 0..5 {
            m.learn(&f("zebra"), true);
        }
        assert!(m.margin(&f("zebra meeting")) > before);
    }
}
