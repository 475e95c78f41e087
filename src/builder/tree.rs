//! Trees of values (JAX's pytrees): leaves inside tuples, lists and
//! string-keyed maps, with a stable flatten order (depth first, map keys
//! sorted) and `/`-joined paths such as `Dense_0/kernel`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// A tree whose leaves are `T` (arrays, specs, symbolic values, buffers).
///
/// ```
/// use xlayer::builder::Tree;
/// let t = Tree::map([("b", Tree::leaf(2)), ("a", Tree::tuple([Tree::leaf(0), Tree::leaf(1)]))]);
/// assert_eq!(t.leaves(), vec![&0, &1, &2]);
/// assert_eq!(t.paths(), vec!["a/0", "a/1", "b"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tree<T> {
    /// One leaf.
    Leaf(T),
    /// A fixed-length tuple.
    Tuple(Vec<Tree<T>>),
    /// A list.
    List(Vec<Tree<T>>),
    /// A map with string keys, flattened in key order.
    Map(BTreeMap<String, Tree<T>>),
    /// No value (JAX's `None`): a node without leaves.
    Empty,
}

impl<T> Tree<T> {
    /// A leaf.
    pub fn leaf(x: T) -> Self {
        Tree::Leaf(x)
    }

    /// A tuple of trees.
    pub fn tuple(items: impl IntoIterator<Item = Tree<T>>) -> Self {
        Tree::Tuple(items.into_iter().collect())
    }

    /// A list of trees.
    pub fn list(items: impl IntoIterator<Item = Tree<T>>) -> Self {
        Tree::List(items.into_iter().collect())
    }

    /// A map of trees.
    pub fn map<K: Into<String>>(items: impl IntoIterator<Item = (K, Tree<T>)>) -> Self {
        Tree::Map(items.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The leaves in flatten order.
    pub fn leaves(&self) -> Vec<&T> {
        let mut out = Vec::new();
        self.visit(&mut String::new(), &mut |_, x| out.push(x));
        out
    }

    /// Paths of the leaves, in flatten order (tuple/list positions are numbers).
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.visit(&mut String::new(), &mut |p, _| out.push(p.to_string()));
        out
    }

    /// `(path, leaf)` pairs in flatten order.
    pub fn entries(&self) -> Vec<(String, &T)> {
        let mut out = Vec::new();
        self.visit(&mut String::new(), &mut |p, x| out.push((p.to_string(), x)));
        out
    }

    fn visit<'a>(&'a self, path: &mut String, f: &mut dyn FnMut(&str, &'a T)) {
        let child =
            |path: &mut String, key: &str, t: &'a Tree<T>, f: &mut dyn FnMut(&str, &'a T)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(key);
                t.visit(path, f);
                path.truncate(len);
            };
        match self {
            Tree::Leaf(x) => f(path, x),
            Tree::Tuple(v) | Tree::List(v) => {
                for (i, t) in v.iter().enumerate() {
                    child(path, &i.to_string(), t, f);
                }
            }
            Tree::Map(m) => {
                for (k, t) in m {
                    child(path, k, t, f);
                }
            }
            Tree::Empty => {}
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.leaves().len()
    }

    /// True when the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same structure with `f` applied to every leaf.
    pub fn map_leaves<U>(&self, f: &mut impl FnMut(&T) -> U) -> Tree<U> {
        match self {
            Tree::Leaf(x) => Tree::Leaf(f(x)),
            Tree::Tuple(v) => Tree::Tuple(v.iter().map(|t| t.map_leaves(f)).collect()),
            Tree::List(v) => Tree::List(v.iter().map(|t| t.map_leaves(f)).collect()),
            Tree::Map(m) => Tree::Map(
                m.iter()
                    .map(|(k, t)| (k.clone(), t.map_leaves(f)))
                    .collect(),
            ),
            Tree::Empty => Tree::Empty,
        }
    }

    /// Like [`Tree::map_leaves`] with a fallible function.
    pub fn try_map<U>(&self, f: &mut impl FnMut(&T) -> Result<U>) -> Result<Tree<U>> {
        Ok(match self {
            Tree::Leaf(x) => Tree::Leaf(f(x)?),
            Tree::Tuple(v) => Tree::Tuple(v.iter().map(|t| t.try_map(f)).collect::<Result<_>>()?),
            Tree::List(v) => Tree::List(v.iter().map(|t| t.try_map(f)).collect::<Result<_>>()?),
            Tree::Map(m) => Tree::Map(
                m.iter()
                    .map(|(k, t)| Ok((k.clone(), t.try_map(f)?)))
                    .collect::<Result<_>>()?,
            ),
            Tree::Empty => Tree::Empty,
        })
    }

    /// Hashes the structure (kinds, lengths, keys) without allocating.
    pub fn hash_structure<H: std::hash::Hasher>(&self, h: &mut H) {
        use std::hash::Hash;
        match self {
            Tree::Leaf(_) => 0u8.hash(h),
            Tree::Tuple(v) | Tree::List(v) => {
                (if matches!(self, Tree::Tuple(_)) {
                    1u8
                } else {
                    2u8
                })
                .hash(h);
                v.len().hash(h);
                v.iter().for_each(|t| t.hash_structure(h));
            }
            Tree::Map(m) => {
                3u8.hash(h);
                m.len().hash(h);
                for (k, t) in m {
                    k.hash(h);
                    t.hash_structure(h);
                }
            }
            Tree::Empty => 4u8.hash(h),
        }
    }

    /// The structure alone (leaves replaced by `()`).
    pub fn structure(&self) -> Tree<()> {
        self.map_leaves(&mut |_| ())
    }

    /// Consumes the tree into its leaves, in flatten order.
    pub fn into_leaves(self) -> Vec<T> {
        let mut out = Vec::new();
        self.collect_into(&mut out);
        out
    }

    fn collect_into(self, out: &mut Vec<T>) {
        match self {
            Tree::Leaf(x) => out.push(x),
            Tree::Tuple(v) | Tree::List(v) => v.into_iter().for_each(|t| t.collect_into(out)),
            Tree::Map(m) => m.into_values().for_each(|t| t.collect_into(out)),
            Tree::Empty => {}
        }
    }

    /// The leaf at `path` (`a/0/b`), if any.
    pub fn get(&self, path: &str) -> Option<&T> {
        self.entries()
            .into_iter()
            .find(|(p, _)| p == path)
            .map(|(_, x)| x)
    }
}

impl Tree<()> {
    /// Rebuilds a tree of this structure from leaves in flatten order.
    ///
    /// Errors: [`Error::Invalid`] when the number of leaves differs.
    pub fn unflatten<T>(&self, leaves: Vec<T>) -> Result<Tree<T>> {
        let want = self.len();
        if leaves.len() != want {
            return Err(Error::Invalid(format!(
                "tree has {want} leaves, got {} values",
                leaves.len()
            )));
        }
        let mut it = leaves.into_iter();
        Ok(self.map_leaves(&mut |_| it.next().expect("counted")))
    }
}

impl<T> Default for Tree<T> {
    /// The empty tree.
    fn default() -> Self {
        Tree::Empty
    }
}

impl<T> From<T> for Tree<T> {
    fn from(x: T) -> Self {
        Tree::Leaf(x)
    }
}
