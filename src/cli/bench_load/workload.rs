//! What `engram bench load` sends: the operation mix, the texts (generated from a small
//! built-in vocabulary, so the benchmark needs no data and no network), and the request
//! each operation makes.

use std::collections::BTreeMap;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

use super::super::client::encode;

/// One kind of request the benchmark makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `POST /v1/chat`: a short message, a short reply.
    Chat,
    /// `POST /v1/memories/search` in the scope under test.
    Search,
    /// `POST /v1/memories`: one memory into the scope under test.
    Add,
    /// `POST /v1/sessions/{id}/messages`: a few messages of a past conversation.
    Import,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Chat, Op::Search, Op::Add, Op::Import];

    pub fn name(self) -> &'static str {
        match self {
            Op::Chat => "chat",
            Op::Search => "search",
            Op::Add => "add",
            Op::Import => "import",
        }
    }
}

/// Relative weights of the operations, e.g. `chat=1,search=6,add=2,import=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(pub BTreeMap<Op, u32>);

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| format!("`{part}` is not op=weight"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(|| format!("unknown operation `{}` (chat, search, add or import)", name.trim()))?;
            let weight: u32 =
                weight.trim().parse().map_err(|_| format!("`{part}`: the weight is not a whole number"))?;
            if weight > 1000 {
                return Err(format!("`{part}`: weights go up to 1000"));
            }
            if weight > 0 {
                weights.insert(op, weight);
            }
        }
        if weights.is_empty() {
            return Err("the mix names no operation with a weight above 0".into());
        }
        Ok(Mix(weights))
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(op, w)| format!("{}={w}", op.name())).collect();
        f.write_str(&parts.join(","))
    }
}

/// Draws operations in random order but in the mix's exact proportions: a bag holding
/// each operation as often as its weight, shuffled, emptied, refilled. A run of a few
/// seconds therefore still does every operation of the mix, and the mix that was asked
/// for is the mix that ran.
pub struct OpBag {
    full: Vec<Op>,
    left: Vec<Op>,
}

impl OpBag {
    pub fn new(mix: &Mix) -> OpBag {
        let full = mix.0.iter().flat_map(|(op, w)| std::iter::repeat_n(*op, *w as usize)).collect();
        OpBag { full, left: Vec::new() }
    }

    pub fn next(&mut self, rng: &mut impl Rng) -> Op {
        if self.left.is_empty() {
            self.left = self.full.clone();
            self.left.shuffle(rng);
        }
        self.left.pop().expect("a mix holds at least one operation")
    }
}

const PEOPLE: [&str; 16] = [
    "Ada", "Bruno", "Chiara", "Dmitri", "Esme", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemi", "Lars", "Mira",
    "Nadia", "Oskar", "Priya",
];
const DID: [&str; 12] = [
    "painted",
    "repaired",
    "borrowed",
    "sold",
    "photographed",
    "ordered",
    "packed",
    "lost",
    "found",
    "cleaned",
    "measured",
    "returned",
];
const LOOKS: [&str; 10] = ["red", "old", "tiny", "wooden", "silver", "broken", "striped", "heavy", "quiet", "bright"];
const THINGS: [&str; 12] = [
    "bicycle",
    "kettle",
    "lantern",
    "canoe",
    "piano",
    "umbrella",
    "telescope",
    "notebook",
    "tent",
    "guitar",
    "ladder",
    "clock",
];
const PLACES: [&str; 8] = [
    "near the harbour",
    "in the garden",
    "at the library",
    "behind the bakery",
    "on the ferry",
    "in the attic",
    "at the market",
    "by the river",
];
const WHEN: [&str; 8] = [
    "on Monday",
    "last winter",
    "before breakfast",
    "in March",
    "after the storm",
    "during the festival",
    "yesterday",
    "at dawn",
];

/// Distinct sentences the vocabulary can make (two word orders).
pub const SENTENCES: u64 = 2 * 16 * 12 * 10 * 12 * 8 * 8;

/// The `i`-th of the vocabulary's distinct sentences, scattered so that neighbours
/// differ in every word. Past the last, a counter keeps them distinct.
pub fn nth_statement(i: u64) -> String {
    // 1_000_003 is prime and does not divide SENTENCES, so i ↦ i·p mod N is a bijection.
    let mut n = (i % SENTENCES) * 1_000_003 % SENTENCES;
    let mut digit = |len: usize| {
        let d = (n % len as u64) as usize;
        n /= len as u64;
        d
    };
    let (who, did, looks, thing, place, when, order) =
        (digit(16), digit(12), digit(10), digit(12), digit(8), digit(8), digit(2));
    let (who, did, looks, thing, place, when) =
        (PEOPLE[who], DID[did], LOOKS[looks], THINGS[thing], PLACES[place], WHEN[when]);
    let mut s = if order == 0 {
        format!("{who} {did} the {looks} {thing} {place} {when}.")
    } else {
        let when = capitalised(when);
        format!("{when}, {who} {did} a {looks} {thing} {place}.")
    };
    if i >= SENTENCES {
        s.push_str(&format!(" (note {})", i / SENTENCES));
    }
    s
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// A random sentence of the vocabulary.
pub fn statement(rng: &mut impl Rng) -> String {
    nth_statement(rng.gen_range(0..SENTENCES))
}

/// A random question about the kind of thing the statements say.
pub fn question(rng: &mut impl Rng) -> String {
    let pick = |rng: &mut _, words: &[&'static str]| *words.choose(rng).expect("vocabulary lists are not empty");
    match rng.gen_range(0..4) {
        0 => format!("Who {} the {} {}?", pick(rng, &DID), pick(rng, &LOOKS), pick(rng, &THINGS)),
        1 => format!("What did {} leave {}?", pick(rng, &PEOPLE), pick(rng, &PLACES)),
        2 => format!("Where is the {} that {} {}?", pick(rng, &THINGS), pick(rng, &PEOPLE), pick(rng, &DID)),
        _ => format!("What happened {} {}?", pick(rng, &PLACES), pick(rng, &WHEN)),
    }
}

/// One HTTP request: method, path and JSON body.
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub body: Value,
}

/// Who the requests are for: the scope under test, and the prefixes of the other users.
#[derive(Debug, Clone)]
pub struct Users {
    /// The one user whose memories are searched and added to (and seeded).
    pub scope: String,
    /// Chat and import go to `USERS_PER_OP` users named after this.
    pub prefix: String,
}

/// Chat and import users rotate over this many names.
const USERS_PER_OP: usize = 8;
/// A chat session is continued for this many turns, then a new one begins.
const TURNS_PER_SESSION: u32 = 4;

/// What one client remembers between its requests.
pub struct ClientState {
    pub id: usize,
    pub sent: u64,
    chat_session: Option<String>,
    chat_turns: u32,
    chat_user: usize,
}

impl ClientState {
    pub fn new(id: usize) -> ClientState {
        ClientState { id, sent: 0, chat_session: None, chat_turns: 0, chat_user: id % USERS_PER_OP }
    }

    /// Notes the session a chat reply named, to continue it next time.
    pub fn chat_answered(&mut self, answer: &Value) {
        self.chat_turns += 1;
        if self.chat_turns >= TURNS_PER_SESSION {
            self.chat_session = None;
            self.chat_turns = 0;
            self.chat_user = (self.chat_user + 1) % USERS_PER_OP;
        } else {
            self.chat_session = answer["session_id"].as_str().map(str::to_owned);
        }
    }

    /// After a failed turn the next one starts a new session.
    pub fn chat_failed(&mut self) {
        self.chat_session = None;
        self.chat_turns = 0;
    }
}

/// Settings of the requests that do not change during a run.
pub struct Shape {
    pub users: Users,
    pub search_mode: String,
    pub max_tokens: usize,
}

/// The request for `op`, with texts drawn from `rng`.
pub fn request(op: Op, shape: &Shape, state: &mut ClientState, rng: &mut impl Rng) -> Request {
    state.sent += 1;
    let users = &shape.users;
    match op {
        Op::Chat => {
            let message = if rng.gen_bool(0.5) { question(rng) } else { format!("Remember this: {}", statement(rng)) };
            Request {
                method: "POST",
                path: "/v1/chat".into(),
                body: json!({
                    "user_id": format!("{}-chat-{}", users.prefix, state.chat_user),
                    "session_id": state.chat_session,
                    "message": message,
                    "max_tokens": shape.max_tokens,
                }),
            }
        }
        Op::Search => Request {
            method: "POST",
            path: "/v1/memories/search".into(),
            body: json!({ "user_id": users.scope, "query": question(rng), "k": 10, "mode": shape.search_mode }),
        },
        Op::Add => Request {
            method: "POST",
            path: "/v1/memories".into(),
            body: json!({ "user_id": users.scope, "text": statement(rng) }),
        },
        Op::Import => {
            let session = format!("{}-import-{}-{}", users.prefix, state.id, state.sent);
            let messages: Vec<Value> = (0..4)
                .map(|i| {
                    let role = if i % 2 == 0 { "user" } else { "assistant" };
                    json!({ "role": role, "content": statement(rng) })
                })
                .collect();
            Request {
                method: "POST",
                path: format!("/v1/sessions/{}/messages", encode(&session)),
                body: json!({
                    "user_id": format!("{}-import-{}", users.prefix, state.id % USERS_PER_OP),
                    "messages": messages,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn mixes_parse_and_refuse_nonsense() {
        let mix: Mix = "chat=1, search=6,add=2,import=0".parse().unwrap();
        assert_eq!(mix.0.len(), 3);
        assert_eq!(mix.0[&Op::Search], 6);
        assert_eq!(mix.to_string(), "chat=1,search=6,add=2");
        for bad in ["", "chat=0", "dance=1", "chat", "chat=x", "chat=-1", "chat=5000"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bag_keeps_the_proportions() {
        let mix: Mix = "chat=1,search=6,add=2,import=1".parse().unwrap();
        let mut bag = OpBag::new(&mix);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = BTreeMap::new();
        let drawn: Vec<Op> = (0..100).map(|_| bag.next(&mut rng)).collect();
        for op in &drawn {
            *counts.entry(*op).or_insert(0) += 1;
        }
        assert_eq!(counts[&Op::Chat], 10);
        assert_eq!(counts[&Op::Search], 60);
        assert_eq!(counts[&Op::Import], 10);
        // Shuffled, not in a fixed order.
        assert_ne!(drawn[..10], drawn[10..20]);
    }

    #[test]
    fn seeded_sentences_are_distinct() {
        let all: std::collections::HashSet<String> = (0..50_000).map(nth_statement).collect();
        assert_eq!(all.len(), 50_000);
        assert!(nth_statement(SENTENCES + 3).ends_with("(note 1)"));
        let first = nth_statement(0);
        assert!(first.ends_with('.') && first.split(' ').count() >= 8, "{first}");
    }
}
