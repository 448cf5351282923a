//! Hook points: where adapters act on the frozen forward without touching its weights.
//!
//! ```text
//!  E = LN_e(word + pos + type)                    param(): every bias / LayerNorm tensor
//!  for each layer l, input h:                     linear(): a delta added to x·Wᵀ
//!     a  = AttnOut(SelfAttn(h))                   (query key value attn_out inter out)
//!     a' = a + inner(l, Attn, a)
//!     u  = LN_1(h + a') + aside(l, Attn, h, h)
//!     f  = Out(GELU(Inter(u)))
//!     f' = f + inner(l, Ffn, f)
//!     h_l = LN_2(u + f') + aside(l, Ffn, h, u)
//!  H = h_L + encoder(E)
//! ```
//!
//! A batch may hold rows for different adapters: the shared matmuls run once over
//! the whole batch, and each [`Group`]'s hooks run on its own rows only.

use std::ops::Range;

use candle_core::{Result, Tensor};

/// Which sub-layer of a transformer layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sub {
    Attn,
    Ffn,
}

/// The linears of a layer, named as LoRA targets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    Query,
    Key,
    Value,
    AttnOut,
    Inter,
    Out,
}

impl Site {
    pub const ALL: [Site; 6] = [
        Site::Query,
        Site::Key,
        Site::Value,
        Site::AttnOut,
        Site::Inter,
        Site::Out,
    ];

    /// The name used in adapter files (`lora.{l}.{name}.A`).
    pub fn name(self) -> &'static str {
        match self {
            Site::Query => "query",
            Site::Key => "key",
            Site::Value => "value",
            Site::AttnOut => "attn_out",
            Site::Inter => "inter",
            Site::Out => "out",
        }
    }

    pub fn from_name(s: &str) -> Option<Site> {
        Site::ALL.into_iter().find(|x| x.name() == s)
    }

    /// The backbone tensor prefix of this linear in layer `l` (without `bert.`).
    pub fn tensor_prefix(self, l: usize) -> String {
        let tail = match self {
            Site::Query => "attention.self.query",
            Site::Key => "attention.self.key",
            Site::Value => "attention.self.value",
            Site::AttnOut => "attention.output.dense",
            Site::Inter => "intermediate.dense",
            Site::Out => "output.dense",
        };
        format!("encoder.layer.{l}.{tail}")
    }
}

/// What an adapter may contribute to the forward. Every method defaults to "nothing"
/// (`None`), so a kind implements only its own points. Each method gets the `target`
/// the contribution is added to and returns `target + contribution`, so an
/// implementation can fuse the addition into its last matmul. Inputs are the rows of
/// one group, shaped `[rows, tokens, width]` like the target.
pub trait Hooks: Send + Sync {
    /// A replacement for a backbone bias or LayerNorm tensor, by its name without
    /// the `bert.` prefix (e.g. `encoder.layer.0.attention.self.query.bias`).
    fn param(&self, _name: &str) -> Option<&Tensor> {
        None
    }

    /// Whether [`Hooks::linear`] ever contributes (lets the backbone keep an activation
    /// fused into the linear before it when no group has a LoRA term).
    fn has_linear(&self) -> bool {
        false
    }

    /// `y + Δ(x)` for a linear `y = x Wᵀ + b` (LoRA): `x` is the linear's input.
    fn linear(
        &self,
        _layer: usize,
        _site: Site,
        _x: &Tensor,
        _y: &Tensor,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// `out + A(out)` for a sub-layer's output before its residual (inner adapters).
    fn inner(&self, _layer: usize, _sub: Sub, _out: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// `normed + B(...)` after the sub-layer's LayerNorm (aside modules). `layer_input`
    /// is the layer's input `h_{l-1}`; `sub_input` is the sub-layer's input (`h` for
    /// the attention block, `u` for the feed-forward block); `normed` is the
    /// LayerNorm's output.
    fn aside(
        &self,
        _layer: usize,
        _sub: Sub,
        _layer_input: &Tensor,
        _sub_input: &Tensor,
        _normed: &Tensor,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// `encoded + B(E)` for the encoder's output, from the embedding output `E` (IAA-M).
    fn encoder(&self, _embeddings: &Tensor, _encoded: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// A run of consecutive batch rows that share the same hooks (or none).
#[derive(Clone)]
pub struct Group<'a> {
    pub rows: Range<usize>,
    pub hooks: Option<&'a dyn Hooks>,
}

impl std::fmt::Debug for Group<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("rows", &self.rows)
            .field("hooks", &self.hooks.is_some())
            .finish()
    }
}

/// Lets each group's hooks replace its own rows of `x` (`[batch, ...]`). `f` gets
/// the group's hooks, its rows, and those rows of `x`, and returns their new value.
pub(crate) fn apply_per_group(
    x: &Tensor,
    groups: &[Group<'_>],
    mut f: impl FnMut(&dyn Hooks, &Range<usize>, &Tensor) -> Result<Option<Tensor>>,
) -> Result<Tensor> {
    if groups.iter().all(|g| g.hooks.is_none()) {
        return Ok(x.clone());
    }
    let batch = x.dim(0)?;
    if groups.len() == 1 && groups[0].rows == (0..batch) {
        let h = groups[0].hooks.expect("checked above");
        return Ok(f(h, &groups[0].rows, x)?.unwrap_or_else(|| x.clone()));
    }
    let mut pieces = Vec::with_capacity(groups.len());
    let mut any = false;
    for g in groups {
        let part = x.narrow(0, g.rows.start, g.rows.len())?;
        let new = match g.hooks {
            Some(h) => f(h, &g.rows, &part)?,
            None => None,
        };
        any |= new.is_some();
        pieces.push(new.unwrap_or(part));
    }
    if !any {
        return Ok(x.clone());
    }
    Tensor::cat(&pieces, 0)
}

/// Narrows `t` to a group's rows (a no-op view when the group is the whole batch).
pub(crate) fn rows(t: &Tensor, r: &Range<usize>) -> Result<Tensor> {
    if r.start == 0 && r.end == t.dim(0)? {
        Ok(t.clone())
    } else {
        t.narrow(0, r.start, r.len())
    }
}

/// Checks that groups tile `0..batch` in order.
pub(crate) fn check_groups(groups: &[Group<'_>], batch: usize) -> std::result::Result<(), String> {
    let mut next = 0;
    for g in groups {
        if g.rows.start != next || g.rows.end < g.rows.start {
            return Err(format!(
                "groups must tile the batch in order; got rows {:?} where row {next} was expected",
                g.rows
            ));
        }
        next = g.rows.end;
    }
    if next != batch {
        return Err(format!("groups cover {next} rows of a batch of {batch}"));
    }
    Ok(())
}
