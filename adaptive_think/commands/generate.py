"""Generate one answer from a local model folder with adaptive thinking, and print its report.

    adaptive-think generate --model bundled --prompt "What is 3 + 4 * 2?" --policy budget --max-think-tokens 32
"""

from __future__ import annotations

import json

import torch

from adaptive_think.commands.think_flags import add_think_arguments, think_config_from_args

HELP = "generate one answer with adaptive thinking"


def add_arguments(p):
    p.add_argument("--model", required=True, help="local model folder, or `bundled` (`bundled-v1`)")
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--probe", default=None, help="probe folder, or `bundled` (`bundled-v1`) (default for a bundled --model: its shipped probe)")
    add_think_arguments(p)
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--do-sample", action="store_true")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--engine", choices=("hf", "graph"), default="hf")
    g.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto")


def run(args) -> int:
    from adaptive_think import AdaptiveThinker
    from adaptive_think.loading import chat_prompt, load_model_and_tokenizer

    think = think_config_from_args(args)
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    probe = args.probe
    from adaptive_think.bundled import is_bundled, probe_path

    if is_bundled(probe):
        probe = probe_path(probe)
    elif probe is None and is_bundled(args.model) and think.policy == "probe":
        probe = probe_path(args.model)
    thinker = AdaptiveThinker(model, tokenizer, think_tokens=tuple(args.think_tokens) if args.think_tokens else None,
                              probe=probe)
    text = args.prompt if args.no_chat_template else chat_prompt(tokenizer, args.prompt)
    batch = tokenizer([text], return_tensors="pt", add_special_tokens=False).to(model.device)
    torch.manual_seed(args.seed)
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample)
    if args.temperature is not None:
        kwargs["temperature"] = args.temperature
    out = thinker.generate(**batch, think=think, engine=args.engine, **kwargs)
    completion = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=False)
    print(completion)
    print(json.dumps(thinker.last_reports[0].to_dict()))
    return 0
