"""``scripts/soak``: the whole stack under load with random faults (issue 9)."""
