"""Side-by-side evaluation of thinking policies (accuracy, thinking and forward tokens, the oracle, the
field's baselines) on question sets with checkable answers; run by `adaptive-think eval`."""
