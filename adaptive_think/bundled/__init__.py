"""adaptive_think.bundled"""
