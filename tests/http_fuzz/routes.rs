//! Every route of the API as request strategies: the fields each body has, with what a
//! valid value and a hostile one look like, the ids its path takes and its query
//! parameters. Generation is kept cheap where a valid request makes the model work:
//! `max_tokens` is never a large valid number, and texts the chat model reads are short
//! or far over every limit.

use proptest::prelude::*;
use proptest::strategy::Union;

use super::client::Request;
use super::json::{
    any_type, hostile_number, hostile_object, hostile_string, hostile_time, one_of, sentence, valid_time, J,
};
use super::requests::{
    arbitrary_request, json_request, multipart_request, object, optional, path_id, query, raw_request, required, Field,
};

/// Ids that exist on the server, made before the fuzzing starts.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub memories: Vec<String>,
    pub documents: Vec<String>,
    pub jobs: Vec<String>,
    pub sessions: Vec<String>,
}

const KINDS: &[&str] = &["fact", "episodic", "knowledge", "summary"];
/// The users the fuzzer writes for; `fuzz-bob` is also the one it erases.
const USERS: &[&str] = &["fuzz-ann", "fuzz-bob"];

fn user() -> BoxedStrategy<J> {
    one_of(USERS)
}

/// Hostile text for fields nothing reads but the store (ids, names): long ones too.
fn hostile_name() -> BoxedStrategy<J> {
    hostile_string(4096, true)
}

/// Hostile text for what the chat model reads: short, or far over every limit.
fn hostile_prompt() -> BoxedStrategy<J> {
    hostile_string(256, true)
}

fn fraction() -> BoxedStrategy<J> {
    (0.0f64..1.0).prop_map(J::num).boxed()
}

fn small_metadata() -> BoxedStrategy<J> {
    prop_oneof![
        Just(J::obj(vec![("source", J::str("fuzz"))])),
        (0i64..10).prop_map(|n| J::obj(vec![("n", J::num(n)), ("tags", J::Arr(vec![J::str("a")]))])),
        Just(J::Obj(vec![])),
    ]
    .boxed()
}

/// Token counts that keep generation short; hostile ones never a large valid count.
fn small_count() -> BoxedStrategy<J> {
    (1u32..4).prop_map(J::num).boxed()
}

fn hostile_count() -> BoxedStrategy<J> {
    hostile_number(false)
        .prop_filter("no long generation", |j| match j {
            J::Num(n) => n.parse::<u64>().map_or(true, |v| v <= 4),
            _ => true,
        })
        .boxed()
}

fn bool_field() -> BoxedStrategy<J> {
    any::<bool>().prop_map(J::Bool).boxed()
}

fn hostile_bool() -> BoxedStrategy<J> {
    prop_oneof![Just(J::str("true")), Just(J::num(1)), Just(J::num(0)), Just(J::str(""))].boxed()
}

fn ulid_text() -> BoxedStrategy<J> {
    "[0-9A-HJKMNP-TV-Z]{26}".prop_map(J::Str).boxed()
}

fn path(prefix: &'static str, ids: Vec<String>, suffix: &'static str) -> BoxedStrategy<String> {
    path_id(ids).prop_map(move |id| format!("{prefix}{id}{suffix}")).boxed()
}

fn fixed(target: &'static str) -> BoxedStrategy<String> {
    Just(target.to_owned()).boxed()
}

fn text_param(values: &'static [&'static str]) -> BoxedStrategy<String> {
    proptest::sample::select(values).prop_map(str::to_owned).boxed()
}

fn get(target: BoxedStrategy<String>) -> BoxedStrategy<Request> {
    target.prop_map(|t| super::requests::authed("GET", t)).boxed()
}

fn delete(target: BoxedStrategy<String>) -> BoxedStrategy<Request> {
    target.prop_map(|t| super::requests::authed("DELETE", t)).boxed()
}

// ---- memories ----

fn memory_fields() -> Vec<Field> {
    vec![
        required("user_id", user(), hostile_name()),
        required("text", sentence(), hostile_string(4096, true)),
        optional("kind", one_of(KINDS), hostile_name()),
        optional("metadata", small_metadata(), hostile_object()),
        optional("importance", fraction(), hostile_number(true)),
        optional("created_at", valid_time(), hostile_time()),
        optional("agent_id", one_of(&["agent-1"]), hostile_name()),
        optional("session_id", ulid_text(), hostile_name()),
    ]
}

fn patch_fields() -> Vec<Field> {
    vec![
        optional("text", sentence(), hostile_string(4096, true)),
        optional("metadata", small_metadata(), hostile_object()),
        optional("importance", fraction(), hostile_number(true)),
    ]
}

fn kinds_list() -> BoxedStrategy<J> {
    proptest::collection::vec(one_of(KINDS), 0..3).prop_map(J::Arr).boxed()
}

fn hostile_list(item: BoxedStrategy<J>) -> BoxedStrategy<J> {
    prop_oneof![
        proptest::collection::vec(item.clone(), 0..4).prop_map(J::Arr),
        Just(J::Arr(vec![J::str("fact"); 5000])),
        item,
    ]
    .boxed()
}

fn filter_fields() -> Vec<Field> {
    vec![
        optional("metadata", small_metadata(), hostile_object()),
        optional("created_after", valid_time(), hostile_time()),
        optional("created_before", valid_time(), hostile_time()),
    ]
}

fn search_fields() -> Vec<Field> {
    vec![
        required("query", sentence(), hostile_name()),
        optional("user_id", user(), hostile_name()),
        optional("session_id", ulid_text(), hostile_name()),
        optional("kinds", kinds_list(), hostile_list(hostile_string(64, false))),
        optional("k", (1u32..20).prop_map(J::num).boxed(), hostile_number(true)),
        optional("min_score", fraction(), hostile_number(true)),
        optional("filters", object(filter_fields()), hostile_object()),
        optional("mode", one_of(&["hybrid", "dense", "lexical"]), hostile_name()),
    ]
}

fn memory_list_query() -> BoxedStrategy<String> {
    query(vec![
        ("user_id", text_param(USERS)),
        ("kind", text_param(KINDS)),
        ("limit", (1u32..100).prop_map(|n| n.to_string()).boxed()),
        ("cursor", "[0-9A-Z]{0,26}".boxed()),
    ])
}

/// The routes of `/v1/memories`.
pub fn memories(known: &Known) -> BoxedStrategy<Request> {
    let ids = known.memories.clone();
    Union::new(vec![
        json_request("POST", fixed("/v1/memories"), object(memory_fields())),
        get(memory_list_query().prop_map(|q| format!("/v1/memories{q}")).boxed()),
        delete(query(vec![("user_id", text_param(&["fuzz-bob"]))]).prop_map(|q| format!("/v1/memories{q}")).boxed()),
        get(path("/v1/memories/", ids.clone(), "")),
        delete(path("/v1/memories/", ids.clone(), "")),
        json_request("PATCH", path("/v1/memories/", ids, ""), object(patch_fields())),
        json_request("POST", fixed("/v1/memories/search"), object(search_fields())),
    ])
    .boxed()
}

// ---- documents ----

fn document_fields() -> Vec<Field> {
    vec![
        required("title", sentence(), hostile_name()),
        required("text", sentence(), hostile_string(4096, true)),
        optional("metadata", small_metadata(), hostile_object()),
        optional("user_id", user(), hostile_name()),
        optional("mime", one_of(&["text/plain", "text/markdown", "text/html"]), hostile_name()),
    ]
}

/// The routes of `/v1/documents` and `/v1/jobs`.
pub fn documents(known: &Known) -> BoxedStrategy<Request> {
    Union::new_weighted(vec![
        (3, json_request("POST", fixed("/v1/documents"), object(document_fields()))),
        (3, multipart_request()),
        (1, get(query(vec![("user_id", text_param(USERS))]).prop_map(|q| format!("/v1/documents{q}")).boxed())),
        (1, get(path("/v1/documents/", known.documents.clone(), ""))),
        (1, delete(path("/v1/documents/", known.documents.clone(), ""))),
        (1, get(path("/v1/jobs/", known.jobs.clone(), ""))),
    ])
    .boxed()
}

// ---- sessions ----

fn message_fields(roles: &'static [&'static str]) -> Vec<Field> {
    vec![
        required("role", one_of(roles), hostile_string(64, false)),
        required("content", sentence(), hostile_string(4096, true)),
        optional("name", one_of(&["Ann"]), hostile_name()),
        optional("created_at", valid_time(), hostile_time()),
        optional("metadata", small_metadata(), hostile_object()),
    ]
}

fn imported_messages() -> BoxedStrategy<J> {
    proptest::collection::vec(object(message_fields(&["user", "assistant"])), 1..4).prop_map(J::Arr).boxed()
}

fn hostile_messages(item: BoxedStrategy<J>) -> BoxedStrategy<J> {
    prop_oneof![
        Just(J::Arr(vec![])),
        Just(J::Arr(vec![J::obj(vec![("role", J::str("user")), ("content", J::str("hi"))]); 1001])),
        proptest::collection::vec(item, 1..3).prop_map(J::Arr),
        any_type(),
    ]
    .boxed()
}

/// The routes of `/v1/sessions`.
pub fn sessions(known: &Known) -> BoxedStrategy<Request> {
    let ids = known.sessions.clone();
    let import = object(vec![
        required("user_id", user(), hostile_name()),
        required("messages", imported_messages(), hostile_messages(any_type())),
    ]);
    Union::new(vec![
        json_request("POST", path("/v1/sessions/", ids.clone(), "/messages"), import),
        get(path("/v1/sessions/", ids.clone(), "")),
        delete(path("/v1/sessions/", ids, "")),
    ])
    .boxed()
}

// ---- the engine's OpenAI face ----

fn token_ids(vocab: u32) -> BoxedStrategy<J> {
    proptest::collection::vec((0..vocab).prop_map(J::num), 1..16).prop_map(J::Arr).boxed()
}

fn embedding_input() -> BoxedStrategy<J> {
    prop_oneof![
        sentence(),
        proptest::collection::vec(sentence(), 1..4).prop_map(J::Arr),
        token_ids(30_000),
        proptest::collection::vec(token_ids(30_000), 1..3).prop_map(J::Arr),
    ]
    .boxed()
}

fn hostile_input() -> BoxedStrategy<J> {
    prop_oneof![
        hostile_string(4096, true),
        Just(J::Arr(vec![])),
        Just(J::Arr(vec![J::str("")])),
        Just(J::Arr(vec![J::Arr(vec![])])),
        Just(J::Arr(vec![J::str("a"); 2049])),
        proptest::collection::vec(hostile_string(512, false), 1..6).prop_map(J::Arr),
        proptest::collection::vec(hostile_number(true), 1..6).prop_map(J::Arr),
        Just(J::Arr(vec![J::Arr(vec![J::num(1), J::num(2)]), J::Arr(vec![J::num(3), J::str("x")])])),
        Just(J::Arr(vec![J::str("a"), J::num(1)])),
    ]
    .boxed()
}

fn embedding_fields() -> Vec<Field> {
    vec![
        required("input", embedding_input(), hostile_input()),
        optional("encoding_format", one_of(&["float", "base64"]), hostile_name()),
        optional("dimensions", Just(J::num(384)).boxed(), hostile_number(true)),
        optional("model", one_of(&["all-MiniLM-L6-v2"]), any_type()),
        optional("user", one_of(USERS), any_type()),
    ]
}

fn logit_bias() -> BoxedStrategy<J> {
    proptest::collection::vec((0u32..49_000, -100i32..100), 0..3)
        .prop_map(|pairs| J::Obj(pairs.into_iter().map(|(id, b)| (id.to_string(), J::num(b))).collect()))
        .boxed()
}

fn hostile_logit_bias() -> BoxedStrategy<J> {
    let keys = vec!["-1", "49152", "99999999999999999999", " 12 ", "1e3", "", "abc", "0x10", "+5"];
    prop_oneof![
        (proptest::sample::select(keys), hostile_number(true)).prop_map(|(k, v)| J::Obj(vec![(k.to_owned(), v)])),
        hostile_number(true).prop_map(|v| J::Obj(vec![("17".to_owned(), v)])),
        hostile_object(),
    ]
    .boxed()
}

fn stop() -> BoxedStrategy<J> {
    prop_oneof![one_of(&["\n", ".", "tea"]), proptest::collection::vec(one_of(&["\n", "."]), 0..4).prop_map(J::Arr)]
        .boxed()
}

fn hostile_stop() -> BoxedStrategy<J> {
    prop_oneof![
        Just(J::Arr(vec![J::str("a"); 5])),
        Just(J::Arr(vec![J::str(""), J::str("")])),
        proptest::collection::vec(hostile_string(256, true), 1..4).prop_map(J::Arr),
        hostile_string(256, true),
    ]
    .boxed()
}

/// The sampling fields `/v1/completions` and `/v1/chat/completions` share.
fn sampling_fields() -> Vec<Field> {
    let f = |lo: f64, hi: f64| (lo..hi).prop_map(J::num).boxed();
    vec![
        optional("temperature", f(0.0, 2.0), hostile_number(true)),
        optional("top_p", f(0.01, 1.0), hostile_number(true)),
        optional("frequency_penalty", f(-2.0, 2.0), hostile_number(true)),
        optional("presence_penalty", f(-2.0, 2.0), hostile_number(true)),
        optional("logit_bias", logit_bias(), hostile_logit_bias()),
        optional("seed", any::<i64>().prop_map(J::num).boxed(), hostile_number(true)),
        optional("stop", stop(), hostile_stop()),
        optional("stream", bool_field(), hostile_bool()),
        optional("stream_options", Just(J::obj(vec![("include_usage", J::Bool(true))])).boxed(), hostile_object()),
        optional("n", Just(J::num(1)).boxed(), hostile_number(true)),
        optional("user", one_of(USERS), any_type()),
        optional("top_k", (1u32..50).prop_map(J::num).boxed(), hostile_number(true)),
        optional("repetition_penalty", f(0.5, 2.0), hostile_number(true)),
        optional("model", one_of(&["SmolLM2-135M-Instruct"]), any_type()),
    ]
}

fn completion_fields() -> Vec<Field> {
    let mut fields = vec![
        required(
            "prompt",
            prop_oneof![sentence(), token_ids(49_000)].boxed(),
            prop_oneof![hostile_prompt(), hostile_input()].boxed(),
        ),
        optional("max_tokens", small_count(), hostile_count()),
        optional("echo", bool_field(), hostile_bool()),
        optional("logprobs", (0u32..6).prop_map(J::num).boxed(), hostile_number(true)),
        optional("best_of", Just(J::num(1)).boxed(), hostile_number(true)),
        optional("suffix", Just(J::str("")).boxed(), hostile_prompt()),
    ];
    fields.extend(sampling_fields());
    fields
}

/// `/v1/models`, `/v1/embeddings`, `/v1/completions` and the probes.
pub fn inference() -> BoxedStrategy<Request> {
    let junk_query = query(vec![("x", "[a-z]{0,4}".boxed())]);
    Union::new_weighted(vec![
        (1, get(junk_query.clone().prop_map(|q| format!("/v1/models{q}")).boxed())),
        (1, junk_query.prop_map(|q| Request::new("GET", format!("/healthz{q}"))).boxed()),
        (4, json_request("POST", fixed("/v1/embeddings"), object(embedding_fields()))),
        (4, json_request("POST", fixed("/v1/completions"), object(completion_fields()))),
    ])
    .boxed()
}

// ---- chat ----

fn chat_fields() -> Vec<Field> {
    vec![
        required("user_id", user(), hostile_name()),
        required("message", sentence(), hostile_prompt()),
        optional("session_id", ulid_text(), hostile_name()),
        optional("stream", bool_field(), hostile_bool()),
        optional("max_tokens", small_count(), hostile_count()),
        optional("temperature", (0.0f64..1.5).prop_map(J::num).boxed(), hostile_number(true)),
        optional("agent_id", one_of(&["agent-1"]), hostile_name()),
    ]
}

fn content_parts() -> BoxedStrategy<J> {
    sentence().prop_map(|t| J::Arr(vec![J::obj(vec![("type", J::str("text")), ("text", t)])])).boxed()
}

fn hostile_content() -> BoxedStrategy<J> {
    prop_oneof![
        hostile_prompt(),
        Just(J::Arr(vec![J::obj(vec![
            ("type", J::str("image_url")),
            ("image_url", J::obj(vec![("url", J::str("x"))]))
        ])])),
        Just(J::Arr(vec![J::obj(vec![("type", J::str("text"))])])),
        Just(J::Arr(vec![J::Null, J::num(1)])),
        hostile_list(any_type()),
    ]
    .boxed()
}

fn openai_message(roles: &'static [&'static str]) -> BoxedStrategy<J> {
    object(vec![
        required("role", one_of(roles), hostile_string(64, false)),
        required("content", prop_oneof![sentence(), content_parts()].boxed(), hostile_content()),
        optional("name", one_of(&["Ann"]), any_type()),
    ])
}

fn chat_messages() -> BoxedStrategy<J> {
    let user = J::obj(vec![("role", J::str("user")), ("content", J::str("What do I like?"))]);
    (proptest::collection::vec(openai_message(&["system", "user", "assistant", "developer", "tool"]), 0..3), Just(user))
        .prop_map(|(mut prior, last)| {
            prior.push(last);
            J::Arr(prior)
        })
        .boxed()
}

fn chat_completion_fields() -> Vec<Field> {
    let mut fields = vec![
        required("messages", chat_messages(), hostile_messages(openai_message(&["user", "system", "function"]))),
        optional("safety_identifier", user(), hostile_name()),
        optional(
            "metadata",
            ulid_text().prop_map(|id| J::Obj(vec![("session_id".into(), id)])).boxed(),
            hostile_object(),
        ),
        optional("max_tokens", small_count(), hostile_count()),
        optional("max_completion_tokens", small_count(), hostile_count()),
        optional("logprobs", bool_field(), hostile_bool()),
        optional("top_logprobs", (0u32..3).prop_map(J::num).boxed(), hostile_number(true)),
        optional("tools", Just(J::Arr(vec![])).boxed(), any_type()),
        optional("tool_choice", one_of(&["none", "auto"]), any_type()),
        optional("response_format", Just(J::obj(vec![("type", J::str("text"))])).boxed(), any_type()),
        optional("modalities", Just(J::Arr(vec![J::str("text")])).boxed(), any_type()),
        optional("audio", Just(J::Null).boxed(), any_type()),
        optional("store", bool_field(), any_type()),
        optional("reasoning_effort", one_of(&["low"]), any_type()),
    ];
    fields.extend(sampling_fields());
    // Without a user the request is refused before any work: make most of them valid.
    fields.retain(|f| f.name != "user");
    fields.push(required("user", user(), hostile_name()));
    fields
}

/// `/v1/chat` and `/v1/chat/completions`.
pub fn chat() -> BoxedStrategy<Request> {
    Union::new(vec![
        json_request("POST", fixed("/v1/chat"), object(chat_fields())),
        json_request("POST", fixed("/v1/chat/completions"), object(chat_completion_fields())),
    ])
    .boxed()
}

// ---- bodies of any shape, to every route that reads one ----

/// Each route that reads a body, with a strategy for its valid bodies (for cutting).
fn body_routes(known: &Known) -> Vec<(&'static str, BoxedStrategy<String>, BoxedStrategy<J>)> {
    let valid =
        |fields: Vec<Field>| object(fields.into_iter().map(|f| required(f.name, f.valid.clone(), f.valid)).collect());
    vec![
        ("POST", fixed("/v1/memories"), valid(memory_fields())),
        ("PATCH", path("/v1/memories/", known.memories.clone(), ""), valid(patch_fields())),
        ("POST", fixed("/v1/memories/search"), valid(search_fields())),
        ("POST", fixed("/v1/documents"), valid(document_fields())),
        (
            "POST",
            path("/v1/sessions/", known.sessions.clone(), "/messages"),
            object(vec![
                required("user_id", user(), user()),
                required("messages", imported_messages(), imported_messages()),
            ]),
        ),
        ("POST", fixed("/v1/embeddings"), valid(embedding_fields())),
        (
            "POST",
            fixed("/v1/completions"),
            object(vec![
                required("prompt", sentence(), sentence()),
                required("max_tokens", small_count(), small_count()),
            ]),
        ),
        (
            "POST",
            fixed("/v1/chat"),
            object(vec![
                required("user_id", user(), user()),
                required("message", sentence(), sentence()),
                required("max_tokens", small_count(), small_count()),
            ]),
        ),
        (
            "POST",
            fixed("/v1/chat/completions"),
            object(vec![
                required("user", user(), user()),
                required("messages", chat_messages(), chat_messages()),
                required("max_tokens", small_count(), small_count()),
            ]),
        ),
    ]
}

/// Any JSON value as the body of each route that reads one.
pub fn arbitrary_bodies(known: &Known) -> BoxedStrategy<Request> {
    Union::new(body_routes(known).into_iter().map(|(method, target, _)| arbitrary_request(method, target))).boxed()
}

/// Bytes that are not a JSON body (or not with the right content type), to each route.
pub fn raw_bodies(known: &Known) -> BoxedStrategy<Request> {
    Union::new(body_routes(known).into_iter().map(|(method, target, valid)| raw_request(method, target, valid))).boxed()
}
