//! Training data: JSON Lines read as a stream, shuffled by line, encoded batch by batch.
//!
//! A first pass over the file validates every line and records where it starts (8 + 4 bytes per
//! line), so a multi-GB corpus is never held in memory; batches then read their lines by offset.
//! Bad lines stop the run with `file:line: what was expected`, or are skipped and counted with
//! `--skip-bad-lines`.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Byte offsets of the valid lines of a JSON Lines file.
pub struct JsonlIndex {
    pub path: PathBuf,
    /// `(offset, length, 1-based line number)` of each valid, non-blank line.
    lines: Vec<(u64, u32, u32)>,
    /// Malformed lines skipped (`--skip-bad-lines`).
    pub skipped: usize,
    /// Well-formed lines left out because they train nothing ([`LineCheck::NothingToTrain`]).
    pub untrainable: usize,
    file: Mutex<File>,
}

/// What the indexing pass makes of a well-formed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineCheck {
    Keep,
    /// Well-formed but gives the loss nothing (e.g. an SFT answer wholly beyond `--max-seq-len`):
    /// left out and counted in `untrainable`.
    NothingToTrain,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl JsonlIndex {
    /// Scans `path`, checking each non-blank line with `validate` (returns what was expected on
    /// failure). Blank lines are ignored. An error names `file:line`; with `skip_bad` bad lines are
    /// counted in `skipped` instead. A file without a single valid line is an error.
    pub fn build(path: &Path, skip_bad: bool, validate: impl Fn(&str) -> Result<(), String>) -> Result<Self> {
        Self::build_checked(path, skip_bad, |line| validate(line).map(|()| LineCheck::Keep))
    }

    /// [`build`](Self::build) with a check that may also find a well-formed line that trains nothing.
    /// A UTF-8 byte-order mark before the first line is ignored.
    pub fn build_checked(
        path: &Path,
        skip_bad: bool,
        check: impl Fn(&str) -> Result<LineCheck, String>,
    ) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let (mut lines, mut offset, mut buf) = (Vec::new(), 0u64, Vec::new());
        let (mut skipped, mut untrainable) = (0usize, 0usize);
        for line_no in 1u32.. {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            let mut start = offset;
            offset += n as u64;
            let mut content = trim_newline(&buf);
            if line_no == 1 && content.starts_with(BOM) {
                content = &content[BOM.len()..];
                start += BOM.len() as u64;
            }
            if content.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let verdict = match std::str::from_utf8(content) {
                Err(e) => Err(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
                Ok(text) => check(text),
            };
            match verdict {
                Ok(LineCheck::Keep) => lines.push((start, content.len() as u32, line_no)),
                Ok(LineCheck::NothingToTrain) => untrainable += 1,
                Err(_) if skip_bad => skipped += 1,
                Err(p) => bail!("{}:{line_no}: {p}", path.display()),
            }
        }
        if lines.is_empty() {
            let why = match (skipped, untrainable) {
                (0, 0) => "the file is empty".to_string(),
                (0, u) => format!("none of its {u} rows has a token to train on within --max-seq-len"),
                (s, 0) => format!("all {s} lines are malformed"),
                (s, u) => format!("{s} lines are malformed, {u} have no token to train on within --max-seq-len"),
            };
            bail!("{}: no training rows ({why})", path.display());
        }
        let file = File::open(path)?;
        Ok(Self { path: path.to_path_buf(), lines, skipped, untrainable, file: Mutex::new(file) })
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// 1-based line number in the file of row `i`.
    pub fn line_number(&self, i: usize) -> u32 {
        self.lines[i].2
    }

    /// The text of row `i` (validated during the scan).
    pub fn read(&self, i: usize) -> Result<String> {
        let (offset, len, line_no) = self.lines[i];
        let mut buf = vec![0u8; len as usize];
        let mut file = self.file.lock().map_err(|_| anyhow::anyhow!("data file lock poisoned"))?;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut buf)
            .with_context(|| format!("{}:{line_no}: file changed while training", self.path.display()))?;
        String::from_utf8(buf).with_context(|| format!("{}:{line_no}: invalid UTF-8", self.path.display()))
    }
}

fn trim_newline(buf: &[u8]) -> &[u8] {
    let buf = buf.strip_suffix(b"\n").unwrap_or(buf);
    buf.strip_suffix(b"\r").unwrap_or(buf)
}

/// One training row: token ids and a loss weight per position (`mask[j]` weighs predicting `ids[j]`
/// from the ids before it; the first position is never a target).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedRow {
    pub ids: Vec<u32>,
    pub mask: Vec<f32>,
    /// The loss's denominator share of this row when it is not `Σ mask[1..]` (reasoning SFT
    /// up-weights tag tokens but divides by the plain supervised count).
    pub norm: Option<f32>,
}

impl EncodedRow {
    /// A row whose first `len` ids are real and the rest padding: every real id is a target.
    pub fn prefix(ids: Vec<u32>, len: usize) -> Self {
        let mask = (0..ids.len()).map(|j| if j < len { 1.0 } else { 0.0 }).collect();
        Self { ids, mask, norm: None }
    }
}

/// One batch of next-token prediction: `x` `[B, T]` u32, `y` `[B, T]` u32, `mask` `[B, T]` f32.
pub struct LmBatch {
    pub x: Tensor,
    pub y: Tensor,
    pub mask: Tensor,
    /// Denominator of the masked mean when it differs from `Σ mask` (see [`EncodedRow::norm`]).
    pub norm: Option<f32>,
    /// What the batch's loss is a mean over: `norm`, else `Σ mask` (its supervised tokens). Data
    /// parallelism weighs each rank's loss by it (see [`crate::train::Stage::weight`]).
    pub weight: f32,
}

impl LmBatch {
    /// Positions fed to the model (B·T).
    pub fn tokens(&self) -> usize {
        self.x.elem_count()
    }

    /// `X = ids[:-1]`, `Y = ids[1:]`, loss mask `mask[1:]`, from rows of equal length.
    pub fn from_encoded(rows: &[EncodedRow], device: &Device) -> Result<Self> {
        let t = rows[0].ids.len() - 1;
        let (mut x, mut y, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            x.extend_from_slice(&row.ids[..t]);
            y.extend_from_slice(&row.ids[1..]);
            mask.extend_from_slice(&row.mask[1..]);
        }
        let norm = rows
            .iter()
            .any(|r| r.norm.is_some())
            .then(|| rows.iter().map(|r| r.norm.unwrap_or_else(|| r.mask[1..].iter().sum())).sum());
        let b = rows.len();
        let weight = norm.unwrap_or_else(|| mask.iter().sum());
        Ok(Self {
            x: Tensor::from_vec(x, (b, t), device)?,
            y: Tensor::from_vec(y, (b, t), device)?,
            mask: Tensor::from_vec(mask, (b, t), device)?,
            norm,
            weight,
        })
    }

    /// Rows of real-then-padding ids (`(ids, real length)`): every real next token is a target.
    pub fn from_rows(rows: &[(Vec<u32>, usize)], device: &Device) -> Result<Self> {
        let rows: Vec<EncodedRow> = rows.iter().map(|(ids, len)| EncodedRow::prefix(ids.clone(), *len)).collect();
        Self::from_encoded(&rows, device)
    }
}

/// Where a pass over the data stands: which epoch, and how many rows of it were consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataCursor {
    pub epoch: usize,
    pub row: usize,
}

/// A seeded, reshuffled-every-epoch order over `n` rows: epoch e uses the permutation drawn from
/// `seed + e`, so any position can be restored from `(seed, cursor)` alone.
pub struct ShuffledRows {
    n: usize,
    pub seed: u64,
    order: Vec<usize>,
    pub cursor: DataCursor,
}

impl ShuffledRows {
    pub fn new(n: usize, seed: u64, cursor: DataCursor) -> Self {
        let mut rows = Self { n, seed, order: Vec::new(), cursor };
        rows.order = rows.permutation(cursor.epoch);
        rows
    }

    fn permutation(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(self.seed.wrapping_add(epoch as u64)));
        order
    }

    /// What [`ShuffledRows::next_batch`] would return, and the cursor after it, without moving.
    pub fn peek_batch(&self, batch: usize) -> (Vec<usize>, DataCursor) {
        if self.cursor.row >= self.n {
            let epoch = self.cursor.epoch + 1;
            let end = batch.min(self.n);
            return (self.permutation(epoch)[..end].to_vec(), DataCursor { epoch, row: end });
        }
        let end = (self.cursor.row + batch).min(self.n);
        (self.order[self.cursor.row..end].to_vec(), DataCursor { epoch: self.cursor.epoch, row: end })
    }

    /// The next (up to) `batch` row indices, moving to a fresh permutation at an epoch boundary.
    /// The last batch of an epoch may be short; it never spans two epochs.
    pub fn next_batch(&mut self, batch: usize) -> Vec<usize> {
        if self.cursor.row >= self.n {
            self.cursor = DataCursor { epoch: self.cursor.epoch + 1, row: 0 };
            self.order = self.permutation(self.cursor.epoch);
        }
        let end = (self.cursor.row + batch).min(self.n);
        let rows = self.order[self.cursor.row..end].to_vec();
        self.cursor.row = end;
        rows
    }
}

/// Turns one validated line of the data file into a training row (or a pair of rows, for DPO).
pub type RowEncoder<'a, R> = Box<dyn Fn(&str) -> Result<R> + 'a>;

/// Shuffled batches of encoded rows from a JSON Lines file: the data machinery of every stage.
pub struct Rows<'a, R> {
    pub index: JsonlIndex,
    order: ShuffledRows,
    /// Rows per micro-batch of this rank.
    pub batch_size: usize,
    /// Data parallelism: this process is rank `shard.0` of `shard.1`.
    shard: (usize, usize),
    /// Where this rank's part of the last batch starts in the global batch.
    shard_start: usize,
    encode: RowEncoder<'a, R>,
}

/// What the next-token stages (pretraining, SFT, LoRA, distillation, reasoning) train on.
pub type LmData<'a> = Rows<'a, EncodedRow>;

impl<'a, R> Rows<'a, R> {
    pub fn new(index: JsonlIndex, batch_size: usize, seed: u64, encode: RowEncoder<'a, R>) -> Self {
        let order = ShuffledRows::new(index.len(), seed, DataCursor::default());
        Self { index, order, batch_size, shard: (0, 1), shard_start: 0, encode }
    }

    /// Data parallelism: each global batch is `batch_size × world` rows of the shuffled order, the
    /// same on every rank, and this rank reads only its `rank`-th part.
    pub fn set_shard(&mut self, rank: usize, world: usize) {
        self.shard = (rank, world.max(1));
    }

    fn global_batch(&self) -> usize {
        self.batch_size * self.shard.1
    }

    /// (Global) batches per epoch (the last one may be short).
    pub fn batches_per_epoch(&self) -> usize {
        self.index.len().div_ceil(self.global_batch())
    }

    pub fn cursor(&self) -> DataCursor {
        self.order.cursor
    }

    /// Continues from a saved position (same seed ⇒ same order as an uninterrupted run).
    pub fn seek(&mut self, cursor: DataCursor) {
        self.order = ShuffledRows::new(self.index.len(), self.order.seed, cursor);
    }

    /// The position in its global batch of the first row [`Rows::next_rows`] last returned (0
    /// without data parallelism): stages that seed per row use it to seed as one process would.
    pub fn shard_start(&self) -> usize {
        self.shard_start
    }

    /// The next batch's rows, encoded; an error names the line's `file:line`.
    pub fn next_rows(&mut self) -> Result<Vec<R>> {
        let (rows, start) = shard_of(self.order.next_batch(self.global_batch()), self.shard);
        self.shard_start = start;
        self.encode_rows(&rows)
    }

    /// The rows [`Rows::next_rows`] would return, and the data position after them, without moving
    /// (a stage that may or may not use them; [`Rows::skip_rows`] then moves past them).
    pub fn peek_rows(&self) -> Result<(Vec<R>, DataCursor)> {
        let (rows, after) = self.order.peek_batch(self.global_batch());
        Ok((self.encode_rows(&shard_of(rows, self.shard).0)?, after))
    }

    /// Moves past the next batch without reading it.
    pub fn skip_rows(&mut self) {
        self.order.next_batch(self.global_batch());
    }

    fn encode_rows(&self, rows: &[usize]) -> Result<Vec<R>> {
        rows.iter()
            .map(|&i| {
                let line = self.index.read(i)?;
                (self.encode)(&line)
                    .with_context(|| format!("{}:{}", self.index.path.display(), self.index.line_number(i)))
            })
            .collect()
    }
}

fn shard_of(mut rows: Vec<usize>, (rank, world): (usize, usize)) -> (Vec<usize>, usize) {
    if world == 1 {
        return (rows, 0);
    }
    let n = rows.len();
    for i in n..world {
        rows.push(rows[i % n]);
    }
    let n = rows.len();
    (rows[rank * n / world..(rank + 1) * n / world].to_vec(), rank * n / world)
}

impl LmData<'_> {
    pub fn next_batch(&mut self, device: &Device) -> Result<LmBatch> {
        LmBatch::from_encoded(&self.next_rows()?, device)
    }
}
