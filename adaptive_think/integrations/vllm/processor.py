"""`ThinkLogitsProcessor`: the one class to give vLLM, whichever model runner the engine picks.

vLLM has two logits-processor interfaces and loads a class only if it implements the active runner's
(`vllm/v1/sample/logits_processor/interface.py` for the V1 runner, `vllm/v1/worker/gpu/sample/
logits_processor/interface.py` for Model Runner V2), and which runner is active is only known once the
engine's config is built. This class subclasses both and, when vLLM constructs it, builds the adapter of
the interface it was constructed through (v1.py or mrv2.py, both over slots.SlotController) and forwards
every call to it.
"""

from __future__ import annotations

from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2LogitsProcessor

from adaptive_think.integrations.vllm.context import validate_request
from adaptive_think.integrations.vllm.requests import current_settings
from adaptive_think.integrations.vllm.support import check_engine


class ThinkLogitsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """adaptive_think's per-request thinking control for either vLLM model runner."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """Refuse bad adaptive_think settings at admission (the server answers HTTP 400 with the message)."""
        try:
            validate_request(sampling_params)
        except ValueError as err:
            raise VLLMValidationError(str(err), parameter="extra_args") from None

    def __init__(self, vllm_config, *args):
        # an engine adaptive_think cannot steer fails here, at start-up, not with wrong tokens later
        check_engine(vllm_config, probe_served=current_settings().probe is not None,
                     runner="mrv2" if len(args) == 1 else "v1")
        if len(args) == 1:  # Model Runner V2: (vllm_config, req_states)
            from adaptive_think.integrations.vllm.mrv2 import ThinkLogitsProcessorV2

            self.impl = ThinkLogitsProcessorV2(vllm_config, args[0])
        else:  # V1 runner: (vllm_config, device, is_pin_memory)
            from adaptive_think.integrations.vllm.v1 import ThinkLogitsProcessorV1

            self.impl = ThinkLogitsProcessorV1(vllm_config, *args)

    # V1 interface
    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update) -> None:
        self.impl.update_state(batch_update)

    # Model Runner V2 interface
    def add_request(self, req_idx: int, sampling_params) -> bool:
        return self.impl.add_request(req_idx, sampling_params)

    def apply_staged_writes(self) -> None:
        self.impl.apply_staged_writes()

    # both: apply(logits) under V1, apply(logits, ctx) under Model Runner V2
    def apply(self, logits, ctx=None):
        return self.impl.apply(logits) if ctx is None else self.impl.apply(logits, ctx)
