"""Runs the inference benchmarks through engram and through the Python reference
implementations on the same inputs, and prints the ratios.

- embeddings: sentence-transformers on the same MiniLM folder and the same corpus, at
  the same batch sizes;
- generation: llama.cpp (llama-cpp-python, built from source) on the same GGUF file, the
  same prompt token ids, greedy, the same number of new tokens and threads; and Hugging
  Face transformers' `generate` on the same GGUF dequantised to f32 (`--transformers`).

Run it with `make bench-compare`, which installs sentence-transformers, transformers and
gguf into the venv (for benchmarking only) and writes the corpus first.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def engram_json(binary, args):
    """Runs `engram bench …` and returns the JSON line it prints last."""
    out = subprocess.run([binary, "bench", *args, "--json"], check=True, capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def corpus(path, n):
    lines = [l.strip() for l in open(path, encoding="utf-8") if l.strip()]
    return lines[:n]


def bench_sentence_transformers(model_dir, sentences, batch_sizes, bf16=False):
    """Sentences/s per batch size; with `bf16`, under CPU autocast to bf16 (its linear
    layers multiply in bf16, layer norms stay f32: the recipe engram's bf16 products use)."""
    import contextlib

    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    label = "sentence-transformers" + (" (bf16 autocast)" if bf16 else "")
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    rates = {}
    with precision:
        model.encode(sentences[:32], batch_size=32)
        for b in batch_sizes:
            started = time.perf_counter()
            for i in range(0, len(sentences), b):
                model.encode(sentences[i : i + b], batch_size=b)
            rates[b] = len(sentences) / (time.perf_counter() - started)
            print(f"{label} batch {b:>3}: {rates[b]:8.1f} sentences/s")
    return label, rates


def bench_transformers(gguf_path, prompt_tokens, new_tokens):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(gguf_path)), gguf_file=os.path.basename(gguf_path), torch_dtype=torch.float32
    )
    model.eval()
    vocab = model.config.vocab_size
    # The same prompt engram's bench uses.
    prompt = torch.tensor([[100 + (i * 7919) % (vocab - 200) for i in range(prompt_tokens)]])
    with torch.no_grad():
        started = time.perf_counter()
        model(prompt)
        prefill = prompt_tokens / (time.perf_counter() - started)
        started = time.perf_counter()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        total = time.perf_counter() - started
    # generate() includes its own prefill; take it out to get the decode rate.
    decode = new_tokens / max(total - prompt_tokens / prefill, 1e-9)
    print(f"transformers prefill: {prefill:.1f} tokens/s, decode: {decode:.1f} tokens/s")
    return prefill, decode


def bench_llama_cpp(gguf_path, prompt_tokens, new_tokens, threads):
    """llama.cpp's prefill and decode rates on the same file and prompt ids."""
    from llama_cpp import Llama

    model = Llama(model_path=gguf_path, n_ctx=prompt_tokens + new_tokens + 16, n_threads=threads,
                  n_threads_batch=threads, n_batch=512, verbose=False)
    vocab = model.n_vocab()
    prompt = [100 + (i * 7919) % (vocab - 200) for i in range(prompt_tokens)]
    model.reset()
    started = time.perf_counter()
    model.eval(prompt)
    prefill = prompt_tokens / (time.perf_counter() - started)
    # generate() prefills again first; the clock starts at its first token.
    count, started = 0, None
    for _ in model.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        count += 1
        if count == 1:
            started = time.perf_counter()
        if count > new_tokens:
            break
    decode = new_tokens / (time.perf_counter() - started)
    print(f"llama.cpp prefill: {prefill:.1f} tokens/s, decode: {decode:.1f} tokens/s")
    return prefill, decode


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--engram", default="target/release/engram")
    p.add_argument("--corpus", default="bench/data/kjv.txt")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--embedder", default="models/all-MiniLM-L6-v2")
    p.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--skip-embed", action="store_true")
    p.add_argument("--skip-generate", action="store_true")
    p.add_argument("--transformers", action="store_true", help="also time transformers' generate (slow)")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    if not a.skip_embed:
        ours = engram_json(a.engram, ["embed", "--corpus", a.corpus, "--sentences", str(a.sentences)])
        sentences = corpus(a.corpus, a.sentences)
        batches = sorted({r["batch"] for r in ours["results"]})
        # sentence-transformers as a user runs it (f32), and with bf16 products as well
        # where engram used them, so that each of engram's precisions meets its like.
        theirs = [bench_sentence_transformers(a.embedder, sentences, batches)]
        if any(r["products"] == "BFloat16" for r in ours["results"]):
            theirs.append(bench_sentence_transformers(a.embedder, sentences, batches, bf16=True))
        for r in ours["results"]:
            for name, rates in theirs:
                ratio = r["sentences_per_s"] / rates[r["batch"]]
                print(f"embed batch {r['batch']:>3}: engram ({r['products']} products) {r['sentences_per_s']:.1f} "
                      f"vs {name} {rates[r['batch']]:.1f} sentences/s = {ratio:.2f}x")
    if not a.skip_generate:
        ours = engram_json(
            a.engram,
            ["generate", "--model", a.gguf, "--prompt-tokens", str(a.prompt_tokens), "--new-tokens", str(a.new_tokens)],
        )
        others = [("llama.cpp", bench_llama_cpp(a.gguf, a.prompt_tokens, a.new_tokens, a.threads))]
        if a.transformers:
            others.append(("transformers", bench_transformers(a.gguf, a.prompt_tokens, a.new_tokens)))
        # engram's first result is its default path (the file's quantised blocks on the CPU).
        mine = ours["results"][0]
        for name, (prefill, decode) in others:
            print(f"prefill: engram ({mine['weights']}) {mine['prefill_tokens_per_s']:.1f} vs {name} {prefill:.1f} "
                  f"tokens/s = {mine['prefill_tokens_per_s'] / prefill:.2f}x")
            print(f"decode:  engram ({mine['weights']}) {mine['decode_tokens_per_s']:.1f} vs {name} {decode:.1f} "
                  f"tokens/s = {mine['decode_tokens_per_s'] / decode:.2f}x")


if __name__ == "__main__":
    main()
