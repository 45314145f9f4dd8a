//! `hbit gguf inspect`: what a GGUF file (llama.cpp, bitnet.cpp) holds, as hbit reads it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use hbit_engine::gguf::{GgmlType, Gguf, Value};
use serde_json::json;

#[derive(Subcommand)]
pub enum GgufCommand {
    /// Metadata and tensors of a GGUF file; with --tensor, one tensor's values as hbit decodes
    /// them (to compare with the tool that wrote the file).
    Inspect(InspectArgs),
}

#[derive(Args)]
pub struct InspectArgs {
    /// The GGUF file.
    file: PathBuf,
    /// Print this tensor's scale (ternary types), code counts and first --values values.
    #[arg(long)]
    tensor: Option<String>,
    /// How many values of --tensor to print.
    #[arg(long, default_value_t = 8)]
    values: usize,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: GgufCommand) -> Result<()> {
    match cmd {
        GgufCommand::Inspect(args) => inspect(&args),
    }
}

/// A metadata value for display: long arrays shortened to their length and first items.
fn shown(v: &Value) -> serde_json::Value {
    match v {
        Value::Array(items) => {
            let head: Vec<serde_json::Value> = items.iter().take(4).map(shown).collect();
            json!({"array": items.len(), "first": head})
        }
        Value::String(s) => json!(s),
        Value::Bool(b) => json!(b),
        other => other
            .as_u64()
            .map(|u| json!(u))
            .or_else(|| other.as_f64().map(|f| json!(f)))
            .unwrap_or(serde_json::Value::Null),
    }
}

fn inspect(args: &InspectArgs) -> Result<()> {
    let file = Gguf::read(&args.file)?;
    let metadata: serde_json::Map<String, serde_json::Value> = file
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), shown(v)))
        .collect();
    let tensors: Vec<serde_json::Value> = file
        .tensors
        .iter()
        .map(|t| json!({"name": t.name, "type": t.ty.name(), "shape": t.shape()}))
        .collect();
    let mut report = json!({
        "file": args.file.display().to_string(),
        "version": file.version,
        "alignment": file.alignment(),
        "metadata": metadata,
        "tensors": tensors,
    });
    if let Some(name) = &args.tensor {
        let values = file.floats(name)?;
        let info = file.tensor(name).expect("floats() found it");
        let mut t = json!({
            "name": name,
            "type": info.ty.name(),
            "shape": info.shape(),
            "values": values.iter().take(args.values).collect::<Vec<_>>(),
        });
        if matches!(info.ty, GgmlType::I2S | GgmlType::TQ1_0 | GgmlType::TQ2_0) {
            // A tensor hbit cannot read as one ternary matrix still shows its values.
            match file.ternary(name) {
                Ok(w) => {
                    let count = |c: i8| w.codes.iter().filter(|&&x| x == c).count();
                    t["scale"] = json!(w.alpha);
                    t["codes"] = json!({"-1": count(-1), "0": count(0), "1": count(1)});
                }
                Err(e) => t["ternary_error"] = json!(e.to_string()),
            }
        }
        report["tensor"] = t;
    }
    match print(args, &file, &report) {
        // A reader that stops early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn print(args: &InspectArgs, file: &Gguf, report: &serde_json::Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        return writeln!(out, "{report}");
    }
    writeln!(
        out,
        "{}: GGUF v{}, {} metadata keys, {} tensors",
        args.file.display(),
        file.version,
        file.metadata.len(),
        file.tensors.len()
    )?;
    for (k, v) in &file.metadata {
        writeln!(out, "  {k:?} = {}", shown(v))?;
    }
    for t in &file.tensors {
        writeln!(out, "  {:?} {} {:?}", t.name, t.ty.name(), t.shape())?;
    }
    if let Some(t) = report.get("tensor") {
        writeln!(out, "{t}")?;
    }
    Ok(())
}
