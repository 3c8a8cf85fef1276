//! A minimal `torch.save` writer for test checkpoints: a zip archive holding `archive/data.pkl` (a
//! pickle, protocol 2, of an `OrderedDict` of `torch._utils._rebuild_tensor_v2` calls whose storages
//! are persistent ids) and one raw little-endian file per storage under `archive/data/`.
//! `torch.load` reads these files; so does the importer.

use candle_core::{DType, Device, Tensor};
use minimind::ModelConfig;
use std::io::Write;
use std::path::Path;

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, code: u8) -> &mut Self {
        self.0.push(code);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, v: usize) -> &mut Self {
        self.0.push(b'J');
        self.0.extend_from_slice(&(v as i32).to_le_bytes());
        self
    }
    fn int_tuple(&mut self, values: &[usize]) -> &mut Self {
        self.op(b'(');
        values.iter().for_each(|&v| {
            self.int(v);
        });
        self.op(b't')
    }
    fn ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b')').op(b'R')
    }
}

fn storage_class(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        other => panic!("no test storage for {other:?}"),
    }
}

fn raw_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t.to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => panic!("no test storage for {other:?}"),
    }
}

/// Writes `tensors` (name, tensor) as a state dict; `aliases` (name, of) add entries sharing the
/// storage of an earlier entry, as PyTorch saves tied weights.
pub fn write_pth(path: &Path, tensors: &[(String, Tensor)], aliases: &[(&str, &str)]) {
    write_pth_under(path, tensors, aliases, None)
}

/// As [`write_pth`], with the state dict stored under `key` of an outer dict (as resume files do:
/// `{"model": state_dict, "step": …}`) when `key` is given.
pub fn write_pth_under(path: &Path, tensors: &[(String, Tensor)], aliases: &[(&str, &str)], key: Option<&str>) {
    let mut p = Pickle(vec![0x80, 2]);
    if let Some(key) = key {
        p.op(b'}').op(b'(').string(key);
    }
    p.ordered_dict().op(b'(');
    let mut entries: Vec<(String, usize)> = Vec::new();
    for (i, (name, _)) in tensors.iter().enumerate() {
        entries.push((name.clone(), i));
    }
    for (alias, of) in aliases {
        let i = tensors.iter().position(|(n, _)| n == of).expect("alias of an unknown tensor");
        entries.push((alias.to_string(), i));
    }
    for (name, storage) in &entries {
        let t = &tensors[*storage].1;
        let dims = t.dims().to_vec();
        let mut strides = vec![1usize; dims.len()];
        for d in (0..dims.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * dims[d + 1];
        }
        p.string(name).global("torch._utils", "_rebuild_tensor_v2").op(b'(');
        p.op(b'(').string("storage").global("torch", storage_class(t.dtype()));
        p.string(&storage.to_string()).string("cpu").int(t.elem_count()).op(b't').op(b'Q');
        p.int(0).int_tuple(&dims).int_tuple(&strides).op(0x89).ordered_dict();
        p.op(b't').op(b'R');
    }
    p.op(b'u');
    if key.is_some() {
        p.string("step").int(7).op(b'u');
    }
    p.op(b'.');

    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", options).unwrap();
    zip.write_all(&p.0).unwrap();
    zip.start_file("archive/version", options).unwrap();
    zip.write_all(b"3\n").unwrap();
    for (i, (_, t)) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), options).unwrap();
        zip.write_all(&raw_bytes(t)).unwrap();
    }
    zip.finish().unwrap();
}

/// Random tensors under MiniMind2-classic names for `c` (norm weights near 1).
pub fn classic_weights(c: &ModelConfig, seed: u64) -> Vec<(String, Tensor)> {
    let (d, f, kv) = (c.hidden_size, c.ffn_size(), c.num_key_value_heads * c.head_dim());
    let mut shapes: Vec<(String, Vec<usize>)> = vec![("tok_embeddings.weight".into(), vec![c.vocab_size, d])];
    for i in 0..c.num_hidden_layers {
        for (name, shape) in [
            ("attention.wq", vec![d, d]),
            ("attention.wk", vec![kv, d]),
            ("attention.wv", vec![kv, d]),
            ("attention.wo", vec![d, d]),
            ("attention_norm", vec![d]),
            ("ffn_norm", vec![d]),
            ("feed_forward.w1", vec![f, d]),
            ("feed_forward.w2", vec![d, f]),
            ("feed_forward.w3", vec![f, d]),
        ] {
            shapes.push((format!("layers.{i}.{name}.weight"), shape));
        }
    }
    shapes.push(("norm.weight".into(), vec![d]));
    shapes
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let noise = random_normal(&shape, seed * 1000 + k as u64);
            let t = if shape.len() == 1 {
                (noise * 0.1).unwrap().affine(1.0, 1.0).unwrap()
            } else {
                (noise * 0.2).unwrap()
            };
            (name, t)
        })
        .collect()
}

pub fn random_normal(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(2862933555777941757).wrapping_add(3037000493);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            // Sum of uniforms: close enough to a normal for test weights.
            (0..4)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .sum::<f32>()
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}
