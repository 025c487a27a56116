"""Weekly database maintenance: plan by need (plan.py, stats.py), act without blocking (execute.py)."""
