"""Which vLLM engine configurations adaptive_think steers correctly; the others are refused at start-up.

The controller steers one logits row per request, with the token, position and probe-layer hidden state
that the model wrapper (models.py) hands over from `forward` / `compute_logits`. Refused, with an error
that names the setting and what works instead:

- speculative decoding, every method (ngram, draft model, EAGLE / EAGLE-3, MTP, extract_hidden_states,
  ...): a request owns one logits row per draft token; EAGLE-3 and extract_hidden_states also take
  over the auxiliary hidden-state layers the probe reads. vLLM's V1 runner refuses custom logits
  processors with it itself; Model Runner V2 (the GPU default) runs them and would steer the wrong rows.
- batch-sharded sampling (tensor parallel ranks each sample a slice of the batch through
  `compute_logits_local`, which bypasses the wrapper's hand-over);
- pipeline parallelism while a probe is served: the probe layer's state comes through vLLM's auxiliary
  hidden-state outputs, which vLLM relays between pipeline stages only for its own EAGLE-3 drafts.

`EngineSetup` holds just those facts; `setup_of_config` reads them from a `VllmConfig` (the processor and
the wrapper, in the worker), `setup_of_args` from parsed `EngineArgs` (`adaptive-think serve`, before the
server starts). Nothing here imports vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

# speculative methods that replace the auxiliary hidden-state layers the wrapper sets for the probe
AUX_LAYER_METHODS = ("eagle3", "extract_hidden_states")


@dataclass(frozen=True)
class EngineSetup:
    """The parts of a vLLM engine's configuration that decide whether adaptive_think can steer it.

    speculative: whether speculative decoding is configured; speculative_method: its method when known
    (vLLM infers it from the draft model's name when only a model is given).
    """

    speculative: bool = False
    speculative_method: str | None = None
    pipeline_parallel_size: int = 1
    batch_sharded_sampling: bool = False


def setup_of_config(vllm_config) -> EngineSetup:
    """The setup of an engine's `VllmConfig` (its speculative_config and parallel_config)."""
    spec = getattr(vllm_config, "speculative_config", None)
    parallel = vllm_config.parallel_config
    return EngineSetup(speculative=spec is not None, speculative_method=getattr(spec, "method", None),
                       pipeline_parallel_size=int(parallel.pipeline_parallel_size),
                       batch_sharded_sampling=bool(getattr(parallel, "enable_batch_sharded_sampling", False)))


def setup_of_args(engine_args) -> EngineSetup:
    """The setup of parsed vLLM engine arguments (`EngineArgs.from_cli_args`): --speculative-config and
    its --spec-method / --spec-model / --spec-tokens shorthands, --pipeline-parallel-size,
    --enable-batch-sharded-sampling."""
    spec = dict(getattr(engine_args, "speculative_config", None) or {})
    method = spec.get("method") or getattr(engine_args, "spec_method", None)
    shorthand = any(getattr(engine_args, name, None) is not None
                    for name in ("spec_method", "spec_model", "spec_tokens"))
    speculative = getattr(engine_args, "speculative_config", None) is not None or shorthand
    return EngineSetup(speculative=speculative, speculative_method=method,
                       pipeline_parallel_size=int(getattr(engine_args, "pipeline_parallel_size", 1) or 1),
                       batch_sharded_sampling=bool(getattr(engine_args, "enable_batch_sharded_sampling", False)))


def unsupported(setup: EngineSetup, probe_served: bool) -> list[str]:
    """One message per setting of `setup` that adaptive_think does not steer correctly ([] when none)."""
    problems = []
    if setup.speculative:
        named = f" (method {setup.speculative_method!r})" if setup.speculative_method else ""
        aux = (f"; {setup.speculative_method} also takes over the hidden-state layers the probe reads"
               if setup.speculative_method in AUX_LAYER_METHODS else "")
        problems.append(
            f"speculative decoding{named} is not supported with adaptive_think yet: a request then owns one logits "
            f"row per draft token, and adaptive_think steers one row per request{aux}. Drop --speculative-config "
            "(speculative_config= for vllm.LLM), or serve without adaptive_think settings (plain `vllm serve`, "
            "or vllm.LLM without adaptive_think's llm_kwargs).")
    if setup.batch_sharded_sampling:
        problems.append(
            "batch-sharded sampling (--enable-batch-sharded-sampling) is not supported with adaptive_think: each "
            "tensor-parallel rank then computes the logits of a slice of the batch through compute_logits_local, "
            "which bypasses the rows adaptive_think's model wrapper hands to its logits processor. Leave it off "
            "(enable_batch_sharded_sampling=False); tensor parallelism without it is not refused.")
    if probe_served and setup.pipeline_parallel_size > 1:
        problems.append(
            f"pipeline parallelism (--pipeline-parallel-size {setup.pipeline_parallel_size}) is not supported with "
            "an adaptive_think probe: the probe layer's hidden state comes through vLLM's auxiliary hidden-state "
            "outputs, which vLLM relays between pipeline stages only for its own EAGLE-3 drafts. Use "
            "--pipeline-parallel-size 1 (pipeline_parallel_size=1 for vllm.LLM; tensor parallelism is not "
            "refused), or serve without --probe (the budget policies need no probe).")
    return problems


def check_setup(setup: EngineSetup, probe_served: bool) -> None:
    """Raise ValueError naming every setting of `setup` that adaptive_think cannot steer."""
    problems = unsupported(setup, probe_served)
    if problems:
        raise ValueError("adaptive_think cannot steer this vLLM engine:\n" + "\n".join(f"- {p}" for p in problems))


def check_engine(vllm_config, probe_served: bool) -> None:
    """`check_setup` for an engine's `VllmConfig` (called where the processor and the wrapper are built)."""
    check_setup(setup_of_config(vllm_config), probe_served)
