//! The tokenizer a GGUF file describes in its metadata, built into the
//! `tokenizers` crate: byte-level BPE (`tokenizer.ggml.model = "gpt2"`)
//! with the file's vocabulary and merges, GPT-2's byte-level pre-tokenizer
//! and decoder, and the tokens the file marks as control as special tokens
//! (kept whole in the text). This is what transformers builds from the same
//! metadata, so prompt ids are identical (tests/smollm2_tokenizer.rs).
//!
//! [`ChatTemplate`] applies the file's ChatML chat template
//! (`<|im_start|>role\ncontent<|im_end|>\n`) without a Jinja engine.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::GgufFile;
use crate::error::{Error, Result};

/// GGUF's token type for control tokens (`<|im_start|>`).
const CONTROL: u64 = 3;
/// GGUF's token type for user-defined added tokens.
const USER_DEFINED: u64 = 4;

/// GPT-2's map from bytes to the printable characters byte-level
/// vocabularies are spelled in.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

fn tok_err(file: &GgufFile, reason: String) -> Error {
    Error::Tokenizer {
        path: file.path().to_path_buf(),
        reason,
    }
}

/// Builds the tokenizer of `file`.
///
/// Errors: [`Error::Gguf`] when the tokenizer keys are missing or mistyped;
/// [`Error::Tokenizer`] naming the file for a tokenizer model other than
/// byte-level BPE, or a vocabulary the `tokenizers` crate refuses.
pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(tok_err(
            file,
            format!("tokenizer model `{model}` is not supported (byte-level BPE, `gpt2`, is)"),
        ));
    }
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let merges = file.get_str_array("tokenizer.ggml.merges")?;
    let types: Vec<u64> = match file.metadata().get("tokenizer.ggml.token_type") {
        Some(_) => file
            .get_array("tokenizer.ggml.token_type")?
            .iter()
            .map(|v| v.as_u64().unwrap_or(0))
            .collect(),
        None => vec![],
    };
    // Tokens outside the byte alphabet are respelled in it, as transformers does.
    let spell = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spell.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        let key = if in_alphabet(t) {
            t.to_string()
        } else {
            t.bytes().map(|b| spell[b as usize]).collect()
        };
        let id = u32::try_from(i).map_err(|_| tok_err(file, "vocabulary too large".into()))?;
        vocab.insert(key, id);
    }
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            tok_err(
                file,
                format!("merge {i} `{m}` is not two tokens separated by a space"),
            )
        })?;
        pairs.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| tok_err(file, format!("BPE: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let marked = |ty: u64| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(t, &k)| k == ty && in_alphabet(t))
            .map(|(t, _)| AddedToken::from(t.to_string(), ty == CONTROL).normalized(false))
            .collect()
    };
    tok.add_special_tokens(&marked(CONTROL));
    tok.add_tokens(&marked(USER_DEFINED));
    Ok(tok)
}

/// A ChatML chat template read from `tokenizer.chat_template`: every message
/// as `<|im_start|>ROLE\nCONTENT<|im_end|>\n`, a default system message
/// first when the conversation has none (if the template has one), and
/// `<|im_start|>assistant\n` to prompt the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatTemplate {
    /// The system message added when the first message is not one.
    pub default_system: Option<String>,
}

impl ChatTemplate {
    /// Reads the template of `file`.
    ///
    /// Errors: [`Error::Gguf`] when `tokenizer.chat_template` is missing;
    /// [`Error::Tokenizer`] when it is not a ChatML template.
    pub fn from_gguf(file: &GgufFile) -> Result<ChatTemplate> {
        let t = file.get_str("tokenizer.chat_template")?;
        ChatTemplate::parse(t).ok_or_else(|| {
            tok_err(
                file,
                "the chat template is not ChatML (<|im_start|>role ... <|im_end|>), the only kind supported".into(),
            )
        })
    }

    /// Recognises a ChatML Jinja template; `None` for any other.
    pub fn parse(template: &str) -> Option<ChatTemplate> {
        if !template.contains("<|im_start|>")
            || !template.contains("<|im_end|>")
            || !template.contains("message['role']")
            || !template.contains("message['content']")
        {
            return None;
        }
        let marker = "'<|im_start|>system\n";
        let default_system = template.find(marker).and_then(|at| {
            let rest = &template[at + marker.len()..];
            rest.find("<|im_end|>").map(|end| rest[..end].to_string())
        });
        Some(ChatTemplate { default_system })
    }

    /// The prompt for `messages` (`(role, content)` pairs), ending with the
    /// assistant's turn.
    pub fn apply(&self, messages: &[(&str, &str)]) -> String {
        let mut s = String::new();
        if let (Some(sys), Some((role, _))) = (&self.default_system, messages.first()) {
            if *role != "system" {
                s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
            }
        }
        for (role, content) in messages {
            s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        s.push_str("<|im_start|>assistant\n");
        s
    }
}
