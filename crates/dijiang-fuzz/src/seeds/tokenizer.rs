//! `tokenizer.json` seeds: the byte-level BPE tokenizers of the GGUF seeds, saved as a user's
//! `dijiang convert` saves them, and small hand-written WordLevel, WordPiece (with a template
//! post-processor, truncation and padding) and Unigram tokenizers.

use anyhow::Result;
use dijiang_model::tokenizer::Tokenizer;

use crate::input::Input;

const WORD_LEVEL: &str = r#"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{"id":0,"content":"[UNK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":{"type":"Sequence","normalizers":[{"type":"NFC"},{"type":"Lowercase"}]},
"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"[UNK]":0,"once":1,"upon":2,"a":3,"time":4,",":5,"</s>":6},"unk_token":"[UNK]"}}"#;

const WORD_PIECE: &str = r###"{"version":"1.0",
"truncation":{"direction":"Right","max_length":8,"strategy":"LongestFirst","stride":2},
"padding":{"strategy":{"Fixed":8},"direction":"Right","pad_to_multiple_of":null,"pad_id":0,"pad_type_id":0,"pad_token":"[PAD]"},
"added_tokens":[
{"id":0,"content":"[PAD]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
{"id":1,"content":"[UNK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
{"id":2,"content":"[CLS]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
{"id":3,"content":"[SEP]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":true},
"pre_tokenizer":{"type":"BertPreTokenizer"},
"post_processor":{"type":"TemplateProcessing",
"single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}}],
"pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],
"special_tokens":{"[CLS]":{"id":"[CLS]","ids":[2],"tokens":["[CLS]"]},"[SEP]":{"id":"[SEP]","ids":[3],"tokens":["[SEP]"]}}},
"decoder":{"type":"WordPiece","prefix":"##","cleanup":true},
"model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,
"vocab":{"[PAD]":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"once":4,"up":5,"##on":6,"a":7,"time":8,"cat":9,"##s":10,"1":11,"##2":12,"##3":13,",":14,".":15}}}"###;

const UNIGRAM: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":{"type":"NFKC"},
"pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true},
"post_processor":null,
"decoder":{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true},
"model":{"type":"Unigram","unk_id":0,"byte_fallback":false,"vocab":[["<unk>",0.0],["▁",-2.0],["▁once",-3.0],
["▁upon",-3.0],["▁a",-2.5],["▁time",-3.0],["t",-4.0],["i",-4.0],["m",-4.0],["e",-4.0],["o",-4.0],["n",-4.0],
["c",-4.0],["u",-4.0],["p",-4.0],["a",-4.0],[",",-4.0],["</s>",-1.0]]}}"#;

/// The GGUF seeds' tokenizers as `tokenizer.json` (what `convert` writes beside a student).
fn from_gguf_seeds() -> Result<Vec<Vec<u8>>> {
    let scratch = super::scratch("tokenizer-json")?;
    let mut out = Vec::new();
    // The tiny seeds only: SmolLM2's tokenizer.json is 2 MB, too slow to parse thousands of times.
    for (i, seed) in super::gguf::seeds()?.into_iter().take(2).enumerate() {
        let dir = scratch.path.join(i.to_string());
        seed.write(&dir, None)?;
        let gguf = dir.join("model.gguf");
        let saved = Tokenizer::for_model(&gguf)?.save_beside(&dir, &gguf)?;
        out.push(std::fs::read(saved)?);
    }
    Ok(out)
}

/// The `tokenizer.json` seeds.
pub fn seeds() -> Result<Vec<Input>> {
    let mut files = from_gguf_seeds()?;
    files.extend([WORD_LEVEL, WORD_PIECE, UNIGRAM].map(|t| t.as_bytes().to_vec()));
    Ok(files.into_iter().map(|f| Input::single("tokenizer.json", f)).collect())
}
