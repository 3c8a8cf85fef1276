//! Other formats: MiniMind's `.pth` and HF folders in ([`import`]); HF Llama folders ([`hf`]) and
//! GGUF for llama.cpp ([`gguf`]) out.

pub mod gguf;
pub mod hf;
pub mod import;
