//! Control flow with closures for bodies: `while_loop`, `cond`, `switch`,
//! `fori_loop`. Bodies may use values from the enclosing computation.

use crate::dtype::{ArraySpec, DType};
use crate::error::Result;

use super::core::{op_err, Builder, Value};
use super::op::Op;

fn specs(vs: &[Value]) -> Vec<ArraySpec> {
    vs.iter().map(|v| v.spec().clone()).collect()
}

impl Builder {
    /// `lax.while_loop`: carries `init` while `cond(carry)` (a bool scalar)
    /// holds, replacing it by `body(carry)`, which must keep the types.
    ///
    /// ```
    /// use xlayer::{builder::jit, ArraySpec, Client};
    /// let client = Client::cpu()?;
    /// // Doubles x until its first element exceeds 100.
    /// let exe = jit(&client, &[ArraySpec::of::<f32>([2])], |b, x| {
    ///     b.while_loop(
    ///         &[x[0].clone()],
    ///         |c| c[0].slice(&[0], &[1], &[1])?.reshape(&[])?.le(&c[0].scalar_like(100.0)?),
    ///         |c| Ok(vec![(&c[0] * 2.0)?]),
    ///     )
    /// })?;
    /// let x = client.buffer_from_host(&[3f32, 1.0], &[2])?;
    /// assert_eq!(exe.execute(&[&x])?[0].to_vec::<f32>()?, vec![192.0, 64.0]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn while_loop(
        &self,
        init: &[Value],
        cond: impl FnOnce(&[Value]) -> Result<Value>,
        body: impl FnOnce(&[Value]) -> Result<Vec<Value>>,
    ) -> Result<Vec<Value>> {
        let types = specs(init);
        let (cond_r, cond_out) = self.region("while", &types, |c| Ok(vec![cond(c)?]))?;
        if cond_out != vec![ArraySpec::new(DType::Bool, [])] {
            return Err(op_err(
                "while",
                format!(
                    "the condition must return a bool scalar, returned {}",
                    list(&cond_out)
                ),
            ));
        }
        let (body_r, body_out) = self.region("while", &types, body)?;
        if body_out != types {
            return Err(op_err(
                "while",
                format!(
                    "the body must return the carried types {}, returned {}",
                    list(&types),
                    list(&body_out)
                ),
            ));
        }
        let refs: Vec<&Value> = init.iter().collect();
        self.push(
            Op::While {
                cond: cond_r,
                body: body_r,
            },
            &refs,
            types,
        )
    }

    /// `lax.fori_loop(lower, upper, body, init)` with static bounds: `body`
    /// receives the i32 counter and the carried values.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let out = b.fori_loop(0, 10, &[x.clone()], |_i, c| Ok(vec![(&c[0] * 2.0)?]))?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn fori_loop(
        &self,
        lower: i32,
        upper: i32,
        init: &[Value],
        body: impl FnOnce(&Value, &[Value]) -> Result<Vec<Value>>,
    ) -> Result<Vec<Value>> {
        let mut carry = vec![self.scalar(lower)?];
        carry.extend(init.iter().cloned());
        let upper_v = self.scalar(upper)?;
        let out = self.while_loop(
            &carry,
            |c| c[0].lt(&upper_v),
            |c| {
                let mut next = vec![(&c[0] + 1.0)?];
                next.extend(body(&c[0], &c[1..])?);
                Ok(next)
            },
        )?;
        Ok(out[1..].to_vec())
    }

    /// `lax.cond`: `on_true()` if the bool scalar `pred` holds, else
    /// `on_false()`; both must return the same types.
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let p = x.sum(&[0, 1], false)?.gt(&b.scalar(0f32)?)?;
    /// let out = b.cond(&p, || Ok(vec![x.clone()]), || Ok(vec![y.clone()]))?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn cond(
        &self,
        pred: &Value,
        on_true: impl FnOnce() -> Result<Vec<Value>>,
        on_false: impl FnOnce() -> Result<Vec<Value>>,
    ) -> Result<Vec<Value>> {
        if pred.spec() != &ArraySpec::new(DType::Bool, []) {
            return Err(op_err(
                "cond",
                format!("the predicate must be a bool scalar, got {}", pred.spec()),
            ));
        }
        // case index 0 runs the first branch: false → 0, true → 1.
        let index = pred.convert(DType::I32)?;
        self.switch(&index, vec![Box::new(on_false), Box::new(on_true)])
    }

    /// `lax.switch`: runs `branches[index]` (an i32 scalar, clamped into range).
    ///
    /// ```
    /// # use xlayer::{builder::*, ArraySpec, DType};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
    /// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
    /// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
    /// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
    /// let k = b.scalar(1i32)?;
    /// let out = b.switch(&k, vec![Box::new(|| Ok(vec![x.clone()])), Box::new(|| Ok(vec![y.clone()]))])?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn switch(
        &self,
        index: &Value,
        branches: Vec<Box<dyn FnOnce() -> Result<Vec<Value>> + '_>>,
    ) -> Result<Vec<Value>> {
        if index.spec() != &ArraySpec::new(DType::I32, []) {
            return Err(op_err(
                "switch",
                format!("the index must be an i32 scalar, got {}", index.spec()),
            ));
        }
        if branches.is_empty() {
            return Err(op_err("switch", "needs at least one branch"));
        }
        let mut regions = Vec::new();
        let mut types: Option<Vec<ArraySpec>> = None;
        for (i, branch) in branches.into_iter().enumerate() {
            let (r, out) = self.region("case", &[], |_| branch())?;
            match &types {
                None => types = Some(out),
                Some(t) if *t != out => {
                    return Err(op_err(
                        "switch",
                        format!(
                            "branch {i} returns {}, branch 0 returns {}",
                            list(&out),
                            list(t)
                        ),
                    ));
                }
                Some(_) => {}
            }
            regions.push(r);
        }
        // stablehlo.case runs the last branch for an out-of-range index;
        // lax.switch clamps into [0, n - 1] (so a negative index runs branch 0).
        let n = regions.len() as i32;
        let index = index.clamp(&self.scalar(0i32)?, &self.scalar(n - 1)?)?;
        self.push(
            Op::Case { branches: regions },
            &[&index],
            types.unwrap_or_default(),
        )
    }
}

/// `(f32[4], i32[])`: specs as the messages print them.
fn list(specs: &[ArraySpec]) -> String {
    let v: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
    format!("({})", v.join(", "))
}
