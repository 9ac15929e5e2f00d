//! Working memory: the prompt built for each chat turn, within the model's context window.
//!
//! A prompt is put together from parts of unequal value:
//!
//! 1. the **system prompt** and the **new user message** — mandatory; when they alone,
//!    plus the tokens reserved for the reply, exceed the window the turn cannot be served
//!    and [`assemble`] answers [`ContextError::TooLong`];
//! 2. the session's **rolling summary** — next, kept whole when it fits in what is left;
//! 3. **long-term memories** (best first) and **recent turns** (newest first), which
//!    compete for the rest by a fixed rule:
//!    - memories first take up to [`MEMORY_SHARE`] of what is left after the summary,
//!    - then turns fill what remains, newest first,
//!    - then memories take whatever the turns did not use.
//!
//!    Memories are kept as a best-first prefix (a lower-scored memory never stays while a
//!    higher-scored one goes) and turns as a newest-first suffix (the conversation never has
//!    holes); each is kept whole or not at all. When turns were dropped and the oldest turn
//!    left is not the user's, it goes too, so that the history starts on a user turn as
//!    templates that insist on user/assistant alternation require.
//!
//! Layout, chosen so that consecutive turns of a session share the longest possible prefix
//! (the model keeps a session's attention cache between turns and recomputes only what
//! follows the shared prefix; see `model::prompt_cache`): first what changes least — the
//! system message (the system prompt, then "Summary of earlier conversation: …", which
//! changes only when older turns are compressed) and each kept turn as its own message —
//! then what is new to this turn, the last user message: a "Relevant memories:" heading
//! with one memory per line ([`format_memory`]), a blank line, and the user's message;
//! then the template's generation prompt. Memories retrieved for this turn therefore
//! never sit in front of the history, where they would change the prefix at every turn.
//!
//! Token accuracy: the choice above is made with per-part estimates (each part's own tokens
//! plus the per-message overhead the template adds, measured once with a probe render); the
//! result is then rendered with the real chat template and counted with the real
//! tokenizer, and when it is over budget the parts chosen last are given back (binary
//! search over the order they were chosen in) until it fits. So the returned
//! `prompt_tokens` is the exact count of the returned prompt and never exceeds
//! `context_window − reply_reserve`.
//!
//! Everything here is a pure function over plain data: the chat template and tokenizer
//! come in through [`PromptRenderer`], so tests run with fakes.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Range;

use crate::model::chat_template::ChatMessage;

/// The largest fraction of the budget left after the mandatory parts and the summary that
/// memories may take before recent turns are served. Half: neither the knowledge retrieved
/// nor the flow of the conversation can crowd the other out; either may then use what the
/// other leaves.
pub const MEMORY_SHARE: f32 = 0.5;

/// Heading of the memory block in the system message.
const MEMORIES_HEADING: &str = "Relevant memories:";
/// Lead-in of the rolling summary in the system message.
const SUMMARY_LEAD: &str = "Summary of earlier conversation: ";

/// A long-term memory retrieved for this turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub id: String,
    /// `knowledge`, `episodic`, `fact` or `summary`.
    pub kind: String,
    pub text: String,
    /// When it was recorded, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Since when it holds, when that is worth saying: it replaced an older memory, or
    /// was given a validity start. Shown as "since <month> <year>" instead of the date.
    pub valid_since_ms: Option<i64>,
    /// Where it came from (a document name, a session), if known.
    pub source: Option<String>,
    /// Retrieval score: higher is more relevant. Decides which memories go first.
    pub score: f32,
}

/// One message of the recent conversation (short-term memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// `user` or `assistant` (passed to the template as is).
    pub role: String,
    pub content: String,
}

/// Everything a turn's prompt is built from.
#[derive(Debug, Clone, Copy)]
pub struct ContextRequest<'a> {
    pub system_prompt: &'a str,
    /// Retrieved memories; ranked by `score` here, so any order will do (ties keep this order).
    pub memories: &'a [Memory],
    pub rolling_summary: Option<&'a str>,
    /// Oldest first.
    pub recent_turns: &'a [Turn],
    /// The new user message.
    pub message: &'a str,
    /// The model's context window, in tokens.
    pub context_window: usize,
    /// Tokens kept free for the reply.
    pub reply_reserve: usize,
}

/// The model side of assembly: the chat template and the tokenizer.
pub trait PromptRenderer {
    /// Renders chat messages into prompt text with the chat template, generation prompt
    /// included (the prompt as the model will be fed it).
    fn render(&self, messages: &[ChatMessage]) -> Result<String, String>;
    /// Tokens `text` takes (no special tokens added: the template writes its own).
    fn count_tokens(&self, text: &str) -> usize;
}

/// The real thing: the chat model's own template and tokenizer.
impl PromptRenderer for crate::model::Generator {
    fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
        self.render_chat(messages, true).map_err(|e| e.to_string())
    }

    fn count_tokens(&self, text: &str) -> usize {
        crate::model::Generator::count_tokens(self, text)
    }
}

/// The prompt for a turn, with an account of what went into it.
#[derive(Debug, Clone, PartialEq)]
pub struct AssembledContext {
    /// The rendered prompt, ready for generation.
    pub prompt: String,
    /// The messages it was rendered from.
    pub messages: Vec<ChatMessage>,
    /// `count_tokens(prompt)`; at most `context_window − reply_reserve`.
    pub prompt_tokens: usize,
    /// Tokens per part, each counted on its own: `system` (the system prompt), `memories`
    /// (the memory block, heading included), `summary` (the summary line, lead-in included),
    /// `history` (the kept turns' contents), `message` (the user message), and `template`:
    /// the rest of `prompt_tokens` — the template's markup, the separators between parts and
    /// tokenizer merges across them (saturating at 0). Absent parts count 0.
    pub sections: BTreeMap<String, usize>,
    /// Ids of the memories kept, best first (the order they appear in).
    pub used_memories: Vec<String>,
    /// Where each kept memory's line lies in `prompt` (byte range), in the order of
    /// `used_memories`; empty when the template changed the text so that it cannot be
    /// found.
    pub memory_spans: Vec<Range<usize>>,
    /// Whether the rolling summary made it in.
    pub summary_included: bool,
    /// Oldest turns left out.
    pub dropped_turns: usize,
    /// Lowest-scored memories left out.
    pub dropped_memories: usize,
}

/// Why no prompt could be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The system prompt and the message, with the reply reserve, need more than the window.
    #[error("the prompt needs {needed} tokens (system prompt, message and reply reserve) but the context window is {window}")]
    TooLong { needed: usize, window: usize },
    /// The chat template failed.
    #[error("rendering the prompt: {0}")]
    Render(String),
}

/// One line for a memory: `[kind · YYYY-MM-DD · source] text` (no source part when it has
/// none). Line breaks in the text become spaces, so that each memory stays one line.
pub fn format_memory(m: &Memory) -> String {
    let date = match m.valid_since_ms {
        Some(since) => format!("since {}", format_month(since)),
        None => format_date(m.created_at_ms),
    };
    let text: String = m.text.trim().chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
    match m.source.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(source) => format!("[{} · {} · {}] {}", m.kind, date, source, text),
        None => format!("[{} · {}] {}", m.kind, date, text),
    }
}

/// `YYYY-MM-DD` (UTC) for milliseconds since the Unix epoch.
pub fn format_date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `March 2025` (UTC) for milliseconds since the Unix epoch.
pub fn format_month(ms: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (y, m, _) = civil_from_days(ms.div_euclid(86_400_000));
    format!("{} {y}", MONTHS[(m as usize - 1).min(11)])
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// (year, month 1–12, day 1–31) of a day counted from 1970-01-01 (day 0) in the proleptic
/// Gregorian calendar. Whole 400-year cycles (146 097 days each) are stepped over first, so
/// the year and month walks below are short for any date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    const CYCLE_DAYS: i64 = 146_097;
    let cycles = days.div_euclid(CYCLE_DAYS);
    let mut rest = days.rem_euclid(CYCLE_DAYS);
    let mut year = 1970 + 400 * cycles;
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if rest < len {
            break;
        }
        rest -= len;
        year += 1;
    }
    let feb = if is_leap(year) { 29 } else { 28 };
    let months = [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 0;
    while rest >= months[month] {
        rest -= months[month];
        month += 1;
    }
    (year, month as u32 + 1, rest as u32 + 1)
}

/// A part that competes for the budget, in the order parts are chosen.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Summary,
    /// The next memory in ranked order.
    Memory,
    /// The next older turn.
    Turn,
}

/// What goes into the prompt besides the mandatory parts.
struct Selection {
    summary: bool,
    /// How many of the ranked memories (a best-first prefix).
    memories: usize,
    /// Index of the oldest kept turn in `recent_turns` (turns from here on are kept).
    first_turn: usize,
}

/// Builds the prompt for a chat turn; see the module documentation for the policy.
pub fn assemble(req: &ContextRequest, r: &dyn PromptRenderer) -> Result<AssembledContext, ContextError> {
    // Ranked best first; NaN scores rank last. A stable sort keeps the caller's order on ties.
    let mut ranked: Vec<&Memory> = req.memories.iter().collect();
    let key = |m: &Memory| if m.score.is_nan() { f32::NEG_INFINITY } else { m.score };
    ranked.sort_by(|a, b| key(b).partial_cmp(&key(a)).unwrap_or(Ordering::Equal));
    let lines: Vec<String> = ranked.iter().map(|m| format_memory(m)).collect();
    let turns = req.recent_turns;
    let summary = req.rolling_summary.map(str::trim).filter(|s| !s.is_empty());

    let build = |sel: &Selection| build_messages(req, &lines[..sel.memories], summary.filter(|_| sel.summary), sel);
    let measure = |messages: &[ChatMessage]| -> Result<(String, usize), ContextError> {
        let prompt = r.render(messages).map_err(ContextError::Render)?;
        let tokens = r.count_tokens(&prompt);
        Ok((prompt, tokens))
    };

    // Mandatory parts alone.
    let bare = Selection { summary: false, memories: 0, first_turn: turns.len() };
    let bare_messages = build(&bare);
    let (bare_prompt, bare_tokens) = measure(&bare_messages)?;
    let needed = bare_tokens + req.reply_reserve;
    if needed > req.context_window {
        return Err(ContextError::TooLong { needed, window: req.context_window });
    }
    let budget = req.context_window - req.reply_reserve;

    // Estimated costs. A turn costs its content plus the markup the template wraps a
    // message in, measured with a probe pair of turns; if the template rejects the probe,
    // the whole fixed overhead of the bare prompt is charged per message instead (too much,
    // which only wastes room, where too little would cost re-renders).
    let fixed = bare_tokens.saturating_sub(r.count_tokens(req.system_prompt) + r.count_tokens(req.message));
    let per_message = probe_message_overhead(req, r, bare_tokens).unwrap_or(fixed);
    let turn_cost = |t: &Turn| r.count_tokens(&t.content) + per_message;
    // Block separators ("\n\n", "- ") are charged a token each. Without a system prompt the
    // summary also brings the system message's markup (memories go in the user message,
    // which is there anyway).
    let system_markup = if req.system_prompt.trim().is_empty() { per_message } else { 0 };
    let heading_cost = r.count_tokens(MEMORIES_HEADING) + 1;
    let memory_cost = |line: &str| r.count_tokens(line) + 1;
    let summary_cost = |s: &str| r.count_tokens(SUMMARY_LEAD) + r.count_tokens(s) + 1 + system_markup;

    // Choose by estimates, recording the order of choice (lowest value last).
    let mut order: Vec<Pick> = Vec::new();
    let mut left = budget - bare_tokens;
    if let Some(s) = summary {
        let cost = summary_cost(s);
        if cost <= left {
            left -= cost;
            order.push(Pick::Summary);
        }
    }
    let mut next_memory = 0;
    let mut take_memories = |limit: usize, order: &mut Vec<Pick>| -> usize {
        let mut used = 0;
        while next_memory < lines.len() {
            let cost = memory_cost(&lines[next_memory]) + if next_memory == 0 { heading_cost } else { 0 };
            if used + cost > limit {
                break;
            }
            used += cost;
            next_memory += 1;
            order.push(Pick::Memory);
        }
        used
    };
    let share = (left as f64 * MEMORY_SHARE as f64) as usize;
    let used = take_memories(share, &mut order);
    left -= used;
    for t in turns.iter().rev() {
        let cost = turn_cost(t);
        if cost > left {
            break;
        }
        left -= cost;
        order.push(Pick::Turn);
    }
    take_memories(left, &mut order);

    let select = |k: usize| {
        let mut sel = Selection { summary: false, memories: 0, first_turn: turns.len() };
        for pick in &order[..k] {
            match pick {
                Pick::Summary => sel.summary = true,
                Pick::Memory => sel.memories += 1,
                Pick::Turn => sel.first_turn -= 1,
            }
        }
        if sel.first_turn > 0 {
            while sel.first_turn < turns.len() && turns[sel.first_turn].role != "user" {
                sel.first_turn += 1;
            }
        }
        sel
    };

    // Measure for real; if over, find the longest prefix of the choices that fits. Prefix 0
    // is the bare prompt, known to fit, so the search always ends on a prompt that fits
    // (even where the count is not monotonic in the prefix).
    let mut best = (0, bare_messages, bare_prompt, bare_tokens);
    let full = select(order.len());
    let full_messages = build(&full);
    let (prompt, tokens) = measure(&full_messages)?;
    if tokens <= budget {
        best = (order.len(), full_messages, prompt, tokens);
    } else {
        let (mut lo, mut hi) = (0, order.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let messages = build(&select(mid));
            let (prompt, tokens) = measure(&messages)?;
            if tokens <= budget {
                best = (mid, messages, prompt, tokens);
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }

    let (k, messages, prompt, prompt_tokens) = best;
    let sel = select(k);
    let mut sections = BTreeMap::new();
    sections.insert("system".to_string(), r.count_tokens(req.system_prompt));
    let memories_tokens = if sel.memories > 0 { r.count_tokens(&memory_block(&lines[..sel.memories])) } else { 0 };
    sections.insert("memories".to_string(), memories_tokens);
    let summary_tokens = match summary.filter(|_| sel.summary) {
        Some(s) => r.count_tokens(&format!("{SUMMARY_LEAD}{s}")),
        None => 0,
    };
    sections.insert("summary".to_string(), summary_tokens);
    sections.insert("history".to_string(), turns[sel.first_turn..].iter().map(|t| r.count_tokens(&t.content)).sum());
    sections.insert("message".to_string(), r.count_tokens(req.message));
    let parts: usize = sections.values().sum();
    sections.insert("template".to_string(), prompt_tokens.saturating_sub(parts));

    let memory_spans = locate_memories(&prompt, &lines[..sel.memories], req.message);
    Ok(AssembledContext {
        prompt,
        messages,
        prompt_tokens,
        sections,
        memory_spans,
        used_memories: ranked[..sel.memories].iter().map(|m| m.id.clone()).collect(),
        summary_included: sel.summary,
        dropped_turns: sel.first_turn,
        dropped_memories: ranked.len() - sel.memories,
    })
}

/// Tokens the template adds per message: renders the bare prompt with a user/assistant pair
/// of one-word turns ahead of the message and halves the growth beyond the words. `None`
/// when the template refuses the probe.
fn probe_message_overhead(req: &ContextRequest, r: &dyn PromptRenderer, bare_tokens: usize) -> Option<usize> {
    const WORD: &str = "ok";
    let pair =
        [Turn { role: "user".into(), content: WORD.into() }, Turn { role: "assistant".into(), content: WORD.into() }];
    let probe = ContextRequest { recent_turns: &pair, ..*req };
    let sel = Selection { summary: false, memories: 0, first_turn: 0 };
    let prompt = r.render(&build_messages(&probe, &[], None, &sel)).ok()?;
    let growth = r.count_tokens(&prompt).saturating_sub(bare_tokens + 2 * r.count_tokens(WORD));
    Some(growth.div_ceil(2))
}

/// The byte range of each memory line in the rendered prompt: the memory block is found
/// where it leads the final user message (the last place it occurs with the message after
/// it), and its lines lie at known offsets within it.
fn locate_memories(prompt: &str, lines: &[String], message: &str) -> Vec<Range<usize>> {
    if lines.is_empty() {
        return Vec::new();
    }
    let block = memory_block(lines);
    let Some(start) = prompt.rfind(&format!("{block}\n\n{message}")) else {
        return Vec::new();
    };
    let mut at = start + MEMORIES_HEADING.len();
    lines
        .iter()
        .map(|line| {
            at += "\n- ".len();
            let span = at..at + line.len();
            at = span.end;
            span
        })
        .collect()
}

/// The memory block: heading, then one memory per line.
fn memory_block(lines: &[String]) -> String {
    let mut block = MEMORIES_HEADING.to_string();
    for line in lines {
        block.push_str("\n- ");
        block.push_str(line);
    }
    block
}

/// The messages for a selection: system (prompt, summary), kept turns, then the user
/// message with this turn's memories ahead of it. No system message when both of its
/// parts are empty.
fn build_messages(req: &ContextRequest, lines: &[String], summary: Option<&str>, sel: &Selection) -> Vec<ChatMessage> {
    let mut blocks: Vec<String> = Vec::new();
    if !req.system_prompt.trim().is_empty() {
        blocks.push(req.system_prompt.trim_end().to_string());
    }
    if let Some(s) = summary {
        blocks.push(format!("{SUMMARY_LEAD}{s}"));
    }
    let mut messages = Vec::with_capacity(req.recent_turns.len() + 2);
    if !blocks.is_empty() {
        messages.push(ChatMessage::new("system", blocks.join("\n\n")));
    }
    messages.extend(req.recent_turns[sel.first_turn..].iter().map(|t| ChatMessage::new(&t.role, &t.content)));
    let message =
        if lines.is_empty() { req.message.to_string() } else { format!("{}\n\n{}", memory_block(lines), req.message) };
    messages.push(ChatMessage::new("user", message));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Whitespace-word tokenizer with a tag template: each message is `<role> content </role>`
    /// (two tokens of markup), the generation prompt `<assistant>` one more. With `quadratic`,
    /// message i also carries i padding tokens, an overhead that per-message estimates cannot
    /// see, so assembly has to trim on the real count. With `strict`, roles after the system
    /// message must alternate starting with `user`, as some real templates demand.
    #[derive(Default)]
    struct Fake {
        quadratic: bool,
        strict: bool,
    }

    impl PromptRenderer for Fake {
        fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
            let mut out = String::new();
            let mut expect_user = true;
            for (i, m) in messages.iter().enumerate() {
                if self.strict && m.role != "system" {
                    if (m.role == "user") != expect_user {
                        return Err(format!("roles must alternate (message {i})"));
                    }
                    expect_user = !expect_user;
                }
                out.push_str(&format!("<{}> {} </{}>\n", m.role, m.content, m.role));
                if self.quadratic {
                    out.push_str(&"pad ".repeat(i));
                }
            }
            out.push_str("<assistant>");
            Ok(out)
        }

        fn count_tokens(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
    }

    fn words(n: usize, w: &str) -> String {
        vec![w; n].join(" ")
    }

    fn memory(id: &str, score: f32, text: &str) -> Memory {
        Memory {
            id: id.into(),
            kind: "fact".into(),
            text: text.into(),
            created_at_ms: 1_795_910_400_000,
            valid_since_ms: None,
            source: None,
            score,
        }
    }

    /// Alternating user/assistant turns, oldest first, each `len` words naming its index.
    fn turns(n: usize, len: usize) -> Vec<Turn> {
        (0..n)
            .map(|i| Turn {
                role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
                content: words(len, &format!("t{i}")),
            })
            .collect()
    }

    fn request<'a>(memories: &'a [Memory], turns: &'a [Turn], window: usize) -> ContextRequest<'a> {
        ContextRequest {
            system_prompt: "sys",
            memories,
            rolling_summary: None,
            recent_turns: turns,
            message: "hi",
            context_window: window,
            reply_reserve: 10,
        }
    }

    #[test]
    fn memory_spans_point_at_each_kept_line_even_when_the_message_repeats_the_block() {
        let mems = [memory("a", 0.9, "alpha fact"), memory("b", 0.5, "beta fact"), memory("c", 0.7, "gamma")];
        // A message that quotes a memory line and the heading must not be taken for the block.
        let quoted = format!("{MEMORIES_HEADING}\n- {} hi", format_memory(&mems[0]));
        let req = ContextRequest { message: &quoted, ..request(&mems, &[], 1000) };
        let ctx = assemble(&req, &Fake::default()).unwrap();
        assert_eq!(ctx.used_memories, ["a", "c", "b"]);
        assert_eq!(ctx.memory_spans.len(), 3);
        for (span, id) in ctx.memory_spans.iter().zip(&ctx.used_memories) {
            let m = mems.iter().find(|m| m.id == *id).unwrap();
            assert_eq!(&ctx.prompt[span.clone()], format_memory(m));
        }
        let message_at = ctx.prompt.rfind(&quoted).unwrap();
        assert!(ctx.memory_spans.iter().all(|s| s.end < message_at), "{:?} vs {message_at}", ctx.memory_spans);
        // No memories kept, no spans.
        let none = assemble(&request(&[], &[], 1000), &Fake::default()).unwrap();
        assert!(none.memory_spans.is_empty());
    }

    #[test]
    fn dates_convert_to_utc_calendar_days() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(86_399_999), "1970-01-01");
        assert_eq!(format_date(-1), "1969-12-31");
        assert_eq!(format_date(-86_400_000), "1969-12-31");
        assert_eq!(format_date(951_782_400_000), "2000-02-29");
        assert_eq!(format_date(951_868_800_000), "2000-03-01");
        assert_eq!(format_date(1_709_164_800_000), "2024-02-29");
        assert_eq!(format_date(1_735_689_599_000), "2024-12-31");
        assert_eq!(format_date(1_795_910_400_000), "2026-11-29");
        assert_eq!(format_date(4_107_542_400_000), "2100-03-01");
        assert_eq!(format_date(-2_208_988_800_000), "1900-01-01");
        assert_eq!(format_date(-62_135_596_800_000), "0001-01-01");
    }

    #[test]
    fn memories_format_on_one_line() {
        let mut m = memory("m1", 1.0, " likes tea\nno sugar ");
        m.kind = "episodic".into();
        assert_eq!(format_memory(&m), "[episodic · 2026-11-29] likes tea no sugar");
        m.source = Some("chat 42".into());
        assert_eq!(format_memory(&m), "[episodic · 2026-11-29 · chat 42] likes tea no sugar");
        m.source = Some("  ".into());
        assert_eq!(format_memory(&m), "[episodic · 2026-11-29] likes tea no sugar");
    }

    #[test]
    fn a_memory_that_replaced_another_says_since_when() {
        let mut m = memory("m1", 1.0, "lives in Porto");
        // 2025-03-10 (epoch day 20157), independent of the date code above.
        m.valid_since_ms = Some(20_157 * 86_400_000);
        assert_eq!(format_memory(&m), "[fact · since March 2025] lives in Porto");
        assert_eq!(format_month(0), "January 1970");
        assert_eq!(format_month(1_735_689_599_000), "December 2024");
    }

    #[test]
    fn everything_fits_in_order_with_exact_sections() {
        // Given out of order: ranking puts b (0.9) before a (0.5).
        let mems = [memory("a", 0.5, "alpha fact"), memory("b", 0.9, "beta fact here")];
        let ts = turns(4, 3);
        let req = ContextRequest { rolling_summary: Some("we talked about tea"), ..request(&mems, &ts, 1000) };
        let out = assemble(&req, &Fake::default()).unwrap();

        let mut expected =
            vec![ChatMessage::new("system", "sys\n\nSummary of earlier conversation: we talked about tea")];
        expected.extend(ts.iter().map(|t| ChatMessage::new(&t.role, &t.content)));
        let message =
            "Relevant memories:\n- [fact · 2026-11-29] beta fact here\n- [fact · 2026-11-29] alpha fact\n\nhi";
        expected.push(ChatMessage::new("user", message));
        assert_eq!(out.messages, expected);
        assert_eq!(out.prompt, Fake::default().render(&expected).unwrap());
        assert_eq!(out.used_memories, ["b", "a"]);
        assert!(out.summary_included);
        assert_eq!((out.dropped_turns, out.dropped_memories), (0, 0));

        let f = Fake::default();
        assert_eq!(out.prompt_tokens, f.count_tokens(&out.prompt));
        let s = &out.sections;
        assert_eq!(s["system"], 1);
        // Heading 2, then per line "-" + 3 tag tokens + the text.
        assert_eq!(s["memories"], 2 + (1 + 3 + 3) + (1 + 3 + 2));
        assert_eq!(s["summary"], 4 + 4);
        assert_eq!(s["history"], 4 * 3);
        assert_eq!(s["message"], 1);
        // Six messages of two markup tokens each, plus the generation prompt.
        assert_eq!(s["template"], 6 * 2 + 1);
        assert_eq!(s.values().sum::<usize>(), out.prompt_tokens);
    }

    #[test]
    fn over_budget_drops_oldest_turns_and_lowest_memories() {
        // Bare prompt: <system> sys </system> <user> hi </user> <assistant> = 7 tokens.
        // Budget 60 − 10 = 50, 43 left. Each memory line is 6 tokens (+1 for "-"), the
        // heading 2; each turn 5 words + 2 markup. Memories may first take 21: two (17).
        // Turns then take 3 × 7 = 21 of the 26 left; a third memory (7) no longer fits.
        let mems: Vec<Memory> =
            [0.2, 0.8, 0.5, 0.9].iter().enumerate().map(|(i, &s)| memory(&format!("m{i}"), s, "w w w")).collect();
        let ts = turns(6, 5);
        let f = Fake { strict: true, ..Fake::default() };
        let out = assemble(&request(&mems, &ts, 60), &f).unwrap();
        assert_eq!(out.used_memories, ["m3", "m1"]);
        assert_eq!(out.dropped_memories, 2);
        // Turns 3..6 were chosen, but turn 3 is the assistant's: it goes too.
        assert_eq!(out.dropped_turns, 4);
        let kept: Vec<&str> = out.messages[1..out.messages.len() - 1].iter().map(|m| m.content.as_str()).collect();
        assert_eq!(kept, [ts[4].content.as_str(), ts[5].content.as_str()]);
        assert!(out.prompt_tokens <= 50);
        assert_eq!(out.prompt_tokens, f.count_tokens(&out.prompt));
    }

    #[test]
    fn memories_use_what_turns_leave() {
        // As above with one turn: after it (7) 19 are left, enough for two more memories,
        // so memories end up with 31 tokens, beyond their first share of 21.
        let mems: Vec<Memory> = (0..4).map(|i| memory(&format!("m{i}"), 1.0 - i as f32 * 0.1, "w w w")).collect();
        let ts = turns(1, 5);
        let out = assemble(&request(&mems, &ts, 60), &Fake::default()).unwrap();
        assert_eq!(out.used_memories, ["m0", "m1", "m2", "m3"]);
        assert_eq!(out.dropped_turns, 0);
        assert_eq!(out.sections["memories"], 2 + 4 * 7);
        assert!(out.prompt_tokens <= 50);
    }

    #[test]
    fn summary_comes_before_memories_and_turns() {
        // 43 left; the summary (4 lead + 30 + 1) takes 35, leaving 8: no memory (10 with the
        // heading) but one turn (7).
        let mems = [memory("m", 1.0, "w w w")];
        let ts = turns(3, 5);
        let summary = words(30, "s");
        let req = ContextRequest { rolling_summary: Some(&summary), ..request(&mems, &ts, 60) };
        let out = assemble(&req, &Fake::default()).unwrap();
        assert!(out.summary_included);
        assert!(out.used_memories.is_empty());
        assert_eq!(out.dropped_turns, 2);
        // A summary that cannot fit is left out whole.
        let summary = words(60, "s");
        let req = ContextRequest { rolling_summary: Some(&summary), ..request(&mems, &ts, 60) };
        let out = assemble(&req, &Fake::default()).unwrap();
        assert!(!out.summary_included);
        assert_eq!(out.sections["summary"], 0);
        assert!(!out.messages[0].content.contains(SUMMARY_LEAD.trim()));
    }

    #[test]
    fn mandatory_parts_too_long() {
        let sys = words(10, "s");
        let msg = words(10, "m");
        let req = ContextRequest { system_prompt: &sys, message: &msg, ..request(&[], &[], 30) };
        // 2 + 10 + 2 + 10 + 1 = 25 for the bare prompt, + 10 reserve.
        assert_eq!(assemble(&req, &Fake::default()), Err(ContextError::TooLong { needed: 35, window: 30 }));
        // A reserve beyond the window alone.
        let req = ContextRequest { reply_reserve: 100, ..request(&[], &[], 50) };
        assert_eq!(assemble(&req, &Fake::default()), Err(ContextError::TooLong { needed: 107, window: 50 }));
        // Exactly full is fine.
        let req = ContextRequest { system_prompt: &sys, message: &msg, ..request(&[], &[], 35) };
        assert_eq!(assemble(&req, &Fake::default()).unwrap().prompt_tokens, 25);
    }

    #[test]
    fn template_errors_are_reported() {
        // History starting with the assistant, kept whole, is the caller's to fix.
        let ts = vec![Turn { role: "assistant".into(), content: "hello".into() }];
        let f = Fake { strict: true, ..Fake::default() };
        assert!(matches!(assemble(&request(&[], &ts, 100), &f), Err(ContextError::Render(_))));
    }

    /// Random parts, windows and reserves under both fake templates: never over budget,
    /// exact token count, best memories and newest turns kept, TooLong exactly when the
    /// mandatory parts do not fit.
    #[test]
    fn random_requests_never_exceed_the_budget() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut trimmed_something = 0;
        for case in 0..3000 {
            let f = Fake { quadratic: case % 2 == 1, strict: false };
            let sys = words(rng.gen_range(0..30), "s");
            let msg = words(rng.gen_range(1..30), "q");
            let summary = words(rng.gen_range(0..40), "y");
            let mems: Vec<Memory> = (0..rng.gen_range(0..8))
                .map(|i| {
                    let mut m = memory(&format!("m{i}"), rng.gen_range(0.0..1.0), &words(rng.gen_range(1..20), "w"));
                    if rng.gen_bool(0.5) {
                        m.source = Some("doc".into());
                    }
                    m
                })
                .collect();
            let ts = turns(rng.gen_range(0..10), rng.gen_range(1..30));
            let req = ContextRequest {
                system_prompt: &sys,
                memories: &mems,
                rolling_summary: rng.gen_bool(0.6).then_some(summary.as_str()),
                recent_turns: &ts,
                message: &msg,
                context_window: rng.gen_range(10..500),
                reply_reserve: rng.gen_range(0..100),
            };

            let mut bare = Vec::new();
            if !sys.is_empty() {
                bare.push(ChatMessage::new("system", &sys));
            }
            bare.push(ChatMessage::new("user", &msg));
            let needed = f.count_tokens(&f.render(&bare).unwrap()) + req.reply_reserve;
            let out = match assemble(&req, &f) {
                Err(ContextError::TooLong { needed: n, window }) => {
                    assert_eq!((n, window), (needed, req.context_window), "case {case}");
                    assert!(needed > req.context_window, "case {case}");
                    continue;
                }
                Err(e) => panic!("case {case}: {e}"),
                Ok(out) => out,
            };
            assert!(needed <= req.context_window, "case {case}");
            let budget = req.context_window - req.reply_reserve;
            assert!(out.prompt_tokens <= budget, "case {case}: {} > {budget}", out.prompt_tokens);
            assert_eq!(out.prompt_tokens, f.count_tokens(&out.prompt), "case {case}");
            assert_eq!(out.prompt, f.render(&out.messages).unwrap(), "case {case}");

            // Memories: every kept one scores at least as high as every dropped one.
            assert_eq!(out.used_memories.len() + out.dropped_memories, mems.len());
            let score = |id: &String| mems.iter().find(|m| &m.id == id).unwrap().score;
            let kept_min = out.used_memories.iter().map(score).fold(f32::INFINITY, f32::min);
            let dropped_max = mems
                .iter()
                .filter(|m| !out.used_memories.contains(&m.id))
                .map(|m| m.score)
                .fold(f32::NEG_INFINITY, f32::max);
            assert!(kept_min >= dropped_max, "case {case}");

            // Turns: exactly the newest ones, in order, between the system message and the message.
            let kept = &ts[out.dropped_turns..];
            let has_system = out.messages[0].role == "system";
            let middle = &out.messages[has_system as usize..out.messages.len() - 1];
            assert_eq!(middle.len(), kept.len(), "case {case}");
            for (m, t) in middle.iter().zip(kept) {
                assert_eq!((&m.role, &m.content), (&t.role, &t.content), "case {case}");
            }
            // The message comes last, after this turn's memories when there are any.
            let last = &out.messages.last().unwrap().content;
            assert!(last.ends_with(msg.as_str()), "case {case}");
            assert_eq!(last.starts_with(MEMORIES_HEADING), !out.used_memories.is_empty(), "case {case}");
            assert_eq!(out.summary_included, out.messages[0].content.contains("Summary of earlier conversation:"));
            if out.dropped_turns > 0 || out.dropped_memories > 0 {
                trimmed_something += 1;
            }
        }
        // The cases must actually exercise dropping, not only trivially fit.
        assert!(trimmed_something > 500, "{trimmed_something}");
    }
}
