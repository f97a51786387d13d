"""How much thinking could any ready head save at a given risk? The stop-only frontier of several heads.

For each head variant (every collected layer, linear and MLP; all layers concatenated; labels "right here"
or "right here and at every later checkpoint"), fit on the training questions of a collection (train.py's
split), then on its calibration questions sweep every threshold of the calibration grid and report the
largest share of thinking saved on questions of level >= --min-level while at most L questions are lost
(stops only, no skips), next to the oracle's share. A frontier far below the oracle's at the losses a
rung may spend means the hidden state, not the calibration, limits the saving.

With `--memory`, one more variant: a ready head with memory. The shipped heads read only the current
token's state; this one also reads a running maximum, over every thought token so far, of K learned
features of the state (score_t = MLP([x_t, max_{s<=t} (G x_s + g)])), fitted end to end on the same labels.
It needs the layer's state at every thought token: a collection made with `collect --token-states` holds
them (any decoding); for a greedy one made without, `--memory-model` regenerates each question's thought
(a question whose thought does not come out the same length is left out of every variant's frontier, and
counted).

    python scripts/probe_frontier.py --data runs/bundled_probe/greedy --min-level 2
    python scripts/probe_frontier.py --data runs/with-token-states --memory
    python scripts/probe_frontier.py --data runs/greedy-s11-12 --memory-model bundled-v1 --seeds 11 12 --n 1200
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from adaptive_think.evaluation.oracle import oracle_point
from adaptive_think.training.calibrate import PATH_GRID, questions_of, simulate_stop
from adaptive_think.training.health import KIND_THOUGHT
from adaptive_think.training.memory import ThoughtSet, checkpoint_scores, fit_memory_head, thought_key
from adaptive_think.training.shards import load_collections
from adaptive_think.training.train_config import TrainConfig
from adaptive_think.training.train import fit_head
from adaptive_think.training.splits import split_questions

LOSSES = (0, 1, 2, 3, 6, 12)


def settled_labels(records: list[dict], label: torch.Tensor) -> torch.Tensor:
    """Per checkpoint: right here and at every later checkpoint of its question."""
    out = label.clone()
    by_question = defaultdict(list)
    for i, r in enumerate(records):
        if r["kind"] == KIND_THOUGHT:
            by_question[(r["decoding"], r["qid"])].append((r["pos"], i))
    for rows in by_question.values():
        ok = True
        for _, i in sorted(rows, reverse=True):
            ok = ok and bool(label[i])
            out[i] = ok
    return out


def frontier(records, scores: list[float], calib: list[bool], min_level: int) -> dict:
    """Largest share of thinking saved on levels >= min_level with at most L questions lost, for each L."""
    qs = questions_of(records, scores, [0.0] * len(scores), calib)
    hard = [q for q in qs if q["level"] >= min_level]
    full = sum(q["length"] for q in hard)
    best = {L: 0.0 for L in LOSSES}
    for t in PATH_GRID:
        lost = sum(q["full"] and not simulate_stop(q, t)[0] for q in qs)
        saved = 1 - sum(simulate_stop(q, t)[1] for q in hard) / full
        for L in LOSSES:
            if lost <= L:
                best[L] = max(best[L], saved)
    oracle = sum(oracle_point(q["full"], False, [(p, ok) for p, _, ok in q["cps"]], q["length"]) for q in hard)
    return {"questions": len(qs), "hard_questions": len(hard), "saved_at_losses": best, "oracle_saved": 1 - oracle / full}


@torch.no_grad()
def thought_states(model_path: str, items, layer: int, batch_size: int, max_new_tokens: int) -> dict[str, torch.Tensor]:
    """qid -> [n, D] fp32: the layer's output at each of the n tokens of the question's greedy thought."""
    from adaptive_think.engines.layer_hook import decoder_layers
    from adaptive_think.loading import chat_prompt, load_model_and_tokenizer
    from adaptive_think.markers import resolve_markers
    from adaptive_think.training.collect import continuations
    from adaptive_think.training.thoughts import thought_span

    model, tok = load_model_and_tokenizer(model_path, device="cpu")
    markers = resolve_markers(tok)
    grabbed = {}
    hook = decoder_layers(model)[layer].register_forward_hook(
        lambda mod, args, out: grabbed.__setitem__("h", out[0] if isinstance(out, (tuple, list)) else out))
    states, pad = {}, tok.pad_token_id
    try:
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            prompts = [tok.encode(chat_prompt(tok, it.question), add_special_tokens=False) for it in chunk]
            gens = continuations(model, tok, prompts, max_new_tokens, batch_size)
            seqs = [p + g for p, g in zip(prompts, gens)]
            width = max(map(len, seqs))
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])  # right padding: positions as generated
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            model(input_ids=ids, attention_mask=mask)
            for b, it in enumerate(chunk):
                body, close = thought_span(prompts[b], gens[b], markers)
                if body is not None and close >= 0:
                    start = len(prompts[b]) + body  # the state at a token is the one that has just read it
                    states[it.id] = grabbed["h"][b, start : start + close - body].float().clone()
            print(f"regenerated {min(i + batch_size, len(items))} of {len(items)} thoughts", flush=True)
    finally:
        hook.remove()
    return states


def memory_scores(args, hidden, records, part, settings) -> tuple[list[float], set]:
    """(ready score per record, questions kept) of a memory head fitted on the train split (memory.py).

    Thought-token states come from the collection (`collect --token-states`) or, for greedy collections made
    without them, from regenerating the thoughts with `--memory-model`.
    """
    from adaptive_think.training.items import bundled_items, load_jsonl, question_hash
    from adaptive_think.training.shards import THOUGHT_PREFIX

    layer = args.memory_layer if args.memory_layer is not None else settings["layers"][-1]
    wanted = {thought_key(r): r for r in records if r["kind"] == 0}
    if f"{THOUGHT_PREFIX}{layer}" in hidden and all("thought_states" in r for r in wanted.values()):
        data = ThoughtSet.from_collection(hidden, records, layer)
    elif args.memory_model is None:
        raise SystemExit(f"--memory needs every question's thought-token states (layer {layer}): collect with "
                         "--token-states, or give --memory-model to regenerate greedy thoughts.")
    else:
        if any(r.get("decoding", "greedy") != "greedy" for r in records):
            raise SystemExit("--memory-model regenerates thoughts greedily: pass greedy collections only (or collect "
                             "with --token-states).")
        items = load_jsonl(args.questions) if args.questions else [
            it for seed in args.seeds for it in bundled_items(args.n, seed, args.levels)]
        items = [it for it in items if ("greedy", it.id) in wanted
                 and question_hash(it.question) == wanted["greedy", it.id].get("qhash", question_hash(it.question))]
        if not items:
            raise SystemExit("None of the collection's questions are among --seeds/--n/--levels (or --questions): "
                             "pass the draws the collection was made from.")
        regenerated = thought_states(args.memory_model, items, layer, args.batch_size, settings["max_new_tokens"])
        data = ThoughtSet({("greedy", q): s for q, s in regenerated.items()}, records)
    print(f"memory head: {len(data.states)} of {len(wanted)} thoughts have a state for every token; the rest are "
          "left out of every variant's frontier", flush=True)
    h = hidden[f"layer{layer}"]
    train_rows = torch.tensor([p == "train" for p in part])
    mean, std = h[train_rows].mean(0), h[train_rows].std(0).clamp_min(1e-4)  # as train-probe normalises
    part_of = {thought_key(r): p for r, p in zip(records, part)}
    cfg = TrainConfig(seed=args.seed, neg_weight=args.neg_weight)
    head, _ = fit_memory_head(data, records, part_of, mean, std, args.memory_size, cfg)
    return checkpoint_scores(head, data, records, mean, std), set(data.states)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, help="collection folder(s), as for train-probe")
    ap.add_argument("--min-level", type=int, default=2, help="report the saving on questions of this level and up")
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--calib-fraction", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neg-weight", type=float, default=TrainConfig.neg_weight,
                    help="loss weight of a wrong checkpoint, as for train-probe (default %(default)s; 1 is plain BCE)")
    mem = ap.add_argument_group("ready head with memory")
    mem.add_argument("--memory", action="store_true", help="add the memory variant (needs thought-token states)")
    mem.add_argument("--memory-model", default=None,
                     help="regenerate greedy thoughts with this model (a folder or `bundled`) when the collection "
                          "has no token states")
    mem.add_argument("--memory-size", type=int, default=8, help="K, the remembered features")
    mem.add_argument("--memory-layer", type=int, default=None, help="default: the last collected layer")
    mem.add_argument("--questions", default=None, help="JSONL the collection was made from (else bundled draws)")
    mem.add_argument("--seeds", type=int, nargs="+", default=[11], help="seeds of the bundled draws collected")
    mem.add_argument("--n", type=int, default=1000, help="questions per bundled draw, as given to collect")
    mem.add_argument("--levels", type=int, nargs="+", default=None, help="levels of the bundled draws, as collected")
    mem.add_argument("--batch-size", type=int, default=64)
    mem.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    args.memory = args.memory or args.memory_model is not None
    if args.memory_size < 1:
        ap.error(f"--memory-size must be at least 1, got {args.memory_size}")
    hidden, records, settings = load_collections(args.data)
    split = split_questions([r.get("qhash") or r["qid"] for r in records], args.seed, args.val_fraction,
                            args.calib_fraction)
    part = [split[r.get("qhash") or r["qid"]] for r in records]
    thought = torch.tensor([r["kind"] == KIND_THOUGHT for r in records])
    train = thought & torch.tensor([p == "train" for p in part])
    val = thought & torch.tensor([p == "val" for p in part])
    calib = [p == "calib" for p in part]
    if args.memory:
        memory, kept = memory_scores(args, hidden, records, part, settings)
        calib = [c and (r.get("decoding", "greedy"), r["qid"]) in kept for c, r in zip(calib, records)]
    label = torch.tensor([bool(r["label"]) for r in records])
    settled = settled_labels(records, label)
    feats = {}
    for layer in settings["layers"]:
        h = hidden[f"layer{layer}"]
        feats[f"layer{layer}"] = (h - h[train].mean(0)) / h[train].std(0).clamp_min(1e-4)
    feats["layers " + "+".join(map(str, settings["layers"]))] = torch.cat(list(feats.values()), -1)
    cfg = TrainConfig(seed=args.seed, neg_weight=args.neg_weight)
    cfg.rungs()  # validates neg_weight
    variants = [(name, kind, "here") for name in feats for kind in ("linear", "mlp")]
    variants.append((f"layer{settings['layers'][-1]}", "mlp", "settled"))
    rows = []
    for name, kind, which in variants:
        y = label if which == "here" else settled
        x = feats[name]
        head, auroc = fit_head(x[train], y[train], x[val], y[val], kind, cfg, cfg.neg_weight)
        with torch.no_grad():
            scores = torch.sigmoid(head(x)).tolist()
        got = frontier(records, scores, calib, args.min_level)
        rows.append({"features": name, "kind": kind, "label": which, "val_auroc": round(auroc, 4), **got})
        at = " ".join(f"L{k}:{v:.3f}" for k, v in got["saved_at_losses"].items())
        print(f"{name:14s} {kind:6s} label {which:7s} AUROC {auroc:.3f} | saved on level >= {args.min_level} at <= L "
              f"lost of {got['questions']}: {at} | oracle {got['oracle_saved']:.3f}", flush=True)
    if args.memory:
        got = frontier(records, memory, calib, args.min_level)
        name = f"layer{args.memory_layer if args.memory_layer is not None else settings['layers'][-1]}+memory{args.memory_size}"
        rows.append({"features": name, "kind": "mlp", "label": "here", **got})
        at = " ".join(f"L{k}:{v:.3f}" for k, v in got["saved_at_losses"].items())
        print(f"{name:14s} mlp    label here    (memory)     | saved on level >= {args.min_level} at <= L lost of "
              f"{got['questions']}: {at} | oracle {got['oracle_saved']:.3f}", flush=True)
    print(json.dumps(rows))
    if args.json:
        from adaptive_think.files import atomic_write
        text = json.dumps(rows, indent=1) + "\n"
        atomic_write(args.json, lambda p: open(p, "w").write(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
