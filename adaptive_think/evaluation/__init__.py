"""adaptive_think.evaluation"""
