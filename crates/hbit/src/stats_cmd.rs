//! `hbit stats activations`: the distributions of every BitLinear's input per layer, before and
//! after the Hadamard transform (the paper's Figures 2–3), as JSON and histogram PNGs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hbit_engine::Site;
use hbit_eval::activations::{ActivationCollector, Summary};

use crate::engine_cmds::{load_model, load_tokenizer, model_or_bundled};
use crate::eval_cmd::prefix_token;

#[derive(Subcommand)]
pub enum StatsCommand {
    /// Per-layer distributions of the inputs of W_qkv, W_o, W_gate/up and W_down, before and
    /// after the Hadamard transform: kurtosis, max/mean-|x|, INT4 clipping, histogram PNGs.
    Activations(ActivationsArgs),
}

#[derive(Args)]
pub struct ActivationsArgs {
    /// Packed model file (`hbit pack`) or checkpoint directory [default: the bundled model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A UTF-8 text file to run through the model.
    #[arg(long, conflicts_with = "prompt")]
    pub data: Option<PathBuf>,
    /// A text to run instead of --data.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Tokens of the text to analyse (from its start).
    #[arg(long, default_value = "2048")]
    pub tokens: usize,
    /// Tokens per forward window (default: the model's context, at most 512).
    #[arg(long)]
    pub context: Option<usize>,
    /// Output directory for activations.json and the PNGs.
    #[arg(long, default_value = "activations")]
    pub out: PathBuf,
    /// Histogram bins.
    #[arg(long, default_value = "81")]
    pub bins: usize,
    /// HF tokenizer.json (default: the one inside the model).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Token each window starts with (default: the model's BOS, else end-of-text).
    #[arg(long)]
    pub prefix_token: Option<u32>,
    /// Skip the PNGs.
    #[arg(long)]
    pub no_plots: bool,
    /// Print the JSON report to stdout instead of the summary table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: StatsCommand) -> Result<()> {
    match cmd {
        StatsCommand::Activations(args) => activations(&args).map(|_| ()),
    }
}

/// Runs the analysis and returns the summaries (also used by the demo).
pub fn collect(args: &ActivationsArgs) -> Result<(Vec<Summary>, usize)> {
    let text = match (&args.data, &args.prompt) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?,
        (None, Some(p)) => p.clone(),
        (None, None) => bail!("give --data FILE or --prompt TEXT"),
    };
    if args.bins < 2 {
        bail!("--bins {}: need at least 2", args.bins);
    }
    let model = model_or_bundled(&args.model)?;
    let loaded = load_model(&model)?;
    let tokenizer = load_tokenizer(&loaded, args.tokenizer.as_deref(), &model)?;
    let engine = &loaded.engine;
    let prefix = prefix_token(args.prefix_token, engine, &tokenizer)?;
    let ids = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
        .get_ids()
        .to_vec();
    if ids.is_empty() {
        bail!("the text has no tokens");
    }
    let max = engine.config().max_position_embeddings;
    let context = args.context.unwrap_or(max.min(512));
    if !(2..=max).contains(&context) {
        bail!("--context {context}: expected 2..={max} (max_position_embeddings)");
    }
    let ids = &ids[..ids.len().min(args.tokens)];
    // Each window: the prefix token, then up to context − 1 text tokens.
    let windows: Vec<Vec<u32>> = ids
        .chunks(context - 1)
        .map(|c| std::iter::once(prefix).chain(c.iter().copied()).collect())
        .collect();
    let rows: usize = windows.iter().map(Vec::len).sum();
    let mut collector = ActivationCollector::new(rows);
    collector.run(engine, &windows)?;
    Ok((collector.summaries(args.bins), rows))
}

/// Runs the analysis, writes `activations.json` and the PNGs, prints a summary, and returns
/// the summaries.
pub fn activations(args: &ActivationsArgs) -> Result<Vec<Summary>> {
    let (summaries, rows) = collect(args)?;
    let model = model_or_bundled(&args.model)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    let report = serde_json::json!({
        "model": model.display().to_string(),
        "tokens": rows,
        "note": "kurtosis is Pearson's (3 for a Gaussian); int4_clipped is the share of values \
                 eq. (6) clips; hadamard=true rows are after the orthonormal Hadamard transform",
        "sites": summaries.iter().map(Summary::to_json).collect::<Vec<_>>(),
    });
    let json_path = args.out.join("activations.json");
    hbit_train::checkpoint::write_file_atomic(&json_path, report.to_string().as_bytes())?;
    if !args.no_plots {
        for site in Site::ALL {
            let mine: Vec<&Summary> = summaries.iter().filter(|s| s.site == site).collect();
            let png = args.out.join(format!("{}.png", site.name()));
            let model_name = model
                .file_name()
                .map_or(model.display().to_string(), |n| n.to_string_lossy().into());
            crate::plot::plot_activation_histograms(&mine, &model_name, &png)?;
        }
    }
    if args.json {
        println!("{report}");
    } else {
        print!("{}", summary_table(&summaries));
        println!(
            "{rows} tokens; wrote {}{}",
            json_path.display(),
            if args.no_plots {
                String::new()
            } else {
                format!(
                    " and {}/{{qkv,o_proj,gate_up,down_proj}}.png",
                    args.out.display()
                )
            }
        );
    }
    Ok(summaries)
}

/// Per layer and site: kurtosis, max/mean-|x| and INT4 clipping, before → after the transform.
pub fn summary_table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| layer | input of | kurtosis | max/mean-abs | INT4 clipped (%) |\n|---|---|---|---|---|\n",
    );
    for before in summaries.iter().filter(|s| !s.rotated) {
        let after = summaries
            .iter()
            .find(|s| s.rotated && s.layer == before.layer && s.site == before.site);
        let pair = |f: &dyn Fn(&Summary) -> f64, digits: usize| match after {
            Some(a) => format!("{:.*} → {:.*}", digits, f(before), digits, f(a)),
            None => format!("{:.*}", digits, f(before)),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            before.layer,
            before.site.name(),
            pair(&|s| s.kurtosis, 1),
            pair(&|s| s.max_over_mean_abs(), 1),
            pair(&|s| 100.0 * s.int4_clipped, 3),
        ));
    }
    out
}
