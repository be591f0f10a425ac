//! Python's `random.Random` (MT19937 seeded by `init_by_array`, `random()` from two 32-bit draws),
//! so that lm-eval's bootstrap standard errors, which seed one generator per chunk of resamples,
//! can be reproduced draw for draw.

const N: usize = 624;
const M: usize = 397;

/// A Mersenne Twister seeded as `random.Random(seed)` seeds it.
#[derive(Debug, Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer: the key is its 32-bit words, least
    /// significant first (`[0]` for 0).
    pub fn new(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
        let mut rng = Self { mt: [0; N], index: N };
        rng.init_by_array(&key);
        rng
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            (i, j) = (i + 1, j + 1);
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.mt[i] = self.mt[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// The next 32-bit output (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random()`: 53 random bits in [0, 1).
    pub fn random(&mut self) -> f64 {
        let (a, b) = (self.next_u32() >> 5, self.next_u32() >> 6);
        (a as f64 * 67_108_864.0 + b as f64) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// The index `choices(population, k=...)` draws for a population of `n` (no weights).
    pub fn choice_index(&mut self, n: usize) -> usize {
        (self.random() * n as f64).floor() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python 3: `[random.Random(s).random() for s in (0, 1, 2**40)]`, and the first 5 of
    /// `random.Random(7).choices(range(10), k=5)`.
    #[test]
    fn matches_python() {
        let first = |s| PyRandom::new(s).random();
        assert_eq!(first(0), 0.8444218515250481);
        assert_eq!(first(1), 0.13436424411240122);
        assert_eq!(first(1 << 40), PYTHON_2_POW_40);
        let mut rng = PyRandom::new(7);
        let draws: Vec<usize> = (0..5).map(|_| rng.choice_index(10)).collect();
        assert_eq!(draws, PYTHON_CHOICES_7);
    }

    const PYTHON_2_POW_40: f64 = 0.1036394562812375;
    const PYTHON_CHOICES_7: [usize; 5] = [3, 1, 6, 0, 5];
}
