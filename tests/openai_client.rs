//! The official OpenAI Python client (installed in the venv by `make test`, which sets
//! ENGRAM_PYTHON) against `/v1/chat/completions`, `/v1/completions` and
//! `/v1/embeddings`, unmodified: the client's defaults (base64 embeddings), the standard
//! request fields engram honours, and the 400s naming what it cannot. The memory behind
//! the OpenAI API is the same as behind `/v1/chat`.

mod common;

use std::path::Path;
use std::process::Command;

use common::server::Server;
use engram::model::gguf::GgufFile;
use engram::model::tokenizer::TextTokenizer;
use serde_json::{json, Value};

/// Runs a Python script with the official client against `server`; `data` is its second
/// argument. The script asserts as it goes; its last output line is JSON for the test.
fn run_client(script: &str, server: &Server, data: &Value) -> Value {
    let python = std::env::var("ENGRAM_PYTHON")
        .expect("ENGRAM_PYTHON names the venv's python with the openai package; run the tests with `make test`");
    let out = Command::new(python).args(["-c", script, &server.base, &data.to_string()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="acme-key")
told = client.chat.completions.create(
    model="engram", user="dora", max_tokens=12, temperature=0,
    messages=[{"role": "user", "content": "Remember that my favourite mountain is Galdhøpiggen."}],
)
asked = client.chat.completions.create(
    model="engram", user="dora", max_tokens=12, temperature=0, stream=True,
    messages=[{"role": "user", "content": "Which mountain is my favourite?"}],
)
pieces, finish = [], None
for chunk in asked:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
        memories = (chunk.model_extra or {}).get("memories", [])
print(json.dumps({
    "first_reply": told.choices[0].message.content,
    "first_finish": told.choices[0].finish_reason,
    "first_usage": told.usage.total_tokens,
    "streamed": "".join(pieces),
    "finish": finish,
    "memories": [m["text"] for m in memories],
}))
"#;

#[test]
fn the_official_openai_client_works_plain_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_AUTH__KEYS", "acme=acme-key")]);
    server.wait_ready();
    let result = run_client(SCRIPT, &server, &json!({}));
    assert!(!result["first_reply"].as_str().unwrap().is_empty(), "{result}");
    assert!(["stop", "length"].contains(&result["first_finish"].as_str().unwrap()));
    assert!(result["first_usage"].as_u64().unwrap() > 0);
    assert!(!result["streamed"].as_str().unwrap().is_empty(), "{result}");
    assert!(result["finish"].is_string());
    // The second request, a new session, recalled what the first one told.
    let memories = result["memories"].as_array().unwrap();
    assert!(memories.iter().any(|m| m.as_str().unwrap().contains("Galdhøpiggen")), "{result}");

    // Without `user` the API says what is missing, in the JSON error shape.
    let (status, body) = server.call(
        "POST",
        "/v1/chat/completions",
        Some("acme-key"),
        Some(&json!({ "model": "x", "messages": [{ "role": "user", "content": "hi" }] })),
    );
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("user"));
    assert_eq!(body["error"]["param"], "user");
}

/// The client's system message takes the place of the configured system prompt. Measured
/// by the prompt's size: each user is new, so no memory joins the prompt, and " apple"
/// repeated is one token per repeat in the model's vocabulary, so the prompt grows by
/// exactly the repeats added.
#[test]
fn a_client_system_message_replaces_the_configured_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let configured = "apple".to_string() + &" apple".repeat(199);
    let server = Server::start(dir.path(), &[("ENGRAM_CHAT__SYSTEM_PROMPT", &configured)]);
    server.wait_ready();
    let prompt_tokens = |user: &str, system: Option<String>| {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(json!({ "role": "system", "content": s }));
        }
        messages.push(json!({ "role": "user", "content": "Hello there." }));
        let body = json!({ "model": "engram", "user": user, "max_tokens": 1, "messages": messages });
        let (status, reply) = server.call("POST", "/v1/chat/completions", None, Some(&body));
        assert_eq!(status, 200, "{reply}");
        reply["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let own = |n: usize| Some("apple".to_string() + &" apple".repeat(n - 1));
    let configured_200 = prompt_tokens("u1", None);
    let client_20 = prompt_tokens("u2", own(20));
    let client_40 = prompt_tokens("u3", own(40));
    assert_eq!(client_40 - client_20, 20, "the client's system text is in the prompt");
    assert_eq!(configured_200 - client_20, 180, "and the configured one is not");
}

const HISTORY_SCRIPT: &str = r#"
import json, sys
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="acme-key")
history, sessions = [], []
for i, text in enumerate(["My cat is called Miso.", "She is nine years old.", "What do you know about my cat?"]):
    history.append({"role": "user", "content": text})
    if i == 1:
        # Streamed, as chat UIs do: the reply is assembled from the chunks.
        stream = client.chat.completions.create(model="engram", user="pia", max_tokens=6, temperature=0,
                                                messages=history, stream=True)
        reply, session = "", None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                reply += chunk.choices[0].delta.content
            session = (chunk.model_extra or {}).get("session_id") or session
    else:
        answer = client.chat.completions.create(model="engram", user="pia", max_tokens=6, temperature=0,
                                                messages=history)
        reply, session = answer.choices[0].message.content, answer.model_extra["session_id"]
    history.append({"role": "assistant", "content": reply})
    sessions.append(session)
# The same conversation with an earlier message edited is another conversation.
edited = [dict(m) for m in history[:2]] + [{"role": "user", "content": "Tell me more."}]
edited[0]["content"] = "My dog is called Miso."
other = client.chat.completions.create(model="engram", user="pia", max_tokens=4, temperature=0, messages=edited)
print(json.dumps({"sessions": sessions, "edited": other.model_extra["session_id"]}))
"#;

/// Stock chat clients send the whole conversation on every call and no session id: each
/// call continues the session that conversation is, and every exchange is stored once.
#[test]
fn a_client_resending_the_whole_history_continues_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_AUTH__KEYS", "acme=acme-key")]);
    server.wait_ready();
    let result = run_client(HISTORY_SCRIPT, &server, &json!({}));
    let sessions: Vec<&str> = result["sessions"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(sessions.len(), 3);
    assert!(sessions.iter().all(|s| *s == sessions[0]), "one session throughout: {result}");
    assert_ne!(result["edited"].as_str(), Some(sessions[0]), "an edited history is another conversation");
    let (status, session) = server.call("GET", &format!("/v1/sessions/{}", sessions[0]), Some("acme-key"), None);
    assert_eq!(status, 200);
    let turns = session["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 6, "each exchange stored once: {session}");
    assert_eq!(turns[0]["content"], "My cat is called Miso.");
    let (_, episodes) = server.call("GET", "/v1/memories?user_id=pia&kind=episodic&limit=50", Some("acme-key"), None);
    let texts: Vec<&str> = episodes["data"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts.iter().filter(|t| t.contains("My cat is called Miso.")).count(), 1, "{texts:?}");
    assert_eq!(texts.iter().filter(|t| t.contains("She is nine years old.")).count(), 1, "{texts:?}");
}

const CHAT_PROMPT: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

/// Token ids of `text` in a tokenizer, without framing tokens (what OpenAI's token-array
/// inputs hold).
fn ids(tokenizer: &TextTokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(text, false).unwrap()
}

const EMBED_AND_COMPLETE: &str = r#"
import base64, json, struct, sys
from openai import OpenAI, BadRequestError

client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused")
data = json.loads(sys.argv[2])

def refused(**kw):
    """The `param` of the 400 a call gets, or None when it succeeds."""
    call = kw.pop("call")
    try:
        call(**kw)
    except BadRequestError as e:
        return e.param
    return None

def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]

# Embeddings: the client's default asks for base64 and decodes it to the same numbers.
text = "A man is eating food."
default = client.embeddings.create(model="m", input=[text]).data[0].embedding
floats = client.embeddings.create(model="m", input=[text], encoding_format="float").data[0].embedding
raw = client.embeddings.create(model="m", input=text, encoding_format="base64").data[0].embedding
assert isinstance(raw, str) and len(default) == 384
assert [f32(x) for x in floats] == default, "base64 and float give the same vector"
assert list(struct.unpack("<384f", base64.b64decode(raw))) == default, "little-endian f32 bytes"

# Token arrays: the text's ids embed as the text does, alone or in a list.
embed = lambda inp: client.embeddings.create(model="m", input=inp, encoding_format="float")
by_ids, by_list = embed(data["minilm_ids"]), embed([data["minilm_ids"], data["minilm_ids"]])
by_text = embed(text)
gap = max(abs(a - b) for a, b in zip(by_ids.data[0].embedding, by_text.data[0].embedding))
assert gap < 1e-5, gap
assert len(by_list.data) == 2 and by_list.usage.prompt_tokens == 2 * by_text.usage.prompt_tokens
long = embed([data["minilm_ids"] * 60])
embeddings = {
    "token_text_gap": gap,
    "long_usage": long.usage.prompt_tokens,
    "long_truncated": long.model_extra["truncated"],
    "bad_id": refused(call=client.embeddings.create, model="m", input=[[101, data["minilm_vocab"]]]),
    "dimensions_equal": len(client.embeddings.create(model="m", input="x", dimensions=384).data[0].embedding),
    "dimensions_other": refused(call=client.embeddings.create, model="m", input="x", dimensions=128),
}

# Completions.
P = data["prompt"]
complete = lambda **kw: client.completions.create(model="m", **kw)
plain = complete(prompt=P, max_tokens=20, temperature=0)
by_prompt_ids = complete(prompt=data["prompt_ids"], max_tokens=20, temperature=0)
chunks = list(complete(prompt=P, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}))
assert chunks[-1].choices == [] and chunks[-1].usage is not None, chunks[-1]
assert all(c.usage is None for c in chunks[:-1]), "usage only on the last chunk"
usage = lambda u: [u.prompt_tokens, u.completion_tokens, u.total_tokens]
stopped = complete(prompt=P, max_tokens=20, temperature=0, stop=[" Paris"])
seeded = lambda seed: complete(prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=seed).choices[0].text
echoed = complete(prompt=P, max_tokens=20, temperature=0, echo=True)
with_logprobs = complete(prompt=P, max_tokens=20, temperature=0, logprobs=3)
lp = with_logprobs.choices[0].logprobs
for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
    # Greedy: the chosen token is the model's most likely one, and at most 3 + 1 listed.
    assert abs(chosen - max(top.values())) < 1e-6 and chosen <= 0 and len(top) <= 4, (chosen, top)
assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
the, paris = str(data["the_id"]), str(data["paris_id"])
completions = {
    "plain": plain.choices[0].text,
    "plain_usage": usage(plain.usage),
    "by_prompt_ids": [by_prompt_ids.choices[0].text, usage(by_prompt_ids.usage)],
    "streamed": "".join(c.choices[0].text for c in chunks if c.choices),
    "streamed_finish": [c.choices[0].finish_reason for c in chunks if c.choices][-1],
    "streamed_usage": usage(chunks[-1].usage),
    "stopped": [stopped.choices[0].text, stopped.choices[0].finish_reason],
    "seeded": [seeded(7), seeded(7), seeded(8), seeded(9)],
    "echoed": echoed.choices[0].text,
    "logprob_tokens": "".join(lp.tokens),
    "banned_the": complete(prompt=P, max_tokens=3, temperature=0, logit_bias={the: -100}).choices[0].text,
    "forced_paris": complete(prompt=P, max_tokens=3, temperature=0, logit_bias={paris: 100}).choices[0].text,
    "refused": {
        "n": refused(call=complete, prompt=P, n=2),
        "best_of": refused(call=complete, prompt=P, best_of=3),
        "suffix": refused(call=complete, prompt=P, suffix="and then"),
        "logprobs": refused(call=complete, prompt=P, logprobs=6),
        "echo_logprobs": refused(call=complete, prompt=P, echo=True, logprobs=1),
        "prompts": refused(call=complete, prompt=[P, P]),
        "bad_bias": refused(call=complete, prompt=P, logit_bias={"999999": 1}),
        "bad_penalty": refused(call=complete, prompt=P, presence_penalty=2.5),
    },
}

# Every standard field at a value engram honours, and a field OpenAI does not have.
everything = list(complete(
    prompt=P, best_of=1, echo=False, frequency_penalty=0.5, logit_bias={the: -1}, logprobs=1, max_tokens=8, n=1,
    presence_penalty=0.5, seed=3, stop=["\n\n"], stream=True, stream_options={"include_usage": True}, suffix="",
    temperature=0.7, top_p=0.9, user="someone", extra_body={"not_an_openai_field": True},
))
completions["everything_usage"] = usage(everything[-1].usage)
print(json.dumps({"embeddings": embeddings, "completions": completions}))
"#;

#[test]
fn embeddings_and_completions_through_the_official_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.wait_ready();
    let minilm = TextTokenizer::from_hf_file(Path::new("models/all-MiniLM-L6-v2/tokenizer.json")).unwrap();
    let smol = TextTokenizer::from_gguf(&GgufFile::open(Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap())
        .unwrap();
    let (the, paris) = (ids(&smol, "The"), ids(&smol, " Paris"));
    assert_eq!((the.len(), paris.len()), (1, 1), "one token each");
    let data = json!({
        "minilm_ids": ids(&minilm, "A man is eating food."), "minilm_vocab": minilm.vocab_size(),
        "prompt": CHAT_PROMPT, "prompt_ids": ids(&smol, CHAT_PROMPT), "the_id": the[0], "paris_id": paris[0],
    });
    let result = run_client(EMBED_AND_COMPLETE, &server, &data);
    let (e, c) = (&result["embeddings"], &result["completions"]);

    // A token list past the encoder's 256 tokens is cut as a text is, and reported.
    assert_eq!(e["long_usage"], 256, "{e}");
    assert_eq!(e["long_truncated"], json!([0]));
    assert_eq!(e["bad_id"], "input[0][1]");
    assert_eq!(e["dimensions_equal"], 384);
    assert_eq!(e["dimensions_other"], "dimensions");

    let answer = "The capital of France is Paris.";
    assert_eq!(c["plain"], answer, "{c}");
    assert_eq!(c["by_prompt_ids"], json!([answer, c["plain_usage"]]), "a token prompt is the same prompt");
    assert_eq!(c["streamed"], answer);
    assert_eq!(c["streamed_finish"], "stop");
    assert_eq!(c["streamed_usage"], c["plain_usage"], "the usage chunk counts what the plain answer counts");
    let u = &c["plain_usage"];
    assert_eq!(u[2].as_u64().unwrap(), u[0].as_u64().unwrap() + u[1].as_u64().unwrap());
    assert_eq!(u[0].as_u64().unwrap() as usize, ids(&smol, CHAT_PROMPT).len());
    assert_eq!(c["stopped"], json!(["The capital of France is", "stop"]));
    let seeded = c["seeded"].as_array().unwrap();
    assert_eq!(seeded[0], seeded[1], "the same seed, the same text");
    assert!(seeded[2] != seeded[0] || seeded[3] != seeded[0], "other seeds, other texts: {seeded:?}");
    assert_eq!(c["echoed"], format!("{CHAT_PROMPT}{answer}"));
    assert_eq!(c["logprob_tokens"], answer);
    let banned = c["banned_the"].as_str().unwrap();
    assert!(!banned.starts_with("The"), "{banned}");
    assert_eq!(c["forced_paris"], " Paris Paris Paris");
    let refused = &c["refused"];
    for (case, param) in [
        ("n", "n"),
        ("best_of", "best_of"),
        ("suffix", "suffix"),
        ("logprobs", "logprobs"),
        ("echo_logprobs", "logprobs"),
        ("prompts", "prompt"),
        ("bad_bias", "logit_bias"),
        ("bad_penalty", "presence_penalty"),
    ] {
        assert_eq!(refused[case], param, "{case}: {refused}");
    }
    assert!(c["everything_usage"][1].as_u64().unwrap() > 0, "{c}");
}

const CHAT: &str = r#"
import json, sys
from openai import OpenAI, BadRequestError

client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused")
Q = [{"role": "user", "content": "What is the capital of France?"}]

def ask(user, messages=Q, **kw):
    kw.setdefault("max_tokens", 20)
    return client.chat.completions.create(model="engram", user=user, messages=messages, **kw)

def refused(**kw):
    try:
        ask("refusals", **kw)
    except BadRequestError as e:
        return e.param
    return None

# Each user is new, so no memory joins the prompt and equal requests see equal prompts.
greedy = ask("g1", temperature=0)
text = greedy.choices[0].message.content
assert " Paris" in text, text
tiny_top_p = ask("g2", temperature=1.0, top_p=1e-6).choices[0].message.content
stopped = ask("g3", temperature=0, stop=[" Paris"]).choices[0]
seeded = [ask(u, temperature=1.0, seed=11).choices[0].message.content for u in ("s1", "s2")]

# Penalties, checked step by step against OpenAI's definition with the reported
# log-probabilities (those of the model, before the penalties): the chosen token has the
# best penalised score among the 5 most likely.
F, PR = 1.0, 0.5
rep = ask("p1", messages=[{"role": "user", "content": "Write the word yes twenty times."}], max_tokens=30,
          temperature=0, frequency_penalty=F, presence_penalty=PR, logprobs=True, top_logprobs=5)
counts, changed = {}, 0
for step in rep.choices[0].logprobs.content:
    penalty = lambda key: counts.get(key, 0) * F + (PR if counts.get(key) else 0)
    scores = {tuple(t.bytes): t.logprob - penalty(tuple(t.bytes)) for t in step.top_logprobs}
    chosen = tuple(step.bytes)
    assert step.logprob - penalty(chosen) >= max(scores.values()) - 1e-4, (step, counts)
    changed += chosen != tuple(step.top_logprobs[0].bytes)
    counts[chosen] = counts.get(chosen, 0) + 1

# Streamed with include_usage: a last chunk with no choices and the usage.
chunks = list(ask("u2", temperature=0, stream=True, stream_options={"include_usage": True}))
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1]), chunks[-1]
usage = lambda u: [u.prompt_tokens, u.completion_tokens, u.total_tokens]

# Who the user is, without `user`.
client.chat.completions.create(model="engram", safety_identifier="sid-user", max_tokens=4,
    messages=[{"role": "user", "content": "My cat is called Tiber."}])
client.chat.completions.create(model="engram", max_tokens=4, extra_headers={"x-app-user": "header-user"},
    messages=[{"role": "user", "content": "My dog is called Arno."}])
ask("user-wins", safety_identifier="not-this-one", max_tokens=4)
try:
    client.chat.completions.create(model="engram", messages=Q, max_tokens=4)
    no_user = None
except BadRequestError as e:
    no_user = e.param

# Every standard field at a value engram honours, and one OpenAI does not have.
everything = list(client.chat.completions.create(
    model="engram", messages=[{"role": "developer", "content": "Be brief."},
                              {"role": "user", "content": [{"type": "text", "text": "Hello!"}]}],
    audio=None, frequency_penalty=0.2, function_call="none", logit_bias={"0": -100}, logprobs=True,
    max_completion_tokens=8, max_tokens=8, metadata={"purpose": "test"}, modalities=["text"], n=1,
    parallel_tool_calls=False, prediction={"type": "content", "content": "Hi"}, presence_penalty=0.2,
    prompt_cache_key="k", prompt_cache_options={"mode": "implicit"}, prompt_cache_retention="in_memory",
    reasoning_effort="low", response_format={"type": "text"}, safety_identifier="all-fields", seed=1,
    service_tier="auto", stop=["\n\n"], store=False, stream=True, stream_options={"include_usage": True},
    temperature=0.5, tool_choice="none", top_logprobs=2, top_p=0.9, user="all-fields", verbosity="low",
    extra_body={"not_an_openai_field": True},
))
tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
image = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png"}}]
print(json.dumps({
    "greedy": text, "greedy_usage": usage(greedy.usage), "tiny_top_p": tiny_top_p,
    "stopped": [stopped.message.content, stopped.finish_reason], "seeded": seeded,
    "penalised_steps": len(rep.choices[0].logprobs.content), "changed_by_penalties": changed,
    "streamed": streamed, "streamed_usage": usage(chunks[-1].usage), "no_user": no_user,
    "everything_usage": usage(everything[-1].usage),
    "everything_logprobs": sum(len(c.choices[0].logprobs.content) for c in everything if c.choices and c.choices[0].logprobs),
    "refused": {
        "n": refused(n=2), "tools": refused(tools=[tool]), "tool_choice": refused(tool_choice="required"),
        "response_format": refused(response_format={"type": "json_object"}),
        "modalities": refused(modalities=["text", "audio"]), "top_logprobs": refused(top_logprobs=2),
        "image": refused(messages=[{"role": "user", "content": image}]),
    },
}))
"#;

#[test]
fn chat_completions_honour_the_standard_fields() {
    let dir = tempfile::tempdir().unwrap();
    // The header naming the user when the request does not is configurable.
    let server = Server::start(dir.path(), &[("ENGRAM_CHAT__USER_HEADER", "x-app-user")]);
    server.wait_ready();
    let r = run_client(CHAT, &server, &json!({}));
    let greedy = r["greedy"].as_str().unwrap();
    assert_eq!(r["tiny_top_p"], greedy, "top_p that keeps one token is greedy: {r}");
    let before_paris = greedy.split(" Paris").next().unwrap().trim();
    assert_eq!(r["stopped"], json!([before_paris, "stop"]));
    assert_eq!(r["seeded"][0], r["seeded"][1]);
    assert!(r["penalised_steps"].as_u64().unwrap() > 5, "{r}");
    assert!(r["changed_by_penalties"].as_u64().unwrap() > 0, "the penalties changed some choice: {r}");
    assert_eq!(r["streamed"].as_str().unwrap().trim(), greedy);
    assert_eq!(r["streamed_usage"], r["greedy_usage"], "same prompt, same reply, same counts");
    assert_eq!(r["no_user"], "user");
    assert!(r["everything_usage"][1].as_u64().unwrap() > 0);
    assert!(r["everything_logprobs"].as_u64().unwrap() > 0);
    let refused = &r["refused"];
    for (case, param) in [
        ("n", "n"),
        ("tools", "tools"),
        ("tool_choice", "tool_choice"),
        ("response_format", "response_format"),
        ("modalities", "modalities"),
        ("top_logprobs", "top_logprobs"),
        ("image", "messages[0].content[1]"),
    ] {
        assert_eq!(refused[case], param, "{case}: {refused}");
    }

    // The turns were written to the memory of the user each request named.
    let memories = |user: &str| server.get(&format!("/v1/memories?user_id={user}")).2["data"].clone();
    let texts = |user: &str| memories(user).as_array().map(|a| a.len()).unwrap_or(0);
    assert!(memories("sid-user").to_string().contains("Tiber"), "safety_identifier is the user");
    assert!(memories("header-user").to_string().contains("Arno"), "the configured header names the user");
    assert!(texts("user-wins") > 0);
    assert_eq!(texts("not-this-one"), 0, "user wins over safety_identifier");
}
