"""adaptive_think.engines"""
