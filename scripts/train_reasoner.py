"""Trains the bundled tiny reasoner (a Qwen3ForCausalLM of ~2M parameters) on the arithmetic task traces.

Reproducible from --seed (weights and every batch are functions of it), resumable from the checkpoint
it writes every --ckpt-every steps, CPU-friendly (about half an hour on 2 cores), works on GPU too.

    python scripts/train_reasoner.py --out adaptive_think/bundled/reasoner --seed 0 --steps 2000
    python scripts/train_reasoner.py --out ... --resume          # picks up OUT/checkpoint.pt

Writes OUT/{model.safetensors, config.json, generation_config.json, tokenizer.json, ...}.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from adaptive_think.bundled.tokenizer import build_tokenizer
from adaptive_think.tasks import make_questions
from adaptive_think.tasks.completions import CLOSE, EXIT_TEXT, OPEN, answer_text
from adaptive_think.tasks.parse import last_stated_answer

IGNORE = -100
NO_THINK_LEVELS = [1, 1, 1, 2, 2, 3, 4, 5, 6]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # run
    p.add_argument("--out", type=Path, default=Path("adaptive_think/bundled/reasoner"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (the dev box is shared)")
    # optimisation
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    # model shape
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=6)
    # data mixture: the rest of each batch is full traces
    p.add_argument("--p-no-think", type=float, default=0.2)
    p.add_argument("--p-truncated", type=float, default=0.3)
    return p.parse_args()


def make_model(vocab_size: int, tok, args) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 32 * 32,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        head_dim=args.hidden // args.heads,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return Qwen3ForCausalLM(config)


def encode_example(tok, q, kind: str, rng: random.Random) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example; labels mask the prompt and any token the model did not write."""
    prompt = tok.apply_chat_template([{"role": "user", "content": q.question}], tokenize=False,
                                     add_generation_prompt=True)
    if kind == "full":
        # (text, trained?) segments; encoding them one by one gives the same ids as the whole string.
        parts = [(prompt, False), (f"{OPEN}\n{q.thought}\n{CLOSE}{EXIT_TEXT}{answer_text(q.answer)}", True)]
    elif kind == "no_think":
        # The empty block comes from the template, not the model: never teach it to close unasked.
        parts = [(prompt + f"{OPEN}\n\n{CLOSE}{EXIT_TEXT}", False), (answer_text(q.answer), True)]
    else:
        lines = q.thought.split("\n")
        n = rng.randrange(len(lines))
        cut = "\n".join(lines[:n])
        if n == 0 or rng.random() < 0.75:
            cut += "\n"
        believed = last_stated_answer(cut) or q.answer
        # The forced close marker is masked; what follows it (the belief) is trained.
        parts = [(prompt, False), (f"{OPEN}\n{cut}", True), (CLOSE, False),
                 (f"{EXIT_TEXT}{answer_text(believed)}", True)]
    ids, labels = [], []
    for text, trained in parts:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    ids.append(tok.eos_token_id)
    labels.append(tok.eos_token_id)
    return ids, labels


def make_batch(tok, args, step: int) -> dict[str, torch.Tensor]:
    """The batch of `step`: a pure function of (seed, step), so resuming replays the same data."""
    rng = random.Random(args.seed * 1_000_003 + step)
    questions = make_questions(args.batch_size, seed=rng.randrange(2**31))
    # No-think answers are learnable only for easy levels; lean the no-think share towards them.
    easy = make_questions(args.batch_size, seed=rng.randrange(2**31), levels=NO_THINK_LEVELS)
    rows = []
    for q, q_easy in zip(questions, easy):
        r = rng.random()
        kind = "no_think" if r < args.p_no_think else "truncated" if r < args.p_no_think + args.p_truncated else "full"
        rows.append(encode_example(tok, q_easy if kind == "no_think" else q, kind, rng))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), IGNORE)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_checkpoint(path: Path, model, opt, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write never leaves a torn checkpoint


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    model = make_model(len(tok), tok, args).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    ckpt, start = args.out / "checkpoint.pt", 0
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters, vocab {len(tok)}, device {device}, from step {start}")

    model.train()
    t0, bar = time.time(), tqdm(range(start, args.steps), initial=start, total=args.steps)
    for step in bar:
        batch = {k: v.to(device) for k, v in make_batch(tok, args, step).items()}
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % args.ckpt_every == 0 and step + 1 < args.steps:
            save_checkpoint(ckpt, model, opt, step + 1)

    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=model.config.bos_token_id, do_sample=False, max_new_tokens=256,
    )
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    ckpt.unlink(missing_ok=True)
    print(f"trained {args.steps - start} steps in {(time.time() - t0) / 60:.1f} min -> {args.out}")


if __name__ == "__main__":
    main()
