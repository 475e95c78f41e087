//! `nn.Embed`: an embedding table looked up by integer indices, with
//! `attend` for `query @ embedding.T`.

use crate::builder::init::Initializer;
use crate::builder::{DotDims, ParamSource, Tree, Value};
use crate::dtype::DType;
use crate::error::Result;

use super::super::module::{promote_dtype, MethodSig, Module, CALL};
use super::super::scope::Scope;
use super::{default_embed_init, flax_err};

/// `nn.Embed`: an `embedding` table `(num_embeddings, features)`; the call
/// takes integer indices, `attend` computes `query @ embedding.T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Embed {
    /// Table rows.
    pub num_embeddings: usize,
    /// Embedding size.
    pub features: usize,
    /// Computation dtype.
    pub dtype: Option<DType>,
    /// Parameter dtype.
    pub param_dtype: DType,
    /// Table initializer (default `variance_scaling(1, fan_in, normal, out_axis=0)`).
    pub embedding_init: Initializer,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl Embed {
    /// `nn.Embed(num_embeddings, features)`.
    pub fn new(num_embeddings: usize, features: usize) -> Embed {
        Embed {
            num_embeddings,
            features,
            dtype: None,
            param_dtype: DType::F32,
            embedding_init: default_embed_init(),
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> Embed {
        self.name = Some(name.to_string());
        self
    }

    fn table(&self, s: &impl ParamSource) -> Result<Value> {
        s.param(
            "embedding",
            &self.embedding_init,
            &[self.num_embeddings, self.features],
            self.param_dtype,
        )
    }

    /// Calls the module as a child of `parent`.
    pub fn apply(&self, parent: &Scope, ids: &Value) -> Result<Value> {
        parent.child("Embed", self.name.as_deref(), |s| self.call_in(s, ids))
    }

    /// The lookup in the module's own scope (a Flax [`Scope`], or a
    /// [`crate::builder::VarBuilder`] at the module's path: weight `embedding`).
    pub fn call_in(&self, s: &impl ParamSource, ids: &Value) -> Result<Value> {
        if !ids.dtype().is_int() {
            return Err(flax_err(
                s.path_text(),
                format!(
                    "input type must be an integer or unsigned integer, got {}",
                    ids.spec()
                ),
            ));
        }
        let table = self.table(s)?;
        let e = promote_dtype(&[&table], self.dtype, false)?.remove(0);
        if self.num_embeddings == 1 {
            let mut d = ids.dims().to_vec();
            d.push(self.features);
            return e.broadcast_to(&d);
        }
        e.take(ids, 0)
    }

    /// `attend(query)`: `query @ embedding.T` in the module's own scope.
    pub fn attend_in(&self, s: &impl ParamSource, query: &Value) -> Result<Value> {
        if query.rank() == 0 {
            return Err(flax_err(s.path_text(), "attend needs a query of rank >= 1"));
        }
        let table = self.table(s)?;
        let p = promote_dtype(&[query, &table], self.dtype, true)?;
        p[0].dot_general(
            &p[1],
            &DotDims {
                lhs_contract: vec![query.rank() - 1],
                rhs_contract: vec![1],
                ..Default::default()
            },
        )
    }
}

impl Module for Embed {
    fn type_name(&self) -> String {
        "Embed".into()
    }
    fn methods(&self) -> Vec<MethodSig> {
        vec![MethodSig::new(CALL, false), MethodSig::new("attend", false)]
    }
    fn call_method(
        &self,
        scope: &Scope,
        method: &str,
        inputs: &Tree<Value>,
        _training: Option<bool>,
    ) -> Result<Tree<Value>> {
        let x = inputs.clone().into_leaf()?;
        match method {
            CALL => Ok(Tree::Leaf(self.call_in(scope, &x)?)),
            "attend" => Ok(Tree::Leaf(self.attend_in(scope, &x)?)),
            other => Err(flax_err(
                "Embed".into(),
                format!("module has no method `{other}` (methods: [\"__call__\", \"attend\"])"),
            )),
        }
    }
}
