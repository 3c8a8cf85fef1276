//! Data parallelism: several processes (ranks) each train on their shard of every global batch and
//! sum their gradients before the optimizer step, so every rank takes the same step.
//!
//! A [`Collective`] is what the trainer needs from the ranks' transport: an all-reduce (sum), a
//! broadcast and a barrier. Backends, each behind a cargo feature so default builds need neither:
//! - **MPI** (`--features mpi`, Open MPI or any MPI): CPU machines and clusters, `mpirun -np N …`.
//! - **NCCL** (`--features nccl`): GPUs, launched `torchrun`-style (`RANK`, `WORLD_SIZE`,
//!   `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`).
//!
//! A plain run is a world of one ([`Single`]): every operation is the identity.

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use std::sync::Arc;

/// The collective operations data-parallel training uses.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum over ranks of a 1-D f32 tensor (every rank receives the sum).
    fn all_reduce_sum(&self, buffer: &Tensor) -> Result<Tensor>;
    /// `root`'s copy of a 1-D f32 tensor, on every rank.
    fn broadcast(&self, buffer: &Tensor, root: usize) -> Result<Tensor>;
    /// Waits until every rank got here.
    fn barrier(&self) -> Result<()>;
    /// A name for messages (`mpi`, `nccl`).
    fn backend(&self) -> &'static str;
}

/// One process alone.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, buffer: &Tensor) -> Result<Tensor> {
        Ok(buffer.clone())
    }
    fn broadcast(&self, buffer: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(buffer.clone())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "single"
    }
}

/// A shared handle on the process's collective (a world of one by default).
#[derive(Clone)]
pub struct Dist(pub Arc<dyn Collective>);

impl Default for Dist {
    fn default() -> Self {
        Dist(Arc::new(Single))
    }
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} of {} ({})", self.rank(), self.world_size(), self.0.backend())
    }
}

impl Dist {
    pub fn rank(&self) -> usize {
        self.0.rank()
    }

    pub fn world_size(&self) -> usize {
        self.0.world_size()
    }

    /// Rank 0 writes checkpoints, metrics and progress.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    pub fn barrier(&self) -> Result<()> {
        self.0.barrier()
    }

    /// Sums tensors over ranks with one all-reduce: flattened into one f32 buffer, reduced, split back.
    pub fn all_reduce_tensors(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        if self.world_size() == 1 || tensors.is_empty() {
            return Ok(tensors.to_vec());
        }
        split_like(&self.0.all_reduce_sum(&concat_f32(tensors)?)?, tensors)
    }

    /// Sums numbers over ranks (as f32 on the wire: logged scalars and token counts).
    pub fn all_reduce_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        if self.world_size() == 1 {
            return Ok(values.to_vec());
        }
        let buffer = Tensor::from_vec(
            values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            values.len(),
            &candle_core::Device::Cpu,
        )?;
        let summed = self.0.all_reduce_sum(&buffer)?;
        Ok(summed.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    }

    /// Rank 0's values of `tensors`, on every rank (one broadcast).
    pub fn broadcast_tensors(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        if self.world_size() == 1 || tensors.is_empty() {
            return Ok(tensors.to_vec());
        }
        split_like(&self.0.broadcast(&concat_f32(tensors)?, 0)?, tensors)
    }
}

/// All `tensors` as one flat f32 buffer (one message on the wire), undone by [`split_like`].
fn concat_f32(tensors: &[Tensor]) -> Result<Tensor> {
    let flat =
        tensors.iter().map(|t| t.to_dtype(DType::F32)?.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&flat, 0)?)
}

/// Cuts a flat buffer back into tensors of the shapes, dtypes and devices of `like`.
fn split_like(flat: &Tensor, like: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut offset = 0;
    like.iter()
        .map(|t| {
            let n = t.elem_count();
            let part = flat.narrow(0, offset, n)?.reshape(t.shape())?.to_dtype(t.dtype())?.to_device(t.device())?;
            offset += n;
            Ok(part)
        })
        .collect()
}

/// The launcher's description of this process, from the environment: `mpirun` (Open MPI's
/// `OMPI_COMM_WORLD_*`, or `PMI_*`/`PMIX_*`) or `torchrun` (`RANK`, `WORLD_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    Alone,
    Mpi { world_size: usize },
    Torchrun { rank: usize, world_size: usize, local_rank: usize },
}

impl Launch {
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| -> Result<Option<usize>> {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().map(Some).map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
                Err(_) => Ok(None),
            }
        };
        for name in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"] {
            if let Some(world_size) = var(name)? {
                return Ok(if world_size > 1 { Launch::Mpi { world_size } } else { Launch::Alone });
            }
        }
        match (var("RANK")?, var("WORLD_SIZE")?) {
            (Some(rank), Some(world_size)) if world_size > 1 => {
                if rank >= world_size {
                    bail!("RANK={rank} is not below WORLD_SIZE={world_size}");
                }
                Ok(Launch::Torchrun { rank, world_size, local_rank: var("LOCAL_RANK")?.unwrap_or(rank) })
            }
            _ => Ok(Launch::Alone),
        }
    }

    /// The device spec a rank trains on: under torchrun a bare `cuda` means `cuda:LOCAL_RANK` (one
    /// GPU per process, as PyTorch's DDP scripts do).
    pub fn device_spec(&self, spec: &str) -> String {
        match self {
            Launch::Torchrun { local_rank, .. } if spec == "cuda" => format!("cuda:{local_rank}"),
            _ => spec.to_string(),
        }
    }
}

/// Connects to the collective this process was launched into: MPI under `mpirun`, NCCL under `torchrun`, a
/// world of one otherwise. A multi-process launch of a binary built without that backend is an error
/// (each process would silently train alone and write the same folder).
/// `device` is the training device (under torchrun, `cuda:LOCAL_RANK`: see [`Launch::device`]).
pub fn connect(launch: Launch, device: &candle_core::Device) -> Result<Dist> {
    match launch {
        Launch::Alone => Ok(Dist::default()),
        Launch::Mpi { world_size } => mpi_world(world_size),
        Launch::Torchrun { rank, world_size, .. } => nccl_world(rank, world_size, device),
    }
}

#[cfg(feature = "mpi")]
fn mpi_world(_world_size: usize) -> Result<Dist> {
    Ok(Dist(Arc::new(mpi::Mpi::init()?)))
}

#[cfg(not(feature = "mpi"))]
fn mpi_world(world_size: usize) -> Result<Dist> {
    bail!("launched by mpirun as one of {world_size} processes, but this binary was built without MPI; rebuild with `cargo build --release --features mpi`")
}

#[cfg(feature = "nccl")]
fn nccl_world(rank: usize, world_size: usize, device: &candle_core::Device) -> Result<Dist> {
    Ok(Dist(Arc::new(nccl::Nccl::init(rank, world_size, device)?)))
}

#[cfg(not(feature = "nccl"))]
fn nccl_world(rank: usize, world_size: usize, _device: &candle_core::Device) -> Result<Dist> {
    bail!("launched as rank {rank} of {world_size} (RANK/WORLD_SIZE), but this binary was built without NCCL; rebuild with `cargo build --release --features nccl` (GPUs) or launch with mpirun and `--features mpi`")
}
