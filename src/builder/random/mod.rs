//! `jax.random`: the threefry2x32 PRNG over builder [`Value`](crate::builder::Value)s, with JAX's
//! keys and bits bit for bit and its samples computed by JAX's algorithms.
//!
//! A key is a `u32[2]` [`Value`](crate::builder::Value) holding JAX's raw (legacy `PRNGKey`) key
//! data. Every sampler here computes exactly what `jax.random` computes with
//! its default PRNG implementation, `threefry2x32`, and JAX's default
//! `jax_threefry_partitionable=True` (the default since JAX 0.5; checked
//! against JAX 0.10.2): random bits for element `i` (row-major) of a sample of
//! shape `dims` are `threefry2x32(key, (hi(i), lo(i)))` for the 64-bit counter
//! `i`, so a sample does not depend on how it is laid out across devices.
//! `split` uses the same counters; `fold_in` hashes the pair `(0, data)`.
//!
//! The algorithms follow `jax/_src/random/threefry2x32.py` and
//! `jax/_src/random/core.py`: `uniform` fills the mantissa of a float in
//! `[1, 2)` with random bits and subtracts 1; `normal` is
//! `sqrt(2) * erf_inv(u)` for `u` uniform in `(-1, 1)` (no Box–Muller);
//! `truncated_normal` inverts the CDF between `erf(lower/√2)` and
//! `erf(upper/√2)`; `bernoulli` is `uniform < p` (JAX's `mode="low"`);
//! `randint` draws twice as many bits as the dtype and reduces them modulo
//! the span.
//!
//! As in JAX, degenerate ranges are not errors: `randint` with
//! `maxval <= minval` returns `minval`, `uniform` with `maxval <= minval`
//! returns `minval`. Misuse (a key that is not `u32[2]`, a dtype a sampler
//! cannot produce) is an [`Error::Op`](crate::Error::Op) naming the function
//! (`random.uniform`, ...) and the shapes.
//!
//! **What matches JAX, and constant keys.** JAX takes its key as a run-time
//! operand (on CPU its threefry is even a rolled loop), so its samples are
//! computed by compiled code, where XLA's CPU backend fuses
//! `floats * (maxval - minval) + minval` into one multiply-add. Pass the key
//! as a run-time input (a parameter, or derived from one) and `key`,
//! `split`, `fold_in`, `bits`, `randint`, `bernoulli` and `uniform` are
//! bit-exact with `jax.random` (checked for f32, f64, f16 and bf16).
//! `normal` and `truncated_normal` go through `erf_inv`, a polynomial whose
//! vectorized code the CPU plugin picks by CPU feature: against jaxlib on a
//! 784x300 f32 array, 0.4% of the elements differ, by at most 3 ulp; f16
//! samples differ by a few half ulp (measured up to 3), more near 0 (where
//! only an absolute bound holds), between CPUs that round to half precision
//! between the steps and CPUs that do not (docs/ops.md, "Tolerances").
//! With a compile-time constant key ([`key`]) on a small sample, XLA/LLVM
//! may evaluate the whole sample while compiling, rounding the product and
//! the sum separately: `uniform`/`truncated_normal` values can then differ
//! from JAX by an ulp or a few (the integer outputs, `bits`, `split`,
//! `fold_in`, `randint`, never differ).
//!
//! Host-side helpers ([`key_data`], [`threefry2x32`], [`split_data`],
//! [`fold_in_data`], [`bits_data`]) compute the same keys and bits in plain
//! Rust, for known-answer tests and for deriving keys outside a graph.
//!
//! ```
//! use xlayer::builder::{jit, random};
//! use xlayer::{Client, DType};
//! let client = Client::cpu()?;
//! let exe = jit(&client, &[], |b, _| {
//!     let key = random::key(b, 0)?;
//!     Ok(vec![random::uniform(&key, &[3], DType::F32, 0.0, 1.0)?])
//! })?;
//! let u = exe.execute(&[])?[0].to_vec::<f32>()?;
//! // jax.random.uniform(jax.random.PRNGKey(0), (3,))
//! assert_eq!(u, vec![0.947667, 0.9785799, 0.33229148]);
//! # Ok::<(), xlayer::Error>(())
//! ```
//!
//! One file per concept: the threefry2x32 hash on the host and over arrays
//! (`threefry.rs`), keys (`keys.rs`: `key`, `split`, `fold_in`), random
//! bits and `uniform` (`uniform.rs`), the normal samplers (`normal.rs`)
//! and the discrete ones (`discrete.rs`: `bernoulli`, `randint`).

mod discrete;
mod keys;
mod normal;
mod threefry;
mod uniform;

pub use discrete::{bernoulli, bernoulli_p, randint};
pub use keys::{fold_in, fold_in_value, key, split, split_keys};
pub use normal::{normal, truncated_normal};
pub use threefry::{bits_data, fold_in_data, key_data, split_data, threefry2x32};
pub use uniform::{bits, uniform};
