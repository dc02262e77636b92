//! Validation of the names clients put in OIP paths (model names and versions).
//!
//! Owns the one rule: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`, the charset of Meridian's object names. A name that
//! breaks it never reaches a [`RouteSource`](crate::RouteSource) lookup. Must never echo an unbounded
//! amount of client input back.

/// Longest accepted name, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 128;

/// The rule as shown to clients.
pub(crate) const NAME_RULE: &str = "must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}";

/// Whether `name` is a valid model name or version.
pub(crate) fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= MAX_NAME_BYTES
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `name` shortened for an error message: at most [`MAX_NAME_BYTES`] characters, then `...`.
pub(crate) fn for_message(name: &str) -> String {
    match name.char_indices().nth(MAX_NAME_BYTES) {
        Some((cut, _)) => format!("{}...", &name[..cut]),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_object_name_rule() {
        for ok in ["m", "resnet-50", "llama_3.1", "A9", &"x".repeat(128)] {
            assert!(is_valid_name(ok), "{ok:?} should be valid");
        }
        for bad in [
            "",
            ".",
            "..",
            "-lead",
            "_lead",
            "has space",
            "slash/inside",
            "ümlaut",
            "semi;colon",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn long_names_are_shortened_in_messages() {
        assert_eq!(for_message("short"), "short");
        let long = "é".repeat(300);
        let shown = for_message(&long);
        assert!(shown.ends_with("..."));
        assert_eq!(shown.chars().count(), MAX_NAME_BYTES + 3);
    }
}
