"""Decode engines that host the controller: `hf` (HF generate() + a logits processor + a layer hook) and
`graph` (an own static-cache loop captured as a CUDA graph); see docs/design.md, "Engines"."""
