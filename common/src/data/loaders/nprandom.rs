//! NumPy's `np.random.default_rng(seed).permutation(n)`, bit for bit: the PCG64 bit generator (XSL-RR 128/64)
//! seeded through `SeedSequence`, and `Generator.shuffle`'s Fisher–Yates with its masked-rejection bounded draw.
//! `datasets`' `Dataset.shuffle(seed=s)` is `select(default_rng(s).permutation(len))`, so this is how the seed's
//! loaders order their rows.
//!
//! Written here because no crate reproduces NumPy's stream: `rand_pcg::Pcg64` is the same XSL-RR 128/64 LCG but
//! emits from the state before each step, seeds without `SeedSequence` and takes 32-bit draws as the low half of
//! a fresh 64-bit draw (NumPy buffers the high half for the next 32-bit draw). Tested against NumPy in the
//! reference venv (`common/tests/loaders.rs`).

/// `SeedSequence`'s constants (numpy/random/bit_generator.pyx).
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;

/// PCG's 128-bit LCG multiplier (`PCG_DEFAULT_MULTIPLIER_128`).
const PCG_MULT: u128 = 0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645;

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

/// `np.random.SeedSequence(entropy)` without spawn keys, for a non-negative integer entropy.
#[derive(Debug, Clone)]
pub struct SeedSequence {
    pool: [u32; POOL_SIZE],
}

impl SeedSequence {
    /// `SeedSequence(entropy)`: the integer is split into 32-bit words, least significant first (0 is `[0]`).
    pub fn new(entropy: u128) -> SeedSequence {
        let mut words = Vec::new();
        let mut e = entropy;
        loop {
            words.push(e as u32);
            e >>= 32;
            if e == 0 {
                break;
            }
        }
        let mut pool = [0u32; POOL_SIZE];
        let mut hash_const = INIT_A;
        for (i, slot) in pool.iter_mut().enumerate() {
            *slot = hashmix(words.get(i).copied().unwrap_or(0), &mut hash_const);
        }
        for src in 0..POOL_SIZE {
            for dst in 0..POOL_SIZE {
                if src != dst {
                    pool[dst] = mix(pool[dst], hashmix(pool[src], &mut hash_const));
                }
            }
        }
        for &w in words.iter().skip(POOL_SIZE) {
            for slot in pool.iter_mut() {
                *slot = mix(*slot, hashmix(w, &mut hash_const));
            }
        }
        SeedSequence { pool }
    }

    /// `generate_state(n, np.uint32)`.
    pub fn generate_u32(&self, n: usize) -> Vec<u32> {
        let mut hash_const = INIT_B;
        (0..n)
            .map(|i| {
                let mut v = self.pool[i % POOL_SIZE] ^ hash_const;
                hash_const = hash_const.wrapping_mul(MULT_B);
                v = v.wrapping_mul(hash_const);
                v ^ (v >> XSHIFT)
            })
            .collect()
    }

    /// `generate_state(n, np.uint64)`: pairs of 32-bit words read little-endian.
    pub fn generate_u64(&self, n: usize) -> Vec<u64> {
        self.generate_u32(2 * n).chunks(2).map(|w| w[0] as u64 | (w[1] as u64) << 32).collect()
    }
}

/// NumPy's `PCG64` bit generator.
#[derive(Debug, Clone)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
    /// The high half of the last 64-bit draw, kept for the next 32-bit draw (`has_uint32` / `uinteger`).
    buffered: Option<u32>,
}

impl Pcg64 {
    /// `PCG64(seed)`: four 64-bit words from `SeedSequence(seed)`; the first two are the initial state, the
    /// last two the stream (high word first), then `pcg_setseq_128_srandom_r`.
    pub fn from_seed(seed: u128) -> Pcg64 {
        let w = SeedSequence::new(seed).generate_u64(4);
        let initstate = (w[0] as u128) << 64 | w[1] as u128;
        let initseq = (w[2] as u128) << 64 | w[3] as u128;
        let mut g = Pcg64 { state: 0, inc: (initseq << 1) | 1, buffered: None };
        g.step();
        g.state = g.state.wrapping_add(initstate);
        g.step();
        g
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// `next_uint64`: step, then XSL-RR output of the new state.
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let rot = (self.state >> 122) as u32;
        let xored = ((self.state >> 64) as u64) ^ (self.state as u64);
        xored.rotate_right(rot)
    }

    /// `next_uint32`: the low half of a 64-bit draw, the high half on the next call.
    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.buffered.take() {
            return v;
        }
        let v = self.next_u64();
        self.buffered = Some((v >> 32) as u32);
        v as u32
    }

    /// `random_interval(max)`: uniform in `[0, max]` by masked rejection, 32-bit draws while `max` fits in 32
    /// bits.
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        mask |= mask >> 32;
        if max <= u32::MAX as u64 {
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let v = self.next_u64() & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }
}

/// `np.random.default_rng(seed).permutation(n)`: `arange(n)` shuffled by `Generator.shuffle` (for `i` from
/// `n-1` down to 1, swap `i` with `random_interval(i)`).
pub fn permutation(seed: u128, n: usize) -> Vec<u64> {
    let mut out: Vec<u64> = (0..n as u64).collect();
    let mut g = Pcg64::from_seed(seed);
    for i in (1..n).rev() {
        let j = g.interval(i as u64) as usize;
        out.swap(i, j);
    }
    out
}
