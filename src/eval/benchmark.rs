//! Multiple-choice benchmark files: the official C-Eval and CMMLU CSV layouts and a JSONL layout.
//!
//! - **CSV** (C-Eval `id,question,A,B,C,D,answer[,explanation]`; CMMLU `,Question,A,B,C,D,Answer`):
//!   a header row names the columns — `question` and `answer` case-insensitively, the choices as the
//!   single capital letters `A`, `B`, … in order; other columns are ignored. Quoted fields may hold
//!   commas and line breaks.
//! - **JSONL**: `{"question": …, "choices": [...], "answer": "B" | 1, "subject"?: …}` per line; rows
//!   with a `subject` are grouped by it, the rest take the file's name.
//!
//! A file is one subject named after it (`computer_network_val.csv` → `computer_network`). A folder
//! is a benchmark: with `dev/`, `val/` or `test/` inside it is the official layout (questions from
//! `val/`, else `test/`, or the split asked for; few-shot examples from `dev/`, matched by subject),
//! otherwise every `.csv`/`.jsonl` in it is a subject. A file inside `val/` or `test/` finds its
//! subject's examples in the sibling `dev/` the same way.

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One question: its text, its choices in letter order, and the index of the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub question: String,
    pub choices: Vec<String>,
    pub answer: usize,
    /// `file:line` of the row, for messages.
    pub source: String,
}

/// A subject's questions and its few-shot examples (empty when the benchmark has none).
#[derive(Debug, Clone)]
pub struct Subject {
    pub name: String,
    pub questions: Vec<Question>,
    pub dev: Vec<Question>,
}

/// The letter of choice `i`: A, B, C, …
pub fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// The subjects of a benchmark file or folder (see the module docs), sorted by name. `split`
/// picks the official layout's question folder (`val` or `test`; default `val` when present).
pub fn load_benchmark(path: &Path, split: Option<&str>) -> Result<Vec<Subject>> {
    let (questions_at, dev_at) = locate(path, split)?;
    let mut subjects = read_subjects(&questions_at)?;
    if subjects.is_empty() {
        bail!("{}: no .csv or .jsonl benchmark files", questions_at.display());
    }
    if let Some(dev_at) = dev_at {
        let mut dev: BTreeMap<String, Vec<Question>> =
            read_subjects(&dev_at)?.into_iter().map(|s| (s.name, s.questions)).collect();
        for subject in &mut subjects {
            subject.dev = dev.remove(&subject.name).unwrap_or_default();
        }
    }
    Ok(subjects)
}

/// Where the questions are, and the few-shot examples if the layout has them.
fn locate(path: &Path, split: Option<&str>) -> Result<(PathBuf, Option<PathBuf>)> {
    if !path.exists() {
        bail!("{}: no such benchmark file or folder", path.display());
    }
    let has = |dir: &Path, name: &str| dir.join(name).is_dir();
    if path.is_dir() && ["dev", "val", "test"].iter().any(|s| has(path, s)) {
        let split = match split {
            Some(s) => s.to_string(),
            None if has(path, "val") => "val".into(),
            None => "test".into(),
        };
        if !has(path, &split) {
            bail!("{}: no {split}/ folder of questions", path.display());
        }
        let dev = has(path, "dev").then(|| path.join("dev"));
        return Ok((path.join(split), dev));
    }
    if split.is_some() {
        bail!("--split needs a benchmark folder with val/ or test/ inside; {} is not one", path.display());
    }
    let parent = path.parent().filter(|p| path.is_file() && p.file_name().is_some_and(|n| n == "val" || n == "test"));
    let dev = parent.and_then(Path::parent).map(|root| root.join("dev")).filter(|d| d.is_dir());
    Ok((path.to_path_buf(), dev))
}

/// Subjects of a file, or of every benchmark file in a folder, sorted by name.
fn read_subjects(path: &Path) -> Result<Vec<Subject>> {
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "csv" || e == "jsonl"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut by_name: BTreeMap<String, Vec<Question>> = BTreeMap::new();
    for file in files {
        for (name, questions) in read_file(&file)? {
            by_name.entry(name).or_default().extend(questions);
        }
    }
    Ok(by_name.into_iter().map(|(name, questions)| Subject { name, questions, dev: Vec::new() }).collect())
}

fn read_file(path: &Path) -> Result<Vec<(String, Vec<Question>)>> {
    let name = subject_name(path);
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Ok(vec![(name, read_csv(path)?)]),
        Some("jsonl") => read_jsonl(path, &name),
        _ => bail!("{}: a benchmark file ends in .csv or .jsonl", path.display()),
    }
}

/// `computer_network_val.csv` → `computer_network`.
fn subject_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    ["_dev", "_val", "_test"].iter().find_map(|s| stem.strip_suffix(s)).unwrap_or(&stem).to_string()
}

fn read_csv(path: &Path) -> Result<Vec<Question>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let header = reader.headers().with_context(|| format!("{}:1: reading the header row", path.display()))?.clone();
    let name = |h: &str| h.trim_start_matches('\u{feff}').trim().to_string();
    let column = |want: &str| header.iter().position(|h| name(h).eq_ignore_ascii_case(want));
    let question = column("question");
    let answer = column("answer");
    let choices: Vec<usize> =
        (0..26).map_while(|i| header.iter().position(|h| name(h) == letter(i).to_string())).collect();
    let (Some(question), Some(answer)) = (question, answer) else {
        bail!(
            "{}:1: expected a header with question, A, B, … and answer columns (C-Eval/CMMLU layout), found {:?}{}",
            path.display(),
            header.iter().collect::<Vec<_>>(),
            if column("question").is_some() {
                " — a test split without answers cannot be scored; use val"
            } else {
                ""
            }
        );
    };
    if choices.len() < 2 {
        bail!("{}:1: expected at least the choice columns A and B in the header", path.display());
    }
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let line = record.position().map_or(0, |p| p.line());
        let at = format!("{}:{line}", path.display());
        let field = |i: usize| -> Result<String> {
            record
                .get(i)
                .map(|s| s.trim().to_string())
                .with_context(|| format!("{at}: the row has no column {}", i + 1))
        };
        let choices = choices.iter().map(|&i| field(i)).collect::<Result<Vec<_>>>()?;
        let answer = parse_answer(&Json::String(field(answer)?), choices.len()).with_context(|| at.clone())?;
        out.push(Question { question: field(question)?, choices, answer, source: at });
    }
    Ok(out)
}

fn read_jsonl(path: &Path, default_subject: &str) -> Result<Vec<(String, Vec<Question>)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut by_subject: BTreeMap<String, Vec<Question>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("{}:{}", path.display(), i + 1);
        let row: Json = serde_json::from_str(line).with_context(|| format!("{at}: not a JSON object"))?;
        let text = |key: &str| row.get(key).and_then(Json::as_str).map(str::to_string);
        let question = text("question").with_context(|| format!("{at}: expected a \"question\" string"))?;
        let choices: Vec<String> = row
            .get("choices")
            .and_then(Json::as_array)
            .and_then(|a| a.iter().map(|c| c.as_str().map(str::to_string)).collect())
            .with_context(|| format!("{at}: expected \"choices\": an array of strings"))?;
        if !(2..=26).contains(&choices.len()) {
            bail!("{at}: expected 2 to 26 choices, found {}", choices.len());
        }
        let answer =
            row.get("answer").with_context(|| format!("{at}: expected an \"answer\" (a letter or an index)"))?;
        let answer = parse_answer(answer, choices.len()).with_context(|| at.clone())?;
        let subject = text("subject").unwrap_or_else(|| default_subject.to_string());
        by_subject.entry(subject).or_default().push(Question { question, choices, answer, source: at });
    }
    Ok(by_subject.into_iter().collect())
}

/// A letter (`"B"`) or a 0-based index (`1`) naming one of `n` choices.
fn parse_answer(answer: &Json, n: usize) -> Result<usize> {
    let index = match answer {
        Json::String(s) => {
            let s = s.trim();
            match s.chars().next() {
                Some(c) if s.len() == 1 && c.is_ascii_uppercase() => Some((c as u8 - b'A') as usize),
                _ => None,
            }
        }
        Json::Number(v) => v.as_u64().map(|v| v as usize),
        _ => None,
    };
    match index {
        Some(i) if i < n => Ok(i),
        _ => bail!("the answer {answer} is not one of the letters A–{} (or an index below {n})", letter(n - 1)),
    }
}
