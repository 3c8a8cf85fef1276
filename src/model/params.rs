//! Where a model's weights come from: a seeded random initialization or a loaded checkpoint.
//!
//! The model's constructor asks for each tensor by its checkpoint name (`model.layers.0.mlp.up_proj
//! .weight`, …) through a [`WeightBuilder`], so creating and loading are the same walk. Loading
//! collects every problem (missing, mis-shaped, unexpected tensors) and reports them together.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

/// How a freshly created tensor is filled.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// U(−bound, bound); PyTorch's default `nn.Linear` init is bound = 1/√fan_in.
    Uniform(f64),
    /// N(0, std²).
    Normal(f64),
    Ones,
    Zeros,
}

/// Initialization of a new model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitScheme {
    /// MiniMind2: PyTorch defaults, every Linear U(±1/√fan_in), tied embedding taken from the head.
    Minimind2,
    /// minimind-3 (transformers `post_init`): every Linear and the embedding N(0, 0.02).
    Normal,
}

named_enum!(InitScheme { Minimind2 => "minimind2", Normal => "normal" });

impl InitScheme {
    /// The init for a Linear weight `[out, fan_in]`.
    pub fn linear(self, fan_in: usize) -> Init {
        match self {
            InitScheme::Minimind2 => Init::Uniform(1.0 / (fan_in as f64).sqrt()),
            InitScheme::Normal => Init::Normal(0.02),
        }
    }
}

enum Source {
    Random { rng: Box<RefCell<StdRng>> },
    Loaded { tensors: HashMap<String, Tensor> },
}

/// Named model parameters in creation order (deterministic, so optimizer state and reductions
/// over parameters are reproducible).
#[derive(Clone, Default)]
pub struct Params {
    pub entries: Vec<(String, Var)>,
}

impl Params {
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn num_elements(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// All tensors by name, e.g. for saving.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.entries.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    }
}

/// Hands out tensors by name; see the module docs.
pub struct WeightBuilder {
    source: Source,
    device: Device,
    dtype: DType,
    trainable: bool,
    created: RefCell<Vec<(String, Var)>>,
    used: RefCell<BTreeSet<String>>,
    problems: RefCell<Vec<String>>,
}

impl WeightBuilder {
    /// Random weights from `seed`; `trainable` makes every tensor a `Var` that receives gradients.
    pub fn random(seed: u64, dtype: DType, device: &Device, trainable: bool) -> Self {
        let source = Source::Random { rng: Box::new(RefCell::new(StdRng::seed_from_u64(seed))) };
        Self::new(source, dtype, device, trainable)
    }

    /// Weights from a name → tensor map (a checkpoint), converted to `dtype` on `device`.
    pub fn loaded(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device, trainable: bool) -> Self {
        Self::new(Source::Loaded { tensors }, dtype, device, trainable)
    }

    fn new(source: Source, dtype: DType, device: &Device, trainable: bool) -> Self {
        Self {
            source,
            device: device.clone(),
            dtype,
            trainable,
            created: RefCell::new(Vec::new()),
            used: RefCell::new(BTreeSet::new()),
            problems: RefCell::new(Vec::new()),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tensor called `name` with `shape`; `init` is used only for random weights.
    pub fn get(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        let tensor = match &self.source {
            Source::Random { rng } => self.random_tensor(&mut rng.borrow_mut(), &shape, init)?,
            Source::Loaded { tensors } => match tensors.get(name) {
                Some(t) if t.shape() == &shape => {
                    self.used.borrow_mut().insert(name.to_string());
                    t.to_device(&self.device)?.to_dtype(self.dtype)?
                }
                found => {
                    let problem = match found {
                        Some(t) => format!("{name}: shape {:?}, expected {:?}", t.dims(), shape.dims()),
                        None => format!("{name}: missing (expected shape {:?})", shape.dims()),
                    };
                    self.used.borrow_mut().insert(name.to_string());
                    self.problems.borrow_mut().push(problem);
                    Tensor::zeros(&shape, self.dtype, &self.device)?
                }
            },
        };
        if !self.trainable {
            return Ok(tensor);
        }
        let var = Var::from_tensor(&tensor)?;
        self.created.borrow_mut().push((name.to_string(), var.clone()));
        Ok(var.as_tensor().clone())
    }

    fn random_tensor(&self, rng: &mut StdRng, shape: &Shape, init: Init) -> Result<Tensor> {
        let n = shape.elem_count();
        let values: Vec<f32> = match init {
            Init::Ones => vec![1.0; n],
            Init::Zeros => vec![0.0; n],
            Init::Uniform(bound) => {
                let b = bound as f32;
                (0..n).map(|_| rng.gen_range(-b..b)).collect()
            }
            Init::Normal(std) => {
                let normal = rand_distr_normal(std);
                (0..n).map(|_| normal(rng)).collect()
            }
        };
        Ok(Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?)
    }

    /// Checks that every requested tensor was found with the right shape and that the checkpoint
    /// holds nothing else; returns the trainable parameters (empty when not trainable).
    pub fn finish(self) -> Result<Params> {
        let mut problems = self.problems.into_inner();
        if let Source::Loaded { tensors } = &self.source {
            let used = self.used.borrow();
            let mut extra: Vec<&String> = tensors.keys().filter(|k| !used.contains(*k)).collect();
            extra.sort();
            problems.extend(extra.into_iter().map(|k| format!("{k}: unexpected tensor")));
        }
        if !problems.is_empty() {
            bail!("checkpoint does not match the model config:\n  {}", problems.join("\n  "));
        }
        Ok(Params { entries: self.created.into_inner() })
    }
}

/// Box–Muller normal sampler N(0, std²) in f32.
fn rand_distr_normal(std: f64) -> impl Fn(&mut StdRng) -> f32 {
    move |rng: &mut StdRng| {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
    }
}
