"""Trains the bundled tiny reasoner (a Qwen3ForCausalLM of a few M parameters) on the task families' traces.

Two recipes share this one training loop:
  v1  the arithmetic-only reasoner (`bundled-v1`): 4 layers, hidden 192, 512 positions, 32 rows a step
      (about half an hour on 2 cores);
  v2  the multi-family reasoner bundled as the default (docs/reasoner.md): families last_digit, walk and
      long_chain, 4 layers, hidden 192, 2,560 positions, 12,000 steps a stage of ~2,300 padded tokens that are
      either long_chain rows or rows of the short families (about 50-75 minutes a stage on two idle cores).
Each step's rows mix full traces, truncated traces ending in a forced exit (answering the cut thought's
last stated answer), and no-think answers. v2 adds lookup drills (--p-drill): a question's own lines
recalled in shuffled order, round after round, trained on the recalled value only.

The v2 recipe is three stages (about three hours on two idle cores):
  1. 12,000 steps with tables listed in label order (--in-order): the model learns the families' traces;
  2. 12,000 steps of drills (--p-drill 0.3), still in label order: the content lookup (label -> operation,
     digit -> arrow) that a long trace needs to get right a hundred times in a row;
  3. 3,000-10,500 steps on questions that list their tables in an order drawn with each question (the default),
     so that a trace can no longer find a line by where it sits, only by what it says. It is the fragile stage:
     run it in parts of a few thousand steps, each from the last one's weights with a new seed, and check
     long_chain after each (scripts/measure_families.py) until its traces stop copying the wrong line.

Reproducible from --seed (weights and every batch are functions of it), resumable from the checkpoint
it writes every --ckpt-minutes (atomic: one safetensors file, step and settings in its metadata).

    python scripts/train_reasoner.py --out adaptive_think/bundled/v1/reasoner --seed 0       # v1 (bundled-v1)
    python scripts/train_reasoner.py --recipe v2 --in-order --out runs/v2-1                  # v2, stage 1
    python scripts/train_reasoner.py --recipe v2 --in-order --out runs/v2-1 --resume         # (resumed)
    python scripts/train_reasoner.py --recipe v2 --in-order --out runs/v2-2 --init-from runs/v2-1 \
        --seed 2 --lr 1e-3 --warmup 50 --p-drill 0.3                                         # stage 2
    python scripts/train_reasoner.py --recipe v2 --out runs/v2-3 --init-from runs/v2-2 \
        --seed 777018 --lr 1e-3 --warmup 50 --steps 3000 --p-drill 0.3                       # stage 3
    python scripts/train_reasoner.py --recipe v2 --out runs/v2-3b --init-from runs/v2-3 \
        --seed 777021 --lr 1e-3 --warmup 50 --steps 3000 --p-drill 0.3                       # stage 3, part 2
    python scripts/train_reasoner.py --recipe v2 --out adaptive_think/bundled/reasoner --init-from runs/v2-3b \
        --seed 777022 --lr 1e-3 --warmup 50 --steps 4500 --p-drill 0.3                       # stage 3, part 3

Writes OUT/{model.safetensors, config.json, generation_config.json, tokenizer.json, ...} at the end and
OUT/snapshot/ (the same, loadable, for measuring progress) at every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from adaptive_think.bundled.tokenizer import MAX_LENGTH, build_tokenizer
from adaptive_think.tasks import chain, make_questions, walk
from adaptive_think.tasks.completions import CLOSE, EXIT_TEXT, OPEN, answer_text
from adaptive_think.tasks.families import FAMILIES, make_family_questions
from adaptive_think.tasks.parse import last_stated_answer

IGNORE = -100
NO_THINK_LEVELS = [1, 1, 1, 2, 2, 3, 4, 5, 6]
LONG = "long_chain"
SHORT = ("last_digit", "walk")
# Defaults per recipe for every flag left unset.
RECIPES = {
    "v1": dict(steps=2000, batch_size=32, lr=2e-3, warmup=100, hidden=192, layers=4, heads=6, threads=2,
               p_no_think=0.2, p_truncated=0.3),
    "v2": dict(steps=12000, batch_tokens=2304, lr=2e-3, warmup=150, hidden=192, layers=4, heads=6, threads=2,
               p_no_think=0.15, p_truncated=0.35, p_long_step=0.5, p_drill=0.0),
}
CHECKPOINT = "checkpoint.safetensors"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # run
    p.add_argument("--recipe", choices=sorted(RECIPES), default="v1")
    p.add_argument("--out", type=Path, required=True, help="folder for the model, its checkpoint and snapshots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT}")
    p.add_argument("--ckpt-minutes", type=float, default=5.0, help="checkpoint at least this often")
    p.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    p.add_argument("--threads", type=int, help="CPU threads (the dev box is shared)")
    p.add_argument("--stop-after-minutes", type=float, help="checkpoint and exit after this long (a session's share)")
    p.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                   help="start from a finished model's weights (same recipe shape) with a fresh optimizer and this "
                        "run's schedule: a longer schedule without training from zero (pass another --seed for "
                        "fresh batches)")
    # optimisation
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="v1: rows a step")
    p.add_argument("--batch-tokens", type=int, help="v2: padded tokens a step (rows are added until reached)")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    # model shape
    p.add_argument("--hidden", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    # data mixture: the rest of each step's rows are full traces
    p.add_argument("--p-no-think", type=float)
    p.add_argument("--p-truncated", type=float)
    p.add_argument("--p-long-step", type=float, help="v2: share of steps made of long_chain rows")
    p.add_argument("--p-drill", type=float, help="v2: share of rows that are shuffled lookup drills")
    p.add_argument("--level-weight", action="append", default=[], metavar="FAMILY:LEVEL=W",
                   help="v2: draw this family's traces and drills at LEVEL W times as often as another level "
                        "(repeatable; e.g. long_chain:4=4 to work on one level's weakness)")
    p.add_argument("--in-order", action="store_true",
                   help="v2: walk tables and long_chain steps listed in label order (the first two stages); "
                        "by default each question lists them in an order drawn with it")
    args = p.parse_args(argv)
    try:
        args.level_weights = parse_level_weights(args.level_weight)
    except ValueError as e:
        p.error(str(e))
    if args.level_weights and args.recipe != "v2":
        p.error("--level-weight applies to the v2 recipe only")
    if args.in_order and args.recipe != "v2":
        p.error("--in-order applies to the v2 recipe only")
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.p_no_think + args.p_truncated > 1 or min(args.p_no_think, args.p_truncated) < 0:
        p.error("--p-no-think and --p-truncated must be >= 0 and sum to at most 1")
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} must be a multiple of --heads {args.heads}")
    return args


def parse_level_weights(specs: list[str]) -> dict[str, list[float]]:
    """`["long_chain:4=4"]` -> {"long_chain": [1, 1, 1, 4, 1, 1]}: per family, a weight for each level 1-6."""
    out: dict[str, list[float]] = {}
    for spec in specs:
        try:
            key, weight = spec.split("=")
            family, level = key.split(":")
            level, weight = int(level), float(weight)
        except ValueError:
            raise ValueError(f"--level-weight {spec!r}: expected FAMILY:LEVEL=W, e.g. long_chain:4=4") from None
        if family not in FAMILIES:
            raise ValueError(f"--level-weight {spec!r}: unknown family {family!r}; known: {', '.join(FAMILIES)}")
        if not 1 <= level <= 6 or weight <= 0:
            raise ValueError(f"--level-weight {spec!r}: LEVEL must be 1-6 and W positive")
        out.setdefault(family, [1.0] * 6)[level - 1] = weight
    return out


def draw_level(rng: random.Random, family: str, args) -> int:
    """A trace's or drill's level: uniform 1-6 unless --level-weight reweights this family."""
    weights = getattr(args, "level_weights", {}).get(family)
    # The uniform draw stays rng.randint, so runs without weights replay their batches exactly.
    return rng.choices(range(1, 7), weights=weights)[0] if weights else rng.randint(1, 6)


def tokenizer_version(args) -> int:
    return 1 if args.recipe == "v1" else 2


def make_model(vocab_size: int, tok, args) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 32 * 32,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        head_dim=args.hidden // args.heads,
        max_position_embeddings=MAX_LENGTH[tokenizer_version(args)],
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return Qwen3ForCausalLM(config)


def encode_parts(tok, parts: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Ids and labels of (text, trained?) segments; encoded one by one they give the ids of the whole text."""
    ids, labels = [], []
    for text, trained in parts:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return ids, labels


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
    ids, labels = encode_parts(tok, parts)
    ids.append(tok.eos_token_id)
    labels.append(tok.eos_token_id)
    return ids, labels


def drill_example(tok, q, rng: random.Random) -> tuple[list[int], list[int]]:
    """A lookup drill on a `long_chain` or `walk` question: its text, then rounds of its lines in shuffled
    order (`o - 4`, `3: 6 to 2`), trained only on what each line looks up (the operation, the arrow's end)."""
    if q.family == chain.FAMILY:
        _, ops = chain.parse_question(q.question)
        items = [(f"\n{label}", f" {op} {b}") for label, (op, b) in zip(chain.LABELS, ops)]
        rounds = rng.randint(3, 12)
    elif q.family == walk.FAMILY:
        arrows, _, _ = walk.parse_question(q.question)
        items = [(f"{d} to", f" {a}") for d, a in enumerate(arrows)]
        rounds = rng.randint(4, 12)
    else:
        raise ValueError(f"no lookup drill for family {q.family!r}")
    parts, n = [(q.question, False)], 0
    for _ in range(rounds):
        for key, value in rng.sample(items, len(items)):
            if q.family == walk.FAMILY:
                n += 1
                key = f"\n{n}: {key}"
            parts += [(key, False), (value, True)]
    return encode_parts(tok, parts)


def pick_kind(rng: random.Random, args) -> str:
    r = rng.random()
    return "no_think" if r < args.p_no_think else "truncated" if r < args.p_no_think + args.p_truncated else "full"


def rows_v1(tok, args, rng: random.Random) -> list[tuple[list[int], list[int]]]:
    questions = make_questions(args.batch_size, seed=rng.randrange(2**31))
    # No-think answers are learnable only for easy levels; lean the no-think share towards them.
    easy = make_questions(args.batch_size, seed=rng.randrange(2**31), levels=NO_THINK_LEVELS)
    rows = []
    for q, q_easy in zip(questions, easy):
        kind = pick_kind(rng, args)
        rows.append(encode_example(tok, q_easy if kind == "no_think" else q, kind, rng))
    return rows


def rows_v2(tok, args, rng: random.Random) -> list[tuple[list[int], list[int]]]:
    """Rows until the padded batch reaches --batch-tokens: long_chain rows, or rows of the short families
    (one kind per step keeps padding low). No-think rows go in the short steps only (a short row padded to a
    long one's width is wasted work) and come from every family, easy levels first."""
    families = [LONG] if rng.random() < args.p_long_step else list(SHORT)
    rows, width = [], 0
    while not rows or width * (len(rows) + 1) <= args.batch_tokens:
        # Drawn only when drills are on, so runs without them replay their batches exactly.
        if args.p_drill and rng.random() < args.p_drill:
            family = LONG if families == [LONG] else walk.FAMILY
            q = make_family_questions(1, rng.randrange(2**31), families=[family], levels=[draw_level(rng, family, args)],
                                      in_order=args.in_order)[0]
            row = drill_example(tok, q, rng)
            if rows and max(width, len(row[0])) * (len(rows) + 1) > args.batch_tokens:
                break
            rows.append(row)
            width = max(width, len(row[0]))
            continue
        kind = pick_kind(rng, args)
        if kind == "no_think" and families == [LONG]:
            kind = "full"
        # Family and level are drawn here: one question of make_family_questions is always its first pair.
        family = rng.choice(list(FAMILIES) if kind == "no_think" else families)
        level = rng.choice(NO_THINK_LEVELS) if kind == "no_think" else draw_level(rng, family, args)
        q = make_family_questions(1, rng.randrange(2**31), families=[family], levels=[level], in_order=args.in_order)[0]
        row = encode_example(tok, q, kind, rng)
        if rows and max(width, len(row[0])) * (len(rows) + 1) > args.batch_tokens:
            break
        rows.append(row)
        width = max(width, len(row[0]))
    return rows


def make_batch(tok, args, step: int) -> dict[str, torch.Tensor]:
    """The batch of `step`: a pure function of (seed, step), so resuming replays the same data."""
    rng = random.Random(args.seed * 1_000_003 + step)
    rows = rows_v1(tok, args, rng) if args.recipe == "v1" else rows_v2(tok, args, rng)
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id)  # [B, T]
    labels = torch.full((len(rows), width), IGNORE)  # [B, T]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
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


def _settings(args) -> dict:
    keep = ("recipe", "seed", "steps", "batch_size", "batch_tokens", "lr", "warmup", "hidden", "layers", "heads",
            "p_no_think", "p_truncated", "p_long_step")
    out = {k: getattr(args, k, None) for k in keep}
    # Only when on: checkpoints of runs without drills keep matching their flags.
    if getattr(args, "p_drill", None):
        out["p_drill"] = args.p_drill
    if getattr(args, "level_weights", None):
        out["level_weights"] = args.level_weights
    if getattr(args, "in_order", False):
        out["in_order"] = True
    if getattr(args, "init_from", None) is not None:
        out["init_from"] = str(args.init_from)
    return out


def init_weights(model, folder: Path) -> None:
    """Copy a finished model's weights into `model`; a clear error when its shape or vocabulary differs."""
    if not (folder / "model.safetensors").is_file():
        raise SystemExit(f"--init-from {folder}: no model.safetensors there; point it at a finished run's folder")
    src = Qwen3ForCausalLM.from_pretrained(folder)
    shape = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings")
    diff = {k: (getattr(src.config, k), getattr(model.config, k)) for k in shape
            if getattr(src.config, k) != getattr(model.config, k)}
    if diff:
        raise SystemExit(f"--init-from {folder}: its model differs from this recipe's (theirs, this run's): {diff}")
    model.load_state_dict(src.state_dict())


def save_checkpoint(out: Path, model, opt, step: int, args, tok) -> None:
    """Weights, AdamW moments and the step in one safetensors file (atomic), plus a loadable snapshot."""
    # clone: tied embeddings share storage, which safetensors refuses to write twice
    tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"opt.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"step": str(step), "settings": json.dumps(_settings(args))}
    tmp = out / (CHECKPOINT + ".tmp")
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, out / CHECKPOINT)  # a crash mid-write never leaves a torn checkpoint
    save_model(out / "snapshot", model, tok)


def load_checkpoint(out: Path, model, opt, args) -> int:
    """Restore weights and optimizer state; the step to continue from. Refuses a checkpoint of other settings."""
    from safetensors import safe_open

    path = out / CHECKPOINT
    with safe_open(path, "pt") as fh:
        meta = fh.metadata()
    saved = json.loads(meta["settings"])
    if saved != _settings(args):
        diff = {k: (saved.get(k), v) for k, v in _settings(args).items() if saved.get(k) != v}
        raise SystemExit(f"{path} was written with other settings (saved, now): {diff}; rerun with the same flags "
                         "or pick another --out")
    tensors = load_file(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = opt.state_dict()
    moments: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, key = k.split(".", 2)
            moments.setdefault(int(i), {})[key] = v
    state["state"] = moments
    opt.load_state_dict(state)
    return int(meta["step"])


def save_model(folder: Path, model, tok) -> None:
    """save_pretrained into a fresh folder, swapped in whole."""
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=model.config.bos_token_id, do_sample=False, max_new_tokens=model.config.max_position_embeddings // 2,
    )
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(tokenizer_version(args))
    model = make_model(len(tok), tok, args).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    start = 0
    if args.resume and (args.out / CHECKPOINT).exists():
        start = load_checkpoint(args.out, model, opt, args)
    elif args.init_from is not None:
        init_weights(model, args.init_from)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"recipe {args.recipe}: {n_params / 1e6:.2f}M parameters, vocab {len(tok)}, device {device}, "
          f"threads {args.threads}, from step {start} of {args.steps}", flush=True)

    model.train()
    t0 = last_ckpt = time.time()
    window_loss, window_tokens, window_t = 0.0, 0, time.time()
    for step in range(start, args.steps):
        batch = {k: v.to(device) for k, v in make_batch(tok, args, step).items()}
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window_loss += loss.item()
        window_tokens += batch["input_ids"].numel()
        if (step + 1) % args.log_every == 0:
            dt = time.time() - window_t
            print(f"step {step + 1} loss {window_loss / args.log_every:.4f} lr {lr_at(step, args):.2e} "
                  f"{window_tokens / dt:.0f} tok/s elapsed {(time.time() - t0) / 60:.1f} min", flush=True)
            window_loss, window_tokens, window_t = 0.0, 0, time.time()
        done = step + 1 == args.steps
        out_of_time = args.stop_after_minutes is not None and time.time() - t0 > 60 * args.stop_after_minutes
        if not done and (time.time() - last_ckpt > 60 * args.ckpt_minutes or out_of_time):
            save_checkpoint(args.out, model, opt, step + 1, args, tok)
            last_ckpt = time.time()
            print(f"checkpoint at step {step + 1}", flush=True)
        if out_of_time and not done:
            print(f"stopping after {args.stop_after_minutes} min; continue with --resume", flush=True)
            return

    model.eval()
    save_model(args.out / "final", model, tok)
    for f in (args.out / "final").iterdir():
        os.replace(f, args.out / f.name)
    (args.out / "final").rmdir()
    shutil.rmtree(args.out / "snapshot", ignore_errors=True)
    (args.out / CHECKPOINT).unlink(missing_ok=True)
    print(f"trained {args.steps - start} steps in {(time.time() - t0) / 60:.1f} min -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
