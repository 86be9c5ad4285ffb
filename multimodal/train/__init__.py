"""The application layer: experiment configs, the Lightning module, runs (train / load / evaluate).

Only this package and `multimodal.cli` import `tasks`.
"""
