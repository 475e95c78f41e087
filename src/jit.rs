//! The crate's one cache of traced-and-compiled programs: model forwards,
//! standalone layer calls, train and eval steps, and the MiniLM buckets all
//! go through [`JitCache`].
//!
//! An entry is found by a [`JitKey`]: everything that decides the traced
//! program, compared in full (no hash stands for the key): which function
//! of the owner is traced, the client, the layout of every layer's weights,
//! the input specs, the training mode and which layers take a random key.
//! A miss traces, then compiles through the persistent
//! [`CompileCache`](crate::cache::CompileCache), so a program compiled by an
//! earlier process is loaded from disk instead.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::builder::{Computation, Tree};
use crate::cache::CompileCache;
use crate::dtype::ArraySpec;
use crate::error::Result;
use crate::mode::Training;
use crate::pjrt::client::Client;
use crate::pjrt::compile_options::CompileOptions;
use crate::pjrt::executable::Executable;
use crate::sharding::NamedSharding;

/// The structure, dtypes and shapes of a tree of arrays, hashed once when
/// made (cheap to clone, hash and compare in a key).
#[derive(Debug, Clone)]
pub struct Layout {
    specs: Arc<Tree<ArraySpec>>,
    hash: u64,
}

impl Layout {
    /// The layout of `specs`.
    pub fn new(specs: Tree<ArraySpec>) -> Layout {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        specs.hash(&mut h);
        Layout {
            specs: Arc::new(specs),
            hash: h.finish(),
        }
    }
}

impl Layout {
    /// The specs the layout was made from.
    pub(crate) fn specs(&self) -> &Tree<ArraySpec> {
        &self.specs
    }
}

impl PartialEq for Layout {
    fn eq(&self, other: &Layout) -> bool {
        self.hash == other.hash
            && (Arc::ptr_eq(&self.specs, &other.specs) || self.specs == other.specs)
    }
}

impl Eq for Layout {}

impl Hash for Layout {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Everything that decides a traced program, compared in full.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JitKey {
    /// Which function of the cache's owner is traced (`forward`,
    /// `train_step`, `eval_step`, `sentence_embedding`, ...).
    pub function: &'static str,
    /// The client the program is compiled for.
    pub client: u64,
    /// Per layer: the layout of its weights (params and state).
    pub weights: Vec<Layout>,
    /// The inputs' structure, dtypes and shapes.
    pub inputs: Layout,
    /// Training or inference.
    pub training: Training,
    /// Per layer: whether it receives a random key.
    pub rngs: Vec<bool>,
    /// For a program partitioned over a mesh (a data-parallel train step):
    /// the sharding of its batch inputs; everything else is replicated over
    /// that sharding's mesh. `None` for a single-device program.
    pub batch_sharding: Option<NamedSharding>,
}

impl JitKey {
    /// A key of `function` on `client` for `inputs`, in `training` mode,
    /// with no layer weights (add them with the fields).
    pub fn new(
        function: &'static str,
        client: &Client,
        inputs: Tree<ArraySpec>,
        training: Training,
    ) -> JitKey {
        JitKey {
            function,
            client: client.id(),
            weights: Vec::new(),
            inputs: Layout::new(inputs),
            training,
            rngs: Vec::new(),
            batch_sharding: None,
        }
    }
}

/// A compiled program and the structures its flat outputs are cut into
/// (their meaning is the owner's: e.g. outputs, then each layer's state).
pub struct Jitted {
    /// The executable.
    pub exe: Arc<Executable>,
    /// Output structures, in output order.
    pub outputs: Vec<Tree<()>>,
}

/// Traced-and-compiled programs by [`JitKey`], backed by a persistent
/// [`CompileCache`].
pub struct JitCache {
    entries: Mutex<HashMap<JitKey, Arc<Jitted>>>,
    disk: CompileCache,
    traced: AtomicUsize,
}

impl Default for JitCache {
    fn default() -> Self {
        JitCache::from_env()
    }
}

impl JitCache {
    /// A cache over `disk`.
    pub fn new(disk: CompileCache) -> JitCache {
        JitCache {
            entries: Mutex::new(HashMap::new()),
            disk,
            traced: AtomicUsize::new(0),
        }
    }

    /// A cache over the environment's compilation cache
    /// ([`CompileCache::from_env`]; disabled when no cache home exists).
    pub fn from_env() -> JitCache {
        JitCache::new(CompileCache::from_env().unwrap_or_else(|_| CompileCache::disabled()))
    }

    /// The persistent cache behind this one.
    pub fn disk(&self) -> &CompileCache {
        &self.disk
    }

    /// How many programs were traced (and compiled or loaded) so far.
    pub fn traced(&self) -> usize {
        self.traced.load(Ordering::Relaxed)
    }

    /// The program of `key`, traced by `trace` (the computation and its
    /// output structures) and compiled on `client` on a miss.
    ///
    /// Errors: those of `trace` and of the compile; nothing is cached then.
    pub fn get_or_compile(
        &self,
        client: &Client,
        key: JitKey,
        trace: impl FnOnce() -> Result<(Computation, Vec<Tree<()>>)>,
    ) -> Result<Arc<Jitted>> {
        // A hit (every call after the first) must not pay for building the
        // compile options: they allocate.
        if let Some(hit) = self.lock().get(&key) {
            return Ok(hit.clone());
        }
        self.get_or_compile_with(client, key, &CompileOptions::new(), trace)
    }

    /// [`JitCache::get_or_compile`] with compile `options` (e.g.
    /// [`CompileOptions::spmd`] and a device assignment for a program
    /// partitioned over a mesh; `key` must then tell the partitioning
    /// apart, as [`JitKey::batch_sharding`] does).
    ///
    /// Errors: those of `trace` and of the compile; nothing is cached then.
    pub fn get_or_compile_with(
        &self,
        client: &Client,
        key: JitKey,
        options: &CompileOptions,
        trace: impl FnOnce() -> Result<(Computation, Vec<Tree<()>>)>,
    ) -> Result<Arc<Jitted>> {
        if let Some(hit) = self.lock().get(&key) {
            return Ok(hit.clone());
        }
        let (computation, outputs) = trace()?;
        let exe = self
            .disk
            .compile(client, &computation.program()?, options)?;
        self.traced.fetch_add(1, Ordering::Relaxed);
        let jitted = Arc::new(Jitted {
            exe: Arc::new(exe),
            outputs,
        });
        Ok(self.lock().entry(key).or_insert(jitted).clone())
    }

    /// The executables compiled (or loaded) so far, in no particular
    /// order: to inspect them (optimized HLO, devices, memory).
    pub fn executables(&self) -> Vec<Arc<Executable>> {
        self.lock().values().map(|j| j.exe.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JitKey, Arc<Jitted>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn keys_compare_in_full() {
        let spec = |d: usize| Tree::Leaf(ArraySpec::new(DType::F32, vec![d]));
        let (a, b) = (Layout::new(spec(2)), Layout::new(spec(2)));
        assert_eq!(a, b, "equal specs, separately made");
        assert_ne!(a, Layout::new(spec(3)));
        let map = |k: &str| Tree::map([(k, spec(2))]);
        assert_ne!(Layout::new(map("a")), Layout::new(map("b")), "structure");
        let key = |training| JitKey {
            function: "forward",
            client: 1,
            weights: vec![a.clone()],
            inputs: b.clone(),
            training,
            rngs: vec![false],
            batch_sharding: None,
        };
        assert_eq!(key(Training::No), key(Training::No));
        assert_ne!(
            key(Training::No),
            key(Training::Yes),
            "training is in the key"
        );
        let mut with_rng = key(Training::Yes);
        with_rng.rngs = vec![true];
        assert_ne!(with_rng, key(Training::Yes));
        let mut other_fn = key(Training::No);
        other_fn.function = "eval_step";
        assert_ne!(other_fn, key(Training::No));
    }
}
