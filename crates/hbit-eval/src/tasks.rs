//! The paper's six zero-shot tasks, read from their official file layouts and turned into
//! (context, continuation) text pairs exactly as lm-evaluation-harness's task configs build them:
//!
//! | task | context | continuations | metrics |
//! |---|---|---|---|
//! | `arc_easy`, `arc_challenge` | `Question: {question}\nAnswer:` | ` {choice}` | acc, acc_norm |
//! | `hellaswag` | `preprocess({activity_label}: {ctx_a} {ctx_b.capitalize()})` | ` preprocess({ending})` | acc, acc_norm |
//! | `piqa` | `Question: {goal}\nAnswer:` | ` {sol1}`, ` {sol2}` | acc, acc_norm |
//! | `winogrande` | `{sentence before _}{option}` (one per option) | ` {sentence after _, stripped}` | acc |
//! | `lambada_openai` | all words but the last (split on `' '`) | ` {last word}` | acc (greedy), perplexity |
//!
//! acc_norm divides each choice's log-likelihood by the choice's length in characters (without
//! the leading space), as lm-evaluation-harness does.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{EvalError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    ArcEasy,
    ArcChallenge,
    Hellaswag,
    Piqa,
    Winogrande,
    LambadaOpenai,
}

/// How a task's documents are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// The choice with the highest log-likelihood (acc), and per character (acc_norm).
    MultipleChoice { acc_norm: bool },
    /// One request; acc = every target token is the greedy choice; perplexity over documents.
    LastWord,
}

impl Task {
    /// In the paper's Table 1 column order.
    pub const ALL: [Task; 6] = [
        Task::ArcChallenge,
        Task::ArcEasy,
        Task::Hellaswag,
        Task::Piqa,
        Task::Winogrande,
        Task::LambadaOpenai,
    ];

    /// lm-evaluation-harness names; `lambada` is accepted for `lambada_openai`.
    pub fn parse(name: &str) -> Result<Task> {
        Ok(match name {
            "arc_easy" => Task::ArcEasy,
            "arc_challenge" => Task::ArcChallenge,
            "hellaswag" => Task::Hellaswag,
            "piqa" => Task::Piqa,
            "winogrande" => Task::Winogrande,
            "lambada_openai" | "lambada" => Task::LambadaOpenai,
            other => {
                return Err(EvalError::Input(format!(
                    "unknown task `{other}`: expected arc_easy, arc_challenge, hellaswag, piqa, \
                     winogrande, lambada_openai (or lambada)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Hellaswag => "hellaswag",
            Task::Piqa => "piqa",
            Task::Winogrande => "winogrande",
            Task::LambadaOpenai => "lambada_openai",
        }
    }

    /// The paper's column header.
    pub fn column(self) -> &'static str {
        match self {
            Task::ArcEasy => "ARCe",
            Task::ArcChallenge => "ARCc",
            Task::Hellaswag => "HS",
            Task::Piqa => "PQ",
            Task::Winogrande => "WGe",
            Task::LambadaOpenai => "LBA",
        }
    }

    pub fn scoring(self) -> Scoring {
        match self {
            Task::Winogrande => Scoring::MultipleChoice { acc_norm: false },
            Task::LambadaOpenai => Scoring::LastWord,
            _ => Scoring::MultipleChoice { acc_norm: true },
        }
    }

    /// The metric reported in the Table 1 layout: acc_norm where length bias matters
    /// (ARC, HellaSwag), acc elsewhere.
    pub fn headline_metric(self) -> &'static str {
        match self {
            Task::ArcEasy | Task::ArcChallenge | Task::Hellaswag => "acc_norm",
            _ => "acc",
        }
    }

    /// File names tried, in order, when `--data` is a directory: the official names, directly
    /// inside it or in a sub-directory named after the dataset (the layout of `../shared/data`).
    pub fn file_candidates(self) -> &'static [&'static str] {
        match self {
            Task::ArcEasy => &[
                "arc_easy_test.jsonl",
                "arc/arc_easy_test.jsonl",
                "ARC-Easy-Test.jsonl",
                "arc/ARC-Easy-Test.jsonl",
            ],
            Task::ArcChallenge => &[
                "arc_challenge_test.jsonl",
                "arc/arc_challenge_test.jsonl",
                "ARC-Challenge-Test.jsonl",
                "arc/ARC-Challenge-Test.jsonl",
            ],
            Task::Hellaswag => &["hellaswag_val.jsonl", "hellaswag/hellaswag_val.jsonl"],
            Task::Piqa => &["valid.jsonl", "piqa/valid.jsonl"],
            Task::Winogrande => &["dev.jsonl", "winogrande/dev.jsonl"],
            Task::LambadaOpenai => &[
                "lambada_test.jsonl",
                "lambada/lambada_test.jsonl",
                "lambada_openai/lambada_test.jsonl",
            ],
        }
    }

    /// `data` itself if it is a file, else the first existing candidate under it.
    pub fn locate(self, data: &Path) -> Result<PathBuf> {
        if !data.is_dir() {
            return Ok(data.to_path_buf());
        }
        self.file_candidates()
            .iter()
            .map(|c| data.join(c))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                EvalError::Input(format!(
                    "{}: no {} file found (looked for {})",
                    data.display(),
                    self.name(),
                    self.file_candidates().join(", ")
                ))
            })
    }
}

/// One evaluation document: its requests as (context, continuation) text, and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub requests: Vec<(String, String)>,
    /// Index of the correct request (0 for LAMBADA's single request).
    pub gold: usize,
    /// acc_norm's normalisers: each choice's length in characters (multiple choice only).
    pub choice_chars: Vec<usize>,
}

impl Doc {
    /// Multiple choice over continuations after one shared context (lm-evaluation-harness's
    /// target delimiter " " before each choice).
    fn choices(context: String, choices: Vec<String>, gold: usize) -> Doc {
        Doc {
            choice_chars: choices.iter().map(|c| c.chars().count()).collect(),
            requests: choices
                .into_iter()
                .map(|c| (context.clone(), format!(" {c}")))
                .collect(),
            gold,
        }
    }
}

/// Reads a task's documents from `path` (a file in the task's official layout; see
/// [`Task::locate`] for directories), at most `limit` of them (the first ones).
pub fn load_docs(task: Task, path: &Path, limit: Option<usize>) -> Result<Vec<Doc>> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let piqa_labels = if task == Task::Piqa {
        piqa_labels(path)?
    } else {
        None
    };
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if limit.is_some_and(|n| docs.len() >= n) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| EvalError::Format {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let record: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let doc = match task {
            Task::ArcEasy | Task::ArcChallenge => arc_doc(&record),
            Task::Hellaswag => hellaswag_doc(&record),
            Task::Piqa => piqa_doc(&record, piqa_labels.as_ref().map(|l| l.get(docs.len()))),
            Task::Winogrande => winogrande_doc(&record),
            Task::LambadaOpenai => lambada_doc(&record),
        }
        .map_err(bad)?;
        docs.push(doc);
    }
    if let Some(labels) = &piqa_labels {
        if limit.is_none() && labels.len() != docs.len() {
            return Err(EvalError::Format {
                path: path.to_path_buf(),
                line: 0,
                message: format!(
                    "{} documents but {} labels in the labels file",
                    docs.len(),
                    labels.len()
                ),
            });
        }
    }
    if docs.is_empty() {
        return Err(EvalError::Format {
            path: path.to_path_buf(),
            line: 0,
            message: format!("no {} documents", task.name()),
        });
    }
    Ok(docs)
}

type Parsed = std::result::Result<Doc, String>;

fn field<'a>(record: &'a Value, name: &str) -> std::result::Result<&'a Value, String> {
    record
        .get(name)
        .ok_or_else(|| format!("missing field `{name}`"))
}

fn string_field<'a>(record: &'a Value, name: &str) -> std::result::Result<&'a str, String> {
    field(record, name)?
        .as_str()
        .ok_or_else(|| format!("field `{name}` is not a string"))
}

fn strings(value: &Value, name: &str) -> std::result::Result<Vec<String>, String> {
    value
        .as_array()
        .ok_or_else(|| format!("field `{name}` is not a list"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("field `{name}` holds a non-string"))
        })
        .collect()
}

/// A label given as an integer or a string holding one.
fn index(value: &Value, name: &str) -> std::result::Result<usize, String> {
    value
        .as_u64()
        .map(|v| v as usize)
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| format!("field `{name}` is not a non-negative integer: {value}"))
}

fn check_gold(gold: usize, n: usize, name: &str) -> std::result::Result<usize, String> {
    if gold < n {
        Ok(gold)
    } else {
        Err(format!("`{name}` = {gold} but there are {n} choices"))
    }
}

/// ARC in any of three layouts: `{question, choices: [text], gold}` (lm-evaluation-harness's
/// processed docs), HF ai2_arc `{question, choices: {text, label}, answerKey}`, or the
/// original AI2 files `{question: {stem, choices: [{text, label}]}, answerKey}`.
fn arc_doc(record: &Value) -> Parsed {
    let question = field(record, "question")?;
    let (question, choices_value) = match question {
        Value::String(q) => (q.as_str(), field(record, "choices")?),
        Value::Object(_) => (string_field(question, "stem")?, field(question, "choices")?),
        _ => return Err("field `question` is neither a string nor an object".into()),
    };
    let (texts, labels) = match choices_value {
        Value::Array(items) if items.iter().all(Value::is_string) => {
            (strings(choices_value, "choices")?, None)
        }
        Value::Array(items) => {
            let mut texts = Vec::new();
            let mut labels = Vec::new();
            for item in items {
                texts.push(string_field(item, "text")?.to_string());
                labels.push(string_field(item, "label")?.to_string());
            }
            (texts, Some(labels))
        }
        Value::Object(_) => (
            strings(field(choices_value, "text")?, "choices.text")?,
            Some(strings(field(choices_value, "label")?, "choices.label")?),
        ),
        _ => return Err("field `choices` is neither a list nor an object".into()),
    };
    if texts.is_empty() {
        return Err("no choices".into());
    }
    let gold = match (record.get("gold"), record.get("answerKey")) {
        (Some(g), _) => index(g, "gold")?,
        (None, Some(key)) => {
            let key = key.as_str().ok_or("field `answerKey` is not a string")?;
            let labels = labels.ok_or("`answerKey` given but the choices have no labels")?;
            labels
                .iter()
                .position(|l| l == key)
                .ok_or_else(|| format!("answerKey `{key}` is not among the labels {labels:?}"))?
        }
        (None, None) => return Err("missing field `gold` or `answerKey`".into()),
    };
    let gold = check_gold(gold, texts.len(), "gold")?;
    Ok(Doc::choices(
        format!("Question: {question}\nAnswer:"),
        texts,
        gold,
    ))
}

/// lm-evaluation-harness's HellaSwag clean-up: strip, ` [title]` → `. `, drop `[...]` tags,
/// collapse double spaces (one pass, as Python's `str.replace`).
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    // re.sub(r"\[.*?\]", "", text): a `[` up to the nearest `]` on the same line.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => rest = &after[close + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize()`: first character upper-case, the rest lower-case.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

fn hellaswag_doc(record: &Value) -> Parsed {
    let ctx = format!(
        "{} {}",
        string_field(record, "ctx_a")?,
        capitalize(string_field(record, "ctx_b")?)
    );
    let query = hellaswag_preprocess(&format!(
        "{}: {ctx}",
        string_field(record, "activity_label")?
    ));
    let endings: Vec<String> = strings(field(record, "endings")?, "endings")?
        .iter()
        .map(|e| hellaswag_preprocess(e))
        .collect();
    let gold = check_gold(
        index(field(record, "label")?, "label")?,
        endings.len(),
        "label",
    )?;
    Ok(Doc::choices(query, endings, gold))
}

/// PIQA's labels: `valid-labels.lst` beside `valid.jsonl` (`X.jsonl` → `X-labels.lst`), one
/// 0/1 per line; `None` if there is no such file (labels then come from a `label` field).
fn piqa_labels(path: &Path) -> Result<Option<Vec<usize>>> {
    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
        return Ok(None);
    };
    let labels_path = path.with_file_name(format!("{stem}-labels.lst"));
    if !labels_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&labels_path).map_err(|source| EvalError::Io {
        path: labels_path.clone(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| match l.trim() {
            "0" => Ok(0),
            "1" => Ok(1),
            other => Err(EvalError::Format {
                path: labels_path.clone(),
                line: i + 1,
                message: format!("label `{other}` is not 0 or 1"),
            }),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// `label` is the line's entry of the labels file: `Some(None)` if that file is too short.
fn piqa_doc(record: &Value, label: Option<Option<&usize>>) -> Parsed {
    let goal = string_field(record, "goal")?;
    let choices = vec![
        string_field(record, "sol1")?.to_string(),
        string_field(record, "sol2")?.to_string(),
    ];
    let gold = match label {
        Some(Some(&l)) => l,
        Some(None) => return Err("no label for this line in the labels file".into()),
        None => index(
            record
                .get("label")
                .ok_or("no `label` field and no `-labels.lst` file beside the data")?,
            "label",
        )?,
    };
    let gold = check_gold(gold, 2, "label")?;
    Ok(Doc::choices(
        format!("Question: {goal}\nAnswer:"),
        choices,
        gold,
    ))
}

/// Partial scoring: each option replaces `_` in the prefix (the contexts differ), and the
/// shared rest of the sentence is the continuation.
fn winogrande_doc(record: &Value) -> Parsed {
    let sentence = string_field(record, "sentence")?;
    let blank = sentence
        .find('_')
        .ok_or("field `sentence` has no `_` blank")?;
    let suffix = sentence[blank + 1..].trim();
    let gold = match field(record, "answer")? {
        Value::String(s) if s == "1" => 0,
        Value::String(s) if s == "2" => 1,
        Value::Number(n) if n.as_u64() == Some(1) => 0,
        Value::Number(n) if n.as_u64() == Some(2) => 1,
        other => {
            return Err(format!(
                "field `answer` must be \"1\" or \"2\", found {other}"
            ))
        }
    };
    let requests = ["option1", "option2"]
        .iter()
        .map(|o| {
            Ok((
                format!("{}{}", &sentence[..blank], string_field(record, o)?),
                format!(" {suffix}"),
            ))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(Doc {
        requests,
        gold,
        choice_chars: Vec::new(),
    })
}

/// The passage minus its last word (split on single spaces), and ` {last word}` to predict.
fn lambada_doc(record: &Value) -> Parsed {
    let text = string_field(record, "text")?;
    // A single word has an empty context (scored after the prefix token alone).
    let (context, last) = text.rsplit_once(' ').unwrap_or(("", text));
    Ok(Doc {
        requests: vec![(context.to_string(), format!(" {last}"))],
        gold: 0,
        choice_chars: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hellaswag_preprocessing_matches_lm_eval() {
        assert_eq!(
            hellaswag_preprocess(" Home [title] How to cook [step] Boil  water. "),
            "Home. How to cook Boil water."
        );
        // An unclosed bracket stays; the nearest `]` closes a tag.
        assert_eq!(hellaswag_preprocess("a [b] c [d"), "a c [d");
        assert_eq!(hellaswag_preprocess("[x]]y"), "]y");
        assert_eq!(capitalize("tHE man"), "The man");
        let doc = hellaswag_doc(&json!({
            "activity_label": "Roof shingle removal",
            "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
            "endings": ["is using wrap.", "starts pulling up roofing."], "label": 1
        }))
        .unwrap();
        assert_eq!(doc.gold, 1);
        assert_eq!(
            doc.requests[1],
            (
                "Roof shingle removal: A man is sitting on a roof. He".to_string(),
                " starts pulling up roofing.".to_string()
            )
        );
        assert_eq!(doc.choice_chars, vec![14, 26]);
    }

    #[test]
    fn arc_reads_all_three_layouts_to_the_same_doc() {
        let processed = json!({"question": "Q?", "choices": ["a", "bb"], "gold": 1});
        let hf = json!({"question": "Q?", "choices": {"text": ["a", "bb"], "label": ["1", "2"]},
                        "answerKey": "2"});
        let original = json!({"question": {"stem": "Q?", "choices": [
            {"text": "a", "label": "A"}, {"text": "bb", "label": "B"}]}, "answerKey": "B"});
        let want = Doc {
            requests: vec![
                ("Question: Q?\nAnswer:".into(), " a".into()),
                ("Question: Q?\nAnswer:".into(), " bb".into()),
            ],
            gold: 1,
            choice_chars: vec![1, 2],
        };
        for r in [processed, hf, original] {
            assert_eq!(arc_doc(&r).unwrap(), want);
        }
        let bad_key = json!({"question": "Q?", "choices": {"text": ["a"], "label": ["A"]},
                             "answerKey": "C"});
        assert!(arc_doc(&bad_key).unwrap_err().contains("answerKey `C`"));
        let bad_gold = json!({"question": "Q?", "choices": ["a"], "gold": 3});
        assert!(arc_doc(&bad_gold)
            .unwrap_err()
            .contains("3 but there are 1"));
    }

    #[test]
    fn winogrande_scores_the_shared_suffix_after_each_option() {
        let doc = winogrande_doc(&json!({
            "sentence": "The cup did not fit in the box because _ was too big.",
            "option1": "the cup", "option2": "the box", "answer": "1"
        }))
        .unwrap();
        assert_eq!(doc.gold, 0);
        assert_eq!(
            doc.requests,
            vec![
                (
                    "The cup did not fit in the box because the cup".into(),
                    " was too big.".into()
                ),
                (
                    "The cup did not fit in the box because the box".into(),
                    " was too big.".into()
                ),
            ]
        );
        let no_blank = json!({"sentence": "x", "option1": "a", "option2": "b", "answer": "1"});
        assert!(winogrande_doc(&no_blank).unwrap_err().contains("no `_`"));
        let bad = json!({"sentence": "_ x", "option1": "a", "option2": "b", "answer": "3"});
        assert!(winogrande_doc(&bad).unwrap_err().contains("\"1\" or \"2\""));
    }

    #[test]
    fn lambada_predicts_the_last_space_separated_word() {
        let doc = lambada_doc(&json!({"text": "he said  hello to  Anna"})).unwrap();
        assert_eq!(
            doc.requests,
            vec![("he said  hello to ".into(), " Anna".into())]
        );
        let single = lambada_doc(&json!({"text": "word"})).unwrap();
        assert_eq!(single.requests, vec![("".into(), " word".into())]);
    }

    #[test]
    fn task_names_follow_lm_eval() {
        for t in Task::ALL {
            assert_eq!(Task::parse(t.name()).unwrap(), t);
        }
        assert_eq!(Task::parse("lambada").unwrap(), Task::LambadaOpenai);
        assert!(Task::parse("mmlu")
            .unwrap_err()
            .to_string()
            .contains("unknown task `mmlu`"));
    }
}
