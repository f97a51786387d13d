"""Which vLLM engine configurations adaptive_think steers correctly; the others are refused at start-up.

The controller steers every logits row of a request, with the token, position and probe-layer hidden
state that the model wrapper (models.py) hands over from `forward` / `compute_logits`. Speculative decoding
is steered on Model Runner V2 (the GPU default) for n-gram, EAGLE-3 and MTP drafts verified by standard
rejection sampling (greedy requests: argmax match; sampled ones: the probability-ratio test), which accepts
a draft only where it equals a forced token and emits the forced token otherwise. Refused, with an error
that names the setting and what works instead:

- speculative decoding under the V1 runner (vLLM refuses custom logits processors there itself), with any
  other method (draft model, EAGLE-1, Medusa, suffix, DFlash, extract_hidden_states, ...; one not named on
  the command line), or with the `synthetic` rejection method (it accepts drafts without reading the
  logits, so a forced token cannot win) or `block` verification (joint acceptance, not verified here);
- batch-sharded sampling (tensor parallel ranks each sample a slice of the batch through
  `compute_logits_local`, which bypasses the wrapper's hand-over);
- pipeline parallelism while a probe is served: the probe layer's state comes through vLLM's auxiliary
  hidden-state outputs, which vLLM relays between pipeline stages only for its own EAGLE-3 drafts.

`EngineSetup` holds just those facts (the runner only where the engine's config is built:
`adaptive-think serve` checks the rest before the server starts and the worker checks again);
`setup_of_config` reads them from a `VllmConfig` (the processor and the wrapper, in the worker),
`setup_of_args` from parsed `EngineArgs` (`adaptive-think serve`, before the server starts). Nothing here
imports vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

# speculative methods that take over the auxiliary hidden-state layers the wrapper sets for the probe (EAGLE-3
# shares them: the wrapper adds the probe's layer to the draft's)
AUX_LAYER_METHODS = ("eagle3", "extract_hidden_states")
# speculative methods steered on Model Runner V2 (vLLM names MTP drafts "mtp" or "<family>_mtp")
STEERED_METHODS = ("ngram", "ngram_gpu", "eagle3", "mtp")
# rejection methods that read the logits a processor forced (standard: argmax match for greedy requests)
STEERED_REJECTION = ("standard",)


def steered_method(method: str | None) -> bool:
    """Whether speculative `method` is one adaptive_think steers (on Model Runner V2)."""
    return method is not None and (method in STEERED_METHODS or method.endswith("_mtp"))


@dataclass(frozen=True)
class EngineSetup:
    """The parts of a vLLM engine's configuration that decide whether adaptive_think can steer it.

    speculative: whether speculative decoding is configured; speculative_method: its method when known
    (vLLM infers it from the draft model's name when only a model is given); rejection_method: how drafts
    are verified (vLLM's default "standard" when not given); runner: "v1" or "mrv2" once the engine's
    config is built (None: not known yet).
    """

    speculative: bool = False
    speculative_method: str | None = None
    rejection_method: str = "standard"
    runner: str | None = None
    pipeline_parallel_size: int = 1
    batch_sharded_sampling: bool = False


def setup_of_config(vllm_config, runner: str | None = None) -> EngineSetup:
    """The setup of an engine's `VllmConfig` (its speculative_config and parallel_config); runner: the one
    known to the caller, else read from the config's `use_v2_model_runner` when it has one."""
    spec = getattr(vllm_config, "speculative_config", None)
    parallel = vllm_config.parallel_config
    if runner is None and hasattr(vllm_config, "use_v2_model_runner"):
        runner = "mrv2" if vllm_config.use_v2_model_runner else "v1"
    return EngineSetup(speculative=spec is not None, speculative_method=getattr(spec, "method", None),
                       rejection_method=getattr(spec, "rejection_sample_method", None) or "standard", runner=runner,
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
                       rejection_method=spec.get("rejection_sample_method") or "standard",
                       pipeline_parallel_size=int(getattr(engine_args, "pipeline_parallel_size", 1) or 1),
                       batch_sharded_sampling=bool(getattr(engine_args, "enable_batch_sharded_sampling", False)))


def unsupported(setup: EngineSetup, probe_served: bool) -> list[str]:
    """One message per setting of `setup` that adaptive_think does not steer correctly ([] when none)."""
    problems = []
    method = setup.speculative_method
    instead = ("drop --speculative-config (speculative_config= for vllm.LLM), or serve without adaptive_think "
               "settings (plain `vllm serve`, or vllm.LLM without adaptive_think's llm_kwargs).")
    if setup.speculative and not steered_method(method):
        named = f" (method {method!r})" if method else " (a draft model without a method)"
        aux = (f"; {method} also takes over the hidden-state layers the probe reads"
               if method in AUX_LAYER_METHODS and method != "eagle3" else "")
        problems.append(
            f"speculative decoding{named} is not supported with adaptive_think yet: it steers n-gram, EAGLE-3 and "
            f"MTP drafts only{aux}. Name one with --speculative-config '{{\"method\": \"ngram\", ...}}' "
            f"(\"eagle3\" or \"mtp\" with your draft head), or: {instead}")
    elif setup.speculative and setup.rejection_method not in STEERED_REJECTION:
        why = ("it accepts drafts without reading the logits, so a token adaptive_think forces cannot win"
               if setup.rejection_method == "synthetic" else "its joint acceptance of a draft block is not verified "
               "with forced tokens")
        problems.append(
            f"speculative decoding with rejection_sample_method {setup.rejection_method!r} is not supported with "
            f"adaptive_think: {why}. Use the default \"standard\" rejection sampling, or: {instead}")
    elif setup.speculative and setup.runner == "v1":
        problems.append(
            f"speculative decoding (method {method!r}) is not supported with adaptive_think on vLLM's V1 model "
            "runner: vLLM refuses custom logits processors under speculative decoding there. Use Model Runner V2 "
            "(the default on a GPU: unset VLLM_USE_V2_MODEL_RUNNER=0), or: " + instead)
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


def check_engine(vllm_config, probe_served: bool, runner: str | None = None) -> None:
    """`check_setup` for an engine's `VllmConfig` (called where the processor and the wrapper are built;
    runner: "v1" / "mrv2" when the caller knows it)."""
    check_setup(setup_of_config(vllm_config, runner), probe_served)


def speculative_width(vllm_config) -> int:
    """Logits rows a request may own per step: num_speculative_tokens + 1 (1 without speculation)."""
    spec = getattr(vllm_config, "speculative_config", None)
    return int(getattr(spec, "num_speculative_tokens", 0) or 0) + 1 if spec is not None else 1
