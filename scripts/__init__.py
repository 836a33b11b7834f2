"""Entry points and helpers of the project's scripts (the bench imports ``scripts.benchlib``)."""
