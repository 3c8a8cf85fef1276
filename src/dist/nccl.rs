//! The NCCL backend for GPUs, launched `torchrun`-style: rank 0 creates NCCL's unique id and hands
//! it to the other ranks over TCP at `MASTER_ADDR:MASTER_PORT` (what torchrun's rendezvous does for
//! PyTorch); then every collective runs on the GPU, on the training device's stream.

use super::Collective;
use anyhow::{bail, Context, Result};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CudaStorage, Device, Storage, Tensor};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub struct Nccl {
    comm: Comm,
    device: candle_core::CudaDevice,
}

const ID_BYTES: usize = 128;

impl Nccl {
    /// Joins the world as `rank` on `device` (the training device: `cuda:LOCAL_RANK`).
    pub fn init(rank: usize, world_size: usize, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else { bail!("NCCL needs --device cuda (rank {rank} got {device:?})") };
        let id = rendezvous(rank, world_size)?;
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world_size, id)
            .map_err(|e| anyhow::anyhow!("NCCL init of rank {rank} of {world_size}: {e:?}"))?;
        Ok(Self { comm, device: cuda.clone() })
    }

    /// A contiguous f32 copy of `t` on this rank's GPU, as a raw device buffer.
    fn device_copy(&self, t: &Tensor) -> Result<CudaSlice<f32>> {
        let t = t.to_device(&Device::Cuda(self.device.clone()))?.to_dtype(candle_core::DType::F32)?.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else { bail!("expected a CUDA tensor") };
        let (start, n) = (layout.start_offset(), layout.shape().elem_count());
        let view = s.as_cuda_slice::<f32>()?.slice(start..start + n);
        Ok(self.device.cuda_stream().clone_dtod(&view)?)
    }

    fn wrap(&self, slice: CudaSlice<f32>, like: &Tensor) -> Result<Tensor> {
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, self.device.clone()));
        let t = Tensor::from_storage(storage, like.shape(), candle_core::op::BackpropOp::none(), false);
        Ok(t.to_device(like.device())?)
    }
}

/// NCCL's unique id from rank 0 to every rank, over TCP.
fn rendezvous(rank: usize, world_size: usize) -> Result<Id> {
    let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("MASTER_PORT").unwrap_or_else(|_| "29500".into());
    let at = format!("{addr}:{port}");
    if rank == 0 {
        let id = Id::new().map_err(|e| anyhow::anyhow!("creating the NCCL id: {e:?}"))?;
        let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
        let listener =
            TcpListener::bind(format!("0.0.0.0:{port}")).with_context(|| format!("listening on port {port}"))?;
        for _ in 1..world_size {
            let (mut peer, _) = listener.accept().context("waiting for the other ranks")?;
            peer.write_all(&bytes)?;
        }
        return Ok(id);
    }
    let start = Instant::now();
    let mut stream = loop {
        match TcpStream::connect(&at) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < Duration::from_secs(300) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("rank {rank}: no rank 0 at MASTER_ADDR:MASTER_PORT = {at}"))
            }
        }
    };
    let mut bytes = [0u8; ID_BYTES];
    stream.read_exact(&mut bytes).with_context(|| format!("reading the NCCL id from {at}"))?;
    let mut internal = [0 as std::ffi::c_char; ID_BYTES];
    for (d, s) in internal.iter_mut().zip(bytes) {
        *d = s as std::ffi::c_char;
    }
    Ok(Id::uninit(internal))
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&self, buffer: &Tensor) -> Result<Tensor> {
        let mut values = self.device_copy(buffer)?;
        self.comm
            .all_reduce_in_place(&mut values, &ReduceOp::Sum)
            .map_err(|e| anyhow::anyhow!("NCCL all-reduce: {e:?}"))?;
        self.wrap(values, buffer)
    }

    fn broadcast(&self, buffer: &Tensor, root: usize) -> Result<Tensor> {
        let mut values = self.device_copy(buffer)?;
        self.comm.broadcast_in_place(&mut values, root as i32).map_err(|e| anyhow::anyhow!("NCCL broadcast: {e:?}"))?;
        self.wrap(values, buffer)
    }

    fn barrier(&self) -> Result<()> {
        // An all-reduce of one number, waited for: every rank has reached it.
        let one = Tensor::ones(1, candle_core::DType::F32, &Device::Cuda(self.device.clone()))?;
        self.all_reduce_sum(&one)?.to_vec1::<f32>()?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }
}
