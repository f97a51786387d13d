"""Integrations of adaptive_think into serving engines (vLLM: `adaptive_think.integrations.vllm`)."""
