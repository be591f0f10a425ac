//! The few Python string operations lm-eval's templates and helpers apply, with Python's
//! semantics where Rust's differ.

/// Python's `str.isspace()` for one character: Unicode White_Space plus the four ASCII
/// information separators U+001C..U+001F (bidirectional class B / S), which Python also strips.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `s.strip()`.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `s.lstrip()`.
pub fn lstrip(s: &str) -> &str {
    s.trim_start_matches(is_space)
}

/// `s.rstrip()`.
pub fn rstrip(s: &str) -> &str {
    s.trim_end_matches(is_space)
}

/// `s.capitalize()`: the first character upper-cased, the rest lower-cased. (Python title-cases
/// the first character; that differs from upper-casing only for a few digraphs and ligatures.)
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars.as_str().to_lowercase().chars()).collect(),
        None => String::new(),
    }
}

/// `s[0].lower() + s[1:]`.
pub fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `re.sub(r"\[.*?\]", "", s)`: removes every bracketed span that does not cross a newline (`.`
/// does not match `\n`), leftmost first, each ending at the first `]` after its `[`.
pub fn remove_bracketed(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let close = after.find(']').filter(|&c| !after[..c].contains('\n'));
        match close {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            None => {
                // No match starting here: keep the `[` and look further on.
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_semantics() {
        assert_eq!(strip("\u{1f} a b \n"), "a b");
        assert_eq!(lstrip("  a "), "a ");
        assert_eq!(rstrip("  a \t"), "  a");
        assert_eq!(capitalize("the LADY"), "The lady");
        assert_eq!(capitalize(""), "");
        assert_eq!(lower_first("Water flowed"), "water flowed");
        assert_eq!(remove_bracketed("a [x] b [y\n] c [z"), "a  b [y\n] c [z");
        assert_eq!(remove_bracketed("[step] [title] x]"), "  x]");
        assert_eq!(remove_bracketed("[[a]]"), "]");
    }
}
