//! Flax (`flax.linen`) in Rust: modules whose `init` and `apply` come from
//! one traced call (Flax's `@compact`), whose variables carry Flax's names
//! and layouts (`params/Dense_0/kernel`, `batch_stats/BatchNorm_0/mean`),
//! and `FlaxLayer`, Keras's wrapper of a module as a layer.
//!
//! - [`Scope`]: `param`, `variable`, `make_rng`, child scopes with Flax's
//!   automatic names (`Dense_0`, `Conv_1`, per type and call order); each
//!   child's rng is the root key folded once with the SHA-1 of the scope
//!   path and a per-scope counter, bit for bit as `flax/core/scope.py`.
//! - [`Module`], [`Method`], [`FnModule`]: modules, their methods, closure
//!   modules; [`init`]/[`apply`] (compiled) and [`init_traced`]/[`apply_traced`].
//! - Layers: [`Dense`], [`DenseGeneral`], [`Conv`], [`ConvTranspose`],
//!   [`Embed`], [`BatchNorm`], [`LayerNorm`], [`RMSNorm`], [`GroupNorm`],
//!   [`Dropout`], [`MultiHeadDotProductAttention`], [`Sequential`], pooling
//!   ([`avg_pool`], [`max_pool`], [`min_pool`]), [`init_specs`] (the variables'
//!   specs without compiling, as `jax.eval_shape`); activations are
//!   [`crate::builder::nn`].
//! - [`FlaxLayer`]: a module as a Keras [`crate::layers::Layer`].
//! - Checkpoints: [`save_variables`]/[`load_variables`] with `.`-joined keys.
//!
//! See `docs/flax.md` for a porting guide.
//!
//! ```
//! use xlayer::builder::{nn, Tree};
//! use xlayer::flax::{apply, init, avg_pool, ApplyOptions, Conv, Dense, FnModule, InitOptions, Rngs};
//! use xlayer::builder::Padding;
//! use xlayer::Client;
//! let client = Client::cpu()?;
//! let cnn = FnModule::new("CNN").call(|s, x, _| {
//!     let x = x.clone().into_leaf()?;
//!     let x = nn::relu(&Conv::new(4, &[3, 3]).apply(s, &x)?)?;
//!     let x = avg_pool(&x, &[2, 2], &[2, 2], &Padding::Valid, true)?;
//!     let x = x.reshape(&[x.dims()[0], x.element_count() / x.dims()[0]])?;
//!     Ok(Tree::leaf(Dense::new(3).apply(s, &x)?))
//! });
//! let x = client.buffer_from_host(&vec![0.5f32; 2 * 8 * 8], &[2, 8, 8, 1])?;
//! let vars = init(&cnn, &Rngs::seed(0), &Tree::leaf(&x), &InitOptions::new())?;
//! assert_eq!(vars.paths(), vec!["params/Conv_0/bias", "params/Conv_0/kernel",
//!                               "params/Dense_0/bias", "params/Dense_0/kernel"]);
//! let v = vars.structure().unflatten(vars.leaves())?;
//! let (y, _) = apply(&cnn, &v, &Tree::leaf(&x), &ApplyOptions::new())?;
//! assert_eq!(y.leaves()[0].dims(), &[2, 3]);
//! # Ok::<(), xlayer::Error>(())
//! ```

mod attention;
mod checkpoint;
mod layer;
pub(crate) mod linear;
mod misc;
mod module;
mod norm;
mod scope;
mod shapes;

pub use attention::{
    dot_product_attention, make_attention_mask, make_causal_mask, MultiHeadDotProductAttention,
};
pub use checkpoint::{flax_name_map, load_variables, save_variables};
pub use layer::{join_variables, split_variables, FlaxLayer, FlaxLayerBuilder};
pub use linear::{
    default_embed_init, default_kernel_init, Conv, ConvPadding, ConvTranspose, Dense, DenseGeneral,
    Embed,
};
pub use misc::{avg_pool, max_pool, min_pool, Dropout, Sequential, Step, StepFn};
pub use module::{
    apply, apply_traced, init, init_traced, promote_dtype, ApplyOptions, FnModule, FreeFn,
    InitOptions, Method, MethodFn, MethodSig, Module, Rngs, CALL,
};
pub use norm::{compute_stats, BatchNorm, GroupNorm, LayerNorm, RMSNorm};
pub use scope::{Mutable, Scope, Variable};
pub use shapes::init_specs;

/// SHA-1 (FIPS 180-4) of `data`, for Flax's rng folding.
pub(crate) fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha1_known_answers() {
        let hex = |d: [u8; 20]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(super::sha1(b"")),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert_eq!(
            hex(super::sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
