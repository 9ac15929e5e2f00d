"""Writes tests/data/llama_cpp_greedy.json: llama.cpp's greedy continuations of a few
prompts on the packaged SmolLM2 GGUF, the reference the quantised decode path is tested
against (tests/quantized_decode.rs).

Run with llama-cpp-python installed into the venv (`make bench-compare` installs it):
    .venv/bin/python bench/llama_cpp_reference.py models/SmolLM2-135M-Instruct.Q4_1.gguf

The prompt ids come from llama.cpp's own tokenizer (special tokens parsed), so the test
also checks that engram's tokenizer gives the same ids.
"""

import json
import sys

from llama_cpp import Llama

CHAT = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
SMOL = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

PROMPTS = [
    "The capital of France is",
    CHAT.format(system=SMOL, user="What is the capital of France?"),
    CHAT.format(system="You are a helpful assistant.", user="Give me three tips for keeping bees in winter."),
    CHAT.format(system=SMOL, user="Write a two-line poem about the sea."),
    "Once upon a time, in a small village by the river,",
    # The prompt the API tests send (no system message).
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]
NEW_TOKENS = 48


def main(path, out):
    model = Llama(model_path=path, n_ctx=1024, n_threads=2, n_batch=512, logits_all=True, verbose=False)
    cases = []
    for text in PROMPTS:
        ids = model.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        # The next-token logits after the prompt: the ten highest, as (id, logit).
        model.reset()
        model.eval(ids)
        first = model.scores[model.n_tokens - 1]
        top = sorted(range(len(first)), key=lambda i: -first[i])[:10]
        model.reset()
        tokens = []
        for token in model.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            if token == model.token_eos() or len(tokens) == NEW_TOKENS:
                break
            tokens.append(token)
        cases.append({"prompt": text, "prompt_ids": ids, "tokens": tokens,
                      "first_logits": [[i, float(first[i])] for i in top],
                      "text": model.detokenize(tokens).decode("utf-8", "replace")})
        print(json.dumps(cases[-1]["text"]))
    import llama_cpp
    doc = {"source": f"llama-cpp-python {llama_cpp.__version__}, greedy, {path}", "cases": cases}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "tests/data/llama_cpp_greedy.json")
