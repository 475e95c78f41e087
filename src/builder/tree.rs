//! Trees of values (JAX's pytrees): leaves inside tuples, lists and
//! string-keyed maps, with a stable flatten order (depth first, map keys
//! sorted) and `/`-joined paths such as `Dense_0/kernel`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::Path;

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

    /// The node at `path` (map keys and tuple/list positions).
    ///
    /// Errors: [`Error::UnknownPath`] naming `path` when no node is there.
    pub fn subtree(&self, path: impl Into<Path>) -> Result<&Tree<T>> {
        let path = path.into();
        let mut node = self;
        for seg in path.segments() {
            let next = match node {
                Tree::Map(m) => m.get(seg),
                Tree::Tuple(v) | Tree::List(v) => seg.parse::<usize>().ok().and_then(|i| v.get(i)),
                Tree::Leaf(_) | Tree::Empty => None,
            };
            node = next.ok_or_else(|| Error::UnknownPath { path: path.clone() })?;
        }
        Ok(node)
    }

    /// The leaf at `path` (`a/0/b`, or `a.0.b`).
    ///
    /// ```
    /// use xlayer::builder::Tree;
    /// let t = Tree::map([("a", Tree::tuple([Tree::leaf(1), Tree::leaf(2)]))]);
    /// assert_eq!(*t.get("a/1")?, 2);
    /// assert_eq!(t.get("a/2").unwrap_err().to_string(), "no value at path `a/2`");
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    ///
    /// Errors: [`Error::UnknownPath`] naming `path` when no leaf is there
    /// (nothing, or a node that is not a leaf).
    pub fn get(&self, path: impl Into<Path>) -> Result<&T> {
        let path = path.into();
        match self.subtree(&path)? {
            Tree::Leaf(x) => Ok(x),
            _ => Err(Error::UnknownPath { path }),
        }
    }

    /// A tree of references to the leaves, of the same structure.
    pub fn as_refs(&self) -> Tree<&T> {
        match self {
            Tree::Leaf(x) => Tree::Leaf(x),
            Tree::Tuple(v) => Tree::Tuple(v.iter().map(Tree::as_refs).collect()),
            Tree::List(v) => Tree::List(v.iter().map(Tree::as_refs).collect()),
            Tree::Map(m) => Tree::Map(m.iter().map(|(k, t)| (k.clone(), t.as_refs())).collect()),
            Tree::Empty => Tree::Empty,
        }
    }

    /// Inserts `leaf` at `path`, creating maps along the way (an
    /// [`Tree::Empty`] node becomes a map).
    ///
    /// Errors: [`Error::PathConflict`] naming the path when it is the root,
    /// is already taken, or passes through a leaf, tuple or list.
    pub fn insert(&mut self, path: impl Into<Path>, leaf: T) -> Result<()> {
        let path = path.into();
        let conflict = || Error::PathConflict { path: path.clone() };
        let Some((last, parents)) = path.segments().split_last() else {
            return Err(conflict());
        };
        let mut node = self;
        for seg in parents {
            if matches!(node, Tree::Empty) {
                *node = Tree::Map(BTreeMap::new());
            }
            let Tree::Map(m) = node else {
                return Err(conflict());
            };
            node = m
                .entry(seg.clone())
                .or_insert_with(|| Tree::Map(BTreeMap::new()));
        }
        if matches!(node, Tree::Empty) {
            *node = Tree::Map(BTreeMap::new());
        }
        let Tree::Map(m) = node else {
            return Err(conflict());
        };
        if m.contains_key(last) {
            return Err(conflict());
        }
        m.insert(last.clone(), Tree::Leaf(leaf));
        Ok(())
    }

    /// A tree of nested maps from `(path, leaf)` pairs.
    ///
    /// ```
    /// use xlayer::builder::Tree;
    /// let t = Tree::from_paths([("params/Dense_0/kernel", 1), ("params.Dense_0.bias", 2)])?;
    /// assert_eq!(t.paths(), vec!["params/Dense_0/bias", "params/Dense_0/kernel"]);
    /// assert!(Tree::from_paths([("a", 1), ("a/b", 2)]).is_err());
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    ///
    /// Errors: [`Error::PathConflict`] for a path given twice, the empty
    /// path, or a path that is both a leaf and a map (`a` and `a/b`).
    pub fn from_paths<P: Into<Path>>(items: impl IntoIterator<Item = (P, T)>) -> Result<Tree<T>> {
        let mut tree = Tree::Map(BTreeMap::new());
        for (path, leaf) in items {
            tree.insert(path, leaf)?;
        }
        Ok(tree)
    }
}

impl Tree<()> {
    /// Rebuilds a tree of this structure from leaves in flatten order.
    ///
    /// Errors: [`Error::LeafCount`] when the number of leaves differs.
    pub fn unflatten<T>(&self, leaves: Vec<T>) -> Result<Tree<T>> {
        let want = self.len();
        if leaves.len() != want {
            return Err(Error::LeafCount {
                expected: want,
                found: leaves.len(),
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_names_the_missing_path() {
        let t = Tree::map([("a", Tree::list([Tree::leaf(1), Tree::leaf(2)]))]);
        assert_eq!(*t.get("a/1").unwrap(), 2);
        assert_eq!(*t.get("a.0").unwrap(), 1);
        for bad in ["a/2", "b", "a/x", "a/0/c", "a"] {
            match t.get(bad) {
                Err(Error::UnknownPath { path }) => assert_eq!(path, Path::parse(bad)),
                other => panic!("{bad}: expected UnknownPath, got {other:?}"),
            }
        }
        assert_eq!(t.subtree("a").unwrap().len(), 2);
    }

    #[test]
    fn from_paths_refuses_a_leaf_that_is_also_a_map() {
        let conflict = |r: Result<Tree<i32>>| match r {
            Err(Error::PathConflict { path }) => path.to_string(),
            other => panic!("expected PathConflict, got {other:?}"),
        };
        assert_eq!(conflict(Tree::from_paths([("a", 1), ("a/b", 2)])), "a/b");
        assert_eq!(conflict(Tree::from_paths([("a/b", 1), ("a", 2)])), "a");
        assert_eq!(conflict(Tree::from_paths([("a/b", 1), ("a.b", 2)])), "a/b");
        assert_eq!(conflict(Tree::from_paths([("", 1)])), "");
        let t = Tree::from_paths([("x/y/z", 1), ("x/w", 2), ("v", 3)]).unwrap();
        assert_eq!(t.paths(), vec!["v", "x/w", "x/y/z"]);
        assert_eq!(t.leaves(), vec![&3, &2, &1]);
    }

    #[test]
    fn as_refs_keeps_structure() {
        let t = Tree::map([
            ("b", Tree::leaf(2)),
            ("a", Tree::tuple([Tree::leaf(0), Tree::Empty])),
        ]);
        let r = t.as_refs();
        assert_eq!(r.structure(), t.structure());
        assert_eq!(r.into_leaves(), vec![&0, &2]);
    }
}
