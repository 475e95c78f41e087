//! Weights bound by name where they are used: [`VarBuilder`], a path
//! builder over a tree of traced values in the spirit of candle's
//! `VarBuilder::pp` (`vb.pp("encoder.layer").pp(3).get("kernel")`), and
//! [`ParamSource`], what a module body asks its weights from (a
//! `VarBuilder` or a Flax [`crate::flax::Scope`]).

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};

use super::init::Initializer;
use super::{Builder, Path, Tree, Value};

/// Where a module body gets its parameters: `param(name, init, shape,
/// dtype)` as in Flax's `self.param`, relative to the module's own path.
///
/// A Flax [`crate::flax::Scope`] creates missing parameters with `init`
/// inside `init`; a [`VarBuilder`] binds existing weights (or declares
/// them) and ignores `init`.
pub trait ParamSource {
    /// The parameter `name` of this module, of `shape` and `dtype`.
    ///
    /// Errors: the source's own (a missing weight names its full path, a
    /// weight of another spec names both specs).
    fn param(&self, name: &str, init: &Initializer, shape: &[usize], dtype: DType)
        -> Result<Value>;

    /// The module's path, for error messages (`/Dense_0`, `encoder/layer/0`).
    fn path_text(&self) -> String;
}

/// Parameters declared by a [`VarBuilder::declare`] trace, in request order.
struct Declared {
    builder: Builder,
    params: Vec<(Path, Value)>,
}

#[derive(Clone)]
enum Source<'a> {
    Tree(&'a Tree<Value>),
    Declare(Rc<RefCell<Declared>>),
}

/// Binds weights by path: [`VarBuilder::pp`] descends one or more path
/// segments, [`VarBuilder::get`] and [`VarBuilder::get_checked`] return the
/// traced value at `prefix/name`.
///
/// ```
/// use xlayer::builder::{trace, Tree, VarBuilder};
/// use xlayer::{ArraySpec, DType};
/// let specs = Tree::from_paths([
///     ("encoder/layer/0/w", ArraySpec::of::<f32>([2])),
///     ("encoder/layer/1/w", ArraySpec::of::<f32>([2])),
/// ])?;
/// let c = trace("two_layers", &specs, |_b, params| {
///     let vb = VarBuilder::new(&params);
///     let layers = vb.pp("encoder.layer");
///     let w0 = layers.pp(0).get("w")?;
///     let w1 = layers.pp(1).get_checked("w", &[2], DType::F32)?;
///     let missing = layers.pp(2).get("w").unwrap_err();
///     assert_eq!(missing.to_string(), "no value at path `encoder/layer/2/w`");
///     Ok(Tree::leaf((w0 + w1)?))
/// })?;
/// # Ok::<(), xlayer::Error>(())
/// ```
///
/// [`VarBuilder::declare`] runs the same model code without weights: each
/// `get_checked` then creates a parameter of the builder and records its
/// path and spec, so the model's parameter tree ([`VarBuilder::declared`])
/// is written once, by the code that uses it.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    source: Source<'a>,
    prefix: Path,
}

impl fmt::Debug for VarBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.source {
            Source::Tree(_) => "tree",
            Source::Declare(_) => "declare",
        };
        write!(f, "VarBuilder({mode}, `{}`)", self.prefix)
    }
}

impl<'a> VarBuilder<'a> {
    /// Binds weights from `tree` (traced values, e.g. the parameters of a
    /// trace), starting at its root.
    pub fn new(tree: &'a Tree<Value>) -> VarBuilder<'a> {
        VarBuilder {
            source: Source::Tree(tree),
            prefix: Path::root(),
        }
    }

    /// A builder that declares weights instead of binding them: every
    /// [`VarBuilder::get_checked`] of a new path creates a parameter of
    /// `builder` named by the path (the same path asked again gives the same
    /// value).
    pub fn declare(builder: &Builder) -> VarBuilder<'static> {
        VarBuilder {
            source: Source::Declare(Rc::new(RefCell::new(Declared {
                builder: builder.clone(),
                params: Vec::new(),
            }))),
            prefix: Path::root(),
        }
    }

    /// The builder one level (or more, for `a.b` or `a/b`) further down:
    /// `vb.pp("encoder.layer").pp(0)` is at `encoder/layer/0`.
    pub fn pp(&self, name: impl fmt::Display) -> VarBuilder<'a> {
        VarBuilder {
            source: self.source.clone(),
            prefix: self.prefix.join(name),
        }
    }

    /// The path this builder is at.
    pub fn path(&self) -> &Path {
        &self.prefix
    }

    /// Whether a weight exists at `prefix/name`.
    pub fn contains(&self, name: impl fmt::Display) -> bool {
        self.get(name).is_ok()
    }

    /// The weight at `prefix/name`.
    ///
    /// Errors: [`Error::UnknownPath`] naming the full path when there is no
    /// weight there (in declare mode: when nothing was declared there yet).
    pub fn get(&self, name: impl fmt::Display) -> Result<Value> {
        let path = self.prefix.join(name);
        match &self.source {
            Source::Tree(t) => t.get(&path).cloned(),
            Source::Declare(d) => d
                .borrow()
                .params
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, v)| v.clone())
                .ok_or(Error::UnknownPath { path }),
        }
    }

    /// The weight at `prefix/name`, checked to be of `shape` and `dtype`
    /// (in declare mode, declared with that spec).
    ///
    /// Errors: [`Error::UnknownPath`] naming the full path when it is
    /// missing; [`Error::SpecMismatch`] naming it with both specs when the
    /// weight has another shape or dtype.
    pub fn get_checked(
        &self,
        name: impl fmt::Display,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Value> {
        let path = self.prefix.join(name);
        let expected = ArraySpec::new(dtype, shape.to_vec());
        let v = match &self.source {
            Source::Tree(t) => t.get(&path)?.clone(),
            Source::Declare(d) => {
                let mut d = d.borrow_mut();
                match d.params.iter().find(|(p, _)| *p == path) {
                    Some((_, v)) => v.clone(),
                    None => {
                        let v = d.builder.parameter(expected.clone(), &path.to_string())?;
                        d.params.push((path.clone(), v.clone()));
                        v
                    }
                }
            }
        };
        if *v.spec() != expected {
            return Err(Error::SpecMismatch {
                path,
                expected,
                found: v.spec().clone(),
            });
        }
        Ok(v)
    }

    /// In declare mode, the specs of every weight declared so far, as a tree
    /// of their paths; with a tree of weights, the specs of that tree.
    ///
    /// Errors: [`Error::PathConflict`] when a declared path is also the
    /// prefix of another.
    pub fn declared(&self) -> Result<Tree<ArraySpec>> {
        match &self.source {
            Source::Tree(t) => Ok(t.map_leaves(&mut |v| v.spec().clone())),
            Source::Declare(d) => Tree::from_paths(
                d.borrow()
                    .params
                    .iter()
                    .map(|(p, v)| (p.clone(), v.spec().clone())),
            ),
        }
    }
}

impl ParamSource for VarBuilder<'_> {
    /// [`VarBuilder::get_checked`]; `init` is not used.
    fn param(
        &self,
        name: &str,
        _init: &Initializer,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Value> {
        self.get_checked(name, shape, dtype)
    }

    fn path_text(&self) -> String {
        self.prefix.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declare_then_bind() {
        let b = Builder::new();
        let vb = VarBuilder::declare(&b);
        let l = vb.pp("layer").pp(0);
        let w = l.get_checked("w", &[2, 3], DType::F32).unwrap();
        // The same path again is the same parameter; another spec is an error.
        assert_eq!(
            l.get_checked("w", &[2, 3], DType::F32).unwrap().id(),
            w.id()
        );
        match l.get_checked("w", &[3, 2], DType::F32) {
            Err(Error::SpecMismatch {
                path,
                expected,
                found,
            }) => {
                assert_eq!(path.to_string(), "layer/0/w");
                assert_eq!(expected.dims, vec![3, 2]);
                assert_eq!(found.dims, vec![2, 3]);
            }
            other => panic!("expected SpecMismatch, got {other:?}"),
        }
        vb.pp("layer.1").get_checked("w", &[4], DType::I32).unwrap();
        let specs = vb.declared().unwrap();
        assert_eq!(specs.paths(), vec!["layer/0/w", "layer/1/w"]);
        assert_eq!(specs.get("layer/1/w").unwrap().dtype, DType::I32);
        // A tree of values binds the same paths.
        let b2 = Builder::new();
        let leaves: Vec<Value> = specs
            .entries()
            .into_iter()
            .map(|(p, s)| b2.parameter(s.clone(), &p).unwrap())
            .collect();
        let tree = specs.structure().unflatten(leaves).unwrap();
        let vb2 = VarBuilder::new(&tree);
        assert_eq!(vb2.pp("layer").pp(1).get("w").unwrap().dims(), &[4]);
        match vb2.pp("layer").get("2/w") {
            Err(Error::UnknownPath { path }) => assert_eq!(path.to_string(), "layer/2/w"),
            other => panic!("expected UnknownPath, got {other:?}"),
        }
        assert!(!vb2.contains("layer/0"));
        assert!(vb2.pp("layer.0").contains("w"));
    }
}
