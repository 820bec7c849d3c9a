//! A knowledge base to retrieve from: passages of several sentences (product facts and support
//! notes naming customers with their contact data), passage `i` the same for a seed whatever else
//! is drawn, and retrieved by Zipf's law: a few popular passages come back again and again, as in
//! real RAG traffic, and the long tail is seen once.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::text::Topic;

/// `len` passages, drawn with probability ∝ 1 / (rank + 1)^exponent.
#[derive(Debug, Clone)]
pub struct Corpus {
    seed: u64,
    /// Cumulative draw probability by rank (rank 0 the most popular).
    cdf: Vec<f64>,
}

/// The corpus of the realistic traffic: 100,000 passages, Zipf exponent 1.0.
pub const REALISTIC_PASSAGES: usize = 100_000;
pub const REALISTIC_EXPONENT: f64 = 1.0;

impl Corpus {
    pub fn new(seed: u64, len: usize, exponent: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (0..len.max(1))
            .map(|rank| {
                total += 1.0 / (rank as f64 + 1.0).powf(exponent);
                total
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= total);
        Self { seed, cdf }
    }

    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// A passage id by popularity.
    pub fn draw(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }

    /// Passage `id`: 3 to 12 sentences, about 0.4 to 2 KB.
    pub fn passage(&self, id: usize) -> String {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let topic = Topic::pick(&mut rng);
        let sentences = rng.random_range(3..=12);
        (0..sentences)
            .map(|_| match rng.random_range(0..5) {
                0 => topic.note(&mut rng),
                grade => topic.passage(&mut rng, grade as u8 - 1),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_are_stable_and_draws_follow_zipf() {
        let corpus = Corpus::new(7, 1_000, 1.0);
        assert_eq!(corpus.passage(42), corpus.passage(42));
        assert_ne!(corpus.passage(42), corpus.passage(43));
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = vec![0u32; corpus.len()];
        for _ in 0..100_000 {
            counts[corpus.draw(&mut rng)] += 1;
        }
        // Rank 0 is drawn twice as often as rank 1 and ten times as often as rank 9
        // (1 / H(1000) ≈ 13.4 % of the draws).
        let share = |r: usize| counts[r] as f64 / 100_000.0;
        assert!((share(0) - 0.134).abs() < 0.01, "{}", share(0));
        assert!((share(0) / share(1) - 2.0).abs() < 0.25);
        assert!((share(0) / share(9) - 10.0).abs() < 2.0);
    }
}
