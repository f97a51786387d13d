"""Collect probe training data: full thoughts, forced exits at checkpoints, hidden states.

    adaptive-think collect --model bundled --n 1000 --seed 11 --out runs/collect
    adaptive-think collect --model DIR --questions q.jsonl --checker boxed --out runs/c
    adaptive-think collect --model DIR --questions q.jsonl --checker mypkg.check:is_right --out runs/c
    adaptive-think collect --model bundled --n 1200 --seed 21 --out runs/c-sampled --do-sample --temperature 0.6 --top-p 0.95
    adaptive-think collect --model DIR --questions q.jsonl --out runs/c --engine vllm --tensor-parallel-size 2

A sampled collection labels checkpoints under the decoding users sample with; `train-probe` calibrates
each effort rung on every decoding mode it is given, so the rung holds under each.

Re-running the same command resumes an interrupted run. Several GPUs: see scripts/collect_probe_data.py, or
`--engine vllm` with vLLM's tensor parallelism (docs/training.md, "Collecting on vLLM").
"""

from __future__ import annotations

import json

from adaptive_think.commands.sampling_flags import add_sampling_arguments, sampling_from_args

HELP = "collect labelled checkpoints for probe training (resumable)"
COLLECT_DEFAULTS = {"max_new_tokens": 512, "max_answer_tokens": 16}  # CollectConfig's, and doctor's


def add_arguments(p):
    src = p.add_argument_group("questions")
    src.add_argument("--model", required=True, help="local model folder, or `bundled` (`bundled-v1`)")
    src.add_argument("--questions", default=None, help='JSONL of {"question", "answer"} (default: bundled tasks)')
    src.add_argument("--checker", default=None,
                     help="for --questions: boxed | last-number | exact | choice | answer-is (default) | "
                          "package.module:function(text, answer) -> bool")
    src.add_argument("--n", type=int, default=1000, help="bundled questions to draw")
    src.add_argument("--seed", type=int, default=11, help="seed of the bundled questions")
    src.add_argument("--levels", type=int, nargs="+", default=None, choices=range(1, 7), metavar="L",
                     help="bundled questions of these levels only (1-6; default: all, mixed evenly)")
    add_families_argument(src)
    out = p.add_argument_group("collection")
    out.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    out.add_argument("--layers", type=int, nargs="*", default=None, help="candidate layers (default: spread)")
    out.add_argument("--every", type=int, default=8,
                     help="checkpoint every k thought tokens, besides step boundaries (0: step boundaries only)")
    out.add_argument("--token-states", action="store_true",
                     help="also keep every thought token's hidden state (for a head with memory; about 3x the disk)")
    out.add_argument("--no-states", dest="states", action="store_false",
                     help="keep no hidden states: labels and logit scores only (what `calibrate-score` needs)")
    out.add_argument("--token-layers", nargs="+", default=None, metavar="L",
                     help="with --token-states: keep the token states of these layers only (e.g. the layer a first "
                          "collection's train-probe chose); the disk then grows with one layer, not all candidates. "
                          "auto: a layer pass over the first --layer-pass-questions questions (checkpoint states "
                          "only, in OUT/layer-pass) chooses the layer by train-probe's layer sweep")
    out.add_argument("--layer-pass-questions", type=int, default=None, metavar="N",
                     help="with --token-layers auto: questions of the layer pass (default 64, at most those there are)")
    out.add_argument("--token-stride", type=int, default=1, metavar="S",
                     help="with --token-states: keep the state of every S-th thought token only (those that have read "
                          "S, 2S, ... tokens; checkpoint states are kept anyway): about 1/S of the token-state disk; "
                          "a head with memory then takes its running maximum over these (default 1: every token)")
    out.add_argument("--batch-size", type=int, default=32)
    out.add_argument("--max-new-tokens", type=int, default=None,
                     help=f"thought + answer budget (default {COLLECT_DEFAULTS['max_new_tokens']}, or what --families "
                          "needs: long_chain 2200)")
    out.add_argument("--max-answer-tokens", type=int, default=COLLECT_DEFAULTS["max_answer_tokens"])
    out.add_argument("--exit-text", default="\\n\\n")
    out.add_argument("--shard-questions", type=int, default=64)
    out.add_argument("--think-tokens", nargs=2, default=None, metavar=("OPEN", "CLOSE"))
    out.add_argument("--no-fail-fast", dest="fail_fast", action="store_false",
                     help="keep collecting when the first batch shows no thought, no parsed answer or nothing right")
    add_sampling_arguments(p, "decoding of the thoughts and of every forced-exit answer (default: greedy)",
                           "seed of the sampled generations (each batch draws from it and its first question)")
    dev = p.add_argument_group("device")
    dev.add_argument("--device", default="auto")
    dev.add_argument("--dtype", default="auto")
    dev.add_argument("--device-map", default=None, help='e.g. "auto" to spread a large model over GPUs')
    eng = p.add_argument_group("engine")
    eng.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                     help="hf: generate() with the states recorded as it decodes (default); vllm: thoughts and forced "
                          "exits through vLLM's offline engine with prefix caching, states from one hf forward over "
                          "each thought (needs vLLM installed)")
    eng.add_argument("--tensor-parallel-size", type=int, default=None, metavar="N",
                     help="--engine vllm: vLLM's tensor_parallel_size (one engine over N GPUs)")
    eng.add_argument("--vllm-kwargs", default=None, metavar="JSON",
                     help='--engine vllm: more vLLM LLM() arguments, e.g. \'{"kv_cache_memory_bytes": 4e9, '
                          '"max_model_len": 8192}\' (the CPU build needs kv_cache_memory_bytes)')


def add_families_argument(group) -> None:
    """--families: which bundled task families the questions come from (one definition for every command)."""
    group.add_argument("--families", nargs="+", default=None, metavar="NAME",
                       help="bundled questions of these task families, mixed evenly (last_digit walk long_chain; "
                            "the multi-family reasoner answers all three). Default: the first family, last_digit")


def fill_max_new_tokens(args, floor: int) -> None:
    """--max-new-tokens when not given: `floor`, or what the --families' thoughts need (long_chain runs ~2,000)."""
    if args.max_new_tokens is None:
        from adaptive_think.tasks.families import max_new_tokens_for

        args.max_new_tokens = max_new_tokens_for(getattr(args, "families", None), floor)
    elif args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")


def items_from_args(args):
    from adaptive_think.training.items import bundled_items, check_answers, load_checker, load_jsonl

    think_tokens = tuple(args.think_tokens) if getattr(args, "think_tokens", None) else None
    if args.questions:
        for flag in ("levels", "families"):
            if getattr(args, flag, None):
                raise ValueError(f"--{flag} picks bundled questions; a --questions file is used as it is.")
        if args.checker is None:
            print("note: no --checker given; answers are compared by the default 'the answer is N' parser "
                  "(built-in: --checker boxed | last-number | exact | choice)")
        items, checker = load_jsonl(args.questions), load_checker(args.checker, think_tokens)
        check_answers(items, checker)
        return items, checker
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}.")
    return (bundled_items(args.n, args.seed, getattr(args, "levels", None), getattr(args, "families", None)),
            load_checker(None))


def token_layers_from_args(args) -> list[int] | str | None:
    """--token-layers as given: layer numbers, "auto", or None."""
    given = getattr(args, "token_layers", None)
    if given is None:
        if getattr(args, "layer_pass_questions", None) is not None:
            raise ValueError("--layer-pass-questions sizes the layer pass of --token-layers auto; add "
                             "--token-states --token-layers auto, or drop it.")
        return None
    if "auto" in given:
        if len(given) > 1:
            raise ValueError(f"--token-layers {' '.join(given)}: give layer numbers or auto, not both.")
        return "auto"
    if getattr(args, "layer_pass_questions", None) is not None:
        raise ValueError("--layer-pass-questions sizes the layer pass of --token-layers auto; with layers given "
                         f"({' '.join(given)}) there is none: drop it.")
    try:
        return [int(v) for v in given]
    except ValueError:
        raise ValueError(f"--token-layers {' '.join(given)}: give layer numbers (e.g. --token-layers 12) or "
                         "auto.") from None


def config_from_args(args):
    """The CollectConfig of the collection flags (shared with scripts/collect_probe_data.py)."""
    from adaptive_think.training.collect import CollectConfig

    sampling = sampling_from_args(args)
    token_layers = token_layers_from_args(args)  # "auto": run() chooses it with a layer pass
    return CollectConfig(layers=args.layers, every=args.every, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, max_answer_tokens=args.max_answer_tokens,
                         exit_text=args.exit_text.encode().decode("unicode_escape"),
                         shard_questions=args.shard_questions, fail_fast=args.fail_fast,
                         sampling=sampling if sampling.get("do_sample") else {},
                         sampling_seed=args.sampling_seed, token_states=args.token_states,
                         states=getattr(args, "states", True),
                         token_layers=None if token_layers == "auto" else token_layers,
                         token_stride=args.token_stride)


def doctor_command(args) -> str:
    """The `adaptive-think doctor` command that checks this run's model, markers, questions and checker."""
    import shlex

    parts = ["adaptive-think", "doctor", "--model", args.model]
    if args.think_tokens:
        parts += ["--think-tokens", *args.think_tokens]
    if args.questions:
        parts += ["--questions", args.questions]
    if args.checker:
        parts += ["--checker", args.checker]
    for flag in ("max_new_tokens", "max_answer_tokens"):  # doctor has the same flags and defaults
        if getattr(args, flag) != COLLECT_DEFAULTS[flag]:
            parts += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return shlex.join(parts)


def vllm_kwargs_from_args(args) -> dict | None:
    """The vLLM LLM() arguments of --engine vllm (None for --engine hf, which refuses vLLM flags); a clear error
    when vLLM is not installed."""
    given = [flag for flag, value in (("--tensor-parallel-size", args.tensor_parallel_size),
                                      ("--vllm-kwargs", args.vllm_kwargs)) if value is not None]
    if getattr(args, "engine", "hf") != "vllm":
        if given:
            raise ValueError(f"{' and '.join(given)} set{'s' if len(given) == 1 else ''} up the vLLM engine; add "
                             "--engine vllm, or drop it for the hf engine.")
        return None
    from adaptive_think.training.collect_vllm import check_vllm_kwargs

    try:
        kwargs = json.loads(args.vllm_kwargs) if args.vllm_kwargs else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"--vllm-kwargs is not valid JSON ({err}); "
                         "e.g. '{\"kv_cache_memory_bytes\": 4e9}'.") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--vllm-kwargs must be a JSON object of LLM() arguments, got {args.vllm_kwargs!r}.")
    if "kv_cache_memory_bytes" in kwargs:  # JSON writes 4e9 as a float
        kwargs["kv_cache_memory_bytes"] = int(kwargs["kv_cache_memory_bytes"])
    if args.tensor_parallel_size is not None:
        if "tensor_parallel_size" in kwargs:
            raise ValueError("tensor_parallel_size is given twice (--tensor-parallel-size and --vllm-kwargs); "
                             "keep one.")
        kwargs["tensor_parallel_size"] = args.tensor_parallel_size
    kwargs = check_vllm_kwargs(kwargs)
    from adaptive_think.integrations.vllm import require_vllm
    from adaptive_think.training.collect_vllm import NEEDED_BY

    try:  # before loading anything
        require_vllm(NEEDED_BY)
    except ImportError as err:
        raise ValueError(f"{err} Or collect without it: --engine hf (the default).") from None
    return kwargs


def make_collect_fn(args, model, tok, checker, cfg, vllm_kwargs: dict | None, engine_env: dict | None = None,
                    **collect_kwargs):
    """fn(items, out, cfg) -> summary: collect with the engine the flags chose. --engine vllm starts its engine
    here, in the environment `engine_env` (training/launch.py rank_engine_env); collect_kwargs go to collect()."""
    from adaptive_think.loading import resolve_model_path
    from adaptive_think.training.collect import collect

    kwargs = dict(think_tokens=tuple(args.think_tokens) if args.think_tokens else None, doctor=doctor_command(args),
                  **collect_kwargs)
    if vllm_kwargs is None:
        return lambda its, out, c: collect(model, tok, its, out, checker, c, **kwargs)
    from adaptive_think.training.collect_vllm import check_decoding, collect_vllm, vllm_engine
    from adaptive_think.training.launch import patched_env

    check_decoding(model, cfg)  # before the engine starts
    with patched_env(engine_env or {}):
        llm = vllm_engine(resolve_model_path(args.model), model, **vllm_kwargs)
    return lambda its, out, c: collect_vllm(llm, model, tok, its, out, checker, c, **kwargs)


def run(args) -> int:
    from adaptive_think.loading import load_model_and_tokenizer

    items, checker = items_from_args(args)
    fill_max_new_tokens(args, COLLECT_DEFAULTS["max_new_tokens"])
    cfg = config_from_args(args)  # bad flags fail before the model loads
    auto = token_layers_from_args(args) == "auto"
    if auto:
        from adaptive_think.training.layer_pass import DEFAULT_QUESTIONS, collect_with_layer_pass, layer_pass_size

        n_pass = layer_pass_size(cfg, DEFAULT_QUESTIONS if args.layer_pass_questions is None
                                 else args.layer_pass_questions, len(items))
    vllm_kwargs = vllm_kwargs_from_args(args)
    model, tok = load_model_and_tokenizer(args.model, args.device, args.dtype, args.device_map)
    collect_fn = make_collect_fn(args, model, tok, checker, cfg, vllm_kwargs)
    if auto:
        summary = collect_with_layer_pass(collect_fn, items, args.out, cfg, n_pass)
    else:
        summary = collect_fn(items, args.out, cfg)
    print(json.dumps(summary))
    return 0
