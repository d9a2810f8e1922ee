"""External solvers behind neurode's front door."""
