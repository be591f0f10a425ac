//! Mutations of documents as trees: a JSON file, a TOML file or a safetensors header is parsed, one
//! node chosen uniformly among all its nodes is changed (a number to an interesting one, a string
//! emptied or repeated, an element or key removed or duplicated, a type swapped), and the document
//! is written back. Byte mutations of text mostly break the syntax (95% of byte-mutated
//! `tokenizer.json` files do not parse); these keep it, so that the loaders' own checks are reached.

use serde_json::{Value, json};

use crate::mutate::Rng;
use crate::structure;

/// A tree mutant of the file `name`, if its format is one of the above and it parses.
pub fn mutate(name: &str, bytes: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    if name.ends_with(".json") {
        let mut doc: Value = serde_json::from_slice(bytes).ok()?;
        change_one(&mut doc, rng);
        if rng.one_in(2) { serde_json::to_vec(&doc).ok() } else { serde_json::to_vec_pretty(&doc).ok() }
    } else if name.ends_with(".toml") {
        // Through JSON's data model: TOML has no null and no integer above i64::MAX, so a mutant
        // using those does not convert back, and the caller mutates bytes instead.
        let mut doc =
            serde_json::to_value(toml::from_str::<toml::Table>(std::str::from_utf8(bytes).ok()?).ok()?).ok()?;
        change_one(&mut doc, rng);
        toml::to_string(&toml::Value::try_from(doc).ok()?).ok().map(String::into_bytes)
    } else if name.ends_with(".safetensors") {
        safetensors_header(bytes, rng)
    } else {
        None
    }
}

/// The header of a safetensors file mutated as a tree, then the data laid out to match it.
fn safetensors_header(bytes: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let end = n.checked_add(8)?;
    let mut header: Value = serde_json::from_slice(bytes.get(8..end)?).ok()?;
    change_one(&mut header, rng);
    let header = serde_json::to_vec(&header).ok()?;
    let file = [(header.len() as u64).to_le_bytes().as_slice(), &header, &bytes[end..]].concat();
    structure::repair("model.safetensors", &file).or(Some(file))
}

fn count(node: &Value) -> usize {
    1 + match node {
        Value::Array(items) => items.iter().map(count).sum(),
        Value::Object(map) => map.values().map(count).sum(),
        _ => 0,
    }
}

/// The `n`-th node in depth-first order (0: the root); `n` is counted down on the way.
fn nth<'a>(node: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(node);
    }
    *n -= 1;
    match node {
        Value::Array(items) => items.iter_mut().find_map(|c| nth(c, n)),
        Value::Object(map) => map.values_mut().find_map(|c| nth(c, n)),
        _ => None,
    }
}

/// Numbers that break sizes, counts and indices.
fn interesting_number(rng: &mut Rng) -> Value {
    let all = [
        json!(0),
        json!(1),
        json!(-1),
        json!(2147483648u64),
        json!(4294967296u64),
        json!(1u64 << 53),
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(0.5),
        json!(-0.0),
    ];
    all[rng.below(all.len())].clone()
}

fn change_one(root: &mut Value, rng: &mut Rng) {
    let mut n = rng.below(count(root));
    if let Some(node) = nth(root, &mut n) {
        let old = node.take();
        *node = changed(old, rng);
    }
}

/// A changed node: mostly a change within its type, sometimes another type altogether.
fn changed(node: Value, rng: &mut Rng) -> Value {
    if rng.one_in(6) {
        let swaps = [Value::Null, json!(""), json!([]), json!({}), json!(true), interesting_number(rng)];
        return swaps[rng.below(swaps.len())].clone();
    }
    match node {
        Value::Null | Value::Bool(_) | Value::Number(_) => interesting_number(rng),
        Value::String(s) => match rng.below(3) {
            0 => json!(""),
            1 => json!(s.repeat(1 + rng.below(64))),
            _ => json!(format!("{s}\u{0}ü../")),
        },
        Value::Array(mut items) => {
            if !items.is_empty() {
                let i = rng.below(items.len());
                match rng.below(3) {
                    0 => drop(items.remove(i)),
                    1 => items.insert(i, items[i].clone()),
                    _ => items.clear(),
                }
            }
            Value::Array(items)
        }
        Value::Object(mut map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            match (keys.is_empty(), rng.below(3)) {
                (false, 0) => drop(map.remove(&keys[rng.below(keys.len())])),
                (false, 1) => {
                    let key = &keys[rng.below(keys.len())];
                    let copy = map[key].clone();
                    map.insert(format!("{key}_"), copy);
                }
                _ => drop(map.insert("fuzz".into(), Value::Null)),
            }
            Value::Object(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_can_be_reached() {
        let doc = json!({"a": [1, {"b": 2}], "c": "x"});
        let total = count(&doc);
        assert_eq!(total, 6);
        let mut seen = Vec::new();
        for i in 0..total {
            let (mut copy, mut n) = (doc.clone(), i);
            seen.push(nth(&mut copy, &mut n).unwrap().clone());
        }
        assert_eq!(seen[4], json!(2));
        assert_eq!(seen[5], json!("x"));
    }

    #[test]
    fn mutants_still_parse() {
        let mut rng = Rng::new(9);
        let json = br#"{"vocab_size": 32, "layers": [1, 2], "name": "x"}"#;
        let toml = b"steps = 5\n[data]\nbatch_size = 8\npath = \"d\"\n";
        for _ in 0..200 {
            let mutant = mutate("config.json", json, &mut rng).unwrap();
            serde_json::from_slice::<Value>(&mutant).unwrap();
            if let Some(mutant) = mutate("x.toml", toml, &mut rng) {
                toml::from_str::<toml::Table>(std::str::from_utf8(&mutant).unwrap()).unwrap();
            }
        }
    }
}
