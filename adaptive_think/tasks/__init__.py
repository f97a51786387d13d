"""adaptive_think.tasks"""
