//! The training loop: gradient accumulation, global-norm clipping, AdamW on the two-stage
//! schedule, validation, and checkpoints that resume bit for bit.
//!
//! A run's position is fully described by [`TrainerState`] (step, sequences consumed) plus the
//! model and optimizer tensors: the batch order is a pure function of (seed, cursor), so a
//! resumed run replays exactly the updates an uninterrupted one would have made.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    load_model, load_tensors, tensors_to_bytes, CheckpointFiles, OPTIMIZER_FILE, TRAINER_STATE_FILE,
};
use crate::config::ModelConfig;
use crate::data::PackedData;
use crate::error::TrainError;
use crate::model::BitnetModel;
use crate::optim::AdamW;
use crate::schedule::Schedule;

type Result<T> = std::result::Result<T, TrainError>;

/// Everything besides tensors that a checkpoint needs to continue: `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Training sequences consumed (the data cursor).
    pub cursor: u64,
    /// Tokens trained on (targets), summed over all stages.
    pub tokens_seen: u64,
    pub seed: u64,
    pub schedule: Schedule,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub seq_len: usize,
    /// Global gradient-norm clip (0 = off).
    pub clip: f64,
    pub val_fraction: f64,
    /// Tokens in the packed data stream; resuming on other data is refused.
    pub data_tokens: u64,
    /// `(step, activation bits)` at each stage start, e.g. `[(0, 8), (950, 4)]`.
    pub stages: Vec<(u64, u8)>,
}

impl TrainerState {
    /// The state of a run starting at step 0 on `data`: one micro-batch per step and clipping at
    /// 1.0 unless the caller changes those fields; sequence length, validation share and stream
    /// size come from the data.
    pub fn new(
        data: &PackedData,
        schedule: Schedule,
        seed: u64,
        batch_size: usize,
        activation_bits: u8,
    ) -> TrainerState {
        TrainerState {
            step: 0,
            cursor: 0,
            tokens_seen: 0,
            seed,
            schedule,
            batch_size,
            grad_accum: 1,
            seq_len: data.seq_len(),
            clip: 1.0,
            val_fraction: data.val_fraction(),
            data_tokens: data.total_tokens() as u64,
            stages: vec![(0, activation_bits)],
        }
    }

    pub fn tokens_per_step(&self) -> u64 {
        (self.batch_size * self.grad_accum * self.seq_len) as u64
    }

    pub fn load(path: &Path) -> Result<TrainerState> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub step: u64,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub tokens: u64,
}

pub struct Trainer {
    pub model: BitnetModel,
    params: Vec<(String, Var)>,
    optimizer: AdamW,
    pub state: TrainerState,
    data: PackedData,
    /// One single-thread pool per data shard ([`Trainer::set_data_shards`]); empty: unsharded.
    shard_pools: Vec<rayon::ThreadPool>,
}

/// One shard's forward and backward: its loss and every parameter's gradient, in `params` order.
type ShardResult = Result<(f64, Vec<Vec<f32>>)>;

impl Trainer {
    /// A fresh run from `model`'s current weights.
    pub fn new(model: BitnetModel, data: PackedData, state: TrainerState) -> Result<Trainer> {
        state.schedule.validate()?;
        Trainer::check_shapes(&model, &data, &state)?;
        let params = model.named_vars();
        let optimizer = AdamW::new(&params);
        Ok(Trainer {
            model,
            params,
            optimizer,
            state,
            data,
            shard_pools: Vec::new(),
        })
    }

    /// Splits every micro-batch into `shards` runs of sequences that train at the same time, each
    /// on its own thread with single-threaded ops, their gradients summed weighted by their
    /// share of the batch: on a few cores this beats one batch whose every op is split across
    /// the threads (reports/training-tiny.md). Candle's own pool should then be single-threaded
    /// (`CANDLE_NUM_THREADS=1`, as the `hbit` binary sets it), or the shards queue for it.
    /// The updates equal the unsharded ones up to float summation order, and a given shard
    /// count reproduces itself bit for bit. `shards` is capped by the batch size; 1 turns
    /// sharding off.
    pub fn set_data_shards(&mut self, shards: usize) -> Result<()> {
        let shards = shards.clamp(1, self.state.batch_size.max(1));
        self.shard_pools = if shards == 1 {
            Vec::new()
        } else {
            (0..shards)
                .map(|i| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(move |_| format!("hbit-shard-{i}"))
                        .build()
                        .map_err(|e| TrainError::Input(format!("starting shard thread {i}: {e}")))
                })
                .collect::<Result<_>>()?
        };
        Ok(())
    }

    /// Data shards per micro-batch (1: unsharded).
    pub fn data_shards(&self) -> usize {
        self.shard_pools.len().max(1)
    }

    fn check_shapes(model: &BitnetModel, data: &PackedData, state: &TrainerState) -> Result<()> {
        if state.batch_size == 0 || state.grad_accum == 0 {
            return Err(TrainError::Input(
                "--batch-size and --grad-accum must be positive".into(),
            ));
        }
        if state.seq_len != data.seq_len() {
            return Err(TrainError::Input(format!(
                "sequence length {} disagrees with the data's {}",
                state.seq_len,
                data.seq_len()
            )));
        }
        let max = model.config().max_position_embeddings;
        if state.seq_len > max {
            return Err(TrainError::Input(format!(
                "--seq-len {} exceeds the model's max_position_embeddings {max}",
                state.seq_len
            )));
        }
        Ok(())
    }

    /// Continues from a checkpoint directory with model, optimizer and trainer state. With
    /// `new_config` (a8 → a4 continue-training) the same weights and moments run under another
    /// quantization; the data must be the same stream.
    pub fn from_checkpoint(
        dir: &Path,
        data: PackedData,
        new_config: Option<&ModelConfig>,
    ) -> Result<Trainer> {
        let mut model = load_model(dir)?;
        let state_path = dir.join(TRAINER_STATE_FILE);
        let mut state = TrainerState::load(&state_path)?;
        if state.data_tokens != data.total_tokens() as u64 || state.seq_len != data.seq_len() {
            return Err(TrainError::Input(format!(
                "{}: the checkpoint was trained on a stream of {} tokens in sequences of {}; \
                 the data given has {} tokens in sequences of {} (use the same --data, tokenizer \
                 and --seq-len)",
                state_path.display(),
                state.data_tokens,
                state.seq_len,
                data.total_tokens(),
                data.seq_len()
            )));
        }
        if let Some(cfg) = new_config {
            model = model.with_config(cfg)?;
            state.stages.push((state.step, cfg.activation_bits.bits()));
        }
        Trainer::check_shapes(&model, &data, &state)?;
        let params = model.named_vars();
        let opt_path = dir.join(OPTIMIZER_FILE);
        let optimizer =
            AdamW::from_state(&params, load_tensors(&opt_path)?, state.step, &opt_path)?;
        Ok(Trainer {
            model,
            params,
            optimizer,
            state,
            data,
            shard_pools: Vec::new(),
        })
    }

    pub fn data(&self) -> &PackedData {
        &self.data
    }

    pub fn finished(&self) -> bool {
        self.state.step >= self.state.schedule.total_steps
    }

    /// One optimizer step over `grad_accum` micro-batches.
    ///
    /// Runs inside candle's CPU thread pool, so the many short parallel sections of a step (every
    /// matmul and fused op) start on warm pool threads instead of each waking a pool from outside.
    pub fn step(&mut self) -> Result<StepReport> {
        Device::Cpu.with_context(|| self.step_in_pool())
    }

    fn step_in_pool(&mut self) -> Result<StepReport> {
        let s = &self.state;
        let (batch, seq) = (s.batch_size, s.seq_len);
        let mut grads: Vec<Vec<f32>> = self
            .params
            .iter()
            .map(|(_, v)| vec![0.0; v.elem_count()])
            .collect();
        let mut loss_sum = 0.0;
        let inv_accum = 1.0 / s.grad_accum as f32;
        for micro in 0..s.grad_accum {
            let cursor = s.cursor + (micro * batch) as u64;
            let (inputs, targets) = self.data.train_batch(cursor, batch, s.seed);
            if self.shard_pools.is_empty() {
                let (value, shard_grads) = self.forward_backward(&inputs, &targets, batch)?;
                loss_sum += value;
                for (acc, g) in grads.iter_mut().zip(shard_grads) {
                    for (a, b) in acc.iter_mut().zip(g) {
                        *a += b * inv_accum;
                    }
                }
                continue;
            }
            // The mean loss of the batch is the shards' means weighted by their sequences, and
            // so is its gradient.
            let runs = shard_runs(batch, self.shard_pools.len());
            let results = self.on_shards(&runs, |run| {
                let rows = run.start * seq..run.end * seq;
                self.forward_backward(&inputs[rows.clone()], &targets[rows], run.len())
            });
            for (result, run) in results.into_iter().zip(&runs) {
                let (value, shard_grads) = result?;
                let share = run.len() as f32 / batch as f32;
                loss_sum += value * share as f64;
                for (acc, g) in grads.iter_mut().zip(shard_grads) {
                    for (a, b) in acc.iter_mut().zip(g) {
                        *a += b * (share * inv_accum);
                    }
                }
            }
        }
        let grad_norm = grads
            .iter()
            .flat_map(|g| g.iter())
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        if s.clip > 0.0 && grad_norm > s.clip {
            let scale = (s.clip / grad_norm) as f32;
            grads.iter_mut().flatten().for_each(|g| *g *= scale);
        }
        let lr = s.schedule.lr(s.step);
        let wd = s.schedule.weight_decay(s.step);
        self.optimizer.update(&self.params, &grads, lr, wd)?;
        let step_tokens = self.state.tokens_per_step();
        self.state.step += 1;
        self.state.cursor += (batch * self.state.grad_accum) as u64;
        self.state.tokens_seen += step_tokens;
        Ok(StepReport {
            step: self.state.step,
            loss: loss_sum / self.state.grad_accum as f64,
            grad_norm,
            lr,
            weight_decay: wd,
            tokens: self.state.tokens_seen,
        })
    }

    /// `work(run)` for each of `runs` at the same time, run i on data shard i's single-thread
    /// pool; results in run order.
    fn on_shards<T: Send>(
        &self,
        runs: &[std::ops::Range<usize>],
        work: impl Fn(std::ops::Range<usize>) -> Result<T> + Sync,
    ) -> Vec<Result<T>> {
        let work = &work;
        std::thread::scope(|scope| {
            let handles: Vec<_> = runs
                .iter()
                .zip(&self.shard_pools)
                .map(|(run, pool)| scope.spawn(move || pool.install(|| work(run.clone()))))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(TrainError::Input("a data shard's thread panicked".into()))
                    })
                })
                .collect()
        })
    }

    /// The loss of `rows` sequences (`inputs` / `targets` `[rows · seq_len]`) and its gradient
    /// for every parameter; a non-finite loss is an error (training diverged).
    fn forward_backward(&self, inputs: &[u32], targets: &[u32], rows: usize) -> ShardResult {
        let seq = self.state.seq_len;
        let inputs = Tensor::from_vec(inputs.to_vec(), (rows, seq), &Device::Cpu)?;
        let targets = Tensor::from_vec(targets.to_vec(), (rows, seq), &Device::Cpu)?;
        let loss = self.model.loss(&inputs, &targets)?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(TrainError::Input(format!(
                "loss is {value} at step {}: training diverged (lower --lr1/--lr2)",
                self.state.step
            )));
        }
        let store = loss.backward()?;
        let mut grads = Vec::with_capacity(self.params.len());
        for (name, var) in &self.params {
            let g = store
                .get(var)
                .ok_or_else(|| TrainError::Input(format!("internal: no gradient for {name}")))?;
            grads.push(g.flatten_all()?.to_vec1()?);
        }
        Ok((value, grads))
    }

    /// Mean loss over up to `max_sequences` validation sequences (token-weighted).
    pub fn validation_loss(&self, max_sequences: usize) -> Result<Option<f64>> {
        Device::Cpu.with_context(|| self.validation_loss_in_pool(max_sequences))
    }

    fn validation_loss_in_pool(&self, max_sequences: usize) -> Result<Option<f64>> {
        let n = self.data.validation_sequences().min(max_sequences);
        if n == 0 {
            return Ok(None);
        }
        let seq = self.state.seq_len;
        let chunk = self.state.batch_size.max(1);
        let starts: Vec<usize> = (0..n).step_by(chunk).collect();
        let chunk_loss = |first: usize| -> Result<f64> {
            let take = chunk.min(n - first);
            let (inputs, targets) = self.data.validation_batch(first, take);
            let inputs = Tensor::from_vec(inputs, (take, seq), &Device::Cpu)?;
            let targets = Tensor::from_vec(targets, (take, seq), &Device::Cpu)?;
            let loss = self.model.loss(&inputs, &targets)?.to_scalar::<f32>()? as f64;
            Ok(loss * take as f64)
        };
        // With data shards, each takes a run of the chunks; the sum keeps chunk order.
        let losses: Vec<f64> = if self.shard_pools.is_empty() {
            starts
                .iter()
                .map(|&f| chunk_loss(f))
                .collect::<Result<_>>()?
        } else {
            let runs = shard_runs(starts.len(), self.shard_pools.len());
            let per_run = self.on_shards(&runs, |run| {
                starts[run]
                    .iter()
                    .map(|&f| chunk_loss(f))
                    .collect::<Result<Vec<f64>>>()
            });
            let mut all = Vec::with_capacity(starts.len());
            for losses in per_run {
                all.extend(losses?);
            }
            all
        };
        let total: f64 = losses.iter().sum();
        Ok(Some(total / n as f64))
    }

    /// Writes model, optimizer and trainer state into `dir` atomically (tokenizer carried over
    /// or copied from `tokenizer`).
    pub fn save(&self, dir: &Path, tokenizer: Option<&Path>) -> Result<()> {
        let mut files = CheckpointFiles::default();
        files.add_model(&self.model)?;
        files.add(
            OPTIMIZER_FILE,
            tensors_to_bytes(&self.optimizer.state_tensors(&self.params)?)?,
        );
        let state = serde_json::to_string_pretty(&self.state)
            .map_err(|e| TrainError::Input(format!("serializing trainer state: {e}")))?;
        files.add(TRAINER_STATE_FILE, state.into_bytes());
        if let Some(tok) = tokenizer {
            let bytes = std::fs::read(tok).map_err(|e| TrainError::io(tok, e))?;
            files.add(crate::checkpoint::TOKENIZER_FILE, bytes);
        }
        files.commit(dir)
    }

    /// All parameters as flat vectors, for exact comparisons in tests.
    pub fn parameter_values(&self) -> Result<HashMap<String, Vec<f32>>> {
        self.params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.flatten_all()?.to_vec1()?)))
            .collect()
    }
}

/// `shards` contiguous runs of the batch's sequences, as equal as they can be.
fn shard_runs(batch: usize, shards: usize) -> Vec<std::ops::Range<usize>> {
    (0..shards)
        .map(|i| batch * i / shards..batch * (i + 1) / shards)
        .filter(|r| !r.is_empty())
        .collect()
}

#[cfg(test)]
#[path = "trainer_tests.rs"]
mod tests;
