//! Compression: the prompt that folds a session's oldest turns into its rolling summary
//! (the Compressive Transformer's idea — old context condensed, not dropped).
//!
//! The prompt always fits the model's window: it folds as many of the oldest turns
//! (whole user/assistant pairs) as fit the budget with the summary so far, and when even
//! one pair does not fit — a pasted document, say — the pair's texts are shortened until
//! it does. Without this bound a session whose turns outgrow the window could never be
//! compressed again, and every later turn would fail.

use super::context::PromptRenderer;
use crate::model::chat_template::ChatMessage;

/// The summary prompt and how many turns it folds.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryPrompt {
    pub prompt: String,
    pub folded: usize,
}

/// Texts are never cut below this many characters: a summary of less says nothing.
const MIN_CHARS: usize = 200;

const INSTRUCTION: &str = "Summarize the conversation below in a few sentences. Keep every fact about the user \
                           (names, places, preferences, plans).";

/// The prompt folding up to `want` of the oldest `turns` (role, content) into the
/// summary `previous`, within `budget` tokens; `None` when not even a shortened pair fits.
pub fn summary_prompt(
    previous: &str,
    turns: &[(String, String)],
    want: usize,
    budget: usize,
    r: &dyn PromptRenderer,
) -> Option<SummaryPrompt> {
    // An even count keeps user/assistant pairs together.
    let mut n = want.min(turns.len()) & !1;
    while n >= 2 {
        let prompt = render(previous, &turns[..n], usize::MAX, r)?;
        if r.count_tokens(&prompt) <= budget {
            return Some(SummaryPrompt { prompt, folded: n });
        }
        if n == 2 {
            break;
        }
        n -= 2;
    }
    if n < 2 {
        return None;
    }
    // One pair that does not fit: shorten every text (the previous summary too) until it
    // does. Halving finds a fitting length in a few renders.
    let longest = turns[..2].iter().map(|(_, c)| c.chars().count()).chain([previous.chars().count()]).max()?;
    let mut chars = longest / 2;
    while chars >= MIN_CHARS {
        let prompt = render(previous, &turns[..2], chars, r)?;
        if r.count_tokens(&prompt) <= budget {
            return Some(SummaryPrompt { prompt, folded: 2 });
        }
        chars /= 2;
    }
    None
}

fn render(previous: &str, turns: &[(String, String)], max_chars: usize, r: &dyn PromptRenderer) -> Option<String> {
    let cut = |s: &str| -> String {
        if s.chars().count() <= max_chars {
            s.to_owned()
        } else {
            s.chars().take(max_chars).collect::<String>() + " …"
        }
    };
    let mut text = format!("{INSTRUCTION}\n\n");
    if !previous.is_empty() {
        text += &format!("Summary so far: {}\n\n", cut(previous));
    }
    for (role, content) in turns {
        text += &format!("{role}: {}\n", cut(content));
    }
    r.render(&[ChatMessage::new("user", text)]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per character, no template markup.
    struct Chars;
    impl PromptRenderer for Chars {
        fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
            Ok(messages.iter().map(|m| m.content.as_str()).collect())
        }
        fn count_tokens(&self, text: &str) -> usize {
            text.chars().count()
        }
    }

    fn pairs(n: usize, len: usize) -> Vec<(String, String)> {
        (0..n)
            .flat_map(|i| {
                [("user".to_owned(), format!("{i}q{}", "x".repeat(len))), ("assistant".into(), "y".repeat(len))]
            })
            .collect()
    }

    #[test]
    fn folds_as_many_pairs_as_fit() {
        let turns = pairs(6, 100);
        let all = summary_prompt("", &turns, 12, 100_000, &Chars).unwrap();
        assert_eq!(all.folded, 12);
        let some = summary_prompt("", &turns, 12, 700, &Chars).unwrap();
        assert!(some.folded >= 2 && some.folded < 12 && some.folded % 2 == 0, "{}", some.folded);
        assert!(Chars.count_tokens(&some.prompt) <= 700);
        // The oldest turns are the ones folded.
        assert!(some.prompt.contains("0q"));
    }

    #[test]
    fn one_oversized_pair_is_shortened_to_fit_and_hopeless_budgets_give_none() {
        let turns = pairs(1, 50_000);
        let p = summary_prompt("an earlier summary", &turns, 2, 4_000, &Chars).unwrap();
        assert_eq!(p.folded, 2);
        assert!(Chars.count_tokens(&p.prompt) <= 4_000);
        assert!(summary_prompt("", &turns, 2, 50, &Chars).is_none());
        assert!(summary_prompt("", &pairs(3, 10)[..1], 2, 10_000, &Chars).is_none(), "no whole pair to fold");
    }
}
