//! "Did you mean …?": the nearest of a few known names to one that was not found, for refusals that can
//! name what the caller may see (never anything it may not).

/// The candidate closest to `word` by edit distance, when it is close enough to be a typo (at most a third
/// of the word's length, and at least 1, edits away); ties go to the first candidate.
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_word_and_strangers_find_nothing() {
        assert_eq!(edit_distance("vision", "visoin"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        let known = ["default", "vision", "audio"];
        assert_eq!(nearest("visoin", known), Some("vision"));
        assert_eq!(nearest("defualt", known), Some("default"));
        assert_eq!(nearest("audi", known), Some("audio"));
        assert_eq!(nearest("finance", known), None);
        assert_eq!(
            nearest("vision", known),
            None,
            "an exact name is not a suggestion"
        );
    }
}
