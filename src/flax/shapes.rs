//! Shapes-only init, like `jax.eval_shape(module.init, ...)`: the specs of
//! the variables `init` would create, traced but never compiled or run.

use std::collections::BTreeMap;

use crate::builder::{trace, Tree, Value};
use crate::dtype::{ArraySpec, DType};
use crate::error::Result;
use crate::mode::Training;

use super::module::{init_traced, InitOptions, Module, Rngs};

/// The variables `{collection: {...}}` that [`super::init`] would create
/// for inputs of these specs, as specs: traced once, nothing compiled, run
/// or uploaded (so no client is needed).
///
/// Errors: those of the module's init (shapes and dtypes, named by the
/// module's path).
///
/// ```
/// use xlayer::builder::Tree;
/// use xlayer::flax::{init_specs, Dense, InitOptions, Rngs};
/// use xlayer::ArraySpec;
/// let specs = init_specs(&Dense::new(4), &Rngs::seed(0),
///                        &Tree::leaf(ArraySpec::of::<f32>([1, 3])), &InitOptions::new())?;
/// assert_eq!(specs.get("params/kernel")?, &ArraySpec::of::<f32>([3, 4]));
/// assert_eq!(specs.get("params/bias")?, &ArraySpec::of::<f32>([4]));
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn init_specs(
    module: &dyn Module,
    rngs: &Rngs,
    inputs: &Tree<ArraySpec>,
    options: &InitOptions,
) -> Result<Tree<ArraySpec>> {
    let training = options.training.map(Training::is_yes);
    let key_spec = ArraySpec::new(DType::U32, vec![2]);
    let in_tree = Tree::tuple([
        Tree::List(
            rngs.0
                .keys()
                .map(|_| Tree::Leaf(key_spec.clone()))
                .collect(),
        ),
        inputs.clone(),
    ]);
    let mut specs = Tree::Empty;
    trace(
        &format!("{}_init_specs", module.type_name()),
        &in_tree,
        |b, t| {
            let (keys, ins) = match t {
                Tree::Tuple(mut parts) if parts.len() == 2 => {
                    let ins = parts.pop().unwrap_or_default();
                    (parts.pop().unwrap_or_default().into_leaves(), ins)
                }
                other => (Vec::new(), other),
            };
            let rng_map: BTreeMap<String, Value> = rngs.0.keys().cloned().zip(keys).collect();
            let vars = init_traced(b, module, &options.method, rng_map, &ins, training)?.1;
            specs = vars.map_leaves(&mut |v| v.spec().clone());
            Ok(vars)
        },
    )?;
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flax::{init, BatchNorm, Conv, Dense, FnModule};
    use crate::pjrt::executable::compile_count;
    use crate::{Client, Error};

    /// The specs match those of the real init (params and state), and
    /// nothing is compiled to get them.
    #[test]
    fn matches_init_without_compiling() -> Result<()> {
        let client = Client::cpu()?;
        let m = FnModule::new("net").call(|s, x, _| {
            let x = x.clone().into_leaf()?;
            let x = Conv::new(4, &[3, 3]).apply(s, &x)?;
            let x = BatchNorm::new().apply(s, &x, Some(false))?;
            Ok(Tree::leaf(Dense::new(2).apply(s, &x)?))
        });
        let spec = ArraySpec::of::<f32>([2, 5, 5, 3]);
        // `init_specs` takes no client, so it cannot compile; check the
        // process-wide counter too. Other tests compile in parallel, so a
        // change is retried: only a count that moves on every try fails.
        let mut specs = None;
        for _ in 0..50 {
            let before = compile_count();
            let s = init_specs(
                &m,
                &Rngs::seed(0),
                &Tree::leaf(spec.clone()),
                &InitOptions::new(),
            )?;
            if compile_count() == before {
                specs = Some(s);
                break;
            }
        }
        let specs = specs.expect("the compile count moved during every init_specs");
        let x = client.buffer_from_host(&vec![0f32; 150], &[2, 5, 5, 3])?;
        let real = init(&m, &Rngs::seed(0), &Tree::leaf(&x), &InitOptions::new())?;
        assert_eq!(specs, real.map_leaves(&mut |b| b.spec().clone()));
        assert!(specs.get("batch_stats/BatchNorm_0/mean").is_ok());
        Ok(())
    }

    #[test]
    fn bad_input_is_the_modules_error() {
        let e = init_specs(
            &Conv::new(4, &[3, 3]),
            &Rngs::seed(0),
            &Tree::leaf(ArraySpec::of::<f32>([3])),
            &InitOptions::new(),
        )
        .unwrap_err();
        assert!(!matches!(e, Error::Io { .. }), "{e:?}");
        assert!(
            e.to_string().contains("f32[3]") || e.to_string().to_lowercase().contains("conv"),
            "{e}"
        );
    }
}
