"""adaptive_think.controller"""
