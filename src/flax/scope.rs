//! Flax's `Scope`: variables by collection and path, rng streams folded
//! per child exactly as `flax/core/scope.py` folds them, automatic child
//! names, and the mutability rules of `init` and `apply`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::builder::{random, Builder, Path, Tree, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Which collections an `apply` may change (Flax's `mutable` argument).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mutable {
    /// `mutable=False`: nothing (the default of `apply`).
    #[default]
    Nothing,
    /// `mutable=True`: every collection.
    Everything,
    /// `mutable=["batch_stats", ...]`: these collections.
    Only(Vec<String>),
    /// `mutable=DenyList([...])`: every collection but these (Keras's
    /// FlaxLayer uses `DenyList(["params"])`; `init` uses
    /// `DenyList(["intermediates"])`).
    AllBut(Vec<String>),
}

impl Mutable {
    /// `DenyList(["params"])`: every collection but `params`.
    pub fn all_but_params() -> Mutable {
        Mutable::AllBut(vec!["params".into()])
    }

    /// Whether `collection` may be changed.
    pub fn allows(&self, collection: &str) -> bool {
        match self {
            Mutable::Nothing => false,
            Mutable::Everything => true,
            Mutable::Only(v) => v.iter().any(|c| c == collection),
            Mutable::AllBut(v) => !v.iter().any(|c| c == collection),
        }
    }
}

/// Variables as a flat store: collection → (scope path + name) → value.
pub(crate) type Flat<T> = BTreeMap<String, BTreeMap<Vec<String>, T>>;

/// Splits a variables tree (`{collection: {module: {name: array}}}`) into
/// the flat store.
pub(crate) fn flatten_vars<T: Clone>(vars: &Tree<T>) -> Result<Flat<T>> {
    let mut out: Flat<T> = BTreeMap::new();
    match vars {
        Tree::Empty => {}
        Tree::Map(m) => {
            for (col, t) in m {
                let entry = out.entry(col.clone()).or_default();
                for (p, v) in t.entries() {
                    let path: Vec<String> = if p.is_empty() {
                        vec![]
                    } else {
                        p.split('/').map(str::to_string).collect()
                    };
                    if path.is_empty() {
                        return Err(Error::Flax {
                            path: col.clone(),
                            message: format!(
                                "collection `{col}` must be a map of named variables, not one array"
                            ),
                        });
                    }
                    entry.insert(path, v.clone());
                }
            }
        }
        other => {
            return Err(Error::StructureMismatch {
                what: "flax variables (a map of collections: {\"params\": ...})".into(),
                expected: vec!["params/...".into()],
                found: other.paths(),
            })
        }
    }
    Ok(out)
}

/// Rebuilds the nested variables tree from the flat store.
///
/// Errors: [`Error::PathConflict`] when a variable's path is also the
/// scope of another (`params/a` and `params/a/b`).
pub(crate) fn unflatten_vars<T: Clone>(flat: &Flat<T>) -> Result<Tree<T>> {
    let mut top = Tree::Map(BTreeMap::new());
    for (col, vars) in flat {
        let collection = Path::from_segments([col.as_str()]);
        for (path, v) in vars {
            top.insert(collection.concat(&Path::from_segments(path)), v.clone())?;
        }
    }
    Ok(top)
}

/// One piece of static data folded into an rng: a scope name or a counter.
#[derive(Debug, Clone)]
enum Fold {
    Str(String),
    Int(u32),
}

/// Flax's `_fold_in_static` hash: the SHA-1 of the names (UTF-8) and the
/// counters (big-endian, minimal length), first four bytes big-endian
/// (`flax_fix_rng_separator=False`, the default: no separators).
fn fold_hash(data: &[Fold]) -> u32 {
    let mut bytes = Vec::new();
    for d in data {
        match d {
            Fold::Str(s) => bytes.extend_from_slice(s.as_bytes()),
            Fold::Int(i) => {
                let b = i.to_be_bytes();
                let skip = b.iter().take_while(|&&x| x == 0).count();
                bytes.extend_from_slice(&b[skip..]);
            }
        }
    }
    let d = super::sha1(&bytes);
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

struct Root {
    vars: Flat<Value>,
    mutable: Mutable,
    rngs: BTreeMap<String, Value>,
    initializing: bool,
    builder: Builder,
}

#[derive(Default)]
struct Node {
    autoname: HashMap<String, usize>,
    rng_counters: HashMap<String, u32>,
    children: HashMap<String, Rc<RefCell<Node>>>,
}

/// A module's view of the variables and rngs: what `self.scope` is in a
/// Flax module. Cloning gives the same scope.
#[derive(Clone)]
pub struct Scope {
    root: Rc<RefCell<Root>>,
    path: Vec<String>,
    node: Rc<RefCell<Node>>,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scope({})", self.path_text())
    }
}

impl Scope {
    /// A root scope over `variables` (a tree `{collection: {...}}`), rng
    /// streams (`u32[2]` keys by name) and a mutability rule.
    ///
    /// Errors: [`Error::StructureMismatch`] when `variables` is not a map of
    /// collections.
    pub fn root(
        b: &Builder,
        variables: &Tree<Value>,
        rngs: BTreeMap<String, Value>,
        mutable: Mutable,
        initializing: bool,
    ) -> Result<Scope> {
        Ok(Scope {
            root: Rc::new(RefCell::new(Root {
                vars: flatten_vars(variables)?,
                mutable,
                rngs,
                initializing,
                builder: b.clone(),
            })),
            path: vec![],
            node: Rc::new(RefCell::new(Node::default())),
        })
    }

    /// The builder values are traced into.
    pub fn builder(&self) -> Builder {
        self.root.borrow().builder.clone()
    }

    /// The scope's path (`["Dense_0"]`).
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// Flax's `path_text`: `/` followed by the names joined with `/`.
    pub fn path_text(&self) -> String {
        format!("/{}", self.path.join("/"))
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Flax {
            path: self.path_text(),
            message: message.into(),
        }
    }

    /// True inside `init` (Flax's `is_initializing()`).
    pub fn is_initializing(&self) -> bool {
        self.root.borrow().initializing
    }

    /// Whether `collection` may be changed in this call.
    pub fn is_mutable_collection(&self, collection: &str) -> bool {
        self.root.borrow().mutable.allows(collection)
    }

    /// A child scope: `name`, or Flax's automatic name `{type_name}_{n}`
    /// with `n` counting the children of that type created in this scope so
    /// far. Pushing an existing name again gives the same scope (a shared
    /// submodule: its params and rng counters are reused).
    ///
    /// Errors: a name that is empty or contains `/` or `.`.
    pub fn push(&self, type_name: &str, name: Option<&str>) -> Result<Scope> {
        let name = match name {
            Some(n) => {
                if n.is_empty() || n.contains('/') || n.contains('.') {
                    return Err(self.err(format!(
                        "invalid submodule name `{n}` (names are non-empty, without `/` or `.`)"
                    )));
                }
                n.to_string()
            }
            None => {
                let mut node = self.node.borrow_mut();
                let cursor = node.autoname.entry(type_name.to_string()).or_insert(0);
                let n = format!("{type_name}_{cursor}");
                *cursor += 1;
                n
            }
        };
        let child = self
            .node
            .borrow_mut()
            .children
            .entry(name.clone())
            .or_default()
            .clone();
        let mut path = self.path.clone();
        path.push(name);
        Ok(Scope {
            root: self.root.clone(),
            path,
            node: child,
        })
    }

    /// Runs `f` in the child scope [`Scope::push`] gives.
    pub fn child<T>(
        &self,
        type_name: &str,
        name: Option<&str>,
        f: impl FnOnce(&Scope) -> Result<T>,
    ) -> Result<T> {
        let s = self.push(type_name, name)?;
        f(&s)
    }

    /// Whether an rng stream `name` was given.
    pub fn has_rng(&self, name: &str) -> bool {
        self.root.borrow().rngs.contains_key(name)
    }

    /// A fresh key from stream `name`, as Flax's `make_rng`: the stream's
    /// root key folded (one `fold_in`) with the SHA-1 hash of this scope's
    /// path and the stream's per-scope counter (1, 2, ...). As in Flax, a
    /// missing stream falls back to `params` when that one exists.
    ///
    /// Errors: [`Error::Flax`] naming the scope and the stream when neither
    /// exists.
    pub fn make_rng(&self, name: &str) -> Result<Value> {
        let stream = if self.has_rng(name) {
            name.to_string()
        } else if self.has_rng("params") {
            "params".to_string()
        } else {
            return Err(self.err(format!(
                "needs PRNG for \"{name}\" (pass an rng stream named `{name}`)"
            )));
        };
        let counter = {
            let mut node = self.node.borrow_mut();
            let c = node.rng_counters.entry(stream.clone()).or_insert(0);
            *c += 1;
            *c
        };
        let key = self.root.borrow().rngs[&stream].clone();
        let mut data: Vec<Fold> = self.path.iter().cloned().map(Fold::Str).collect();
        data.push(Fold::Int(counter));
        random::fold_in(&key, fold_hash(&data))
    }

    fn full_path(&self, name: &str) -> Vec<String> {
        let mut p = self.path.clone();
        p.push(name.to_string());
        p
    }

    /// The value of variable `name` of `collection` in this scope, if any.
    pub fn get_variable(&self, collection: &str, name: &str) -> Option<Value> {
        self.root
            .borrow()
            .vars
            .get(collection)
            .and_then(|c| c.get(&self.full_path(name)))
            .cloned()
    }

    /// Whether variable `name` of `collection` exists in this scope.
    pub fn has_variable(&self, collection: &str, name: &str) -> bool {
        self.get_variable(collection, name).is_some()
    }

    /// Sets variable `name` of `collection`.
    ///
    /// Errors: [`Error::Flax`] naming the variable, the scope and the
    /// collection when the collection is not mutable in this call.
    pub fn put_variable(&self, collection: &str, name: &str, value: Value) -> Result<()> {
        if !self.is_mutable_collection(collection) {
            return Err(self.err(format!(
                "cannot update variable \"{name}\" because collection \"{collection}\" is immutable (pass it in `mutable`)"
            )));
        }
        let path = self.full_path(name);
        self.root
            .borrow_mut()
            .vars
            .entry(collection.to_string())
            .or_default()
            .insert(path, value);
        Ok(())
    }

    /// Flax's `self.param(name, init_fn, shape, dtype)` with a `jax.nn`
    /// initializer.
    pub fn param(
        &self,
        name: &str,
        init: &crate::builder::init::Initializer,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Value> {
        self.param_with(name, shape, |key| init.init(key, shape, dtype))
    }

    /// `self.param` with any init function `key -> array` whose result has
    /// `shape`. An existing parameter is returned after checking its shape
    /// against `shape` (Flax's `ScopeParamShapeError`); a missing one is
    /// created from a fresh `params` key when `params` is mutable.
    ///
    /// Errors ([`Error::Flax`], naming the path): a shape mismatch; a
    /// missing parameter outside `init`; a missing `params` rng.
    pub fn param_with(
        &self,
        name: &str,
        shape: &[usize],
        init: impl FnOnce(&Value) -> Result<Value>,
    ) -> Result<Value> {
        if let Some(v) = self.get_variable("params", name) {
            if v.dims() != shape {
                return Err(self.err(format!(
                    "initializer expected to generate shape {shape:?} but got shape {:?} instead for parameter \"{name}\"",
                    v.dims()
                )));
            }
            return Ok(v);
        }
        if !self.is_mutable_collection("params") {
            let empty = self
                .root
                .borrow()
                .vars
                .get("params")
                .is_none_or(|c| c.is_empty());
            return Err(self.err(if empty {
                format!("tried to access parameter \"{name}\" but the collection \"params\" is empty or was not given")
            } else {
                format!("parameter \"{name}\" not found (the variables do not hold it)")
            }));
        }
        let key = self.make_rng("params")?;
        let v = init(&key)?;
        if v.dims() != shape {
            return Err(self.err(format!(
                "the initializer of \"{name}\" made shape {:?}, expected {shape:?}",
                v.dims()
            )));
        }
        self.put_variable("params", name, v.clone())?;
        Ok(v)
    }

    /// Flax's `self.variable(collection, name, init_fn)`: the existing
    /// variable, or a new one from `init` when `collection` is mutable.
    ///
    /// Errors ([`Error::Flax`]): the variable is missing and the collection
    /// is not mutable (naming the collection and the path).
    pub fn variable(
        &self,
        collection: &str,
        name: &str,
        init: impl FnOnce(&Builder) -> Result<Value>,
    ) -> Result<Variable> {
        if !self.has_variable(collection, name) {
            if !self.is_mutable_collection(collection) {
                return Err(self.err(format!(
                    "variable \"{name}\" of collection \"{collection}\" is missing and \"{collection}\" is not mutable"
                )));
            }
            let v = init(&self.builder())?;
            self.put_variable(collection, name, v)?;
        }
        Ok(Variable {
            scope: self.clone(),
            collection: collection.to_string(),
            name: name.to_string(),
        })
    }

    pub(crate) fn take_vars(&self) -> Flat<Value> {
        std::mem::take(&mut self.root.borrow_mut().vars)
    }

    pub(crate) fn mutable(&self) -> Mutable {
        self.root.borrow().mutable.clone()
    }
}

impl crate::builder::ParamSource for Scope {
    /// [`Scope::param`].
    fn param(
        &self,
        name: &str,
        init: &crate::builder::init::Initializer,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Value> {
        Scope::param(self, name, init, shape, dtype)
    }

    /// [`Scope::path_text`].
    fn path_text(&self) -> String {
        Scope::path_text(self)
    }
}

/// A handle to one variable (Flax's `Variable`): read with
/// [`Variable::value`], write with [`Variable::set`].
#[derive(Debug, Clone)]
pub struct Variable {
    scope: Scope,
    collection: String,
    name: String,
}

impl Variable {
    /// The current value.
    pub fn value(&self) -> Result<Value> {
        self.scope
            .get_variable(&self.collection, &self.name)
            .ok_or_else(|| {
                self.scope.err(format!(
                    "variable \"{}\" of \"{}\" vanished",
                    self.name, self.collection
                ))
            })
    }

    /// Replaces the value (the collection must be mutable).
    pub fn set(&self, value: Value) -> Result<()> {
        self.scope.put_variable(&self.collection, &self.name, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_hash_matches_flax() {
        // int.from_bytes(hashlib.sha1(data).digest()[:4], "big") in Python.
        let s = |x: &str| Fold::Str(x.into());
        assert_eq!(fold_hash(&[s("Dense_0"), Fold::Int(1)]), 2998342421);
        assert_eq!(fold_hash(&[Fold::Int(1)]), 3213575472);
        assert_eq!(
            fold_hash(&[s("Conv_1"), s("Dense_0"), Fold::Int(2)]),
            69417966
        );
    }
}

#[cfg(test)]
mod unflatten_tests {
    use super::*;

    /// A variable whose path is also another's scope is an error, not a
    /// leaf silently replaced by a map.
    #[test]
    fn leaf_and_scope_at_one_path_is_an_error() {
        let mut flat: Flat<i32> = BTreeMap::new();
        let params = flat.entry("params".into()).or_default();
        params.insert(vec!["Dense_0".into()], 1);
        params.insert(vec!["Dense_0".into(), "kernel".into()], 2);
        match unflatten_vars(&flat) {
            Err(Error::PathConflict { path }) => {
                assert_eq!(path.to_string(), "params/Dense_0/kernel")
            }
            other => panic!("expected PathConflict, got {other:?}"),
        }
        flat.get_mut("params")
            .unwrap()
            .remove(&vec!["Dense_0".to_string()]);
        assert_eq!(
            unflatten_vars(&flat).unwrap().paths(),
            vec!["params/Dense_0/kernel"]
        );
    }
}
