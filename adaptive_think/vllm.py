"""`adaptive_think.vllm`: the vLLM integration (see adaptive_think/integrations/vllm/)."""

from adaptive_think.integrations.vllm import *  # noqa: F401,F403
from adaptive_think.integrations.vllm import __all__, __getattr__  # noqa: F401
