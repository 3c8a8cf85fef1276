//! The MPI backend (rsmpi over the system's MPI library): tensors travel through host memory, which
//! is where CPU training keeps them anyway.

use super::Collective;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

pub struct Mpi {
    /// Finalizes MPI when dropped, so it lives as long as the collective.
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
}

impl Mpi {
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().context("MPI was already initialized")?;
        let world = universe.world();
        Ok(Self { _universe: universe, world })
    }
}

fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, buffer: &Tensor) -> Result<Tensor> {
        let local = host_f32(buffer)?;
        let mut sum = vec![0f32; local.len()];
        self.world.all_reduce_into(&local[..], &mut sum[..], SystemOperation::sum());
        Ok(Tensor::from_vec(sum, buffer.shape(), &Device::Cpu)?.to_device(buffer.device())?)
    }

    fn broadcast(&self, buffer: &Tensor, root: usize) -> Result<Tensor> {
        let mut values = host_f32(buffer)?;
        self.world.process_at_rank(root as i32).broadcast_into(&mut values[..]);
        Ok(Tensor::from_vec(values, buffer.shape(), &Device::Cpu)?.to_device(buffer.device())?)
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }
}
