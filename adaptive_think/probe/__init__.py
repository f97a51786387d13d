"""adaptive_think.probe"""
