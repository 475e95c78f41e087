//! Tensor-parallel BERT inference, Megatron style: each encoder layer's
//! attention heads and MLP units are split over a mesh axis (`model`), in
//! one `shard_map` around the whole sentence-embedding program.
//!
//! Per layer, the query/key/value kernels and biases are split by columns
//! (each device holds whole heads, `num_heads / n` of them), the attention
//! output kernel by rows; the intermediate kernel and bias by columns, the
//! MLP output kernel by rows. Each row-parallel projection gives a partial
//! sum, added up over the axis with one `psum` before its bias: two
//! all-reduces per layer. Embeddings, LayerNorms and the output biases are
//! replicated. [`trace_sentence_embedding_sharded`] also splits the batch
//! over a `data` axis (data parallel, alone or with `model`). See
//! `docs/sharding.md`.

use crate::builder::{shard_map, Builder, Computation, Tree, Value, VarBuilder};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::models::bert::{param_tree, sentence_embedding_with, BertConfig};
use crate::sharding::{DimSpec, Mesh, PartitionSpec};

/// The partition spec of the parameter at `path` (the layout of
/// [`param_tree`]) in the tensor-parallel model over mesh axis `axis`:
/// `P(None, axis)` for the column-parallel kernels (query, key, value,
/// intermediate), `P(axis)` for their biases, `P(axis, None)` for the
/// row-parallel kernels (attention output, MLP output), `P()` for the rest.
pub fn param_spec(path: &str, axis: &str) -> PartitionSpec {
    let split = DimSpec::axes(&[axis]);
    let whole = DimSpec::replicated();
    let column = [
        "/self/query/",
        "/self/key/",
        "/self/value/",
        "/intermediate/dense/",
    ]
    .iter()
    .any(|p| path.contains(p));
    let row = path.contains("/attention/output/dense/")
        || (path.contains("/output/dense/") && !path.contains("/attention/"));
    match (column, row, path.ends_with("/kernel")) {
        (true, _, true) => PartitionSpec::new(vec![whole, split]),
        (true, _, false) => PartitionSpec::new(vec![split]),
        (false, true, true) => PartitionSpec::new(vec![split, whole]),
        _ => PartitionSpec::replicated(),
    }
}

/// Checks that `n` devices can split `cfg`'s heads and MLP units evenly.
///
/// Errors: [`Error::IndivisibleDimension`] naming `num_attention_heads` or
/// `intermediate_size`.
pub fn check_split(cfg: &BertConfig, axis: &str, n: usize) -> Result<()> {
    for (what, size) in [
        ("num_attention_heads", cfg.num_heads),
        ("intermediate_size", cfg.intermediate_size),
    ] {
        if n == 0 || !size.is_multiple_of(n) {
            return Err(Error::IndivisibleDimension {
                tensor: what.into(),
                dim: 0,
                size,
                axes: vec![axis.into()],
                shards: n,
            });
        }
    }
    Ok(())
}

/// Traces the tensor-parallel sentence-embedding program over `mesh`'s
/// axis `axis`, for `batch` sequences of `seq_len` tokens. Arguments as
/// [`crate::models::bert::trace_sentence_embedding`]: the parameters with
/// their global shapes in the flatten order of [`param_tree`] (to be passed
/// sharded as [`param_spec`] says), then `ids` and `mask` (replicated); the
/// result `f32[batch, hidden]` is replicated. Compile it with
/// `CompileOptions::new().spmd(mesh.size())`.
///
/// Errors: [`Error::UnknownName`] for an axis `mesh` lacks; those of
/// [`check_split`]; those of the model's tracing.
pub fn trace_sentence_embedding_tp(
    cfg: &BertConfig,
    mesh: &Mesh,
    axis: &str,
    batch: usize,
    seq_len: usize,
) -> Result<Computation> {
    trace_sentence_embedding_sharded(cfg, mesh, None, Some(axis), batch, seq_len)
}

/// Traces the sentence-embedding program over `mesh` with the batch split
/// over axis `data` (data parallel) and/or heads and MLP units split over
/// axis `model` (tensor parallel, as [`trace_sentence_embedding_tp`]), in
/// one `shard_map`. With `data`, `ids`, `mask` and the result are
/// `P(data)`; without, replicated. Parameters are sharded as
/// [`param_spec`] says over `model`, replicated without it. Compile it
/// with `CompileOptions::new().spmd(mesh.size())`.
///
/// Errors: [`Error::UnknownName`] for an axis `mesh` lacks;
/// [`Error::IndivisibleDimension`] naming `batch` when the `data` axis
/// does not divide it; those of [`check_split`]; those of the model's
/// tracing.
///
/// ```no_run
/// use xlayer::models::{bert::BertConfig, bert_tp::trace_sentence_embedding_sharded};
/// use xlayer::sharding::Mesh;
/// let mesh = Mesh::new(&xlayer::Client::cpu_devices(4)?, &[2, 2], &["data", "model"])?;
/// let cfg = BertConfig::minilm_l6();
/// let program = trace_sentence_embedding_sharded(&cfg, &mesh, Some("data"), Some("model"), 32, 16)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn trace_sentence_embedding_sharded(
    cfg: &BertConfig,
    mesh: &Mesh,
    data: Option<&str>,
    model: Option<&str>,
    batch: usize,
    seq_len: usize,
) -> Result<Computation> {
    let tp = match model {
        Some(axis) => {
            let n = mesh.axis_size(axis)?;
            check_split(cfg, axis, n)?;
            Some((axis, n))
        }
        None => None,
    };
    let rows = match data {
        Some(axis) => {
            let n = mesh.axis_size(axis)?;
            if n == 0 || !batch.is_multiple_of(n) {
                return Err(Error::IndivisibleDimension {
                    tensor: "batch".into(),
                    dim: 0,
                    size: batch,
                    axes: vec![axis.into()],
                    shards: n,
                });
            }
            PartitionSpec::new(vec![DimSpec::axes(&[axis])])
        }
        None => PartitionSpec::replicated(),
    };
    let specs = param_tree(cfg)?;
    let b = Builder::new();
    let mut inputs = Vec::new();
    let mut in_specs = Vec::new();
    for (path, spec) in specs.entries() {
        inputs.push(b.parameter(spec.clone(), &path)?);
        in_specs.push(model.map_or_else(PartitionSpec::replicated, |a| param_spec(&path, a)));
    }
    let count = inputs.len();
    inputs.push(b.parameter(ArraySpec::new(DType::I32, vec![batch, seq_len]), "ids")?);
    inputs.push(b.parameter(ArraySpec::new(DType::F32, vec![batch, seq_len]), "mask")?);
    in_specs.extend([rows.clone(), rows.clone()]);
    let structure = specs.structure();
    let out = shard_map(mesh, &in_specs, &[rows], &inputs, |_, local: &[Value]| {
        let params: Tree<Value> = structure.unflatten(local[..count].to_vec())?;
        let (ids, mask) = (&local[count], &local[count + 1]);
        let y = sentence_embedding_with(cfg, &VarBuilder::new(&params), ids, mask, tp)?;
        Ok(vec![y])
    })?;
    let name = format!(
        "bert_embed_dp{}_tp{}_b{batch}_s{seq_len}",
        data.map_or(Ok(1), |a| mesh.axis_size(a))?,
        tp.map_or(1, |(_, n)| n)
    );
    Ok(b.build(&out)?.with_name(&name))
}
