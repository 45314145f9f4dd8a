//! Incremental detokenization: a sequence's text handed out as it becomes final. Byte-level BPE
//! can end a step in the middle of a UTF-8 character, and a stop string can be split across
//! tokens, so each step re-decodes the output and releases only what no later token can change.

use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};

/// Incremental detokenization and stop-string handling of one sequence.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    /// Bytes of `text` already handed out.
    emitted: usize,
    text: String,
}

impl TextStream {
    /// Re-decodes `tokens`; returns the newly safe text and whether a stop string was hit.
    pub fn update(
        &mut self,
        tokenizer: &Tokenizer,
        tokens: &[u32],
        stop: &[String],
    ) -> Result<(String, bool)> {
        let text = tokenizer
            .decode(tokens, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        // A trailing U+FFFD is an incomplete UTF-8 sequence of byte-level BPE: wait for more.
        let complete = text.trim_end_matches('\u{FFFD}').len();
        if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            self.text = text[..cut].to_string();
            let out = self.text.get(self.emitted..).unwrap_or("").to_string();
            self.emitted = self.text.len();
            return Ok((out, true));
        }
        // Hold back the longest tail that is a prefix of some stop string.
        let hold = stop
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|p| text[..complete].ends_with(p))
            .map(|p| p.len())
            .max()
            .unwrap_or(0);
        let safe = complete - hold;
        self.text = text;
        let out = match self.text.get(self.emitted..safe) {
            Some(s) if safe > self.emitted => s.to_string(),
            _ => String::new(),
        };
        self.emitted = self.emitted.max(safe);
        Ok((out, false))
    }

    pub fn finish(&mut self) -> String {
        // Whatever was held back is final now (an incomplete UTF-8 tail decodes to U+FFFD).
        let out = self.text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = self.text.len();
        out
    }

    /// The text so far (cut before a stop string once one was hit).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Takes the text, leaving the stream empty.
    pub fn take_text(&mut self) -> String {
        self.emitted = 0;
        std::mem::take(&mut self.text)
    }
}
