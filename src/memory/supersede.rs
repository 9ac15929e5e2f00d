//! Deciding whether a new memory updates an older fact of the same user (automatic
//! supersession), by rules over the two texts and their embedding similarity.
//!
//! Candidates come from a dense search over the user's current facts, so they are
//! already about the same things; the rules decide between an *update* ("Dana moved to
//! Porto" after "Dana lives in Lyon") and the hard negatives that look like one: an
//! addition ("also", a second pet), a hypothetical ("might move"), another person ("her
//! brother lives in Porto"), a restatement of the same fact.
//!
//! The rules, in order:
//! 1. below [`Rules::min_similarity`] nothing is decided: the texts are not about the
//!    same thing;
//! 2. a restatement (no content word of the new text that the old lacks) is no update;
//! 3. words that add or wish ("also", "too", "another", "might", "hopes to"…) veto;
//! 4. a relative or other person in one text and not the other vetoes: the fact is
//!    about someone else;
//! 5. a word that says a state changed ("now", "moved", "no longer", "switched",
//!    "anymore", "instead"…) makes an update at [`Rules::min_similarity`];
//! 6. without one, the same frame with a different value ("the locker code is 1234" →
//!    "the locker code is 9876": the texts agree up to the value) makes an update when
//!    the texts are very similar ([`Rules::frame_similarity`]).
//!
//! Precision and recall are measured by `engram eval supersede` on labelled pairs in
//! `tests/data` (a tuning set and a held-out set); the README has the figures. Because
//! they stay under 0.9 precision on the held-out pairs, automatic supersession is off
//! unless `memories.auto_supersede` turns it on.

use std::collections::HashSet;

use serde::Deserialize;

use super::lexical::split_words;

/// The thresholds of the rules; see the module docs.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Cosine similarity below which two memories are never taken for versions of one fact.
    pub min_similarity: f32,
    /// Cosine similarity above which the same frame with a new value is an update even
    /// without a word saying so.
    pub frame_similarity: f32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { min_similarity: 0.35, frame_similarity: 0.7 }
    }
}

/// Why the rules decided as they did (for the eval's error analysis and the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unrelated,
    Restatement,
    Additive,
    OtherPerson,
    ChangeWord,
    NewValue,
    NoEvidence,
}

impl Verdict {
    /// Whether the verdict is "the new memory supersedes the old".
    pub fn supersedes(self) -> bool {
        matches!(self, Verdict::ChangeWord | Verdict::NewValue)
    }
}

/// Words that carry no content of their own.
const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "for", "with", "by", "from", "is", "are",
    "was", "were", "be", "been", "has", "have", "had", "do", "does", "did", "i", "me", "my", "we", "our", "us", "you",
    "your", "he", "him", "his", "she", "her", "they", "them", "their", "it", "its", "this", "that", "these", "those",
    "there", "here", "so", "as", "just", "very", "really", "s", "t", "m", "re", "ve", "ll", "d", "am", "will", "would",
    "can", "could", "about", "into", "over", "up", "out", "than", "then", "all",
];

/// Words that add to a fact or wish for a change rather than make one: they veto.
const ADDITIVE: &[&str] = &[
    "also",
    "too",
    "another",
    "second",
    "additionally",
    "besides",
    "might",
    "maybe",
    "perhaps",
    "someday",
    "wish",
    "wishes",
    "hope",
    "hopes",
    "hoping",
    "considering",
    "thinking",
    "dreams",
    "dream",
    "want",
    "wants",
    "would",
    "could",
    "if",
    "joked",
    "jokes",
    "joking",
];

/// Phrases of several words that add or wish.
const ADDITIVE_PHRASES: &[&str] = &["as well", "one day", "in addition", "would like", "on top of"];

/// Words of a one-off event or of the past: they veto unless a change is also said.
const EVENT: &[&str] =
    &["visited", "visit", "trip", "holiday", "vacation", "during", "ago", "childhood", "once", "weekend"];

/// Words that say a state changed.
const CHANGE: &[&str] = &[
    "now",
    "moved",
    "moving",
    "relocated",
    "switched",
    "switch",
    "changed",
    "change",
    "anymore",
    "instead",
    "quit",
    "left",
    "replaced",
    "became",
    "become",
    "new",
    "newly",
    "nowadays",
    "currently",
    "cancelled",
    "canceled",
    "postponed",
    "rescheduled",
    "stopped",
    "sold",
    "divorced",
    "separated",
    "retired",
    "promoted",
    "renamed",
    "updated",
    "lately",
    "since",
    "withdrew",
    "withdrawn",
    "traded",
    "decided",
    "elected",
    "married",
    "died",
    "raised",
    "cut",
    "dropped",
    "rather",
    "turned",
    "ended",
    "graduated",
    "hired",
    "fired",
];

/// Phrases of several words that say a state changed.
const CHANGE_PHRASES: &[&str] = &[
    "no longer",
    "these days",
    "as of",
    "not anymore",
    "gave up",
    "broke up",
    "any more",
    "from now",
    "pushed back",
    "stepped down",
    "took over",
    "passed away",
    "no more",
    "come around",
    "turned into",
    "after all",
    "called off",
    "is off",
    "up to",
    "moved to",
    "took a",
];

/// People other than the user: a fact naming one is about them.
const OTHERS: &[&str] = &[
    "brother",
    "sister",
    "mother",
    "mum",
    "mom",
    "father",
    "dad",
    "son",
    "daughter",
    "wife",
    "husband",
    "partner",
    "boyfriend",
    "girlfriend",
    "friend",
    "colleague",
    "boss",
    "neighbour",
    "neighbor",
    "cousin",
    "aunt",
    "uncle",
    "grandma",
    "grandmother",
    "grandpa",
    "grandfather",
    "niece",
    "nephew",
    "roommate",
    "flatmate",
    "kid",
    "kids",
    "children",
    "child",
    "parents",
    "fiance",
    "fiancee",
    "manager",
];

fn words(text: &str) -> Vec<String> {
    split_words(&text.to_lowercase()).map(str::to_owned).collect()
}

/// A crude stem, enough to match "moves" with "move" and "lived" with "live".
fn stem(word: &str) -> &str {
    for suffix in ["ing", "ed", "es", "s"] {
        if word.len() > suffix.len() + 2 {
            if let Some(stripped) = word.strip_suffix(suffix) {
                return stripped;
            }
        }
    }
    word
}

fn content(words: &[String]) -> Vec<&str> {
    words.iter().map(String::as_str).filter(|w| !STOP_WORDS.contains(w)).map(stem).collect()
}

/// The other people a text names (stemmed).
fn others(words: &[String]) -> HashSet<&str> {
    words.iter().map(|w| stem(w)).filter(|w| OTHERS.iter().any(|o| stem(o) == *w)).collect()
}

/// Whether the words hold one of the phrases (each of several words, space-separated).
fn has_phrase(words: &[String], phrases: &[&str]) -> bool {
    let padded = format!(" {} ", words.join(" "));
    phrases.iter().any(|p| padded.contains(&format!(" {p} ")))
}

impl Rules {
    /// Decides whether `new` updates `old`, given their embeddings' cosine similarity.
    pub fn decide(&self, old: &str, new: &str, similarity: f32) -> Verdict {
        if similarity < self.min_similarity {
            return Verdict::Unrelated;
        }
        let (old_words, new_words) = (words(old), words(new));
        let (old_content, new_content) = (content(&old_words), content(&new_words));
        let old_set: HashSet<&str> = old_content.iter().copied().collect();
        if new_content.iter().all(|w| old_set.contains(w)) {
            return Verdict::Restatement;
        }
        let said = |ws: &[String], list: &[&str]| ws.iter().any(|w| list.contains(&w.as_str()));
        if said(&new_words, ADDITIVE) || has_phrase(&new_words, ADDITIVE_PHRASES) {
            return Verdict::Additive;
        }
        // Someone the old text does not name: the new fact is about them.
        if !others(&new_words).is_subset(&others(&old_words)) {
            return Verdict::OtherPerson;
        }
        let change = said(&new_words, CHANGE) || has_phrase(&new_words, CHANGE_PHRASES);
        if said(&new_words, EVENT) && !change {
            return Verdict::Additive;
        }
        // "used to" in the old text is history, not the current state.
        if change && !has_phrase(&old_words, &["used to"]) {
            return Verdict::ChangeWord;
        }
        if similarity >= self.frame_similarity && new_value(&old_content, &new_content) {
            return Verdict::NewValue;
        }
        Verdict::NoEvidence
    }
}

/// The new text gives the old one's subject a new value: the numbers in them differ
/// (a code, a budget, a distance), or they share a frame of content words and each has
/// words the other lacks.
fn new_value(old: &[&str], new: &[&str]) -> bool {
    let numbers = |ws: &[&str]| -> Vec<String> {
        ws.iter().filter(|w| w.chars().any(|c| c.is_ascii_digit())).map(|w| w.to_string()).collect()
    };
    let (old_numbers, new_numbers) = (numbers(old), numbers(new));
    if !old_numbers.is_empty() && !new_numbers.is_empty() {
        return old_numbers != new_numbers;
    }
    same_frame(old, new)
}

/// The two texts say the same thing of the same subject up to a value: they share a
/// frame of at least two content words, in order, and each has words the other lacks.
fn same_frame(old: &[&str], new: &[&str]) -> bool {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old.iter().rev().zip(new.iter().rev()).take_while(|(a, b)| a == b).count();
    let shared = (prefix + suffix).min(old.len().min(new.len()));
    let old_set: HashSet<&str> = old.iter().copied().collect();
    let new_set: HashSet<&str> = new.iter().copied().collect();
    shared >= 2 && old_set.difference(&new_set).next().is_some() && new_set.difference(&old_set).next().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_decides_its_own_case() {
        let r = Rules::default();
        let d = |old: &str, new: &str| r.decide(old, new, 0.8);
        assert_eq!(d("Dana lives in Lyon.", "Dana moved to Porto."), Verdict::ChangeWord);
        assert_eq!(d("Dana's locker code is 1234.", "Dana's locker code is 9876."), Verdict::NewValue);
        assert_eq!(d("Dana lives in Lyon.", "Dana lives in Lyon, really."), Verdict::Restatement);
        assert_eq!(d("Dana loves hiking.", "Dana also took up climbing."), Verdict::Additive);
        assert_eq!(d("Dana lives in Lyon.", "Dana might move to Porto one day."), Verdict::Additive);
        assert_eq!(d("Dana lives in Lyon.", "Dana's brother now lives in Porto."), Verdict::OtherPerson);
        assert_eq!(r.decide("Dana lives in Lyon.", "Dana moved to Porto.", 0.2), Verdict::Unrelated);
        assert!(Verdict::NewValue.supersedes() && !Verdict::Additive.supersedes());
    }
}
